"""Fault injection on the HTTP server: fewer descriptors than connections."""

from __future__ import annotations

import resource
import signal
import socket
import subprocess
import sys
import time


def _request(port: int, body: bytes = b"ping", timeout: float = 10) -> bytes:
    """One POST on a fresh connection; the whole reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        return _exchange(sock, body)


def _exchange(sock: socket.socket, body: bytes) -> bytes:
    sock.sendall(
        b"POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_echo_server_with_few_descriptors_serves_what_it_can_and_recovers() -> None:
    limit = 48
    server = subprocess.Popen(
        [sys.executable, "-m", "bitcoin_support.echo", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
        # Twice as many idle connections as the server has descriptors.
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2 * limit)]
        try:
            time.sleep(0.5)
            # The first connections were accepted before the limit: they are still served.
            assert _exchange(idle[0], b"early").endswith(b"early")
            assert server.poll() is None
        finally:
            for sock in idle:
                sock.close()
        # Once they are gone the server takes new connections again.
        deadline = time.monotonic() + 20
        while True:
            try:
                reply = _request(port, b"after", timeout=5)
                if reply.endswith(b"after"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not recover"
            time.sleep(0.2)
        assert reply.startswith(b"HTTP/1.1 200")
        assert server.poll() is None
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=20)
    assert server.returncode == 0, err
