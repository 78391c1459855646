"""trio_guest.send_chunk: a streamed reply from a trio task, with back-pressure."""

from __future__ import annotations

import pytest
import trio

from bitcoin_support import (
    ClosedError,
    EventBase,
    EvHttpRequest,
    obtain_evhttp,
    trio_guest,
)

KiB = 1024


def test_send_chunk_keeps_the_queue_under_high_water(base: EventBase) -> None:
    http = obtain_evhttp(base)
    port = http.bind("127.0.0.1", 0)
    after: list[int] = []
    chunk = b"s" * (64 * KiB)
    total = 8 << 20

    async def handler(req: EvHttpRequest) -> None:
        req.send_reply_start(200)
        for _ in range(total // len(chunk)):
            await trio_guest.send_chunk(req, chunk, high_water=256 * KiB)
            after.append(req.output_buffered)
        req.send_reply_end()

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio_guest.serve_http, http, handler)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            got = 0
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                with trio.fail_after(30):
                    while data := await stream.receive_some(16 * KiB):
                        got += len(data)
                        await trio.sleep(0)  # a slow reader: one receive per loop round
            nursery.cancel_scope.cancel()
        return got

    got = trio_guest.run(base, main)
    assert got > total
    assert len(after) == total // len(chunk)
    assert max(after) < 256 * KiB
    assert EvHttpRequest.live() == 0
    http.close()


def test_send_chunk_when_the_client_leaves(base: EventBase) -> None:
    http = obtain_evhttp(base)
    port = http.bind("127.0.0.1", 0)
    ended: list[str] = []

    async def handler(req: EvHttpRequest) -> None:
        req.send_reply_start(200)
        try:
            while True:
                await trio_guest.send_chunk(req, b"x" * (64 * KiB), high_water=64 * KiB)
        except ClosedError:
            ended.append("closed")
        except trio.Cancelled:
            ended.append("cancelled")
            raise

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio_guest.serve_http, http, handler)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            await stream.receive_some(1000)
            await stream.aclose()
            with trio.fail_after(10):
                while not ended:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    trio_guest.run(base, main)
    assert ended in (["closed"], ["cancelled"])
    assert EvHttpRequest.live() == 0
    http.close()


def test_send_chunk_arguments(base: EventBase) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="high_water"):
            await trio_guest.send_chunk(None, b"x", high_water=0)  # type: ignore[arg-type]

    trio_guest.run(base, main)
