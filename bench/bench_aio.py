"""asyncio on libevent against asyncio's own loop and uvloop, every row a ratio from one run.

    .venv/bin/python bench/bench_aio.py [--repeats 5] [--n 300000] [--duration 3]
        [--http-rounds 3] [--no-http]

Rows: a ``call_soon`` chain of N callbacks (each schedules the next), a ``call_later(0)`` chain,
and, when ``wrk`` is installed, the HTTP echo of ``bench/http/servers.py`` (an asyncio Protocol
with httptools) and aiohttp's echo, each server on each loop under ``wrk -t1 -c50``, 64-byte
POST. Rounds are interleaved (every loop once per round) so a noisy neighbour hurts all alike;
the table gives medians. Servers listen on 127.0.0.1 only, pinned to CPU 0 (wrk on CPU 1), and
are stopped by their PID. The HTTP rows also run "aio-pytr": aio with asyncio's Python
transports (``c_streams = False``), to show the C stream transport's share. Needs the ``bench``
extra (uvloop, httptools, aiohttp).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LOOPS = ("asyncio", "uvloop", "aio")
# The HTTP rows also run aio with asyncio's Python transports (EventLoop.c_streams = False): the
# C stream transport's gain, measured in the same run.
HTTP_LOOPS = (*LOOPS, "aio-pytr")
DEFAULT_CT = b"application/octet-stream"
POST_LUA = """wrk.method = "POST"
wrk.body = string.rep("x", 64)
wrk.headers["Content-Type"] = "application/octet-stream"
"""


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if kind in ("aio", "aio-pytr"):
        from bitcoin_support import aio

        loop = aio.new_event_loop()
        loop.c_streams = kind == "aio"
        return loop
    return asyncio.SelectorEventLoop()


# -- micro rows


def call_soon_chain(loop: asyncio.AbstractEventLoop, n: int) -> float:
    done = loop.create_future()
    left = n

    def step() -> None:
        nonlocal left
        left -= 1
        if left:
            loop.call_soon(step)
        else:
            done.set_result(None)

    loop.call_soon(step)
    t0 = time.perf_counter()
    loop.run_until_complete(done)
    return (time.perf_counter() - t0) / n


def call_later_chain(loop: asyncio.AbstractEventLoop, n: int) -> float:
    done = loop.create_future()
    left = n

    def step() -> None:
        nonlocal left
        left -= 1
        if left:
            loop.call_later(0, step)
        else:
            done.set_result(None)

    loop.call_later(0, step)
    t0 = time.perf_counter()
    loop.run_until_complete(done)
    return (time.perf_counter() - t0) / n


MICRO: dict[str, Callable[[asyncio.AbstractEventLoop, int], float]] = {
    "call_soon chain (us/cb)": call_soon_chain,
    "call_later(0) chain (us/cb)": call_later_chain,
}


def micro_once(kind: str, row: str, n: int) -> float:
    loop = new_loop(kind)
    try:
        return MICRO[row](loop, n) * 1e6
    finally:
        loop.close()


# -- HTTP servers (run in a subprocess: bench_aio.py --serve KIND SERVER PORT)


def serve_httptools(kind: str, port: int) -> None:
    import httptools

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
            self.ctype = DEFAULT_CT
            self.body: list[bytes] = []

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_message_begin(self) -> None:
            self.ctype = DEFAULT_CT
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
        print("listening", flush=True)
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        async with server:
            await stop

    run_on(kind, main())


def serve_aiohttp(kind: str, port: int) -> None:
    from aiohttp import web

    async def echo(request: Any) -> Any:
        body = await request.read()
        ctype = request.headers.get("Content-Type", DEFAULT_CT.decode())
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def main() -> None:
        app = web.Application(client_max_size=1048576)
        app.router.add_route("*", "/{tail:.*}", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
        await site.start()
        print("listening", flush=True)
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        await stop
        await runner.cleanup()

    run_on(kind, main())


def run_on(kind: str, coro: Any) -> None:
    with asyncio.Runner(loop_factory=lambda: new_loop(kind)) as runner:
        runner.run(coro)


SERVERS = {"httptools echo (req/s)": "httptools", "aiohttp echo (req/s)": "aiohttp"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def taskset(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and os.cpu_count() else []


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), 0.0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_once(kind: str, server: str, duration: float, lua: Path) -> tuple[float, float]:
    """Requests per second under wrk, and the server's CPU microseconds per request."""
    port = free_port()
    cmd = [*taskset(0), sys.executable, __file__, "--serve", kind, server, str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening" not in line:
            raise RuntimeError(f"{kind}/{server} did not start")
        cpu0 = cpu_seconds(proc.pid)
        out = subprocess.run(
            [
                *taskset(1),
                "wrk",
                "-t1",
                "-c50",
                f"-d{max(1, round(duration))}s",
                "-s",
                str(lua),
                f"http://127.0.0.1:{port}/",
            ],
            capture_output=True,
            text=True,
            timeout=duration + 30,
        ).stdout
        cpu = cpu_seconds(proc.pid) - cpu0
        m = re.search(r"Requests/sec:\s+([\d.]+)", out)
        n = re.search(r"(\d+) requests in", out)
        if not m or not n:
            raise RuntimeError(f"wrk gave no rate for {kind}/{server}:\n{out}")
        return float(m.group(1)), cpu / max(1, int(n.group(1))) * 1e6
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n", type=int, default=300_000)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--http-rounds", type=int, default=3)
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument("--serve", nargs=3, metavar=("LOOP", "SERVER", "PORT"))
    args = ap.parse_args()
    if args.serve:
        kind, server, port = args.serve
        (serve_httptools if server == "httptools" else serve_aiohttp)(kind, int(port))
        return
    results: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.repeats):
        for row in MICRO:
            for kind in LOOPS:
                results.setdefault(row, {}).setdefault(kind, []).append(
                    micro_once(kind, row, args.n)
                )
    if not args.no_http and shutil.which("wrk"):
        with tempfile.TemporaryDirectory() as tmp:
            lua = Path(tmp) / "post.lua"
            lua.write_text(POST_LUA)
            for _ in range(max(1, args.http_rounds)):
                for row, server in SERVERS.items():
                    for kind in HTTP_LOOPS:
                        rate, cpu = http_once(kind, server, args.duration, lua)
                        results.setdefault(row, {}).setdefault(kind, []).append(rate)
                        cpu_row = row.replace("(req/s)", "(server CPU us/req)")
                        results.setdefault(cpu_row, {}).setdefault(kind, []).append(cpu)
    elif not args.no_http:
        print("wrk is not installed: HTTP rows skipped (scripts/setup.sh installs it)")
    head = ("asyncio", "uvloop", "aio", "aio/uvloop", "aio/asyncio", "aio-pytr/uv")
    print(f"{'row':36} " + " ".join(f"{h:>11}" for h in head))
    for row, by in results.items():
        med = {k: statistics.median(v) for k, v in by.items()}
        # time rows: ratio of times (<= 1.0 is as fast); rate rows: ratio of rates (>= 1.0).
        pytr = f"{med['aio-pytr'] / med['uvloop']:10.2f}x" if "aio-pytr" in med else f"{'-':>11}"
        print(
            f"{row:36} {med['asyncio']:11.2f} {med['uvloop']:11.2f} {med['aio']:11.2f} "
            f"{med['aio'] / med['uvloop']:10.2f}x {med['aio'] / med['asyncio']:10.2f}x {pytr}"
        )


if __name__ == "__main__":
    main()
