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

import signal
import sys
from typing import Any

import bitcoin_support as bs
from bitcoin_support import echo

PROG = "http_echo_server.py"


def handle(req: bs.EvHttpRequest, arg: Any) -> None:
    """Echo the body back; libevent already answered 413 to anything over the body limit."""
    req.send_reply(
        200,
        body=req.body,
        content_type=req.input_headers.get("Content-Type", "application/octet-stream"),
    )


def serve_here(host: str, port: int, max_body: int) -> int:
    """One worker, right here: the server made with the public API, until Ctrl-C or SIGTERM."""
    base = bs.obtain_event_base(epoll_changelist=True)
    http = bs.obtain_evhttp(base)
    with base, http:
        http.set_max_body_size(max_body)
        http.set_gencb(handle)

        def stop(signum: int, frame: object) -> None:
            http.stop_accepting()  # no new connections; replies already queued still go out
            base.loopexit(0.25)

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        bound = http.bind(host, port)
        print(f"listening on http://{host}:{bound}/", flush=True)  # a stop signal is handled now
        base.dispatch()
    return 0


def main() -> int:
    # The package's own option checks: a bad value is one line on stderr and exit status 2.
    args = echo.parse_args(prog=PROG, description=__doc__.splitlines()[0])
    try:
        if args.workers != 1:
            return echo.serve(args.host, args.port, args.workers, args.max_body)
        return serve_here(args.host, args.port, args.max_body)
    except OSError as exc:  # address in use, not an address of this machine, ...
        print(echo.listen_error(PROG, args.host, args.port, exc), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
