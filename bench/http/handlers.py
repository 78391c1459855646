"""The realistic-handler servers of the HTTP benchmark: every one runs the same handler.

    python bench/http/handlers.py KIND PORT

KIND: evhttp, aio, trio, httptools-asyncio, httptools-aio or httptools-uvloop.

The handler reads the request's ``Content-Type`` header, reads the whole body (a copy), sets
``Content-Type`` on the reply (application/octet-stream when the request has none) and answers
200 with the body: what a user's handler does, unlike the echo server's C shortcut
(``send_echo``). ``evhttp`` runs it as a callback on the package's evhttp (with the echo server's
base tuning), ``aio``/``trio`` as ``serve_http`` handlers, and the ``httptools-*`` rows as an
asyncio Protocol with httptools' parser on asyncio's loop, on ``bitcoin_support.aio``'s loop
and on uvloop. Each prints ``listening on http://127.0.0.1:PORT/`` and stops on SIGTERM.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

DEFAULT_CT = "application/octet-stream"


def run_evhttp(port: int) -> None:
    """The handler as a callback on the package's evhttp (the echo server's base tuning)."""
    from bitcoin_support import EvHttpRequest, obtain_event_base, obtain_evhttp

    def handler(req: EvHttpRequest, _arg: object) -> None:
        ctype = req.input_headers.get("Content-Type", DEFAULT_CT)
        body = req.body
        req.output_headers["Content-Type"] = ctype
        req.send_reply(200, body=body)

    with obtain_event_base(epoll_changelist=True) as base, obtain_evhttp(base) as http:
        http.set_max_body_size(1048576)
        http.set_gencb(handler)
        port = http.bind("127.0.0.1", port)  # the port bound, when 0 asked for any

        def stop(signum: int, frame: object) -> None:
            base.loopbreak()

        signal.signal(signal.SIGTERM, stop)
        print(f"listening on http://127.0.0.1:{port}/", flush=True)
        base.dispatch()


async def _async_handler(req: Any) -> None:
    """The same handler as a ``serve_http`` coroutine: it replies itself."""
    ctype = req.input_headers.get("Content-Type", DEFAULT_CT)
    body = req.body
    req.output_headers["Content-Type"] = ctype
    req.send_reply(200, body=body)


def run_aio(port: int) -> None:
    """The handler under ``aio.serve_http`` (a task per request) on an aio loop's base."""
    from bitcoin_support import aio, obtain_evhttp

    loop = aio.new_event_loop()
    http = obtain_evhttp(loop.base)
    http.set_max_body_size(1048576)
    http.bind("127.0.0.1", port)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"listening on http://127.0.0.1:{port}/", flush=True)
    try:
        loop.run_until_complete(aio.serve_http(http, _async_handler))
    except KeyboardInterrupt:
        pass
    finally:
        http.close()
        loop.close()


def run_trio(port: int) -> None:
    """The handler under ``trio_guest.serve_http`` (a trio task per request)."""
    import trio

    from bitcoin_support import obtain_event_base, obtain_evhttp, trio_guest

    with obtain_event_base() as base, obtain_evhttp(base) as http:
        http.set_max_body_size(1048576)
        http.bind("127.0.0.1", port)

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                with trio.open_signal_receiver(signal.SIGTERM) as signals:
                    nursery.start_soon(trio_guest.serve_http, http, _async_handler)
                    print(f"listening on http://127.0.0.1:{port}/", flush=True)
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        break

        trio_guest.run(base, main)


def run_httptools(loop_kind: str, port: int) -> None:
    """An asyncio Protocol with httptools' parser doing the same (keep-alive, no pipelining)."""
    import asyncio

    import httptools

    class Handler(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
            self.headers: dict[bytes, bytes] = {}
            self.body: list[bytes] = []

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_message_begin(self) -> None:
            self.headers = {}
            self.body = []

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers[name.lower()] = value

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            ctype = self.headers.get(b"content-type", DEFAULT_CT.encode())
            body = b"".join(self.body)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
                ctype,
                len(body),
            )
            self.transport.write(head + body)
            if not self.parser.should_keep_alive():
                self.transport.close()

    def new_loop() -> asyncio.AbstractEventLoop:
        if loop_kind == "uvloop":
            import uvloop

            return uvloop.new_event_loop()
        if loop_kind == "aio":
            from bitcoin_support import aio

            return aio.new_event_loop()
        return asyncio.SelectorEventLoop()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Handler, "127.0.0.1", port, backlog=1024)
        print(f"listening on http://127.0.0.1:{port}/", flush=True)
        async with server:
            await server.serve_forever()

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(main())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    kind, port_number = sys.argv[1], int(sys.argv[2])
    if kind.startswith("httptools-"):
        run_httptools(kind.removeprefix("httptools-"), port_number)
    else:
        {"evhttp": run_evhttp, "aio": run_aio, "trio": run_trio}[kind](port_number)
