"""The request base shared by both roles of an evhttp request (server:
``_server_request.py``; client: ``_client.py``): the handle surface, what was received, and the
thread rule on its hot path.

Who owns a request, and when (libevent and Python share it), is told in
docs/design/lifetimes.md; the state machine of the C record is drawn in ``cdefs/http_request.c``.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ._args import type_name as _type_name
from ._errors import ClosedError
from ._guard import _get_ident, _on_turn, refusal
from ._handles import Handle, _next_id
from ._headers import _Headers, _OutputHeaders
from ._log import TRACE, events_log
from ._native import ffi, lib
from ._serialize import SerializeData

if TYPE_CHECKING:
    from ._event_base import _LoopState

PyRequestCallback = Callable[["EvHttpRequest", Any], object]
"""A Python request callback: ``cb(req, arg)``; its return value is ignored."""

METHODS: Final[dict[str, int]] = {
    "GET": 1 << 0,
    "POST": 1 << 1,
    "HEAD": 1 << 2,
    "PUT": 1 << 3,
    "DELETE": 1 << 4,
    "OPTIONS": 1 << 5,
    "TRACE": 1 << 6,
    "CONNECT": 1 << 7,
    "PATCH": 1 << 8,
}

_METHOD_NAMES: Final[dict[int, str]] = {v: k for k, v in METHODS.items()}

# Client request record states (cdefs/http.h); a server request's fate is bs_http_settle's
_NEW: Final[int] = lib.BS_REQ_NEW
_MADE: Final[int] = lib.BS_REQ_MADE
_CANCELLED: Final[int] = lib.BS_REQ_CANCELLED

_NULL = ffi.NULL
_new_headers = object.__new__  # a request's header views: two slots, no __init__ frame
_unpack = ffi.unpack
_new = ffi.new
_trace_on = events_log.isEnabledFor
_SIZE_P = ffi.typeof("size_t *")  # parsed once: the body's length, filled by bs_http_body


def _other_thread(st: _LoopState | None, what: str) -> None:
    """``_Guard.check_thread`` for requests, inlined to one comparison on the loop's own thread
    (the per-request path): from another thread while the base is dispatched, RuntimeError."""
    if st is not None:
        thread = st.guard.thread
        if thread is not None and thread != _get_ident():
            raise refusal(f"EvHttpRequest.{what}", thread)


def _decode(ptr: Any) -> str:
    text: str = ffi.string(ptr).decode("utf-8", "surrogateescape")
    return text


def _not_for(what: str, role: str) -> RuntimeError:
    return RuntimeError(f"EvHttpRequest.{what}: only a {role}")


class EvHttpRequest(Handle):
    """An HTTP request: on the server, one to answer; on the client, one to send and its response.

    A handle like the other four types (``id``, live counter, TRACE log, ``close``), made with a
    fast constructor because a server makes one per request, and counted in C, where Python's
    hold on the request's record begins and ends. The two roles are subclasses; the methods of
    the other role raise RuntimeError.
    """

    __slots__ = ("_in", "_out", "_st", "_traced")

    _kind = "EvHttpRequest"

    _traced: bool  # TRACE was on at creation: its release is logged too
    _st: _LoopState | None  # the loop state of its base (a client request: once made)
    _in: _Headers | None
    _out: _OutputHeaders | None

    def __init__(self) -> None:
        raise TypeError("EvHttpRequest: use obtain_evhttp_request() for a client request")

    def _init_request(self, rec: Any, st: _LoopState | None) -> None:
        """The fast constructor: the handle surface without the parent, lock or counter."""
        self._rec = rec
        self._st = st
        self._in = None
        self._out = None
        self._dummy = False
        self._parent = None
        self._children = None
        self._id = ident = _next_id()  # Handle._trace_create(), inlined: one per request
        traced = self._traced = _trace_on(TRACE)
        if traced:
            events_log.log(TRACE, "create %s id=%d", self._kind, ident)

    @classmethod
    def live(cls) -> int:
        """Number of requests not yet released (counted in C)."""
        return int(lib.bs_http_live_requests())

    def close(self) -> None:
        """Release the request; idempotent (see the role's ``close``)."""
        raise NotImplementedError

    def _close(self, *, finalizing: bool) -> None:
        self.close()

    def _after_close(self) -> None:
        if self._traced:
            self._trace_release()

    def _live_req(self, what: str) -> Any:
        """libevent's request, or ClosedError (RuntimeError from a thread the rule forbids)."""
        rec = self._rec
        if rec is None or rec.req == _NULL:
            raise ClosedError(f"EvHttpRequest.{what}: the request is closed")
        _other_thread(self._st, what)
        return rec.req

    @property
    @_on_turn("method")
    def method(self) -> str:
        """The request method (``"GET"``, ``"POST"``...)."""
        r = self._live_req("method")
        return _METHOD_NAMES.get(lib.evhttp_request_get_command(r), "UNKNOWN")

    @property
    @_on_turn("uri")
    def uri(self) -> str:
        """The request target as received (undecoded)."""
        p = lib.evhttp_request_get_uri(self._live_req("uri"))
        return "" if p == _NULL else _decode(p)

    @_on_turn("uri")
    def _uri_part(self, what: str, getter: Callable[[Any], Any]) -> str | None:
        u = lib.evhttp_request_get_evhttp_uri(self._live_req(what))
        if u == _NULL:
            return None
        p = getter(u)
        return None if p == _NULL else _decode(p)

    @property
    def path(self) -> str:
        """The path of the target, undecoded (``/`` when it has none)."""
        return self._uri_part("path", lib.evhttp_uri_get_path) or "/"

    @property
    def query(self) -> str | None:
        """The query string after ``?`` (undecoded), or None."""
        return self._uri_part("query", lib.evhttp_uri_get_query)

    @property
    def query_params(self) -> dict[str, str]:
        """The decoded query parameters (the last value wins for a repeated name)."""
        q = self.query
        if not q:
            return {}
        return dict(urllib.parse.parse_qsl(q, keep_blank_values=True, errors="replace"))

    @property
    @_on_turn("host")
    def host(self) -> str | None:
        """The host the request names (absolute URI, else the Host header), or None."""
        p = lib.evhttp_request_get_host(self._live_req("host"))
        if p == _NULL:
            return None
        return _decode(p) or None

    @property
    @_on_turn("peer")
    def peer(self) -> tuple[str, int]:
        """``(address, port)`` of the other end."""
        r = self._live_req("peer")
        host = ffi.new("char[]", 64)
        port = ffi.new("int *")
        if lib.bs_http_peer(r, host, 64, port) != 0:
            raise ClosedError("EvHttpRequest.peer: the connection is gone")
        return ffi.string(host).decode("ascii"), int(port[0])

    def _usable(self) -> bool:
        """True when the request is open and the thread rule lets this thread use it without
        the guard (``_live_req``'s and ``_on_turn``'s checks, in one frame): the per-request
        properties below take their fast path on it and fall back to the full checks."""
        rec = self._rec
        if rec is None or not rec.req:
            return False
        st = self._st
        return st is None or st.guard.thread == _get_ident()

    @property
    def input_headers(self) -> _Headers:
        """Headers received: case-insensitive, read-only; ``get_all(name)`` for repeats."""
        if not self._usable():
            self._live_req("input_headers")  # ClosedError, or RuntimeError from a forbidden thread
        h = self._in
        if h is None:
            h = self._in = _new_headers(_Headers)
            h._req = self
            h._out = False
        return h

    @property
    def output_headers(self) -> _OutputHeaders:
        """Headers to send (``add``, ``set``, ``remove``); CR/LF are refused."""
        if not self._usable():
            self._live_req("output_headers")  # ClosedError, or RuntimeError from a forbidden thread
        h = self._out
        if h is None:
            h = self._out = _new_headers(_OutputHeaders)
            h._req = self
            h._out = True
        return h

    def _whole_body(self, what: str) -> Any:
        r = self._live_req(what)
        if self._rec.streaming:
            raise RuntimeError(
                f"EvHttpRequest.{what}: a stream_body request has no whole body (use on_body)"
            )
        return r

    @property
    @_on_turn("body_length")
    def body_length(self) -> int:
        """Bytes of body received."""
        r = self._whole_body("body_length")
        return int(lib.evbuffer_get_length(lib.evhttp_request_get_input_buffer(r)))

    @property
    def body(self) -> bytes:
        """The body received, as bytes (a copy)."""
        if self._usable() and not self._rec.streaming:  # _body_on_turn's checks, passed
            n = _new(_SIZE_P)
            p = lib.bs_http_body(self._rec.req, n)
            return b"" if not p else _unpack(p, n[0])
        return self._body_on_turn()

    @_on_turn("body")
    def _body_on_turn(self) -> bytes:
        r = self._whole_body("body")
        n = ffi.new("size_t *")
        p = lib.bs_http_body(r, n)
        return b"" if p == _NULL else ffi.unpack(p, n[0])

    @_on_turn("read_body")
    def read_body(self, into: Any) -> int:
        """Copy the body into a SerializeData (appended) or a writable buffer; returns the count.

        No intermediate ``bytes`` is made, so a secret body never lands in unwipeable memory.
        A writable buffer receives at most its own size.
        """
        r = self._whole_body("read_body")
        n = int(lib.evbuffer_get_length(lib.evhttp_request_get_input_buffer(r)))
        if isinstance(into, SerializeData):
            # Under into's lock: another thread cannot grow or close it under the copy.
            return into._append_from(
                n, lambda ptr, k: int(lib.bs_http_copyout(r, ffi.cast("char *", ptr), k))
            )
        try:
            dst = ffi.from_buffer("char[]", into, require_writable=True)
        except (TypeError, BufferError):  # not a buffer, or a read-only one
            raise TypeError(
                "EvHttpRequest.read_body: into must be a SerializeData or a writable buffer, "
                f"not {_type_name(into)}"
            ) from None
        return int(lib.bs_http_copyout(r, dst, min(n, len(dst))))

    @property
    @_on_turn("response_code")
    def response_code(self) -> int:
        """Status of the response (client), or 0 when the request failed (see ``error``)."""
        rec = self._rec
        if rec is None:
            raise ClosedError("EvHttpRequest.response_code: the request is closed")
        if rec.req == _NULL:
            return 0
        return int(lib.evhttp_request_get_response_code(rec.req))

    @property
    @_on_turn("response_reason")
    def response_reason(self) -> str | None:
        """Reason phrase of the response (client), or None."""
        rec = self._rec
        if rec is None:
            raise ClosedError("EvHttpRequest.response_reason: the request is closed")
        if rec.req == _NULL:
            return None
        p = lib.evhttp_request_get_response_code_line(rec.req)
        return None if p == _NULL else ffi.string(p).decode("latin-1")

    @property
    def error(self) -> str | None:
        """A short reason when a client request failed; always None on the server."""
        if self._rec is None:
            raise ClosedError("EvHttpRequest.error: the request is closed")
        return None

    # -- the server's replies (``_server_request.py``) and the client's body (``_client.py``)

    def send_reply(
        self,
        code: int,
        reason: str | None = None,
        body: Any = b"",
        *,
        content_type: str | None = None,
    ) -> None:
        """Answer with ``code``, ``reason`` and ``body`` (server requests)."""
        raise _not_for("send_reply", "server request can be answered")

    def send_echo(self, code: int = 200, *, default_content_type: str | bytes = b"") -> None:
        """Answer with the request's own body and ``Content-Type`` (server requests)."""
        raise _not_for("send_echo", "server request can be answered")

    def send_error(self, code: int, reason: str | None = None) -> None:
        """Answer with libevent's error page for ``code`` (server requests)."""
        raise _not_for("send_error", "server request can be answered")

    def send_reply_start(self, code: int, reason: str | None = None) -> None:
        """Start a chunked reply (server requests)."""
        raise _not_for("send_reply_start", "server request can be answered")

    def send_reply_chunk(self, data: Any, on_sent: Callable[[], object] | None = None) -> None:
        """Send one chunk of a started reply, ``on_sent()`` once written (server requests)."""
        raise _not_for("send_reply_chunk", "server request can be answered")

    @property
    def output_buffered(self) -> int:
        """Reply bytes queued on the connection, not yet written (server requests)."""
        raise _not_for("output_buffered", "server request has a reply to write")

    def send_reply_end(self) -> None:
        """Finish a chunked reply (server requests)."""
        raise _not_for("send_reply_end", "server request can be answered")

    def on_body(self, fn: Callable[[EvHttpRequest, bytes], object]) -> None:
        """Receive a stream_body request's body in pieces (server requests)."""
        raise _not_for("on_body", "server request has a body to stream")

    def _stream_body(
        self,
        fn: Callable[[EvHttpRequest, bytes], object],
        on_error: Callable[[int], object] | None,
    ) -> Any:
        """Private hook of the ``iter_body`` helpers (server requests: ``_server_stream.py``)."""
        raise _not_for("on_body", "server request has a body to stream")

    def set_body(self, data: Any) -> None:
        """The body to send, before make_request (client requests)."""
        raise _not_for("set_body", "client request has a body to send")

    def _when_below(self, high_water: int, cb: Callable[[bool], object]) -> bool:
        """Private hook of the ``send_chunk`` helpers (server requests: ``_server_stream.py``)."""
        raise _not_for("send_chunk", "server request has a reply to write")

    def _on_gone(self, cb: Callable[[], object] | None) -> None:
        """Private hook of the ``serve_http`` helpers: ``cb()`` runs once if the connection of a
        deferred server request closes before its reply is complete."""
        raise _not_for("_on_gone", "server request has a connection to watch")
