"""The HTTP echo server (SPEC section 7): the module, the example, workers and graceful stops."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_helpers import RawClient, open_fds, request, wait_for

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^listening on http://127\.0\.0\.1:(\d+)/$")


class Echo:
    """An echo server process on a free port, stopped by PID."""

    def __init__(self, *args: str, example: bool = False) -> None:
        cmd = [sys.executable]
        cmd += (
            [str(ROOT / "examples" / "http_echo_server.py")]
            if example
            else [
                "-m",
                "bitcoin_support.echo",
            ]
        )
        self.proc = subprocess.Popen(
            [*cmd, "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        self.line = self.proc.stdout.readline().rstrip("\n")
        m = LINE.match(self.line)
        assert m, (self.line, self.proc.stderr.read() if self.proc.poll() is not None else "")
        self.port = int(m.group(1))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            for f in (self.proc.stdout, self.proc.stderr):
                if f is not None:
                    f.close()


@pytest.fixture
def echo() -> Iterator[Echo]:
    e = Echo()
    yield e
    e.stop()


def test_echoes_body_and_content_type(echo: Echo) -> None:
    status, headers, body = request(
        echo.port, "POST", "/any/path?q=1", b"\x00binary\xff", {"Content-Type": "image/x-test"}
    )
    assert (status, body, headers["content-type"]) == (200, b"\x00binary\xff", "image/x-test")
    status, headers, body = request(echo.port, "PUT", "/", b"no type")
    assert (status, body) == (200, b"no type")
    assert headers["content-type"] in ("application/octet-stream",)
    status, headers, body = request(echo.port, "GET")
    assert (status, body, headers["content-type"]) == (200, b"", "application/octet-stream")


def test_default_content_type_without_header(echo: Echo) -> None:
    with RawClient(echo.port) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        status, headers, body = c.response("POST")
    assert (status, body, headers["content-type"]) == (200, b"abc", "application/octet-stream")


def test_max_body_413() -> None:
    e = Echo("--max-body", "10")
    try:
        assert request(e.port, "POST", "/", b"x" * 10)[0] == 200
        assert request(e.port, "POST", "/", b"x" * 11)[0] == 413
    finally:
        assert e.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_graceful_stop_exit_zero(sig: int) -> None:
    e = Echo()
    assert request(e.port, "POST", "/", b"x")[0] == 200
    assert e.stop(sig) == 0


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_signal_right_after_listening_line_is_graceful(sig: int, workers: str) -> None:
    # The line is printed only once the stop handlers are in place: a signal sent the moment it
    # is read stops the server with status 0 and nothing on stderr (no KeyboardInterrupt).
    e = Echo("--workers", workers)
    assert e.proc.stderr is not None
    e.proc.send_signal(sig)
    err = e.proc.stderr.read()
    assert (e.stop(sig), err) == (0, "")


def test_in_flight_request_answered_on_stop() -> None:
    e = Echo()
    with RawClient(e.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.response()[0] == 200  # accepted and being served
        c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nflight")
        e.proc.send_signal(signal.SIGTERM)
        status, _, body = c.response("POST")
    assert (status, body) == (200, b"flight")
    assert e.stop() == 0


def test_no_descriptor_growth(echo: Echo) -> None:
    request(echo.port)
    before = open_fds(echo.proc.pid)
    for i in range(100):
        with socket.create_connection(("127.0.0.1", echo.port), timeout=5) as s:
            if i % 2:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                s.recv(1000)
    assert wait_for(lambda: open_fds(echo.proc.pid) <= before, 5)


def test_sigusr1_reports_no_live_requests_after_traffic(echo: Echo) -> None:
    for _ in range(20):
        request(echo.port)
    echo.proc.send_signal(signal.SIGUSR1)
    assert echo.proc.stderr is not None
    line = echo.proc.stderr.readline()
    counts = json.loads(line.split(" live ", 1)[1])
    assert counts["EvHttpRequest"] == 0
    assert counts["EvHttpConnection"] == 0
    assert counts["EvHttp"] == 1
    assert counts["EventBase"] == 1


def test_workers_share_the_port() -> None:
    e = Echo("--workers", "2")
    try:
        children = _children(e.proc.pid)
        assert len(children) == 2
        for i in range(50):
            assert request(e.port, "POST", "/", str(i).encode())[2] == str(i).encode()
        # the parent restarts a worker that dies
        os.kill(children[0], signal.SIGKILL)
        assert wait_for(
            lambda: len(_children(e.proc.pid)) == 2 and children[0] not in _children(e.proc.pid), 10
        )
        for _ in range(20):
            assert request(e.port)[0] == 200
    finally:
        code = e.stop(signal.SIGINT)
    assert code == 0
    assert wait_for(lambda: not any(_alive(p) for p in children), 5)


def test_example_script() -> None:
    e = Echo(example=True)
    try:
        status, headers, body = request(e.port, "POST", "/", b"ex", {"Content-Type": "a/b"})
        assert (status, body, headers["content-type"]) == (200, b"ex", "a/b")
    finally:
        assert e.stop(signal.SIGINT) == 0


def test_bad_arguments() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bitcoin_support.echo", "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "--workers" in proc.stderr


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
