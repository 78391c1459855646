"""Helpers of the evhttp tests: a server whose loop runs on a thread, and raw HTTP clients.

Everything talks to 127.0.0.1 only and every wait is bounded.
"""

from __future__ import annotations

import http.client
import io
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from bitcoin_support import (
    EVLOOP_NO_EXIT_ON_EMPTY,
    EventBase,
    EvHttp,
    obtain_event_base,
    obtain_evhttp,
)


class LoopThread:
    """An event base and an evhttp server whose loop runs on a background thread.

    Set the server up (callbacks, limits) before ``start()``; afterwards touch the loop's
    objects only through ``call()``, which runs a function on the loop's thread.
    """

    def __init__(self, *, changelist: bool = False) -> None:
        self.base: EventBase = obtain_event_base(epoll_changelist=changelist)
        self.http: EvHttp = obtain_evhttp(self.base)
        self.port = self.http.bind("127.0.0.1", 0)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.base.loop(EVLOOP_NO_EXIT_ON_EMPTY)
        except BaseException as exc:
            self.error = exc

    def start(self) -> LoopThread:
        self._thread.start()
        return self

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 10.0) -> Any:
        """Run ``fn(*args)`` on the loop's thread and return its result."""
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            try:
                box.append((True, fn(*args)))
            except BaseException as exc:
                box.append((False, exc))
            done.set()

        self.base.call_soon_threadsafe(run)
        if not done.wait(timeout):
            raise TimeoutError("the loop did not run the call")
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def stop(self) -> None:
        if self._thread.is_alive():
            self.base.call_soon_threadsafe(self.base.loopbreak)
            self._thread.join(10)
            assert not self._thread.is_alive(), "the loop did not stop"
        self.http.close()
        self.base.close()
        if self.error is not None:
            raise self.error

    def __enter__(self) -> LoopThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _KeepOpen(io.BufferedReader):
    """A buffered socket reader that HTTPResponse cannot close (the next response needs it)."""

    def close(self) -> None:
        pass

    def really_close(self) -> None:
        super().close()


class _FileSock:
    """Lets several ``HTTPResponse`` objects read one after the other from one buffered file."""

    def __init__(self, f: Any) -> None:
        self.f = f

    def makefile(self, *args: Any, **kwargs: Any) -> Any:
        return self.f


class RawClient:
    """A raw TCP client: send any bytes, read well-formed responses in order."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = _KeepOpen(socket.SocketIO(self.sock, "rb"))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        resp = http.client.HTTPResponse(_FileSock(self.file), method=method)  # type: ignore[arg-type]
        resp.begin()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True once the server closes the connection (EOF or reset) within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.file.read1(65536)
                if not data:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.file.really_close()
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(
    port: int,
    method: str = "GET",
    path: str = "/",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def open_fds(pid: int | None = None) -> int:
    """Open descriptors of a process (this one by default)."""
    return len(os.listdir(f"/proc/{pid or 'self'}/fd"))


def wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``pred`` until it is true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def post(path: str, body: bytes) -> bytes:
    """A raw POST of ``body`` with Connection: close."""
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def read_to_eof(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything ``sock`` receives until the peer closes (each receive bounded by ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def exchange(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send a raw request (with Connection: close) and read the whole response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        return read_to_eof(sock, timeout)


def exchange_many(port: int, requests: list[bytes], timeout: float = 30.0) -> list[bytes]:
    """Send every raw request on its own connection first, then read each whole response."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=timeout) for _ in requests]
    try:
        for sock, req in zip(socks, requests, strict=True):
            sock.sendall(req)
        return [read_to_eof(sock, timeout) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
