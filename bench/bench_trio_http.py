"""serve_http echo throughput: trio handlers on a libevent loop vs trio+h11 on trio's own loop.

    .venv/bin/python bench/bench_trio_http.py [--duration 5] [--repeats 3]

Same method as ``bench/http/run.py`` (whose helpers it uses): each server is pinned to CPU 0
with taskset, wrk runs on CPU 1 with ``-t1 -c50`` and a 64-byte POST, only 127.0.0.1 is used,
servers run in turn within each round (so a noisy neighbour hurts both alike), and every process
is bounded by timeouts and stopped by its PID. Reports the median req/s of each and the ratio
from the same run; the target is serve_http >= 3x trio+h11.

The serve_http server (``--serve PORT``) echoes the body from a trio task per request:
``async def handler(req): return req.body``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "http"))
import run as http_bench  # noqa: E402  (bench/http/run.py)

TARGET = 3.0


def serve(port: int) -> None:
    """The measured server: evhttp on an EventBase, serve_http with a trio echo handler."""

    from bitcoin_support import EvHttpRequest, obtain_event_base, obtain_evhttp, trio_guest

    async def handler(req: EvHttpRequest) -> bytes:
        return req.body

    with obtain_event_base() as base:
        http = obtain_evhttp(base)
        http.bind("127.0.0.1", port)
        print(f"listening on http://127.0.0.1:{port}/", flush=True)

        async def main() -> None:
            await trio_guest.serve_http(http, handler)

        try:
            trio_guest.run(base, main)
        except KeyboardInterrupt:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        import signal

        signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on Ctrl-C
        serve(args.serve)
        return

    py = sys.executable
    commands = {
        "serve_http": [py, str(Path(__file__).resolve()), "--serve", "{port}"],
        "trio+h11": [py, str(HERE / "http" / "servers.py"), "trio", "{port}"],
    }
    results: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory() as tmp:
        lua = Path(tmp) / "post.lua"
        lua.write_text(http_bench.POST_LUA)
        for round_no in range(args.repeats):
            for name, cmd in commands.items():
                port = http_bench.free_port()
                proc = http_bench.start(cmd, port)
                try:
                    rps, errors = http_bench.wrk(port, args.duration, lua)
                finally:
                    http_bench.stop(proc)
                if errors:
                    raise SystemExit(f"{name}: {errors} non-2xx responses")
                results[name].append(rps)
                print(f"round {round_no + 1} {name:>10}: {rps:10.0f} req/s", flush=True)
    medians = {name: statistics.median(v) for name, v in results.items()}
    ratio = medians["serve_http"] / medians["trio+h11"]
    print()
    for name, value in medians.items():
        print(f"{name:>10}: {value:10.0f} req/s (median of {args.repeats})")
    verdict = "meets" if ratio >= TARGET else "misses"
    print(f"serve_http / trio+h11 = {ratio:.2f}x ({verdict} the {TARGET:.0f}x target)")


if __name__ == "__main__":
    main()
