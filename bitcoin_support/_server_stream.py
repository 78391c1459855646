"""Streaming both ways for server requests: the ``on_sent`` callbacks of a chunked reply
(``_SentQueue``, bytes counted in ``cdefs/http_reply.c``) and the pieces of a streamed body
(``_BodySink``, from ``cdefs/http_body.c``), with their ``extern "Python"`` entry points."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, final

from ._errors import ClosedError
from ._event_base import _LoopState
from ._log import http_log
from ._native import ffi, lib
from ._request import EvHttpRequest

if TYPE_CHECKING:
    from ._server_request import _ServerRequest

# A streamed body's status (cdefs/http.h); a refusal is its HTTP code.
_BODY_PIECE: Final[int] = lib.BS_BODY_PIECE
_BODY_END: Final[int] = lib.BS_BODY_END
_from_handle = ffi.from_handle


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
        if rc == lib.BS_HTTP_CLOSED:
            raise ClosedError("EvHttpRequest.send_reply_chunk: the connection is gone")
        if rc == lib.BS_HTTP_ANSWERED:  # only a waiter (send_chunk) comes before a chunk
            raise RuntimeError("EvHttpRequest.send_chunk: no chunked reply is in progress")
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
