"""trio_guest.send_chunk: a streamed reply from a trio task, with back-pressure."""

from __future__ import annotations

import functools

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


def test_iter_body_reads_a_body_sent_in_pauses(base: EventBase) -> None:
    http = obtain_evhttp(base)
    port = http.bind("127.0.0.1", 0)
    seen: list[bytes] = []

    async def handler(req: EvHttpRequest) -> bytes:
        async for piece in trio_guest.iter_body(req):
            seen.append(piece)
        return b"%d bytes" % sum(map(len, seen))

    async def main() -> bytes:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(trio_guest.serve_http, http, handler, stream_body=True)
            )
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(
                    b"POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                for i in range(5):
                    await stream.send_all(b"4\r\nab%02d\r\n" % i)
                    await trio.sleep(0.02)
                await stream.send_all(b"0\r\n\r\n")
                data = b""
                with trio.fail_after(10):
                    while chunk := await stream.receive_some():
                        data += chunk
            nursery.cancel_scope.cancel()
        return data

    data = trio_guest.run(base, main)
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"20 bytes")
    assert b"".join(seen) == b"ab00ab01ab02ab03ab04"
    assert len(seen) >= 3  # pieces as they came, not the whole body at the end
    http.close()


def test_iter_body_over_the_limit_raises(base: EventBase) -> None:
    http = obtain_evhttp(base)
    http.set_max_body_size(1000)
    port = http.bind("127.0.0.1", 0)
    errors: list[BaseException] = []

    async def handler(req: EvHttpRequest) -> bytes:
        try:
            async for _piece in trio_guest.iter_body(req):
                pass
        except (ClosedError, trio.Cancelled) as exc:  # serve_http cancels it: the request is gone
            errors.append(exc)
            raise
        return b"unreachable"

    async def main() -> bytes:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(trio_guest.serve_http, http, handler, stream_body=True)
            )
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(
                    b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + b"200\r\n"
                    + b"x" * 0x200
                    + b"\r\n"
                )
                await trio.sleep(0.05)
                await stream.send_all(b"400\r\n" + b"y" * 0x400 + b"\r\n")
                data = b""
                with trio.fail_after(10):
                    while chunk := await stream.receive_some():
                        data += chunk
            with trio.fail_after(10):
                while not errors:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        return data

    data = trio_guest.run(base, main)
    assert data.startswith(b"HTTP/1.1 413")
    assert errors and (isinstance(errors[0], trio.Cancelled) or "413" in str(errors[0]))
    assert EvHttpRequest.live() == 0
    http.close()


def test_iter_body_raises_when_refused_without_serve_http(base: EventBase) -> None:
    """Outside serve_http nothing cancels the reader: iter_body itself raises on 413."""
    http = obtain_evhttp(base)
    http.set_max_body_size(100)
    port = http.bind("127.0.0.1", 0)
    errors: list[str] = []

    async def main() -> None:
        async def read(req: EvHttpRequest) -> None:
            try:
                async for _piece in trio_guest.iter_body(req):
                    pass
            except ClosedError as exc:
                errors.append(str(exc))

        async with trio.open_nursery() as nursery:
            http.set_gencb(lambda req, _a: nursery.start_soon(read, req), stream_body=True)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(
                    b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + b"50\r\n"
                    + b"x" * 0x50
                    + b"\r\n"
                )
                await trio.sleep(0.05)
                await stream.send_all(b"50\r\n" + b"y" * 0x50 + b"\r\n")
                with trio.fail_after(10):
                    while not errors:
                        await trio.sleep(0.01)

    trio_guest.run(base, main)
    assert errors == ["iter_body: the request body was refused (413)"]
    http.close()
