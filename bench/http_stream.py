"""Streamed-reply benchmark: a 64 MiB chunked reply to a fast local client, MB/s of the
package (send_reply_chunk with on_sent) against libevent's C evhttp doing the same with
evhttp_send_reply_chunk_with_cb, ratios from one run.

    .venv/bin/python bench/http_stream.py [--rounds 5] [--total 67108864] [--chunk 262144]

Servers run pinned to CPU 0, the client (a process reading into one buffer) on CPU 1; the
rounds interleave the servers, and the table gives medians. Only 127.0.0.1; every process is
bounded by timeouts and stopped by its PID.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "http"))
from run import HERE, PY, free_port, pin, start, stop  # bench/http/run.py

CLIENT = r"""
import socket, sys, time
port, total = int(sys.argv[1]), int(sys.argv[2])
buf = bytearray(1 << 20)
s = socket.create_connection(("127.0.0.1", port), timeout=30)
t0 = time.perf_counter()
s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
n = 0
while True:
    got = s.recv_into(buf)
    if not got:
        break
    n += got
t = time.perf_counter() - t0
print(n, t)
"""


def build_c_stream(tmp: Path) -> Path:
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "libevent"], capture_output=True, text=True, check=True
    ).stdout.split()
    out = tmp / "c_stream"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(out), str(HERE / "c_stream.c"), *flags],
        check=True,
        timeout=120,
    )
    return out


def fetch(port: int, total: int) -> float:
    """MB/s of one streamed reply, read by a client process on CPU 1."""
    out = subprocess.run(
        [*pin(1), PY, "-c", CLIENT, str(port), str(total)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    n, t = int(out[0]), float(out[1])
    if n < total:
        raise RuntimeError(f"short reply: {n} of {total} bytes")
    return total / t / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--total", type=int, default=64 << 20)
    ap.add_argument("--chunk", type=int, default=256 << 10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        c_stream = build_c_stream(Path(tmp))
        sizes = [str(args.total), str(args.chunk)]
        cmds = {
            "c-evhttp (send_reply_chunk_with_cb)": [str(c_stream), "{port}", *sizes],
            "bitcoin_support (on_sent, 1 in flight)": [
                PY,
                str(HERE / "stream_server.py"),
                "{port}",
                *sizes,
            ],
            "bitcoin_support (on_sent, 4 in flight)": [
                PY,
                str(HERE / "stream_server.py"),
                "{port}",
                *sizes,
                "--in-flight",
                "4",
            ],
        }
        results: dict[str, list[float]] = {name: [] for name in cmds}
        procs = {}
        try:
            for name, cmd in cmds.items():
                port = free_port()
                procs[name] = (start(cmd, port), port)
            for _ in range(args.rounds):
                for name, (_proc, port) in procs.items():
                    results[name].append(fetch(port, args.total))
                    time.sleep(0.1)
        finally:
            for proc, _port in procs.values():
                stop(proc)
    ref = statistics.median(results["c-evhttp (send_reply_chunk_with_cb)"])
    print(
        f"{args.total >> 20} MiB streamed reply, {args.chunk >> 10} KiB chunks, "
        f"median of {args.rounds} interleaved rounds"
    )
    print(f"{'server':42} {'MB/s':>8} {'vs C':>6}")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"{name:42} {med:8.0f} {med / ref:6.2f}")
    socket.setdefaulttimeout(None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
