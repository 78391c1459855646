"""Instructions per request of the echo server, counted by callgrind: unlike req/s on a shared
machine, the count does not move with the neighbours' load.

    .venv/bin/python bench/http/instructions.py [--requests 2000] [--before DIR]
        [--server {echo,c-echo,handler,c-handler}]

``--server handler`` counts the realistic handler of ``bench/http/handlers.py`` on the package's
evhttp instead, and ``c-handler`` the same handler in C (``c_echo.c --handler``), the reference;
``c-echo`` counts the tuned C echo server (``c_echo.c --changelist``), the echo server's
reference.
A checkout without its own ``.venv`` runs with this interpreter and that checkout first on
``PYTHONPATH``.

The echo server (``python -m bitcoin_support.echo``) runs under ``valgrind --tool=callgrind``;
after a warm-up, its counters are zeroed, one raw client on 127.0.0.1 sends ``--requests``
sequential keep-alive requests (a 64-byte POST, then a GET, as bench/http/run.py's wrk does),
and the counters are dumped. ``--before`` runs another checkout's echo server the same way and
prints the ratios. Every process is bounded by timeouts and stopped by its PID.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import build_c_echo, free_port  # bench/http/run.py, beside this script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
POST = (
    b"POST / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 64\r\n"
    b"Content-Type: application/octet-stream\r\n\r\n" + b"x" * 64
)
GET = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
LENGTH = re.compile(rb"content-length: *(\d+)", re.I)


def send(port: int, request: bytes, count: int) -> None:
    """``count`` requests on one connection, each answered before the next is sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        for _ in range(count):
            s.sendall(request)
            buf = b""
            while True:
                got = s.recv(65536)
                if not got:
                    raise EOFError("the server closed the connection")
                buf += got
                head, sep, rest = buf.partition(b"\r\n\r\n")
                m = LENGTH.search(head) if sep else None
                if m and len(rest) >= int(m.group(1)):
                    break


def server_command(root: Path, server: str, tmp: Path) -> tuple[list[str], dict[str, str]]:
    """The measured server's command line (a free port where it cannot report its own), and
    its environment."""
    env = dict(os.environ)
    python = root / ".venv" / "bin" / "python"
    if not python.exists():
        python = Path(sys.executable)
        env["PYTHONPATH"] = str(root)
    if server in ("c-echo", "c-handler"):
        exe = tmp / "c_echo"
        if not exe.exists():
            build_c_echo(tmp)
        handler = ["--handler"] if server == "c-handler" else []
        return [str(exe), str(free_port()), "--changelist", *handler], env
    if server == "handler":
        return [str(python), str(HERE / "handlers.py"), "evhttp", str(free_port())], env
    return [str(python), "-m", "bitcoin_support.echo", "--port", "0"], env


def measure(root: Path, requests: int, tmp: Path, server: str = "echo") -> dict[str, float]:
    """Instructions per request for POST and GET of ``server`` with the package of ``root``."""
    out = tmp / f"cg-{os.getpid()}-{abs(hash(root))}-{server}"
    cmd, env = server_command(root, server, tmp)
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    result: dict[str, float] = {}
    try:
        assert proc.stdout is not None
        m = re.search(r":(\d+)/", proc.stdout.readline())
        if m is None:
            raise RuntimeError(f"{root}: the echo server did not start")
        port = int(m.group(1))
        send(port, POST, 200)  # warm-up
        send(port, GET, 200)
        for name, request in (("POST", POST), ("GET", GET)):
            before = set(glob.glob(f"{out}*"))
            ctl = ["callgrind_control", "-z", str(proc.pid)]
            subprocess.run(ctl, capture_output=True, timeout=120, check=True)
            send(port, request, requests)
            ctl[1] = "-d"
            subprocess.run(ctl, capture_output=True, timeout=120, check=True)
            deadline = time.monotonic() + 30
            new: list[str] = []
            while not new and time.monotonic() < deadline:
                new = sorted(set(glob.glob(f"{out}*")) - before)
                time.sleep(0.2)
            total = 0
            for f in new:
                for line in Path(f).read_text().splitlines():
                    if line.startswith(("totals:", "summary:")):
                        total = max(total, int(line.split()[1]))
            result[name] = total / requests
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--before", type=Path, help="another checkout, built in place")
    servers = ("echo", "c-echo", "handler", "c-handler")
    parser.add_argument("--server", choices=servers, default="echo")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("bench: valgrind (callgrind) not found")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        rows = {"this checkout": measure(ROOT, args.requests, tmp, args.server)}
        if args.before is not None:
            rows["before"] = measure(args.before.resolve(), args.requests, tmp, args.server)
    print(
        f"\n{args.server}: instructions per request, {args.requests} sequential keep-alive "
        "requests\n"
    )
    print("| server | POST | GET |")
    print("|---|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['POST']:,.0f} | {r['GET']:,.0f} |")
    if "before" in rows:
        a, b = rows["this checkout"], rows["before"]
        post, get = a["POST"] / b["POST"], a["GET"] / b["GET"]
        print(f"\nratio (this / before): POST {post:.3f}, GET {get:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
