"""HTTP echo benchmark: the package's echo server against C evhttp and Python servers.

    .venv/bin/python bench/http/run.py [--duration 5] [--repeats 3] [--only NAME ...]

The ``*-handler`` and ``httptools-*`` rows run a realistic handler instead of the echo
shortcut (read the Content-Type header, copy the body, set Content-Type, reply with the body;
see ``bench/http/handlers.py``): in C on the tuned evhttp, on the package's evhttp, under
``aio.serve_http`` and ``trio_guest.serve_http``, and as an httptools Protocol on asyncio's loop,
on ``bitcoin_support.aio``'s loop and on uvloop. ``--only`` selects rows by name.

Each server runs pinned to CPU 0 (taskset), wrk runs on CPU 1 with ``-t1 -c50``; every round
measures a 64-byte POST and a GET against every server in turn (interleaved, so that a noisy
neighbour hurts all of them alike), and the table gives the median req/s of the rounds and the
ratios the issue sets targets for, all from the same run. Only 127.0.0.1 is used; every process
is bounded by timeouts and stopped by its PID. The Python competitors come from the ``bench``
extra of pyproject.toml, installed here when missing (never by the tests).
"""

from __future__ import annotations

import argparse
import importlib.util
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
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PY = sys.executable
POST_LUA = """wrk.method = "POST"
wrk.body = string.rep("x", 64)
wrk.headers["Content-Type"] = "application/octet-stream"
"""
TARGETS = [  # (server, reference, minimum ratio)
    ("bitcoin_support", "c-evhttp-default", 1.0),
    ("bitcoin_support", "c-evhttp-tuned", 0.9),
    ("bitcoin_support", "aiohttp", 2.5),
    ("bitcoin_support", "trio+h11", 5.0),
    ("evhttp-handler", "c-handler", 0.85),
]


def ensure_bench_deps() -> None:
    """Install the ``bench`` extra's packages into this interpreter if one is missing."""
    wanted = {"aiohttp": "aiohttp", "uvloop": "uvloop", "httptools": "httptools", "h11": "h11"}
    wanted["trio"] = "trio"
    if all(importlib.util.find_spec(m) for m in wanted):
        return
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["bench"]
    print(f"installing the bench extra: {' '.join(extra)}", flush=True)
    subprocess.run([PY, "-m", "pip", "install", "-q", *extra], check=True, timeout=900)


def build_c_echo(tmp: Path) -> Path:
    """Compile bench/http/c_echo.c against the system libevent."""
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "libevent"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    out = tmp / "c_echo"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(out), str(HERE / "c_echo.c"), *flags],
        check=True,
        timeout=120,
    )
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def servers(c_echo: Path) -> dict[str, list[str]]:
    """Name -> command line with a ``{port}`` placeholder."""
    return {
        "c-evhttp-default": [str(c_echo), "{port}"],
        "c-evhttp-tuned": [str(c_echo), "{port}", "--changelist"],
        "bitcoin_support": [PY, "-m", "bitcoin_support.echo", "--port", "{port}"],
        "aiohttp": [PY, str(HERE / "servers.py"), "aiohttp", "{port}"],
        "uvloop+httptools": [PY, str(HERE / "servers.py"), "uvloop", "{port}"],
        "trio+h11": [PY, str(HERE / "servers.py"), "trio", "{port}"],
        # the realistic handler (bench/http/handlers.py), and the same handler in C
        "c-handler": [str(c_echo), "{port}", "--changelist", "--handler"],
        "evhttp-handler": [PY, str(HERE / "handlers.py"), "evhttp", "{port}"],
        "aio-handler": [PY, str(HERE / "handlers.py"), "aio", "{port}"],
        "trio-handler": [PY, str(HERE / "handlers.py"), "trio", "{port}"],
        "httptools-asyncio": [PY, str(HERE / "handlers.py"), "httptools-asyncio", "{port}"],
        "httptools-aio": [PY, str(HERE / "handlers.py"), "httptools-aio", "{port}"],
        "httptools-uvloop": [PY, str(HERE / "handlers.py"), "httptools-uvloop", "{port}"],
    }


# The rows whose server imports this package (``--before`` runs them from the other tree too).
PACKAGE_ROWS = ("bitcoin_support", "evhttp-handler", "aio-handler", "trio-handler", "httptools-aio")


def pin(cpu: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(cpu)]
    return []


def start(cmd: list[str], port: int, cwd: Path = ROOT) -> subprocess.Popen[str]:
    """Start a server pinned to CPU 0 in ``cwd`` and wait for its ``listening on`` line."""
    argv = pin(0) + [a.replace("{port}", str(port)) for a in cmd]
    env = {**os.environ, "PYTHONPATH": str(cwd)}  # the package of that tree
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=cwd, env=env
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    line = proc.stdout.readline()
    if "listening on" not in line or time.monotonic() > deadline:
        stop(proc)
        raise RuntimeError(f"server did not start: {' '.join(argv)!r}: {line!r}")
    for _ in range(100):  # the socket is listening once the line is out; make sure
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL after 5 s; only this process."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(port: int, duration: float, lua: Path | None) -> tuple[float, int]:
    """(requests/s, errors) of one wrk run on CPU 1."""
    cmd = [*pin(1), "wrk", "-t1", "-c50", f"-d{max(1, round(duration))}s", "--timeout", "5s"]
    if lua is not None:
        cmd += ["-s", str(lua)]
    cmd.append(f"http://127.0.0.1:{port}/")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m is None:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    errors = 0
    m2 = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m2:
        errors += int(m2.group(1))
    m3 = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m3:
        errors += sum(int(g) for g in m3.groups())
    return float(m.group(1)), errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--only", nargs="*", help="servers to run (default: all)")
    parser.add_argument(
        "--before",
        type=Path,
        help="another checkout, built in place: each selected row that runs the package also "
        "runs from it, as 'before' (the echo server) or 'before:NAME', interleaved",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk not found; install it with: apt-get install -y wrk")
    ensure_bench_deps()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        lua = tmp / "post.lua"
        lua.write_text(POST_LUA)
        table = servers(build_c_echo(tmp))
        cwds = dict.fromkeys(table, ROOT)
        names = [n for n in table if not args.only or n in args.only]
        if args.before is not None:  # each selected row running the package, from that tree too
            for name in [n for n in names if n in PACKAGE_ROWS]:
                before = "before" if name == "bitcoin_support" else f"before:{name}"
                table[before] = table[name]
                cwds[before] = args.before.resolve()
                names.insert(names.index(name) + 1, before)
        results: dict[tuple[str, str], list[float]] = {}
        cost: dict[tuple[str, str], list[float]] = {}
        errors: dict[str, int] = dict.fromkeys(names, 0)
        for rnd in range(args.repeats):
            for name in names:
                port = free_port()
                proc = start(table[name], port, cwds[name])
                try:
                    wrk(port, 1.0, lua)  # warm-up, not counted
                    for kind, script in (("POST", lua), ("GET", None)):
                        cpu0 = cpu_seconds(proc.pid)
                        rps, err = wrk(port, args.duration, script)
                        cpu = cpu_seconds(proc.pid) - cpu0
                        us = 1e6 * cpu / max(1.0, rps * round(args.duration))
                        results.setdefault((name, kind), []).append(rps)
                        cost.setdefault((name, kind), []).append(us)
                        errors[name] += err
                        print(
                            f"round {rnd + 1} {name:18} {kind:4} {rps:10.0f} req/s "
                            f"{us:6.2f} us CPU/request",
                            flush=True,
                        )
                finally:
                    stop(proc)
        med = {key: statistics.median(v) for key, v in results.items()}
        print()
        print(f"wrk -t1 -c50 -d{args.duration:g}s, server on CPU 0, wrk on CPU 1, 64-byte POST")
        print(f"and GET, median of {args.repeats} interleaved rounds\n")
        print("| server | POST req/s | GET req/s | POST us CPU/req | GET us CPU/req | errors |")
        print("|---|---:|---:|---:|---:|---:|")
        for name in names:
            post, get = med.get((name, "POST"), 0.0), med.get((name, "GET"), 0.0)
            cp = statistics.median(cost.get((name, "POST"), [0.0]))
            cg = statistics.median(cost.get((name, "GET"), [0.0]))
            print(f"| {name} | {post:,.0f} | {get:,.0f} | {cp:.2f} | {cg:.2f} | {errors[name]} |")
        print("\n| ratio | POST | GET | target |")
        print("|---|---:|---:|---:|")
        ok = True
        for a, b, want in TARGETS:
            if a not in names or b not in names:
                continue
            rp = med[(a, "POST")] / med[(b, "POST")]
            rg = med[(a, "GET")] / med[(b, "GET")]
            ok &= rp >= want and rg >= want
            print(f"| {a} / {b} | {rp:.2f} | {rg:.2f} | >= {want} |")
        handler_rows = [
            n for n in names if n.split(":")[-1].endswith("-handler") or "httptools-" in n
        ]
        if "c-handler" in names and len(handler_rows) > 1:
            print("\n| realistic handler | POST x C | GET x C |")
            print("|---|---:|---:|")
            for name in handler_rows:
                rp = med[(name, "POST")] / med[("c-handler", "POST")]
                rg = med[(name, "GET")] / med[("c-handler", "GET")]
                print(f"| {name} / c-handler | {rp:.2f} | {rg:.2f} |")
        ok &= all(errors.get(n, 0) == 0 for n in ("bitcoin_support", "evhttp-handler"))
        print(f"\ntargets {'met' if ok else 'NOT met'}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
