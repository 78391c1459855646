"""Soak test of the echo server: wrk at -c200 against ``--workers 2``, memory and descriptors.

    .venv/bin/python bench/soak.py [--duration 60]

Starts ``python -m bitcoin_support.echo --port 0 --workers 2``, warms it up, samples the RSS and
the open descriptors of the parent and its workers, runs wrk (POST, 64-byte body, -t2 -c200) for
``--duration`` seconds, lets the connections close and samples again. Passes when RSS grew by
less than 5 MB, no descriptor was left open and every worker reports (SIGUSR1) no live request,
connection or event handle. 127.0.0.1 only; the server is stopped by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

POST_LUA = """wrk.method = "POST"
wrk.body = string.rep("x", 64)
wrk.headers["Content-Type"] = "application/octet-stream"
"""
MAX_RSS_GROWTH = 5 * 1024 * 1024


def tree(pid: int) -> list[int]:
    """The server's parent and worker PIDs."""
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *map(int, kids)]


def sample(pid: int) -> tuple[int, int]:
    """(total RSS in bytes, total open descriptors) of the parent and its workers."""
    rss = fds = 0
    for p in tree(pid):
        status = Path(f"/proc/{p}/status").read_text()
        m = re.search(r"VmRSS:\s+(\d+) kB", status)
        rss += int(m.group(1)) * 1024 if m else 0
        fds += len(list(Path(f"/proc/{p}/fd").iterdir()))
    return rss, fds


def live_handles(pid: int, errlog: Any) -> int:
    """Requests, connections and events the workers still hold (they report on SIGUSR1)."""
    workers = tree(pid)[1:]
    for w in workers:
        os.kill(w, signal.SIGUSR1)
    time.sleep(1)
    errlog.seek(0)
    reports = [json.loads(m.group(1)) for m in re.finditer(r"live (\{[^}]*\})", errlog.read())]
    if len(reports) < len(workers):
        return -1  # a worker did not answer: count it as a failure
    kinds = ("EvHttpRequest", "EvHttpConnection", "LibEvent")
    return sum(r[k] for r in reports[-len(workers) :] for k in kinds)


def wrk(port: int, seconds: int, lua: Path) -> str:
    cmd = ["wrk", "-t2", "-c200", f"-d{seconds}s", "-s", str(lua), f"http://127.0.0.1:{port}/"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=60, help="seconds of load")
    args = parser.parse_args()
    errlog = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bitcoin_support.echo", "--port", "0", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=errlog,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r":(\d+)/$", line.strip())
        if m is None:
            print(f"soak: the server did not start: {line!r}", file=sys.stderr)
            return 1
        port = int(m.group(1))
        with tempfile.TemporaryDirectory() as tmp:
            lua = Path(tmp) / "post.lua"
            lua.write_text(POST_LUA)
            wrk(port, 5, lua)  # warm-up: allocator pools and caches reach their working size
            time.sleep(1)
            rss0, fds0 = sample(proc.pid)
            out = wrk(port, args.duration, lua)
            time.sleep(2)  # let the closed connections be noticed
            rss1, fds1 = sample(proc.pid)
            leftover = live_handles(proc.pid, errlog)
        rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
        errors = re.search(r"Socket errors:.*|Non-2xx.*", out)
        print(f"wrk -t2 -c200 -d{args.duration}s POST 64 B against --workers 2")
        print(f"requests/s: {rps.group(1) if rps else '?'}  {errors.group(0) if errors else ''}")
        print(f"RSS: {rss0 / 1e6:.1f} MB -> {rss1 / 1e6:.1f} MB ({(rss1 - rss0) / 1e6:+.2f} MB)")
        print(f"descriptors: {fds0} -> {fds1} ({fds1 - fds0:+d})")
        print(f"live handles left in the workers: {leftover}")
        ok = rss1 - rss0 < MAX_RSS_GROWTH and fds1 <= fds0 and leftover == 0
        print("soak passed" if ok else "soak FAILED")
        return 0 if ok else 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


if __name__ == "__main__":
    sys.exit(main())
