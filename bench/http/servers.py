"""The Python competitors of the echo benchmark, each answering like the package's echo server.

    python bench/http/servers.py {aiohttp,uvloop,trio} PORT

Every server answers 200 with the request body and its Content-Type (default
application/octet-stream), prints ``listening on http://127.0.0.1:PORT/`` and stops on SIGTERM.
"""

from __future__ import annotations

import sys
from typing import Any

DEFAULT_CT = "application/octet-stream"


def run_aiohttp(port: int) -> None:
    """aiohttp's own server on asyncio (its default loop)."""
    from aiohttp import web

    async def echo(request: Any) -> Any:
        body = await request.read()
        ctype = request.headers.get("Content-Type", DEFAULT_CT)
        return web.Response(body=body, headers={"Content-Type": ctype})

    app = web.Application(client_max_size=1048576)
    app.router.add_route("*", "/{tail:.*}", echo)
    print(f"listening on http://127.0.0.1:{port}/", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def run_uvloop(port: int) -> None:
    """A bare asyncio Protocol on uvloop with httptools' parser (keep-alive, no pipelining)."""
    import asyncio

    import httptools
    import uvloop

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
            self.ctype = DEFAULT_CT.encode()
            self.body: list[bytes] = []

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_message_begin(self) -> None:
            self.ctype = DEFAULT_CT.encode()
            self.body = []

        def on_header(self, name: bytes, value: bytes) -> None:
            if name.lower() == b"content-type":
                self.ctype = value

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            body = b"".join(self.body)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
                self.ctype,
                len(body),
            )
            self.transport.write(head + body)
            if not self.parser.should_keep_alive():
                self.transport.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", port, backlog=1024)
        print(f"listening on http://127.0.0.1:{port}/", flush=True)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def run_trio(port: int) -> None:
    """trio.serve_tcp with h11, one task per connection."""
    import functools

    import h11
    import trio

    async def handle(stream: Any) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            try:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    ctype = dict(event.headers).get(b"content-type", DEFAULT_CT.encode())
                    chunks = []
                    while True:
                        ev = conn.next_event()
                        if ev is h11.NEED_DATA:
                            conn.receive_data(await stream.receive_some(65536))
                        elif isinstance(ev, h11.Data):
                            chunks.append(ev.data)
                        elif isinstance(ev, h11.EndOfMessage):
                            break
                    body = b"".join(chunks)
                    headers = [("Content-Type", ctype), ("Content-Length", str(len(body)))]
                    out = conn.send(h11.Response(status_code=200, headers=headers))
                    out += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
                    await stream.send_all(out)
                    if conn.our_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
                else:
                    return
            except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
                return

    async def main() -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1", backlog=1024)
        print(f"listening on http://127.0.0.1:{port}/", flush=True)
        await trio.serve_listeners(functools.partial(handle), listeners)

    trio.run(main)


if __name__ == "__main__":
    kind, port_text = sys.argv[1], sys.argv[2]
    {"aiohttp": run_aiohttp, "uvloop": run_uvloop, "trio": run_trio}[kind](int(port_text))
