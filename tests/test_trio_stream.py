"""trio_guest.iter_body outside serve_http. What both frameworks share (send_chunk, iter_body
under serve_http) is tested once for both in test_serve_http.py."""

from __future__ import annotations

import trio

from bitcoin_support import (
    ClosedError,
    EventBase,
    EvHttpRequest,
    obtain_evhttp,
    trio_guest,
)


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
