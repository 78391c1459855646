"""asyncio's evhttp helpers: :func:`serve_http` with a task per request, :func:`send_chunk`,
:func:`iter_body`. Public through :mod:`bitcoin_support.aio`; the asyncio twins of
``trio_guest``'s."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

from ._args import type_name as _type_name
from ._errors import ClosedError
from ._request import EvHttpRequest
from ._server import EvHttp
from ._serving import BodyPieces, run_handler, unavailable

__all__ = ["iter_body", "send_chunk", "serve_http"]

_get_ident: Final = threading.get_ident


async def serve_http(
    evhttp: EvHttp,
    handler: Callable[[EvHttpRequest], Awaitable[Any]],
    *,
    stream_body: bool = False,
) -> None:
    """Serve ``evhttp`` until cancelled, running ``await handler(req)`` as a task per request.

    The semantics of ``trio_guest.serve_http``: the handler replies itself, or returns a
    bytes-like object (or SerializeData) sent as 200; an exception is logged at ERROR on
    ``bitcoin_support.http`` and answered with 500, as is ``None`` without a reply. When the
    client disconnects before the reply, the handler's task is cancelled. When ``serve_http`` is
    cancelled, the handlers still running are cancelled and their clients get 503; so do
    requests arriving afterwards, until another callback is set.

    ``evhttp`` must be on the loop's base (or on a base whose dispatching thread may hand over
    through ``call_soon_threadsafe``). Installs the generic callback for its duration; with
    ``stream_body=True`` the handler starts when the headers are in and reads the body with
    :func:`iter_body`.
    """
    if not isinstance(evhttp, EvHttp):
        raise TypeError(f"serve_http: evhttp must be an EvHttp, not {_type_name(evhttp)}")
    if not callable(handler):
        raise TypeError(f"serve_http: handler must be callable, not {_type_name(handler)}")
    loop = asyncio.get_running_loop()
    loop_thread = _get_ident()
    tasks: set[asyncio.Task[None]] = set()

    def start(req: EvHttpRequest) -> None:
        task = loop.create_task(_serve_one(req, handler))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def on_request(req: EvHttpRequest, _arg: object) -> None:
        # A libevent callback of the server's base. Returning without a reply defers the
        # request; the evhttp layer holds it until the task answers or the connection closes.
        if _get_ident() == loop_thread:
            start(req)
        else:
            loop.call_soon_threadsafe(start, req)

    evhttp.set_gencb(on_request, stream_body=stream_body)
    try:
        await loop.create_future()
    finally:
        try:
            evhttp.set_gencb(unavailable)
        except ClosedError:
            pass
        running = list(tasks)
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)


async def _serve_one(
    req: EvHttpRequest, handler: Callable[[EvHttpRequest], Awaitable[Any]]
) -> None:
    """A request's task: run the handler, send what it returned; cancelled if the client leaves."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    def on_gone() -> None:
        nonlocal gone
        gone = True
        task.cancel()

    try:
        await run_handler(req, handler, on_gone)
    except asyncio.CancelledError:
        if gone:
            return  # the client left (the request is closed): the task just ends
        raise


# -- streaming (SPEC section 4): the asyncio twins of trio_guest.send_chunk and iter_body


async def send_chunk(req: EvHttpRequest, data: Any, high_water: int = 65536) -> None:
    """Queue ``data`` as a chunk of ``req``'s started reply and return once fewer than
    ``high_water`` reply bytes are queued on the connection (``req.output_buffered``).

    A producer awaiting it holds about ``high_water`` bytes whatever the client's speed. Raises
    ClosedError if the connection closes while waiting; cancellable (the chunk stays queued).
    """
    if isinstance(high_water, bool) or not isinstance(high_water, int) or high_water < 1:
        raise ValueError(f"send_chunk: high_water must be a positive int, got {high_water!r}")
    loop = asyncio.get_running_loop()
    req.send_reply_chunk(data)
    done: asyncio.Future[bool] = loop.create_future()

    def ready(gone: bool) -> None:  # runs in the libevent loop of the request's base
        def settle() -> None:
            if not done.done():
                done.set_result(gone)

        loop.call_soon_threadsafe(settle)  # from whichever thread dispatches the base

    if not req._when_below(high_water, ready):
        return
    if await done:
        raise ClosedError("send_chunk: the connection closed before the reply was written")


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def iter_body(req: EvHttpRequest) -> AsyncIterator[bytes]:
    """The pieces of a ``stream_body`` request's body, as they are read (no empty piece).

    Ends at the body's end; raises ClosedError if the body is refused (over the server's body
    limit: the client got 413) or the connection closes first. While the consumer is behind,
    reading pauses instead of the pieces piling up.
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] | None = None

    def wake() -> None:
        nonlocal waiter
        if waiter is not None:
            w, waiter = waiter, None
            loop.call_soon_threadsafe(_settle, w)  # from whichever thread dispatches the base

    pieces = BodyPieces(req, wake)
    while True:
        chunk = pieces.take()
        if chunk is None:
            waiter = loop.create_future()
            await waiter
        elif chunk:
            yield chunk
        else:
            return
