"""aio.send_chunk and aio.iter_body (SPEC section 4): streaming from asyncio tasks."""

from __future__ import annotations

import asyncio

import pytest

from bitcoin_support import ClosedError, EvHttpRequest, aio, obtain_evhttp

KiB = 1024


def test_send_chunk_keeps_the_queue_under_high_water() -> None:
    after: list[int] = []
    chunk = b"s" * (64 * KiB)
    total = 8 << 20

    async def handler(req: EvHttpRequest) -> None:
        req.send_reply_start(200)
        for _ in range(total // len(chunk)):
            await aio.send_chunk(req, chunk, high_water=256 * KiB)
            after.append(req.output_buffered)
        req.send_reply_end()

    async def main() -> int:
        http = obtain_evhttp(asyncio.get_running_loop().base)  # type: ignore[attr-defined]
        port = http.bind("127.0.0.1", 0)
        server = asyncio.ensure_future(aio.serve_http(http, handler))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        got = 0
        async with asyncio.timeout(30):
            while data := await reader.read(16 * KiB):
                got += len(data)
                await asyncio.sleep(0)  # a slow reader
        writer.close()
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server
        http.close()
        return got

    got = aio.run(main())
    assert got > total and len(after) == total // len(chunk)
    assert max(after) < 256 * KiB
    assert EvHttpRequest.live() == 0


def test_send_chunk_raises_when_the_client_leaves() -> None:
    ended: list[str] = []

    async def handler(req: EvHttpRequest) -> None:
        req.send_reply_start(200)
        try:
            while True:
                await aio.send_chunk(req, b"x" * (256 * KiB), high_water=64 * KiB)
        except (ClosedError, asyncio.CancelledError) as exc:
            ended.append(type(exc).__name__)
            raise

    async def main() -> None:
        http = obtain_evhttp(asyncio.get_running_loop().base)  # type: ignore[attr-defined]
        port = http.bind("127.0.0.1", 0)
        server = asyncio.ensure_future(aio.serve_http(http, handler))
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.sleep(0.3)  # never read: the queue fills, the producer waits
        writer.transport.abort()
        async with asyncio.timeout(10):
            while not ended:
                await asyncio.sleep(0.01)
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server
        http.close()

    aio.run(main())
    assert ended in (["ClosedError"], ["CancelledError"])


def test_send_chunk_arguments() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="high_water"):
            await aio.send_chunk(None, b"x", high_water=0)  # type: ignore[arg-type]

    aio.run(main())


def test_iter_body_reads_a_body_sent_in_pauses() -> None:
    pieces: list[bytes] = []

    async def handler(req: EvHttpRequest) -> bytes:
        async for piece in aio.iter_body(req):
            pieces.append(piece)
        return b"%d" % sum(map(len, pieces))

    async def main() -> bytes:
        http = obtain_evhttp(asyncio.get_running_loop().base)  # type: ignore[attr-defined]
        port = http.bind("127.0.0.1", 0)
        server = asyncio.ensure_future(aio.serve_http(http, handler, stream_body=True))
        await asyncio.sleep(0.01)  # serving (its routes set) before the client connects
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        for i in range(5):
            writer.write(b"400\r\n" + bytes([65 + i]) * 1024 + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        async with asyncio.timeout(10):
            reply = await reader.read()
        writer.close()
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server
        http.close()
        return reply

    reply = aio.run(main())
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"5120")
    assert b"".join(pieces) == b"".join(bytes([65 + i]) * 1024 for i in range(5))
    assert len(pieces) >= 2  # read as it came, not whole


def test_iter_body_over_the_limit_raises() -> None:
    seen: list[str] = []

    async def handler(req: EvHttpRequest) -> bytes:
        try:
            async for _piece in aio.iter_body(req):
                pass
        except ClosedError as exc:
            seen.append(str(exc))
            raise
        return b"unreachable"

    async def main() -> bytes:
        http = obtain_evhttp(asyncio.get_running_loop().base)  # type: ignore[attr-defined]
        http.set_max_body_size(4 * KiB)
        port = http.bind("127.0.0.1", 0)
        server = asyncio.ensure_future(aio.serve_http(http, handler, stream_body=True))
        await asyncio.sleep(0.01)  # serving (its routes set) before the client connects
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 65536\r\n\r\n")
        writer.write(b"z" * 65536)
        async with asyncio.timeout(10):
            reply = await reader.read()
        writer.close()
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server
        http.close()
        return reply

    reply = aio.run(main())
    assert reply.startswith(b"HTTP/1.1 413")
