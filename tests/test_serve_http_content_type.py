"""What a ``serve_http`` handler's returned bytes are labelled with, under asyncio and trio:
``application/octet-stream`` by default (not libevent's ``text/html; charset=ISO-8859-1``), the
handler's own Content-Type when it set one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from http_helpers import request

from bitcoin_support import EventBase, EvHttpRequest, aio, obtain_evhttp, trio_guest

PATHS = ("/plain", "/own", "/bytearray")


async def handler(req: EvHttpRequest) -> bytes | bytearray:
    if req.path == "/own":
        req.output_headers["Content-Type"] = "application/json"
        return b"{}"
    if req.path == "/bytearray":
        return bytearray(b"raw")
    return b"plain bytes"


def fetch_all(port: int) -> list[tuple[int, str, bytes]]:
    out = []
    for path in PATHS:
        status, headers, body = request(port, "GET", path)
        out.append((status, headers.get("content-type", ""), body))
    return out


def run_aio(base: EventBase, fn: Callable[[EvHttpRequest], Awaitable[Any]]) -> list[Any]:
    http = obtain_evhttp(base)
    port = http.bind("127.0.0.1", 0)
    loop = aio.EventLoop(base)

    async def main() -> list[Any]:
        server = asyncio.ensure_future(aio.serve_http(http, fn))
        try:
            return await asyncio.wait_for(loop.run_in_executor(None, fetch_all, port), 30)
        finally:
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server

    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()
        http.close()


def run_trio(base: EventBase, fn: Callable[[EvHttpRequest], Awaitable[Any]]) -> list[Any]:
    http = obtain_evhttp(base)
    port = http.bind("127.0.0.1", 0)

    async def main() -> list[Any]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio_guest.serve_http, http, fn)
            with trio.fail_after(30):
                out = await trio.to_thread.run_sync(fetch_all, port)
            nursery.cancel_scope.cancel()
        return out

    try:
        return trio_guest.run(base, main)
    finally:
        http.close()


@pytest.mark.parametrize("run", [run_aio, run_trio], ids=["aio", "trio"])
def test_returned_bytes_are_octet_stream_unless_the_handler_says(
    base: EventBase, run: Callable[[EventBase, Any], list[Any]]
) -> None:
    plain, own, raw = run(base, handler)
    assert plain == (200, "application/octet-stream", b"plain bytes")
    assert own == (200, "application/json", b"{}")
    assert raw == (200, "application/octet-stream", b"raw")
