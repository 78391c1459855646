"""The evhttp server room: EvHttp, its routes, and the requests it is given to answer.

The per-request path is kept short on purpose: one ``extern "Python"`` call per request, no
allocation besides the request object, and one C call for a whole reply (status, headers, body);
the one-second ``Date`` header is cached in C (``cdefs/http_server.c``). Who owns a request and
when is told in docs/design/lifetimes.md.
"""

from __future__ import annotations

import errno
import heapq
import os
import socket
import weakref
from collections.abc import Callable
from typing import Any, Final, final

from ._args import (
    _address_arg,
    _body_arg,
    _c_callback,
    _check_int,
    _oserror,
    _seconds,
    _text_arg,
)
from ._errors import ClosedError
from ._errors import type_name as _type_name
from ._event_base import EventBase, _LoopState, _registry_lock
from ._guard import _guarded, _on_turn
from ._handles import Finalized
from ._headers import _header_bytes
from ._log import http_log
from ._native import ffi, lib
from ._request import (
    _REPLYABLE,
    _STARTED,
    METHODS,
    EvHttpRequest,
    PyRequestCallback,
    _other_thread,
)

__all__ = ["EvHttp", "obtain_evhttp"]

_REQUEST_CB: Final = ffi.typeof("EvHttpRequestCallback")


_NULL = ffi.NULL
# A streamed body's status (cdefs/http.h); a refusal is its HTTP code.
_BODY_PIECE: Final[int] = lib.BS_BODY_PIECE
_BODY_END: Final[int] = lib.BS_BODY_END
_from_handle = ffi.from_handle
_new_request = object.__new__

# EvHttp.from_address wrappers by address: strong while open (the host's evhttp may call their
# routes with no Python reference left), like EventBase wrappers. Servers Python made, by
# address (weak), so that one is never wrapped as if a host owned it.
_wrappers: dict[int, EvHttp] = {}
_owned: weakref.WeakValueDictionary[int, EvHttp] = weakref.WeakValueDictionary()
# A host's BsRequestGate (bs_python_set_request_gate) by evhttp address: (gate, arg) addresses,
# applied to every wrapper made for that address; kept until bs_python_detach, so Python code
# that closes its wrapper and wraps the evhttp again is still behind the host's gate.
_gates: dict[int, tuple[int, int, int]] = {}  # (gate, arg, base address or 0)
# By the address of a host's event_base: how many request records of Python's on the host's
# evhttp servers there are still alive (C counts them down as it frees them; a host's shutdown
# waits for the replies to be written: bs_python_pending). Never freed: records may point here.
_live_counts: dict[int, Any] = {}


def live_requests(base_address: int) -> int:
    """Python's request records still alive on the host's evhttp servers of a base."""
    live = _live_counts.get(base_address)
    return 0 if live is None else int(live[0])


def _set_gate(address: int, gate: int, arg: int) -> None:
    """Set (or with gate 0 remove) a host's gate for the evhttp at ``address``."""
    with _registry_lock:
        if gate:
            found = lib.bs_evhttp_find_base(ffi.cast("struct evhttp *", address))
            _gates[address] = (gate, arg, int(ffi.cast("uintptr_t", found)))
        else:
            _gates.pop(address, None)
        wrapper = _wrappers.get(address)
        if wrapper is not None and wrapper._rec is not None:
            _apply_gate(wrapper._rec, gate, arg)


# A host's choice of strict framing (bs_python_set_strict_framing) by evhttp address: applied to
# every wrapper made for that address, until bs_python_detach (which closes the wrappers, and
# a closed wrapper takes the framer off the host's evhttp).
_stricts: dict[int, tuple[bool, int]] = {}  # (on, base address or 0)


def _set_strict(address: int, on: bool) -> None:
    """Frame the connections of the host's evhttp at ``address`` strictly, or not. Without a
    wrapper yet, its base must be findable (a listening socket) or wrapped already: the framer
    is installed through a wrapper, made here when there is none."""
    with _registry_lock:
        found = lib.bs_evhttp_find_base(ffi.cast("struct evhttp *", address))
        _stricts[address] = (on, int(ffi.cast("uintptr_t", found)))
        wrapper = _wrappers.get(address)
    if wrapper is not None and wrapper._rec is not None:
        lib.bs_evhttp_strict(wrapper._rec, 1 if on else 0)
    elif on:
        EvHttp.from_address(address)  # applies _stricts, held until detach


def _apply_gate(rec: Any, gate: int, arg: int) -> None:
    lib.bs_evhttp_set_gate(
        rec, ffi.cast("BsRequestGate", gate) if gate else _NULL, ffi.cast("void *", arg)
    )


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
        if rec.req != _NULL:
            if rec.state in _REPLYABLE:
                lib.bs_http_send_error(rec, 500, _NULL)  # ends Python's hold on the record
                self._released()
                return
            if rec.state == _STARTED:
                lib.bs_http_reply_end(rec)
                self._released()
                return
        self._rec = None
        try:
            lib.bs_http_req_release(rec)
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
            raise ValueError(f"EvHttpRequest.{what}: content_type must not contain CR or LF")
        raise MemoryError(f"EvHttpRequest.{what}: out of memory")

    def _server_rec(self, what: str) -> Any:
        rec = self._rec
        if rec is None:
            raise ClosedError(f"EvHttpRequest.{what}: the request is closed")
        _other_thread(self._st, what)
        return rec

    @_on_turn("send_reply")
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
        rec = self._server_rec("send_reply")
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

    @_on_turn("send_echo")
    def send_echo(self, code: int = 200, *, default_content_type: str | bytes = b"") -> None:
        """Answer with the request's own body and ``Content-Type`` (or ``default_content_type``).

        The body moves from the input buffer to the output buffer inside libevent: no copy
        passes through Python. The request is closed afterwards.
        """
        rec = self._server_rec("send_echo")
        if type(code) is not int or not 100 <= code <= 599:
            _check_int("EvHttpRequest.send_echo", "code", code, 100, 599)
        if type(default_content_type) is bytes:
            ct = default_content_type
        else:
            ct = _header_bytes("value", default_content_type) if default_content_type else _NULL
        rc = lib.bs_http_send_echo(rec, code, ct)
        if rc:
            self._reply_rc("send_echo", rc)
        # self._released(), inlined: this is the echo server's per-request path
        self._rec = None
        if self._handle is not None or self._traced:
            self._after_close()

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
        if rec.state != _STARTED:
            raise RuntimeError("EvHttpRequest.send_chunk: no chunked reply is in progress")
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


@final
class _SentQueue:
    """The on_sent callbacks of one chunked reply, by the count of written reply bytes each one
    waits for. Kept alive in ``_sending`` while it has callbacks: the last ones run after the
    request is closed (its reply complete). ``cdefs/http_server.c`` counts the bytes."""

    __slots__ = ("handle", "heap", "seq", "st")

    def __init__(self, st: _LoopState | None) -> None:
        self.heap: list[tuple[int, int, Callable[..., object], bool]] = []
        self.seq = 0
        self.st = st
        self.handle = ffi.new_handle(self)

    def arm(self, rec: Any, at: int, cb: Callable[..., object], waiter: bool) -> None:
        rc = lib.bs_http_sent_arm(rec, at, self.handle)
        if rc == -1:
            raise ClosedError("EvHttpRequest.send_reply_chunk: the connection is gone")
        if rc != 0:
            raise MemoryError("EvHttpRequest.send_reply_chunk: out of memory")
        heapq.heappush(self.heap, (at, self.seq, cb, waiter))
        self.seq += 1
        _sending.add(self)

    def run(self, drained: int, gone: bool) -> int:
        heap = self.heap
        while heap and (gone or heap[0][0] <= drained):
            _, _, cb, waiter = heapq.heappop(heap)
            if gone and not waiter:
                continue  # never written: an on_sent does not run
            try:
                if waiter:
                    cb(gone)
                else:
                    cb()
            except BaseException as exc:
                http_log.error("on_sent callback raised", exc_info=exc)
                if not isinstance(exc, Exception) and self.st is not None:
                    self.st.fail(exc)
        if not heap:
            _sending.discard(self)
            return 0
        return heap[0][0]


_sending: set[_SentQueue] = set()


@final
class _BodySink:
    """Where the pieces of a streamed body go (``on_body``); kept in ``_bodies`` until the
    body's end, refusal or loss, which may come after the request closed."""

    __slots__ = ("fn", "handle", "on_error", "rec", "req", "st")

    def __init__(
        self,
        req: _ServerRequest,
        fn: Callable[[EvHttpRequest, bytes], object],
        on_error: Callable[[int], object] | None,
    ) -> None:
        self.req = req
        self.rec = req._rec  # held (BODY) until the final status comes
        self.fn = fn
        self.on_error = on_error
        self.st = req._st
        self.handle = ffi.new_handle(self)

    def pause(self, paused: bool) -> None:
        """Stop (or resume) the pieces: they wait in C, which stops reading past a limit."""
        if self.rec is not None:
            lib.bs_http_body_pause(self.rec, 1 if paused else 0)

    def deliver(self, data: Any, n: int, status: int) -> None:
        try:
            if status == _BODY_PIECE:
                self.fn(self.req, ffi.unpack(data, n))
                return
            _bodies.discard(self)
            self.rec = None
            if status == _BODY_END:
                self.fn(self.req, b"")
            elif self.on_error is not None:
                self.on_error(status)
        except BaseException as exc:
            http_log.error("on_body callback raised (request id=%d)", self.req._id, exc_info=exc)
            if not isinstance(exc, Exception) and self.st is not None:
                self.st.fail(exc)


_bodies: set[_BodySink] = set()


@final
class _Route:
    """A callback registered for a path (or the generic one): the C trampoline's arg.

    Python and C callbacks alike go through ``bs_http_server_cb``, so the server's record knows
    when one of its callbacks runs. The EvHttp holds its routes while libevent may call them.
    """

    __slots__ = ("arg", "cb", "crec", "handle", "http")

    def __init__(
        self, http: EvHttp, cb: Any, arg: Any, c_cb: Any = None, c_arg: Any = None
    ) -> None:
        self.http = http
        self.cb = cb
        self.arg = arg
        self.crec = crec = ffi.new("bs_http_route_t *")
        crec.h = http._rec
        if c_cb is not None:
            self.handle = None
            crec.c_cb = c_cb
            crec.c_arg = c_arg
        else:
            self.handle = crec.py = ffi.new_handle(self)


def _make_route(
    http: EvHttp, where: str, cb: Any, arg: Any, ccb: Any, carg: Any, is_c: bool, stream: object
) -> _Route:
    if not isinstance(stream, bool):
        raise TypeError(f"{where}: stream_body must be a bool, not {_type_name(stream)}")
    if is_c:
        if stream:
            raise ValueError(f"{where}: stream_body needs a Python callback")
        return _Route(http, cb, arg, ccb, carg)
    route = _Route(http, cb, arg)
    route.crec.stream = 1 if stream else 0
    return route


def _callback_args(where: str, cb: Any, arg: Any) -> tuple[Any, Any, bool]:
    """(C callback, its arg, is_c) for a Python callable or an EvHttpRequestCallback."""
    if isinstance(cb, ffi.CData):
        ccb, carg = _c_callback(where, cb, arg, _REQUEST_CB, "void (*)(EvHttpRequest *, void *)")
        return ccb, carg, True
    if not callable(cb):
        raise TypeError(f"{where}: cb must be callable, not {_type_name(cb)}")
    return None, arg, False


@final
class EvHttp(Finalized):
    """An evhttp server on an EventBase: bound sockets, request callbacks, limits.

    Request callbacks are ``cb(req, arg)`` in Python, or a C ``EvHttpRequestCallback`` that gets
    libevent's ``struct evhttp_request *`` (as ``EvHttpRequest *``) and answers it with libevent's
    own calls. A Python callback that raises is logged at ERROR on ``bitcoin_support.http`` and
    the client gets 500 if nothing was sent; the server keeps serving.
    """

    __slots__ = ("_address", "_base", "_bound", "_live", "_pending", "_routes", "_running", "_st")

    _kind = "EvHttp"

    _base: EventBase
    _st: _LoopState
    _bound: list[Any]
    _pending: set[_ServerRequest]
    _routes: dict[str | None, _Route]
    _running: int
    _live: Any  # for a from_address wrapper: its base's entry of _live_counts; else None
    # For a from_address wrapper: the host's evhttp address (in _wrappers); None when Python
    # owns the server.
    _address: int | None

    def __init__(self, base: EventBase) -> None:
        if not isinstance(base, EventBase):
            raise TypeError(f"obtain_evhttp: base must be an EventBase, not {_type_name(base)}")
        brec = base._require_open("obtain_evhttp")
        rec = lib.bs_evhttp_new(brec)
        if rec == _NULL:
            raise _oserror("obtain_evhttp: could not create the evhttp server")
        self._base = base
        self._st = base._st
        self._pending = set()
        self._routes = {}
        self._bound = []
        self._running = 0
        self._address = None
        self._live = None
        self._init_handle(rec, dummy=base.dummy, parent=base)
        if rec.http != _NULL:
            with _registry_lock:
                _owned[int(ffi.cast("uintptr_t", rec.http))] = self

    @classmethod
    def from_address(cls, ptr: int | Any, *, base: EventBase | int | Any = None) -> EvHttp:
        """Wrap a ``struct evhttp *`` owned by a C host; closing the wrapper never frees it.

        ``ptr`` is an address (int) or a cffi pointer. Python may ``set_cb``, ``set_gencb`` and
        ``del_cb`` on it; closing the wrapper (or ``bs_python_detach``) removes exactly the
        callbacks Python registered and answers 503 to the requests Python still holds. The
        wrapper is held until it is closed, and the same address gives the same wrapper.

        ``base`` is the evhttp's event base (an EventBase, an address or a cffi pointer). It may
        be left out once the evhttp listens on a socket: libevent 2.1 has no getter for an
        evhttp's base, but every listener of an evhttp is made on its base, and the listeners
        are public (``evhttp_foreach_bound_socket``, ``evconnlistener_get_base``).
        """
        where = "EvHttp.from_address"
        address = _address_arg(where, ptr)
        http = ffi.cast("struct evhttp *", address)
        found = lib.bs_evhttp_find_base(http)
        found_at = int(ffi.cast("uintptr_t", found)) if found != _NULL else None
        if base is None:
            if found_at is None:
                raise ValueError(
                    f"{where}: the evhttp has no listening socket, so its base cannot be found "
                    "(libevent 2.1 has no getter for it): pass base="
                )
            owner = EventBase.from_address(found_at)
        elif isinstance(base, EventBase):
            owner = base
        else:
            owner = EventBase.from_address(base)
        if found_at is not None and owner.address != found_at:
            raise ValueError(f"{where}: the evhttp's listeners are on another event base")
        guard = owner._st.guard
        if not guard.lock.acquire(False):
            guard.wait(where)
        try:
            with _registry_lock:
                wrapper = _wrappers.get(address)
                if wrapper is not None and wrapper._rec is not None:
                    if wrapper._base is not owner and wrapper._base.address != owner.address:
                        raise ValueError(f"{where}: the evhttp is wrapped on another base")
                    return wrapper
                if address in _owned:
                    raise ValueError(f"{where}: this evhttp was made by Python (obtain_evhttp)")
                rec = lib.bs_evhttp_wrap(owner._require_open(where), http)
                if rec == _NULL:
                    raise _oserror(f"{where}: could not wrap the evhttp")
                self = cls.__new__(cls)
                self._base = owner
                self._st = owner._st
                self._pending = set()
                self._routes = {}
                self._bound = []
                self._running = 0
                self._address = address
                live = _live_counts.get(owner.address)
                if live is None:
                    live = _live_counts[owner.address] = ffi.new("int *")
                self._live = live
                self._init_handle(rec, dummy=False, parent=owner)
                _wrappers[address] = self
                gate = _gates.get(address)
                if gate is not None:
                    _apply_gate(rec, gate[0], gate[1])
                strict = _stricts.get(address)
                if strict is not None:
                    lib.bs_evhttp_strict(rec, 1 if strict[0] else 0)
        finally:
            guard.lock.release()
        return self

    @property
    @_guarded("EvHttp.address")
    def address(self) -> int:
        """Address of the ``struct evhttp``, for C code that registers its own callbacks."""
        return int(ffi.cast("uintptr_t", self._http("address")))

    @property
    def base(self) -> EventBase:
        """The base the server runs on (for a host's evhttp, the wrapper of the host's base)."""
        self._require_open("base")
        return self._base

    def _host_owned(self, what: str) -> None:
        if self._address is not None:
            raise RuntimeError(
                f"EvHttp.{what}: the host owns this evhttp (EvHttp.from_address) and its sockets"
            )

    def _http(self, what: str) -> Any:
        return self._require(f"{what}").http

    def _release_native(self, rec: Any) -> None:
        """Answer 503 to the requests still waiting for a reply, cancel the handlers of every
        request it holds (``serve_http``), then free the server.

        A server Python owns closes its connections when it is freed: the 503s are written to
        their sockets first, so that they reach the clients. Inside one of its own request
        callbacks libevent is still working on one of its connections, so C stops it accepting
        now and frees it on the next loop round.
        """
        later = self._running > 0
        wrapped = self._address is not None
        if rec.http != _NULL:
            if not wrapped:
                with _registry_lock:
                    address = int(ffi.cast("uintptr_t", rec.http))
                    if _owned.get(address) is self:
                        del _owned[address]
            for req in list(self._pending):
                r = req._rec
                if r is not None and r.req != _NULL and r.state in _REPLYABLE:
                    lib.bs_http_send_error(r, 503, _NULL)
                    if not wrapped:
                        lib.bs_http_flush(r)
                    req._released()
                gone = getattr(req, "_gone", None)  # set only through _on_gone()
                if gone is not None:
                    req._gone = None
                    try:
                        gone()  # its handler's task is cancelled (it finds the request closed)
                    except Exception as exc:
                        http_log.error("cancelling a handler failed", exc_info=exc)
            if later or wrapped:  # libevent must not call routes that are about to go
                for path in self._routes:
                    if path is not None:
                        lib.evhttp_del_cb(rec.http, path.encode("utf-8", "surrogateescape"))
            if wrapped and None in self._routes:  # no getter for the host's: libevent's 404
                lib.evhttp_set_gencb(rec.http, _NULL, _NULL)
        lib.bs_evhttp_release(rec, 1 if later else 0)  # on_close() closes what is left

    def _after_release(self) -> None:
        for req in list(self._pending):  # only left when the base freed the server as an orphan
            if req._rec is not None:
                req._rec.py = _NULL
                req.close()
        self._pending.clear()
        self._routes.clear()
        self._bound.clear()
        with _registry_lock:
            if self._address is not None and _wrappers.get(self._address) is self:
                del _wrappers[self._address]

    # -- sockets

    @_guarded("EvHttp.bind")
    def bind(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0: any free port); returns the bound port. May be repeated."""
        self._host_owned("bind")
        http = self._http("bind")
        if not isinstance(host, str):
            raise TypeError(f"EvHttp.bind: host must be a str, not {_type_name(host)}")
        _check_int("EvHttp.bind", "port", port, 0, 65535)
        bound = lib.evhttp_bind_socket_with_handle(http, host.encode("idna"), port)
        if bound == _NULL:
            err = ffi.errno or errno.EADDRNOTAVAIL
            raise OSError(err, f"EvHttp.bind: cannot listen on {host}:{port}: {os.strerror(err)}")
        self._track(bound)
        return _sock_port(int(lib.evhttp_bound_socket_get_fd(bound)))

    @_guarded("EvHttp.accept_socket")
    def accept_socket(self, sock: socket.socket | int) -> int:
        """Serve on an already listening socket (a duplicate of its fd); returns its port.

        The caller keeps its own socket object; the duplicate is made non-blocking (which is
        shared with the original descriptor) and closed with the server.
        """
        where = "EvHttp.accept_socket"
        self._host_owned("accept_socket")
        http = self._http("accept_socket")
        if isinstance(sock, bool):
            raise TypeError(f"{where}: sock must be a socket or an fd, not bool")
        fd = sock if isinstance(sock, int) else getattr(sock, "fileno", lambda: None)()
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"{where}: sock must be a socket or an fd, not {_type_name(sock)}")
        port = _listening_tcp_port(where, fd)
        dup = os.dup(fd)
        try:
            os.set_blocking(dup, False)
            bound = lib.evhttp_accept_socket_with_handle(http, dup)
            if bound == _NULL:
                raise _oserror(f"{where}: libevent refused the socket")
        except BaseException:
            os.close(dup)
            raise
        self._track(bound)
        return port

    def _track(self, bound: Any) -> None:
        """Keep a listening socket, guarded so that running out of descriptors pauses accepting
        for a moment instead of spinning the loop."""
        self._bound.append(bound)
        if lib.bs_evhttp_guard_accept(self._rec, bound) != 0:
            raise MemoryError("EvHttp: cannot guard the listening socket")

    @_guarded("EvHttp.stop_accepting")
    def stop_accepting(self) -> None:
        """Close every listening socket; connections already open keep being served."""
        self._host_owned("stop_accepting")
        self._http("stop_accepting")
        bound, self._bound = self._bound, []
        for b in bound:
            lib.bs_evhttp_del_accept(self._rec, b)

    # -- callbacks

    @_guarded("EvHttp.set_gencb")
    def set_gencb(
        self, cb: PyRequestCallback | Any, arg: Any = None, *, stream_body: bool = False
    ) -> None:
        """The callback for requests that no ``set_cb`` path matches (default: 404).

        ``stream_body=True``: the callback runs once the headers are in; see ``on_body``.
        """
        http = self._http("set_gencb")
        ccb, carg, is_c = _callback_args("EvHttp.set_gencb", cb, arg)
        route = _make_route(self, "EvHttp.set_gencb", cb, arg, ccb, carg, is_c, stream_body)
        lib.evhttp_set_gencb(http, lib.bs_http_server_cb, route.crec)
        self._routes[None] = route
        lib.bs_evhttp_gen_stream(self._rec, 1 if stream_body else 0)

    @_guarded("EvHttp.set_cb")
    def set_cb(
        self, path: str, cb: PyRequestCallback | Any, arg: Any = None, *, stream_body: bool = False
    ) -> None:
        """The callback for requests whose path is exactly ``path`` (replaces an earlier one).

        ``path`` is a str; an ASCII ``bytes`` path names the same route as its str.
        ``stream_body=True``: the callback runs once the headers are in; see ``on_body``.
        """
        http = self._http("set_cb")
        key, cpath = _path_arg("EvHttp.set_cb", path)
        ccb, carg, is_c = _callback_args("EvHttp.set_cb", cb, arg)
        route = _make_route(self, "EvHttp.set_cb", cb, arg, ccb, carg, is_c, stream_body)
        if lib.bs_evhttp_route_stream(self._rec, cpath, 1 if stream_body else 0) != 0:
            raise MemoryError("EvHttp.set_cb: out of memory")
        if self._address is None or key in self._routes:  # never a host's callback
            lib.evhttp_del_cb(http, cpath)
        rc = lib.evhttp_set_cb(http, cpath, lib.bs_http_server_cb, route.crec)
        if rc != 0:
            if self._address is not None and key not in self._routes:
                raise ValueError(f"EvHttp.set_cb: the host has a callback for path {path!r}")
            self._routes.pop(key, None)  # its old callback is gone from libevent too
            raise MemoryError("EvHttp.set_cb: libevent refused the callback")
        self._routes[key] = route

    @_guarded("EvHttp.del_cb")
    def del_cb(self, path: str) -> None:
        """Remove the callback of ``path``; ValueError when there is none."""
        http = self._http("del_cb")
        key, cpath = _path_arg("EvHttp.del_cb", path)
        if self._address is not None and key not in self._routes:
            raise ValueError(f"EvHttp.del_cb: Python registered no callback for path {path!r}")
        if lib.evhttp_del_cb(http, cpath) != 0:
            raise ValueError(f"EvHttp.del_cb: no callback for path {path!r}")
        self._routes.pop(key, None)
        lib.bs_evhttp_route_stream(self._rec, cpath, -1)

    # -- limits

    @_guarded("EvHttp.set_max_body_size")
    def set_max_body_size(self, n: int) -> None:
        """Bodies larger than ``n`` bytes get 413 before any callback runs."""
        http = self._http("set_max_body_size")
        _check_int("EvHttp.set_max_body_size", "n", n, 0, 2**62)
        lib.evhttp_set_max_body_size(http, n)
        lib.bs_evhttp_set_max_body(self._rec, n)  # streamed bodies are counted in C

    @_guarded("EvHttp.set_max_headers_size")
    def set_max_headers_size(self, n: int) -> None:
        """A request head (request line to the empty line, line ends included) larger than
        ``n`` bytes gets 431 and a closed connection."""
        http = self._http("set_max_headers_size")
        _check_int("EvHttp.set_max_headers_size", "n", n, 0, 2**62)
        lib.evhttp_set_max_headers_size(http, n)
        lib.bs_evhttp_set_max_headers(self._rec, n)  # the framer counts as received

    @_guarded("EvHttp.set_strict_framing")
    def set_strict_framing(self, on: bool = True) -> None:
        """Whether new connections are framed by the package (RFC 9112, strictly) before
        libevent reads them: on by default for the servers the package makes, off for a
        host's evhttp (``EvHttp.from_address``) until its host turns it on. Off is an explicit
        opt-out: libevent 2.1's own reader then takes chunk sizes, NULs in header values and
        bare-LF line ends that a proxy in front may read another way (only the smuggling check
        on the parsed headers stays). ``stream_body`` routes frame their connections anyway."""
        self._http("set_strict_framing")
        if not isinstance(on, bool):
            raise TypeError(f"EvHttp.set_strict_framing: on must be a bool, not {_type_name(on)}")
        lib.bs_evhttp_strict(self._rec, 1 if on else 0)

    @_guarded("EvHttp.set_timeout")
    def set_timeout(self, seconds: float) -> None:
        """Close connections idle (or stuck mid-request) for ``seconds``."""
        self._http("set_timeout")
        value = _seconds("EvHttp.set_timeout", "seconds", seconds, zero=False)
        lib.bs_evhttp_set_timeout(self._rec, value)

    @_guarded("EvHttp.set_allowed_methods")
    def set_allowed_methods(self, *names: str) -> None:
        """The methods served (others get 501); libevent's default: GET POST HEAD PUT DELETE."""
        mask = 0
        for name in names:
            if not isinstance(name, str):
                raise TypeError(
                    f"EvHttp.set_allowed_methods: names must be str, not {_type_name(name)}"
                )
            bit = METHODS.get(name.upper())
            if bit is None:
                raise ValueError(
                    f"EvHttp.set_allowed_methods: unknown method {name!r} "
                    f"(known: {', '.join(METHODS)})"
                )
            mask |= bit
        lib.evhttp_set_allowed_methods(self._http("set_allowed_methods"), mask)


def _path_arg(where: str, path: object) -> tuple[str, bytes]:
    """A route's key (str) and its bytes for libevent: one route per path, whatever its type."""
    if isinstance(path, bytes):
        try:
            key = path.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"{where}: a bytes path must be ASCII, got {path!r}") from None
    elif isinstance(path, str):
        key = path
    else:
        raise TypeError(f"{where}: path must be str (or ASCII bytes), not {_type_name(path)}")
    return key, _text_arg(where, "path", key)


def _listening_tcp_port(where: str, fd: int) -> int:
    """The port of a bound, listening TCP socket; ValueError for anything else."""
    if fd < 0:
        raise ValueError(f"{where}: sock must be an open descriptor, got {fd}")
    try:
        dup = os.dup(fd)
    except OSError as exc:
        raise ValueError(f"{where}: sock must be an open descriptor ({exc.strerror})") from None
    try:
        s = socket.socket(fileno=dup)  # refuses what is not a socket: a pipe, a file
    except OSError as exc:
        os.close(dup)  # not adopted by a socket object: ours to close
        raise ValueError(f"{where}: sock must be a listening TCP socket ({exc.strerror})") from None
    try:
        ok = (
            s.family in (socket.AF_INET, socket.AF_INET6)
            and s.type == socket.SOCK_STREAM
            and s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        )
        if not ok:
            raise ValueError(f"{where}: sock must be a bound, listening TCP socket")
        return int(s.getsockname()[1])
    except OSError as exc:
        raise ValueError(f"{where}: sock must be a listening TCP socket ({exc.strerror})") from None
    finally:
        s.close()


def _sock_port(fd: int) -> int:
    """The local port of a socket, without taking ownership of ``fd``."""
    s = socket.socket(fileno=os.dup(fd))
    try:
        return int(s.getsockname()[1])
    finally:
        s.close()


def obtain_evhttp(base: EventBase) -> EvHttp:
    """An evhttp server on ``base`` (a dummy on a dummy base)."""
    return EvHttp(base)


def _log_callback_error(req: EvHttpRequest, exc: BaseException) -> None:
    http_log.error("request callback raised (request id=%d)", req._id, exc_info=exc)


@ffi.def_extern(onerror=lambda *a: http_log.error("request dispatch failed", exc_info=a))  # type: ignore[untyped-decorator]
def bs_py_http_request(rec: Any, handle: Any) -> int:
    """A request for a Python callback: wrap it, run the callback, keep it if not answered.

    Returns 1 when the callback raised; the C trampoline then answers 500 (or ends a started
    chunked reply) and drops Python's share of the record.
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
        return 1
    http._running -= 1
    if req._rec is None:
        return 0
    if http._rec is None and rec.req != _NULL:
        # The callback closed its own server: nobody is left to answer later.
        if rec.state in _REPLYABLE:
            lib.bs_http_send_error(rec, 503, _NULL)
            req._released()
        else:
            req.close()
        return 0
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


@ffi.def_extern(onerror=lambda *a: http_log.error("on_sent dispatch failed", exc_info=a))  # type: ignore[untyped-decorator]
def bs_py_http_sent(handle: Any, drained: int, gone: int) -> int:
    """Reply bytes were written, or the connection closed: run the callbacks that are due."""
    q: _SentQueue = _from_handle(handle)
    return q.run(int(drained), bool(gone))


@ffi.def_extern(onerror=lambda *a: http_log.error("on_body dispatch failed", exc_info=a))  # type: ignore[untyped-decorator]
def bs_py_http_body(handle: Any, data: Any, n: int, status: int) -> None:
    """A piece of a streamed body, or its end, refusal or loss."""
    sink: _BodySink = _from_handle(handle)
    sink.deliver(data, int(n), int(status))
