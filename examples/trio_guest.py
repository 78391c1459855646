"""trio and libevent on one loop: an evhttp server with trio handlers, a trio timer, a trio client.

    python examples/trio_guest.py [--port 0] [--seconds 2]

trio runs in guest mode on an EventBase (``bitcoin_support.trio_guest``). On that one thread:
- libevent's evhttp accepts connections and parses requests; ``serve_http`` runs each request's
  handler as a trio task (the handler can await anything trio offers, here a short sleep);
- a trio task ticks every 100 ms;
- a trio TCP client sends HTTP requests to the server over 127.0.0.1, through trio's own sockets.
A libevent timer on the same base counts too, to show both kinds of callbacks taking turns.
Stops after ``--seconds`` (or on Ctrl-C, exit status 0 all the same) and prints what each part
did. Ctrl-C is read with ``trio.open_signal_receiver`` and cancels the nursery, so every task
ends at a checkpoint rather than wherever a ``KeyboardInterrupt`` happens to land.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import trio

from bitcoin_support import (
    EV_PERSIST,
    EvHttpRequest,
    LibEvent,
    obtain_event,
    obtain_event_base,
    obtain_evhttp,
    trio_guest,
)


async def handler(req: EvHttpRequest) -> bytes:
    """Runs as a trio task per request; the returned bytes are sent as 200."""
    await trio.sleep(0.001)  # any trio code may run here
    return b"trio echo: " + req.body


async def ticker(counts: dict[str, int]) -> None:
    while True:
        await trio.sleep(0.1)
        counts["trio ticks"] += 1


async def client(port: int, counts: dict[str, int]) -> None:
    """A plain trio TCP client speaking HTTP/1.1 to the evhttp server on the same loop."""
    n = 0
    while True:
        body = b"message %d" % n
        request = (
            b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(request)
            response = b""
            while chunk := await stream.receive_some():
                response += chunk
        assert response.endswith(b"trio echo: " + body), response
        counts["client round trips"] += 1
        n += 1
        await trio.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be from 0 to 65535, got {args.port}")
    if not args.seconds > 0:
        parser.error(f"--seconds must be > 0, got {args.seconds}")

    counts = {"trio ticks": 0, "client round trips": 0, "libevent ticks": 0}
    stopped_by_ctrl_c = False
    try:
        with obtain_event_base() as base, obtain_evhttp(base) as http:
            try:
                port = http.bind("127.0.0.1", args.port)
            except OSError as exc:  # e.g. the port is taken: one line, not a traceback
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                print(
                    f"{parser.prog}: error: cannot listen on 127.0.0.1:{args.port}: {reason}",
                    file=sys.stderr,
                )
                return 1

            def libevent_tick(ev: LibEvent, arg: object) -> None:
                counts["libevent ticks"] += 1

            obtain_event(base, -1, EV_PERSIST, libevent_tick).add(0.1)

            async def everything() -> None:
                nonlocal stopped_by_ctrl_c
                with trio.open_signal_receiver(signal.SIGINT) as ctrl_c:
                    async with trio.open_nursery() as nursery:

                        async def stop_on_ctrl_c() -> None:
                            nonlocal stopped_by_ctrl_c
                            async for _ in ctrl_c:
                                stopped_by_ctrl_c = True
                                nursery.cancel_scope.cancel()
                                return

                        nursery.start_soon(stop_on_ctrl_c)
                        nursery.start_soon(trio_guest.serve_http, http, handler)
                        nursery.start_soon(ticker, counts)
                        nursery.start_soon(client, port, counts)
                        # Printed once Ctrl-C is trio's to read: from here it stops cleanly.
                        print(f"listening on http://127.0.0.1:{port}/", flush=True)
                        await trio.sleep(args.seconds)
                        nursery.cancel_scope.cancel()

            trio_guest.run(base, everything)
    except* KeyboardInterrupt:  # Ctrl-C before trio started reading it
        stopped_by_ctrl_c = True
    if stopped_by_ctrl_c:
        print("stopped by Ctrl-C", flush=True)
    for name, value in counts.items():
        print(f"{name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
