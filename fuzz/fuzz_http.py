"""Fuzz the evhttp server with raw bytes over a loopback socket.

The server (this package's EvHttp with a Python echo callback) runs its loop in a thread; every
input is sent on a fresh connection, whose write side is then shut. The server must answer or
close within a bounded time, and every 50th input is followed by a normal request that must get
200, so a server that stopped serving is a finding.
Run: python fuzz/fuzz_http.py -runs=20000
"""

from __future__ import annotations

import socket
import sys
import threading

import atheris

with atheris.instrument_imports():
    from bitcoin_support import EvHttpRequest, obtain_event_base, obtain_evhttp

TIMEOUT = 5.0
# Most inputs start from a valid request line, so the fuzzer spends its time on headers and bodies.
PREFIXES = (
    b"",
    b"GET / HTTP/1.1\r\n",
    b"POST /x?a=%41 HTTP/1.1\r\nHost: h\r\n",
    b"PUT / HTTP/1.0\r\n",
)
GOOD = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"


def echo(req: EvHttpRequest, arg: object) -> None:
    req.send_reply(200, None, req.body)


class Server:
    """An echo server on 127.0.0.1 whose loop runs in a daemon thread."""

    def __init__(self) -> None:
        self.base = obtain_event_base()
        self.http = obtain_evhttp(self.base)
        self.http.set_max_body_size(1 << 16)
        self.http.set_max_headers_size(1 << 14)
        self.http.set_timeout(2)
        self.http.set_gencb(echo)
        self.port = self.http.bind("127.0.0.1", 0)
        self.thread = threading.Thread(target=self.base.dispatch, daemon=True)
        self.thread.start()

    def exchange(self, data: bytes) -> bytes:
        """Send ``data``, half-close, and read until the server closes (bounded)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as sock:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                return b""  # the server may close early on garbage: that is an answer
            chunks = []
            try:
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except ConnectionResetError:
                pass
            return b"".join(chunks)


SERVER: Server | None = None
COUNT = 0


@atheris.instrument_func
def test_one_input(data: bytes) -> None:
    global SERVER, COUNT
    if SERVER is None:
        SERVER = Server()
    prefix = PREFIXES[data[0] % len(PREFIXES)] if data else b""
    reply = SERVER.exchange(prefix + data[1:])
    assert reply == b"" or reply.startswith(b"HTTP/1."), reply[:80]
    COUNT += 1
    if COUNT % 50 == 0:
        good = SERVER.exchange(GOOD)
        assert good.startswith(b"HTTP/1.1 200"), good[:80]
        assert good.endswith(b"hello"), good[-80:]


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
