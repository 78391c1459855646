"""Streamed replies with back-pressure (SPEC section 4, "Streaming"): ``send_reply_chunk(data,
on_sent)`` and ``output_buffered``, against slow raw clients on 127.0.0.1."""

from __future__ import annotations

import gc
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from http_helpers import LoopThread, open_fds, request, wait_for

from bitcoin_support import ClosedError, EvHttpRequest
from bitcoin_support import _server_stream as server_room

MiB = 1 << 20
# ASan keeps freed memory in quarantine (hundreds of MiB): RSS says nothing about the package
SANITIZED = os.environ.get("BITCOIN_SUPPORT_SANITIZED") == "1"


class Srv(LoopThread):
    def __init__(self) -> None:
        super().__init__()
        self.reqs: list[EvHttpRequest] = []
        self.events: list[tuple[Any, ...]] = []
        self.received = 0  # bytes the test's client has read (written by the client thread)
        self.http.set_gencb(self.route)

    def route(self, req: EvHttpRequest, _arg: object) -> None:
        path = req.path
        if path == "/ok":
            req.send_reply(200, body=b"ok")
            return
        self.reqs.append(req)
        getattr(self, "on_" + path.strip("/"))(req)

    # -- the routes

    def on_ordered(self, req: EvHttpRequest) -> None:
        """16 chunks of 1 MiB, each with an on_sent that notes when it ran."""
        req.send_reply_start(200)
        for i in range(16):
            req.send_reply_chunk(b"%c" % (65 + i) * MiB, on_sent=lambda i=i: self.note(i))
        req.send_reply_end()

    def note(self, i: int) -> None:
        self.events.append((i, time.monotonic(), self.received))

    def on_produce(self, req: EvHttpRequest) -> None:
        """64 MiB in 256 KiB chunks, at most 4 of them queued: each on_sent queues the next."""
        chunk = memoryview(b"p" * (256 << 10))
        state = {"queued": 0}
        total = 256

        def more() -> None:
            if state["queued"] < total:
                state["queued"] += 1
                req.send_reply_chunk(chunk, on_sent=more)
            elif state["queued"] == total:
                state["queued"] += 1
                req.send_reply_end()

        req.send_reply_start(200)
        for _ in range(4):
            more()

    def on_hold(self, req: EvHttpRequest) -> None:
        """16 MiB queued at once; the test watches output_buffered while the client reads."""
        req.send_reply_start(200)
        for _ in range(16):
            req.send_reply_chunk(b"h" * MiB)
        self.events.append(("queued", req.output_buffered))

    def on_leave(self, req: EvHttpRequest) -> None:
        """on_sent callbacks pending when the client goes away: they never run."""
        req.send_reply_start(200)
        for i in range(16):
            req.send_reply_chunk(b"l" * MiB, on_sent=lambda i=i: self.events.append(i))

    def on_closes(self, req: EvHttpRequest) -> None:
        """An on_sent that closes the request (ending the reply), then one that closes the
        server while later callbacks are pending."""
        req.send_reply_start(200)
        req.send_reply_chunk(b"a" * MiB, on_sent=lambda: self.events.append("first"))
        req.send_reply_chunk(b"b" * 16, on_sent=req.close)
        req.send_reply_chunk(b"c" * MiB, on_sent=lambda: self.events.append("late"))


@pytest.fixture
def srv() -> Iterator[Srv]:
    s = Srv()
    s.start()
    before = open_fds()
    yield s
    assert request(s.port, "GET", "/ok")[0] == 200
    s.call(s.reqs.clear)
    assert wait_for(lambda: EvHttpRequest.live() == 0, 5)
    assert wait_for(lambda: open_fds() <= before, 5), (open_fds(), before)
    s.stop()
    gc.collect()
    assert not server_room._sending


def slow_client(
    srv: Srv, path: str, *, chunk: int = 65536, pause: float = 0.0, rss: list[int] | None = None
) -> tuple[bytes, int]:
    """GET ``path`` with a small receive buffer, reading ``chunk`` bytes per ``pause``; returns
    the response head and the body byte count (chunked framing included)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.settimeout(10)
    s.connect(("127.0.0.1", srv.port))
    buf = bytearray(chunk)
    head = b""
    n = 0
    with s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        while True:
            got = s.recv_into(buf)
            if not got:
                break
            if not head:
                head = bytes(buf[:got]).partition(b"\r\n\r\n")[0]
            n += got
            srv.received = n
            if rss is not None and n % (4 * MiB) < chunk:
                rss.append(_rss())
            if pause:
                time.sleep(pause)
    return head, n


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_on_sent_order_and_timing(srv: Srv) -> None:
    start = time.monotonic()
    head, n = slow_client(srv, "/ordered", pause=0.002)
    assert head.startswith(b"HTTP/1.1 200")
    assert n > 16 * MiB
    assert wait_for(lambda: len(srv.events) == 16, 5)
    assert [e[0] for e in srv.events] == list(range(16))  # in the order of their chunks
    # Each ran only once its chunk was written: by then the client had read all of it but
    # what the kernel's socket buffers hold (a few MiB on loopback at most).
    slack = 6 * MiB
    for i, _t, received in srv.events:
        assert received >= (i + 1) * MiB - slack, (i, received)
    # ... and as the client read, not all at the end.
    times = [t - start for _i, t, _r in srv.events]
    assert times[-1] - times[0] > 0.1, times
    assert srv.events[0][2] < 12 * MiB


def test_producer_streams_64_mib_to_a_slow_client_in_bounded_memory(srv: Srv) -> None:
    rss: list[int] = []
    before = _rss()
    t0 = time.monotonic()
    head, n = slow_client(srv, "/produce", chunk=256 << 10, pause=0.0005, rss=rss)
    assert head.startswith(b"HTTP/1.1 200")
    assert n >= 64 * MiB
    assert time.monotonic() - t0 < 60
    if not SANITIZED:
        assert max(rss) - before < 16 * MiB, (max(rss) - before) / MiB
    print(f"64 MiB streamed, RSS growth {(max(rss) - before) / MiB:.1f} MiB")


def test_output_buffered_rises_and_falls(srv: Srv) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.settimeout(10)
    with s:
        s.connect(("127.0.0.1", srv.port))
        s.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_for(lambda: srv.events, 5)
        assert srv.events[0][1] >= 16 * MiB  # all of it queued, nothing read yet
        time.sleep(0.2)
        req = srv.reqs[0]
        stalled = srv.call(lambda: req.output_buffered)
        assert stalled > 8 * MiB  # the client is not reading: most of it stays queued
        got = 0
        while got < 16 * MiB:
            got += len(s.recv(1 << 20))
        assert wait_for(lambda: srv.call(lambda: req.output_buffered) == 0, 5)
        srv.call(req.send_reply_end)
        with pytest.raises(ClosedError):
            srv.call(lambda: req.output_buffered)


def test_on_sent_never_runs_when_the_client_leaves(srv: Srv) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    with s:
        s.connect(("127.0.0.1", srv.port))
        s.sendall(b"GET /leave HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(1000)
        assert wait_for(lambda: srv.reqs, 5)
    assert wait_for(lambda: srv.call(lambda: srv.reqs[0].closed), 5)
    assert wait_for(lambda: not server_room._sending, 5)
    # The first chunks may have been written (into the kernel's buffers, a few MiB on
    # loopback) before the client left; the callbacks of the rest never ran.
    assert srv.events == list(range(len(srv.events))), srv.events
    assert len(srv.events) < 10, srv.events


def test_on_sent_closing_the_request(srv: Srv) -> None:
    head, n = slow_client(srv, "/closes", pause=0.001)
    assert head.startswith(b"HTTP/1.1 200")
    assert wait_for(lambda: srv.events == ["first", "late"], 5), srv.events
    assert n > 2 * MiB  # the close ended the reply after everything queued


def test_on_sent_closing_the_server() -> None:
    s = LoopThread()
    seen: list[str] = []

    def route(req: EvHttpRequest, _arg: object) -> None:
        req.send_reply_start(200)
        req.send_reply_chunk(b"a" * 1000, on_sent=s.http.close)
        req.send_reply_chunk(b"b" * MiB, on_sent=lambda: seen.append("late"))

    s.http.set_gencb(route)
    s.start()
    try:
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            c.settimeout(5)
            while c.recv(65536):
                pass
        assert wait_for(lambda: s.http.closed, 5)
        assert wait_for(lambda: EvHttpRequest.live() == 0, 5)
        assert wait_for(lambda: not server_room._sending, 5)
        assert seen in ([], ["late"])
    finally:
        s.stop()


def test_send_reply_chunk_arguments(srv: Srv) -> None:
    box: list[BaseException] = []

    def route(req: EvHttpRequest, _arg: object) -> None:
        try:
            req.send_reply_chunk(b"x", on_sent=lambda: None)
        except RuntimeError as exc:  # no reply started
            box.append(exc)
        req.send_reply_start(200)
        try:
            req.send_reply_chunk(b"x", on_sent=3)  # type: ignore[arg-type]
        except TypeError as exc:
            box.append(exc)
        req.send_reply_chunk(b"", on_sent=lambda: box.append(ValueError("empty chunk sent")))
        req.send_reply_end()

    srv.call(srv.http.set_gencb, route)
    status, _, body = request(srv.port, "GET", "/")
    assert (status, body) == (200, b"")
    assert wait_for(lambda: len(box) == 3, 5)
    assert [type(e) for e in box] == [RuntimeError, TypeError, ValueError]
