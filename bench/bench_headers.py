"""Cost of reading and setting a request's headers, timed inside a request callback.

    .venv/bin/python bench/bench_headers.py [--n 20000] [--rounds 7] [--before DIR]

One in-process evhttp server on 127.0.0.1 gets one request per round (from a client thread);
its callback times ``--n`` calls of each operation (``req.input_headers``, ``.get`` of a header
that is there and of one that is not, ``[]``, ``in``, ``output_headers[...] = ...``) and of
two references: the bare cffi calls a C-speed lookup needs (``evhttp_find_header`` on the
request's headers, ``ffi.string``) and a ``dict.get`` on the decoded headers (what an
httptools Protocol does). Times are the thread's CPU time (``time.thread_time``), so a
shared machine slows the rows less than wall time would. The empty loop's cost is subtracted;
the table gives the median ns/call over the rounds and each row's ratio to the bare cffi lookup
of the same run. With
``--before DIR`` (another checkout, built in place) the same rows run from that tree too, in
child processes interleaved with this tree's, round by round.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUEST = (
    b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\nAccept: */*\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 64\r\n\r\n" + b"x" * 64
)


def measure(n: int) -> dict[str, float]:
    """One request served in this process; ns per call of each row."""
    from bitcoin_support import EvHttpRequest, ffi, lib, obtain_event_base, obtain_evhttp

    result: dict[str, float] = {}

    def timed(fn: Callable[[], object]) -> float:
        t = time.thread_time()  # CPU time: the machine may be shared, wall time is not ours
        for _ in range(n):
            fn()
        return (time.thread_time() - t) / n * 1e9

    def handler(req: EvHttpRequest, _arg: object) -> None:
        h = req.input_headers
        out = req.output_headers
        q = lib.evhttp_request_get_input_headers(req._rec.req)
        find, string = lib.evhttp_find_header, ffi.string
        decoded = {k.lower(): v for k, v in h.items()}
        rows: dict[str, Callable[[], object]] = {
            "empty loop": lambda: None,
            "bare cffi evhttp_find_header + ffi.string": lambda: string(
                find(q, b"Content-Type")
            ).decode("latin-1"),
            "dict.get (httptools-style)": lambda: decoded.get("content-type"),
            "req.input_headers": lambda: req.input_headers,
            'h.get("Content-Type")': lambda: h.get("Content-Type"),
            'h.get("X-Missing")': lambda: h.get("X-Missing"),
            'h["Content-Type"]': lambda: h["Content-Type"],
            '"Content-Type" in h': lambda: "Content-Type" in h,
            'output_headers["Content-Type"] = v': lambda: out.__setitem__("Content-Type", "a/b"),
            'req.input_headers.get("Content-Type")': lambda: req.input_headers.get("Content-Type"),
        }
        for name, fn in rows.items():
            result[name] = timed(fn)
        req.send_reply(200, body=b"ok")
        base.loopexit()

    with obtain_event_base() as base, obtain_evhttp(base) as http:
        http.set_gencb(handler)
        port = http.bind("127.0.0.1", 0)

        def client() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                s.sendall(REQUEST)
                s.recv(4096)

        thread = threading.Thread(target=client)
        thread.start()
        base.dispatch()
        thread.join(60)
    empty = result.pop("empty loop")
    return {k: max(0.0, v - empty) for k, v in result.items()}


def child(tree: Path, n: int) -> dict[str, float]:
    """``measure`` in a child process importing the package of ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--n", str(n)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        cwd=tree,
        env=env,
    ).stdout
    rows: dict[str, float] = json.loads(out)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="calls per row per round")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--before", type=Path, help="another checkout, built in place")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.n)))
        return 0
    trees = {"now": ROOT}
    if args.before is not None:
        trees = {"before": args.before.resolve(), **trees}
    runs: dict[str, dict[str, list[float]]] = {t: {} for t in trees}
    for _ in range(args.rounds):
        for label, tree in trees.items():
            for row, ns in child(tree, args.n).items():
                runs[label].setdefault(row, []).append(ns)
    ref = "bare cffi evhttp_find_header + ffi.string"
    med = {t: {row: statistics.median(v) for row, v in r.items()} for t, r in runs.items()}
    print(
        f"{args.n} calls per row, median of {args.rounds} interleaved rounds, empty loop subtracted"
    )
    head = "| row | " + " | ".join(f"{t} ns | {t} x bare" for t in trees) + " |"
    print(head)
    print("|---|" + "---:|---:|" * len(trees))
    for row in med["now"]:
        cells = " | ".join(f"{med[t][row]:.0f} | {med[t][row] / med[t][ref]:.2f}" for t in trees)
        print(f"| {row} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
