"""asyncio and libevent on one loop: asyncio streams, an evhttp server and a libevent timer.

    python examples/aio_on_libevent.py [--seconds 2] [--attached]

On one EventBase and one thread:
- an evhttp server (libevent parses HTTP) whose requests are served by asyncio tasks through
  ``aio.serve_http`` (a handler may await anything asyncio offers);
- an asyncio streams server (``asyncio.start_server``) echoing lines;
- asyncio clients talking to both over 127.0.0.1;
- a plain libevent timer counting ticks.
By default the asyncio loop runs the base (``aio.run``-style); with ``--attached`` the base is
dispatched by ``base.loop()``, as a C host would, and asyncio runs inside it (``aio.attach``).
Stops after ``--seconds`` or on Ctrl-C and prints what each part did.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from bitcoin_support import (
    EV_PERSIST,
    EVLOOP_NO_EXIT_ON_EMPTY,
    EventBase,
    EvHttpRequest,
    LibEvent,
    aio,
    obtain_event,
    obtain_event_base,
    obtain_evhttp,
)


async def handler(req: EvHttpRequest) -> bytes:
    """An asyncio task per evhttp request; the returned bytes are sent as 200."""
    await asyncio.sleep(0.001)
    return b"asyncio on evhttp: " + req.body


async def line_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        writer.write(b"echo " + line)
        await writer.drain()
    writer.close()


async def http_post(port: int, body: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    return response.partition(b"\r\n\r\n")[2]


async def main(base: EventBase, seconds: float, counts: dict[str, int]) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGINT, lambda: stop.done() or stop.set_result("SIGINT"))
    loop.call_later(seconds, lambda: stop.done() or stop.set_result("time"))

    http = obtain_evhttp(base)
    http_port = http.bind("127.0.0.1", 0)
    serving = asyncio.ensure_future(aio.serve_http(http, handler))
    streams = await asyncio.start_server(line_echo, "127.0.0.1", 0)
    stream_port = streams.sockets[0].getsockname()[1]
    print(f"evhttp on 127.0.0.1:{http_port}, asyncio streams on 127.0.0.1:{stream_port}")

    async def clients() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", stream_port)
        n = 0
        while True:
            body = await http_post(http_port, b"request %d" % n)
            assert body == b"asyncio on evhttp: request %d" % n, body
            counts["evhttp replies"] += 1
            writer.write(b"line %d\n" % n)
            assert await reader.readline() == b"echo line %d\n" % n
            counts["stream echoes"] += 1
            n += 1

    client = asyncio.ensure_future(clients())
    why = await stop
    for task in (client, serving):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    streams.close()
    await streams.wait_closed()
    http.close()
    loop.remove_signal_handler(signal.SIGINT)
    print(f"stopped by {why}")


def run(seconds: float, attached: bool) -> dict[str, int]:
    counts = {"evhttp replies": 0, "stream echoes": 0, "libevent ticks": 0}
    base = obtain_event_base()

    def tick(_ev: LibEvent, _arg: object) -> None:
        counts["libevent ticks"] += 1

    timer = obtain_event(base, -1, EV_PERSIST, tick)
    timer.add(0.05)
    try:
        if attached:
            # The base is run by someone else (here base.loop(), in a C host its own
            # event_base_dispatch); asyncio runs inside that dispatch.
            loop = aio.attach(base)
            task = loop.create_task(main(base, seconds, counts))
            task.add_done_callback(lambda _t: base.loopbreak())
            base.loop(EVLOOP_NO_EXIT_ON_EMPTY)
            task.result()
            loop.close()
        else:
            loop = aio.new_event_loop(base)
            try:
                loop.run_until_complete(main(base, seconds, counts))
            finally:
                loop.close()
    finally:
        timer.close()
        base.close()
    return counts


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--attached", action="store_true")
    args = ap.parse_args()
    for name, value in run(args.seconds, args.attached).items():
        print(f"{name}: {value}")
