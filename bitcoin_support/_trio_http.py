"""trio's evhttp helpers: :func:`serve_http` with a task per request, :func:`send_chunk`,
:func:`iter_body`. Public through :mod:`bitcoin_support.trio_guest`, which checks first that the
[trio] extra is installed."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import outcome
import trio

from ._args import type_name as _type_name
from ._errors import ClosedError
from ._request import EvHttpRequest
from ._server import EvHttp
from ._serving import BodyPieces, run_handler, unavailable

__all__ = ["iter_body", "send_chunk", "serve_http"]


async def serve_http(
    evhttp: EvHttp,
    handler: Callable[[EvHttpRequest], Awaitable[Any]],
    *,
    stream_body: bool = False,
) -> None:
    """Serve ``evhttp`` until cancelled, running ``await handler(req)`` as a trio task per request.

    The handler replies itself, or returns a bytes-like object (or SerializeData) that is sent
    as 200 with that body. An exception in the handler is logged at ERROR on
    ``bitcoin_support.http`` and answered with 500; a handler that returns ``None`` without
    replying also gets 500. When the client disconnects before the reply, the handler's task is
    cancelled (the request is closed by then; nothing is sent). When ``serve_http`` itself is
    cancelled, the handlers still running are cancelled and their clients get 503; requests
    arriving afterwards get 503 too, until another callback is set.

    ``evhttp`` must be on the base trio runs on. Installs the server's generic callback for its
    duration; paths set with ``set_cb`` keep their own callbacks. With ``stream_body=True`` the
    handler starts once a request's headers are in and reads its body with :func:`iter_body`.
    """
    if not isinstance(evhttp, EvHttp):
        raise TypeError(f"serve_http: evhttp must be an EvHttp, not {_type_name(evhttp)}")
    if not callable(handler):
        raise TypeError(f"serve_http: handler must be callable, not {_type_name(handler)}")
    token = trio.lowlevel.current_trio_token()
    trio_thread = threading.get_ident()
    async with trio.open_nursery() as nursery:

        def on_request(req: EvHttpRequest, _arg: object) -> None:
            # A libevent callback, between trio ticks on trio's thread: starting a task from here
            # is allowed in guest mode. Returning without a reply defers the request; the evhttp
            # layer holds it until the task answers it or the connection closes.
            if threading.get_ident() == trio_thread:
                nursery.start_soon(_serve_one, req, handler)
            else:  # an evhttp on another thread's base: hand over through trio's token
                token.run_sync_soon(nursery.start_soon, _serve_one, req, handler)

        evhttp.set_gencb(on_request, stream_body=stream_body)
        try:
            await trio.sleep_forever()
        finally:
            # Requests from now on find no nursery: answer them 503 until someone else serves.
            try:
                evhttp.set_gencb(unavailable)
            except ClosedError:
                pass


async def _serve_one(
    req: EvHttpRequest, handler: Callable[[EvHttpRequest], Awaitable[Any]]
) -> None:
    """A request's task: run the handler, send what it returned; cancelled if the client leaves."""
    with trio.CancelScope() as gone_scope:  # cancelled when the client leaves first
        await run_handler(req, handler, gone_scope.cancel)


async def send_chunk(req: EvHttpRequest, data: Any, high_water: int = 65536) -> None:
    """Queue ``data`` as a chunk of ``req``'s started reply and return once fewer than
    ``high_water`` reply bytes are queued on the connection (``req.output_buffered``).

    So a producer awaiting it holds about ``high_water`` bytes in memory whatever the client's
    speed. Raises ClosedError if the connection closes while waiting; cancellable (the chunk
    stays queued).
    """
    if isinstance(high_water, bool) or not isinstance(high_water, int) or high_water < 1:
        raise ValueError(f"send_chunk: high_water must be a positive int, got {high_water!r}")
    await trio.lowlevel.checkpoint_if_cancelled()
    req.send_reply_chunk(data)
    task = trio.lowlevel.current_task()
    waiting = True

    def ready(gone: bool) -> None:
        # Runs in the loop, between trio ticks on trio's thread (see wait_event).
        nonlocal waiting
        if waiting:
            waiting = False
            trio.lowlevel.reschedule(task, outcome.Value(gone))

    if not req._when_below(high_water, ready):
        await trio.lowlevel.cancel_shielded_checkpoint()
        return

    def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
        nonlocal waiting
        waiting = False  # the waiter stays armed in C and runs as a no-op
        return trio.lowlevel.Abort.SUCCEEDED

    gone: bool = await trio.lowlevel.wait_task_rescheduled(abort)
    if gone:
        raise ClosedError("send_chunk: the connection closed before the reply was written")


async def iter_body(req: EvHttpRequest) -> AsyncIterator[bytes]:
    """The pieces of a ``stream_body`` request's body, as they are read (no empty piece).

    Ends at the body's end; raises ClosedError if the body is refused (over the server's body
    limit: the client got 413) or the connection closes first. While the consumer is behind,
    reading pauses (the client's sending stalls) instead of the pieces piling up.
    """
    task: trio.lowlevel.Task | None = None

    def wake() -> None:
        nonlocal task
        if task is not None:
            t, task = task, None
            trio.lowlevel.reschedule(t)

    def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
        nonlocal task
        task = None
        return trio.lowlevel.Abort.SUCCEEDED

    pieces = BodyPieces(req, wake)
    while True:
        chunk = pieces.take()
        if chunk is None:
            task = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(abort)
        elif chunk:
            yield chunk
        else:
            return
