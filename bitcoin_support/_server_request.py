"""A request a server was given (``_ServerRequest``): its replies, one-call and chunked, and
its streamed body; with the ``extern "Python"`` entry points that hand a request to its route's
callback and tell a deferred one that its connection went away. Who owns a request and when is
told in docs/design/lifetimes.md."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ._args import _body_arg, _check_int, _text_arg
from ._args import type_name as _type_name
from ._errors import ClosedError
from ._guard import _get_ident, _on_turn
from ._headers import _header_bytes
from ._log import http_log
from ._native import ffi, lib
from ._request import EvHttpRequest, _other_thread
from ._server_stream import _bodies, _BodySink, _SentQueue

if TYPE_CHECKING:
    from ._server import EvHttp
    from ._server_routes import _Route

_NULL = ffi.NULL
_LET_GO: Final[int] = lib.BS_SETTLE_LET_GO
# What the request trampoline asks bs_http_settle for when Python lets go of a request it did
# not answer (cdefs/http_server.c): the callback raised, or closed its own server.
_FAILED: Final = 500
_UNAVAILABLE: Final = 503
_from_handle = ffi.from_handle
_new_request = object.__new__


class _ServerRequest(EvHttpRequest):
    """A request a server was given: valid until its reply is complete or its connection closes.

    While its callback runs it lives on the callback's frame; a callback that returns without
    replying leaves it in its server's ``_pending`` set, with an ``ffi.new_handle`` that the C
    record uses to tell us when the connection goes away.
    """

    __slots__ = ("_gone", "_handle", "_http", "_sent")

    _http: EvHttp
    _handle: Any

    @_on_turn("close")
    def close(self) -> None:
        """Release the request; idempotent.

        A request not yet answered is answered with 500 first (nobody could answer it
        afterwards); a started chunked reply is ended.
        """
        rec = self._rec
        if rec is None:
            return
        _other_thread(self._st, "close")
        self._rec = None
        try:
            lib.bs_http_settle(rec, 500, _LET_GO)  # 500, end, or release: Python's hold ends
        finally:
            self._after_close()

    def _on_gone(self, cb: Callable[[], object] | None) -> None:
        """Private hook (``trio_guest.serve_http``): ``cb()`` runs once if the connection of this
        deferred server request closes before the reply is complete (after the request closed)."""
        self._gone = cb

    def _released(self) -> None:
        """Python's ownership of the record ended in C (reply complete): close the wrapper."""
        self._rec = None
        self._after_close()

    def _after_close(self) -> None:
        # The header views point at the request: dropping them here breaks that cycle, so the
        # wrapper and its views are freed when the last reference goes, not by the cyclic GC.
        self._in = self._out = None
        if self._handle is not None:
            self._handle = None
            self._http._pending.discard(self)
        if self._traced:
            self._trace_release()

    def _reply_rc(self, what: str, rc: int) -> None:
        if rc == 0:
            return
        if rc == lib.BS_HTTP_CLOSED:
            raise ClosedError(f"EvHttpRequest.{what}: the request is closed")
        if rc == lib.BS_HTTP_ANSWERED:
            raise RuntimeError(f"EvHttpRequest.{what}: a reply was already sent or started")
        if rc == lib.BS_HTTP_BAD_VALUE:
            name = "default_content_type" if what == "send_echo" else "content_type"
            raise ValueError(f"EvHttpRequest.{what}: {name} must not contain control characters")
        raise MemoryError(f"EvHttpRequest.{what}: out of memory")

    def _server_rec(self, what: str) -> Any:
        rec = self._rec
        if rec is None:
            raise ClosedError(f"EvHttpRequest.{what}: the request is closed")
        _other_thread(self._st, what)
        return rec

    def send_reply(
        self,
        code: int,
        reason: str | None = None,
        body: Any = b"",
        *,
        content_type: str | None = None,
    ) -> None:
        """Answer with ``code``, ``reason`` (default: the standard phrase) and ``body``.

        ``body`` is any bytes-like object or a SerializeData; ``content_type`` sets that header.
        The request is closed afterwards.
        """
        rec = self._rec
        st = self._st
        if rec is None or st is None or st.guard.thread != _get_ident():
            self._send_reply_on_turn(code, reason, body, content_type)  # _on_turn's other paths
            return
        # On the dispatching thread, an open request: _on_turn's and _server_rec's checks pass
        if type(code) is int and 100 <= code <= 599 and reason is None and type(body) is bytes:
            if content_type is None:  # the common reply: every argument of the fast type
                rc = lib.bs_http_send_reply(rec, code, _NULL, body, len(body), _NULL, 0)
                if rc:
                    self._reply_rc("send_reply", rc)
                self._rec = None  # self._released(), inlined
                self._in = self._out = None
                if self._handle is not None or self._traced:
                    self._after_close()
                return
        self._send_reply(rec, code, reason, body, content_type)

    @_on_turn("send_reply")
    def _send_reply_on_turn(
        self, code: int, reason: str | None, body: Any, content_type: str | None
    ) -> None:
        self._send_reply(self._server_rec("send_reply"), code, reason, body, content_type)

    def _send_reply(
        self, rec: Any, code: int, reason: str | None, body: Any, content_type: str | None
    ) -> None:
        """``send_reply`` on an open request, the thread rule kept: every argument checked."""
        if type(code) is not int or not 100 <= code <= 599:
            _check_int("EvHttpRequest.send_reply", "code", code, 100, 599)
        creason = _NULL if reason is None else _text_arg("send_reply", "reason", reason)
        if type(body) is bytes:
            data, n = body, len(body)
        else:
            data, n = _body_arg("EvHttpRequest.send_reply", body)
        if content_type is None:
            rc = lib.bs_http_send_reply(rec, code, creason, data, n, _NULL, 0)
        else:
            ct = _header_bytes("value", content_type)
            rc = lib.bs_http_send_reply(rec, code, creason, data, n, ct, len(ct))
        if rc:
            self._reply_rc("send_reply", rc)
        self._released()

    def send_echo(self, code: int = 200, *, default_content_type: str | bytes = b"") -> None:
        """Answer with the request's own body and ``Content-Type`` (or ``default_content_type``).

        The body moves from the input buffer to the output buffer inside libevent: no copy
        passes through Python. The request is closed afterwards.
        """
        rec = self._rec
        st = self._st
        if rec is None or st is None or st.guard.thread != _get_ident():
            self._send_echo_on_turn(code, default_content_type)  # _on_turn's other paths
            return
        # On the dispatching thread, an open request: _on_turn's and _server_rec's checks pass
        if type(code) is int and 100 <= code <= 599 and type(default_content_type) is bytes:
            ct = default_content_type  # the echo server's path
            rc = lib.bs_http_send_echo(rec, code, ct, len(ct))
            if rc:
                self._reply_rc("send_echo", rc)
            self._rec = None  # self._released(), inlined
            self._in = self._out = None
            if self._handle is not None or self._traced:
                self._after_close()
            return
        self._send_echo(rec, code, default_content_type)

    @_on_turn("send_echo")
    def _send_echo_on_turn(self, code: int, default_content_type: str | bytes) -> None:
        self._send_echo(self._server_rec("send_echo"), code, default_content_type)

    def _send_echo(self, rec: Any, code: int, default_content_type: str | bytes) -> None:
        """``send_echo`` on an open request, the thread rule kept: every argument checked."""
        if type(code) is not int or not 100 <= code <= 599:
            _check_int("EvHttpRequest.send_echo", "code", code, 100, 599)
        if type(default_content_type) is bytes:
            ct = default_content_type
        elif isinstance(default_content_type, (str, bytes)):
            ct = _header_bytes("value", default_content_type)
        else:
            raise TypeError(
                "EvHttpRequest.send_echo: default_content_type must be str or bytes, not "
                f"{_type_name(default_content_type)}"
            )
        rc = lib.bs_http_send_echo(rec, code, ct, len(ct))
        if rc:
            self._reply_rc("send_echo", rc)
        self._released()

    @_on_turn("send_error")
    def send_error(self, code: int, reason: str | None = None) -> None:
        """Answer with libevent's error page for ``code``; the request is closed afterwards."""
        rec = self._server_rec("send_error")
        _check_int("EvHttpRequest.send_error", "code", code, 100, 599)
        creason = _NULL if reason is None else _text_arg("send_error", "reason", reason)
        self._reply_rc("send_error", lib.bs_http_send_error(rec, code, creason))
        self._released()

    @_on_turn("send_reply_start")
    def send_reply_start(self, code: int, reason: str | None = None) -> None:
        """Start a chunked reply (``Transfer-Encoding: chunked`` for HTTP/1.1 clients)."""
        rec = self._server_rec("send_reply_start")
        _check_int("EvHttpRequest.send_reply_start", "code", code, 100, 599)
        creason = _NULL if reason is None else _text_arg("send_reply_start", "reason", reason)
        self._reply_rc("send_reply_start", lib.bs_http_reply_start(rec, code, creason))

    @_on_turn("send_reply_chunk")
    def send_reply_chunk(self, data: Any, on_sent: Callable[[], object] | None = None) -> None:
        """Send one chunk of a started reply (an empty chunk is skipped).

        ``on_sent()``, when given, runs in the loop once this chunk (and everything queued
        before it) has been written to the socket, even after ``send_reply_end()``; it never
        runs if the connection closes first. Callbacks run in the order of their chunks.
        """
        rec = self._server_rec("send_reply_chunk")
        ptr, n = _body_arg("EvHttpRequest.send_reply_chunk", data)
        if on_sent is not None and not callable(on_sent):
            raise TypeError(
                f"EvHttpRequest.send_reply_chunk: on_sent must be callable, not "
                f"{_type_name(on_sent)}"
            )
        end = lib.bs_http_reply_chunk(rec, ptr, n)
        if end < 0:
            self._reply_rc("send_reply_chunk", end)
        if on_sent is not None:
            self._sent_queue().arm(rec, end, on_sent, False)

    @property
    @_on_turn("output_buffered")
    def output_buffered(self) -> int:
        """Bytes of the reply queued on the connection and not yet written to the socket."""
        rec = self._server_rec("output_buffered")
        n = lib.bs_http_output_buffered(rec)
        if n < 0:
            raise ClosedError("EvHttpRequest.output_buffered: the connection is gone")
        return int(n)

    def _sent_queue(self) -> _SentQueue:
        q: _SentQueue | None = getattr(self, "_sent", None)
        if q is None:
            q = self._sent = _SentQueue(self._st)
        return q

    @_on_turn("send_chunk")
    def _when_below(self, high_water: int, cb: Callable[[bool], object]) -> bool:
        """Private hook of the ``send_chunk`` helpers: False when ``output_buffered`` is below
        ``high_water`` already; otherwise True, and ``cb(gone)`` runs once in the loop when it
        drops below (``gone=False``) or the connection closes first (``gone=True``)."""
        rec = self._server_rec("send_chunk")
        n = lib.bs_http_output_buffered(rec)
        if n < 0:
            raise ClosedError("EvHttpRequest.send_chunk: the connection is gone")
        if n < high_water:
            return False
        at = int(rec.out_added) - high_water + 1  # written so far >= at: fewer left queued
        self._sent_queue().arm(rec, at, cb, True)
        return True

    @_on_turn("on_body")
    def on_body(self, fn: Callable[[EvHttpRequest, bytes], object]) -> None:
        """On a ``stream_body`` request: ``fn(req, chunk)`` runs in the loop for each piece of
        the body as it is read, then once with ``b""`` at its end (pieces read before this call
        are kept for ``fn``). Past the body limit the client gets 413 and ``fn`` sees no more
        pieces; nor when the connection closes first. ``fn`` may run after the reply is sent
        (the request is closed by then)."""
        self._stream_body(fn, None)

    @_on_turn("on_body")
    def _stream_body(
        self,
        fn: Callable[[EvHttpRequest, bytes], object],
        on_error: Callable[[int], object] | None,
    ) -> _BodySink:
        """``on_body`` with private hooks for the ``iter_body`` helpers: ``on_error(status)``
        runs once if the body is refused (413, 400) or cut short (-1); the returned sink's
        ``pause(bool)`` holds the pieces back while the consumer is behind."""
        rec = self._server_rec("on_body")
        if not callable(fn):
            raise TypeError(f"EvHttpRequest.on_body: fn must be callable, not {_type_name(fn)}")
        if not rec.streaming:
            raise RuntimeError("EvHttpRequest.on_body: only a stream_body request has pieces")
        sink = _BodySink(self, fn, on_error)
        if lib.bs_http_on_body(rec, sink.handle) != 0:
            raise RuntimeError("EvHttpRequest.on_body: already set, or the body was dropped")
        _bodies.add(sink)
        return sink

    @_on_turn("send_reply_end")
    def send_reply_end(self) -> None:
        """Finish a chunked reply; the request is closed afterwards."""
        rec = self._server_rec("send_reply_end")
        self._reply_rc("send_reply_end", lib.bs_http_reply_end(rec))
        self._released()


def _log_callback_error(req: EvHttpRequest, exc: BaseException) -> None:
    http_log.error("request callback raised (request id=%d)", req._id, exc_info=exc)


@ffi.def_extern(onerror=lambda *a: http_log.error("request dispatch failed", exc_info=a))  # type: ignore[untyped-decorator]
def bs_py_http_request(rec: Any, handle: Any) -> int:
    """A request for a Python callback: wrap it, run the callback, keep it if not answered.

    Returns 0, or the status to settle a request Python let go of with: 500 when the callback
    raised, 503 when it closed its own server. The C trampoline then answers it with that
    status if it is still replyable (or ends a started chunked reply) and drops Python's share
    of the record (``bs_http_settle``).
    """
    route: _Route = _from_handle(handle)
    http = route.http
    req: _ServerRequest = _new_request(_ServerRequest)
    req._init_request(rec, http._st)
    req._http = http
    req._handle = None
    live = http._live
    if live is not None:  # a host's evhttp: its shutdown waits for the record (C counts down)
        rec.live = live
        live[0] += 1
    http._running += 1
    try:
        route.cb(req, route.arg)
    except BaseException as exc:
        http._running -= 1
        if req._rec is not None:
            req._rec = None
            req._after_close()
        _log_callback_error(req, exc)
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: stop the loop
            http._base._st.fail(exc)
        return _FAILED
    http._running -= 1
    if req._rec is None:
        return 0
    if http._rec is None:
        # The callback closed its own server: nobody is left to answer later. The record
        # goes back to the trampoline, which settles it (503, or a started reply ended).
        req._released()
        return _UNAVAILABLE
    # Not answered: the server holds the request until it is answered or its connection
    # closes; the C record gets a handle to tell us about the latter.
    h = ffi.new_handle(req)
    if lib.bs_http_defer(rec, h) != 0:  # its connection is gone: the trampoline finishes it
        req._rec = None
        req._after_close()
        return 0
    req._handle = h
    http._pending.add(req)
    return 0


@ffi.def_extern(onerror=lambda *a: http_log.error("request close failed", exc_info=a))  # type: ignore[untyped-decorator]
def bs_py_http_gone(handle: Any) -> None:
    """The connection of a deferred request closed: close the wrapper (late replies fail)."""
    req: _ServerRequest = _from_handle(handle)
    rec = req._rec
    if rec is not None:
        req._rec = None
        rec.py = _NULL
        lib.bs_http_req_release(rec)
        req._after_close()
    gone = getattr(req, "_gone", None)  # set only through _on_gone()
    if gone is not None:
        req._gone = None
        gone()
