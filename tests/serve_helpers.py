"""Helpers of the ``serve_http`` tests that run on both frameworks: one driver for asyncio
(``aio``) and one for trio (``trio_guest``), so a test is written once and parametrized.

A driver runs ``serve_http`` on a base and a blocking client in a worker thread (the client
talks to 127.0.0.1 with bounded waits); the handler uses the driver's ``sleep`` and catches
its ``cancelled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from bitcoin_support import EventBase, EvHttp, EvHttpRequest, aio, trio_guest

Handler = Callable[[EvHttpRequest], Awaitable[Any]]
#: A test's client: ``client(port, fw)``, run in a worker thread; its result is ``serve``'s.
Client = Callable[[int, "Serving"], Any]
WAIT = 10.0  # seconds any one wait of a client may take


class Serving:
    """What a client may do to the running ``serve_http``, from its thread."""

    def __init__(self, call: Callable[[Callable[[], object]], None]) -> None:
        self._call = call
        self.stopped = threading.Event()

    def call(self, fn: Callable[[], object]) -> None:
        """Run ``fn()`` on the loop's thread (inside the framework's run) and wait for it."""
        done = threading.Event()
        box: list[BaseException] = []

        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                box.append(exc)
            finally:
                done.set()

        self._call(run)
        assert done.wait(WAIT), "the loop did not run the call"
        if box:
            raise box[0]

    def stop(self) -> None:
        """Cancel ``serve_http`` and wait until it has ended (its handlers cancelled)."""
        self._call(self._cancel)
        assert self.stopped.wait(WAIT), "serve_http did not end"

    _cancel: Callable[[], object]


class Framework:
    """One framework's ``serve_http`` and streaming helpers, and how to run them."""

    name: str
    cancelled: type[BaseException]
    serve_http: Callable[..., Awaitable[None]]
    send_chunk: Callable[..., Awaitable[None]]
    iter_body: Callable[[EvHttpRequest], Any]

    async def sleep(self, seconds: float) -> None:
        raise NotImplementedError

    def run(self, base: EventBase, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``await fn()`` under the framework on ``base``; return its result."""
        raise NotImplementedError

    def serve(
        self, base: EventBase, http: EvHttp, port: int, handler: Handler, client: Client, **kw: Any
    ) -> Any:
        """Run ``serve_http(http, handler, **kw)`` on ``base`` and ``client(port, serving)`` in a
        worker thread; stop serving when the client returns; return the client's result."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class Aio(Framework):
    name = "aio"
    cancelled = asyncio.CancelledError
    serve_http = staticmethod(aio.serve_http)
    send_chunk = staticmethod(aio.send_chunk)
    iter_body = staticmethod(aio.iter_body)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def run(self, base: EventBase, fn: Callable[[], Awaitable[Any]]) -> Any:
        loop = aio.EventLoop(base)
        try:
            return loop.run_until_complete(fn())
        finally:
            loop.close()

    def serve(
        self, base: EventBase, http: EvHttp, port: int, handler: Handler, client: Client, **kw: Any
    ) -> Any:
        loop = aio.EventLoop(base)

        async def main() -> Any:
            server = asyncio.ensure_future(aio.serve_http(http, handler, **kw))
            await asyncio.sleep(0)  # serve_http ran to its first wait: its callback is set
            serving = Serving(loop.call_soon_threadsafe)
            serving._cancel = server.cancel
            server.add_done_callback(lambda _f: serving.stopped.set())
            try:
                run = functools.partial(client, port, serving)
                return await asyncio.wait_for(loop.run_in_executor(None, run), 60)
            finally:
                server.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await server

        try:
            return loop.run_until_complete(main())
        finally:
            loop.close()


class Trio(Framework):
    name = "trio"
    cancelled = trio.Cancelled
    serve_http = staticmethod(trio_guest.serve_http)
    send_chunk = staticmethod(trio_guest.send_chunk)
    iter_body = staticmethod(trio_guest.iter_body)

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    def run(self, base: EventBase, fn: Callable[[], Awaitable[Any]]) -> Any:
        return trio_guest.run(base, fn)

    def serve(
        self, base: EventBase, http: EvHttp, port: int, handler: Handler, client: Client, **kw: Any
    ) -> Any:
        async def main() -> Any:
            token = trio.lowlevel.current_trio_token()
            serving = Serving(token.run_sync_soon)
            scope = trio.CancelScope()
            serving._cancel = scope.cancel

            ready = trio.Event()

            async def serve() -> None:
                try:
                    with scope:
                        # serve_http sets its callback before its first checkpoint, so before
                        # the waiting task runs again.
                        ready.set()
                        await trio_guest.serve_http(http, handler, **kw)
                finally:
                    serving.stopped.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                await ready.wait()
                with trio.fail_after(60):
                    out = await trio.to_thread.run_sync(client, port, serving)
                nursery.cancel_scope.cancel()
            return out

        return trio_guest.run(base, main)


FRAMEWORKS = [Aio(), Trio()]
#: ``@frameworks`` runs a test once per framework, as its ``fw`` argument.
frameworks = pytest.mark.parametrize("fw", FRAMEWORKS, ids=[f.name for f in FRAMEWORKS])
