#!/usr/bin/env python3
"""HTTP echo server on libevent's evhttp, with the request handling in a Python callback.

    python examples/http_echo_server.py [--host 127.0.0.1] [--port 8080] [--workers 1]
                                        [--max-body 1048576]

Same behaviour as ``python -m bitcoin_support.echo``: 200 with the request's body and
Content-Type (default application/octet-stream), 413 over --max-body, prints
``listening on http://HOST:PORT/``, stops cleanly on Ctrl-C or SIGTERM. One worker is served
right here with the public API; ``--workers N`` uses the package's SO_REUSEPORT supervisor.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

import bitcoin_support as bs
from bitcoin_support import echo


def handle(req: bs.EvHttpRequest, arg: Any) -> None:
    """Echo the body back; libevent already answered 413 to anything over the body limit."""
    req.send_reply(
        200,
        body=req.body,
        content_type=req.input_headers.get("Content-Type", "application/octet-stream"),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-body", type=int, default=1048576)
    args = parser.parse_args()
    if args.workers != 1:
        return echo.serve(args.host, args.port, args.workers, args.max_body)

    base = bs.obtain_event_base(epoll_changelist=True)
    http = bs.obtain_evhttp(base)
    http.set_max_body_size(args.max_body)
    http.set_gencb(handle)
    port = http.bind(args.host, args.port)
    print(f"listening on http://{args.host}:{port}/", flush=True)

    def stop(signum: int, frame: object) -> None:
        http.stop_accepting()  # no new connections; replies already queued still go out
        base.loopexit(0.25)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    with base, http:
        base.dispatch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
