"""What the ``serve_http`` and streaming helpers of trio (``_trio_http``) and asyncio
(``_aio_http``) share, apart from waiting and cancelling, which are each framework's: a request
task's run of the handler and its answer, and the queue of a streamed body's pieces."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final

from ._args import type_name as _type_name
from ._errors import ClosedError
from ._log import http_log
from ._native import lib
from ._request import EvHttpRequest

__all__ = ["BODY_HIGH", "DEFAULT_CONTENT_TYPE", "BodyPieces", "run_handler", "unavailable"]

# A streamed body's status (cdefs/http.h); a refusal is its HTTP code.
_BODY_PIECE: Final[int] = lib.BS_BODY_PIECE
_BODY_END: Final[int] = lib.BS_BODY_END
_BODY_LOST: Final[int] = lib.BS_BODY_LOST

# The Content-Type of a body a serve_http handler returns, unless the handler set one.
DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"


def unavailable(req: EvHttpRequest, _arg: object) -> None:
    """The generic callback once a ``serve_http`` is over: 503."""
    req.send_error(503)


def _answer_error(req: EvHttpRequest, code: int) -> None:
    """Answer ``code`` unless the request is already answered or its client gone."""
    if not req.closed:
        try:
            req.send_error(code)
        except (ClosedError, RuntimeError):
            pass  # the handler started a reply, or the connection closed meanwhile


def _answer_result(req: EvHttpRequest, result: Any) -> None:
    """Send what a handler returned: 200 with a bytes-like body (``DEFAULT_CONTENT_TYPE`` unless
    the handler set a Content-Type); 500 (logged) for ``None`` without a reply or a body that is
    not bytes-like. Nothing when the handler replied."""
    if req.closed:  # answered by the handler
        return
    if result is None:
        http_log.error("serve_http: handler returned None without replying (request id=%d)", req.id)
        _answer_error(req, 500)
        return
    # A handler that set its own Content-Type keeps it; otherwise bytes are just bytes (not
    # libevent's default, text/html in ISO-8859-1).
    ctype = None if "Content-Type" in req.output_headers else DEFAULT_CONTENT_TYPE
    try:
        req.send_reply(200, body=result, content_type=ctype)
    except (TypeError, ValueError) as exc:
        http_log.error(
            "serve_http: handler returned %s, not a bytes-like body (request id=%d)",
            _type_name(result),
            req.id,
            exc_info=exc,
        )
        _answer_error(req, 500)


def _handler_raised(req: EvHttpRequest, exc: BaseException) -> None:
    """A handler raised: log it at ERROR and answer 500."""
    http_log.error("serve_http: handler raised (request id=%d)", req.id, exc_info=exc)
    _answer_error(req, 500)


async def run_handler(
    req: EvHttpRequest,
    handler: Callable[[EvHttpRequest], Awaitable[Any]],
    on_gone: Callable[[], object],
) -> None:
    """A ``serve_http`` request task's body, after the framework's set-up: unless the client
    left already, ``await handler(req)`` with ``on_gone()`` hooked to the client leaving first
    (it cancels the task, the framework's way), then answer what the handler returned
    (:func:`_answer_result`).

    A handler's exception is logged and answered 500. A cancellation (``serve_http``
    cancelled, the client gone) or ``KeyboardInterrupt`` answers 503 if the request is still
    open, and propagates: what it means is the framework's."""
    if req.closed:  # the client left before the task started
        return
    # The evhttp layer calls on_gone when the connection closes before the reply is complete;
    # the request is closed by then, so the cancelled handler cannot answer it.
    req._on_gone(on_gone)
    try:
        result = await handler(req)
    except Exception as exc:
        _handler_raised(req, exc)
        return
    except BaseException:
        _answer_error(req, 503)  # serve_http cancelled (or KeyboardInterrupt): shutting down
        raise
    finally:
        req._on_gone(None)
    _answer_result(req, result)


BODY_HIGH: Final = 256 * 1024  # bytes of a streamed body held before its reading pauses


class BodyPieces:
    """The pieces of a ``stream_body`` request's body, for an ``iter_body`` helper: kept in
    order, the reading paused while more than ``BODY_HIGH`` bytes wait; ``wake()`` (the
    framework's) runs whenever there is something new to take."""

    __slots__ = ("held", "pieces", "sink", "status", "wake")

    def __init__(self, req: EvHttpRequest, wake: Callable[[], object]) -> None:
        self.pieces: deque[bytes] = deque()
        self.held = 0
        self.status = _BODY_PIECE  # reading; _BODY_END, a refusal's HTTP code, or _BODY_LOST
        self.wake = wake
        self.sink = req._stream_body(self._piece, self._failed)

    def _piece(self, _req: EvHttpRequest, chunk: bytes) -> None:
        if chunk:
            self.pieces.append(chunk)
            self.held += len(chunk)
            if self.held >= BODY_HIGH:
                self.sink.pause(True)
        else:
            self.status = _BODY_END
        self.wake()

    def _failed(self, code: int) -> None:
        self.status = code
        self.wake()

    def take(self) -> bytes | None:
        """The next piece, ``b""`` at the body's end, None when nothing is ready yet; raises
        ClosedError when the body was refused or cut short."""
        if self.pieces:
            chunk = self.pieces.popleft()
            self.held -= len(chunk)
            if self.held < BODY_HIGH // 4:
                self.sink.pause(False)
            return chunk
        if self.status == _BODY_END:
            return b""
        if self.status != _BODY_PIECE:
            code = self.status
            what = "cut short" if code == _BODY_LOST else f"refused ({code})"
            raise ClosedError(f"iter_body: the request body was {what}")
        return None
