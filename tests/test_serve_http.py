"""``serve_http``, ``send_chunk`` and ``iter_body`` under asyncio (``aio``) and trio
(``trio_guest``): each behaviour written once and run on both frameworks (``serve_helpers``);
clients are blocking sockets on 127.0.0.1 in a worker thread, every wait bounded.

What only one framework has stays in its own file (``test_aio.py``, ``test_trio_guest.py``,
``test_trio_stream.py``).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from http_helpers import exchange, exchange_many, post, read_to_eof, request, wait_for
from libevent_api import bind_loopback, core, extra
from serve_helpers import Framework, Serving, frameworks

from bitcoin_support import (
    ClosedError,
    EventBase,
    EvHttp,
    EvHttpRequest,
    obtain_event_base,
    obtain_evhttp,
)


@pytest.fixture
def server(base: EventBase) -> Iterator[tuple[EvHttp, int]]:
    http = obtain_evhttp(base)
    yield http, http.bind("127.0.0.1", 0)
    http.close()


# -- answers


@frameworks
def test_concurrent_requests_each_get_their_own_answer(
    fw: Framework, base: EventBase, server: tuple[EvHttp, int]
) -> None:
    http, port = server
    seen: set[int] = set()

    async def handler(req: EvHttpRequest) -> bytes:
        n = int(req.path.rsplit("/", 1)[1])
        seen.add(n)
        await fw.sleep(0.05 * (n % 3) / 2)  # answers come back out of order
        return b"echo %d:" % n + req.body

    def client(port: int, _serving: Serving) -> list[bytes]:
        return exchange_many(port, [post(f"/r/{i}", b"body%d" % i) for i in range(100)])

    results = fw.serve(base, http, port, handler, client)
    assert seen == set(range(100))
    for i, response in enumerate(results):
        assert response.startswith(b"HTTP/1.1 200 OK\r\n"), response[:60]
        assert response.endswith(b"\r\n\r\necho %d:body%d" % (i, i)), response[-60:]


@frameworks
def test_errors_and_own_replies(fw: Framework, base: EventBase, server: tuple[EvHttp, int]) -> None:
    http, port = server

    async def handler(req: EvHttpRequest) -> Any:
        await fw.sleep(0)
        if req.path == "/raise":
            raise RuntimeError("handler failed")
        if req.path == "/none":
            return None
        if req.path == "/own":
            req.send_reply(201, body=b"made", content_type="text/plain")
            return None
        if req.path == "/notbytes":
            return 42
        return bytearray(b"ok")

    def client(port: int, _serving: Serving) -> list[bytes]:
        paths = ("/raise", "/none", "/own", "/notbytes", "/")
        return [exchange(port, post(p, b"")) for p in paths]

    raised, none, own, notbytes, ok = fw.serve(base, http, port, handler, client)
    assert raised.startswith(b"HTTP/1.1 500 ")
    assert none.startswith(b"HTTP/1.1 500 ")
    assert notbytes.startswith(b"HTTP/1.1 500 ")
    assert own.startswith(b"HTTP/1.1 201 ") and own.endswith(b"made")
    assert ok.startswith(b"HTTP/1.1 200 ") and ok.endswith(b"\r\n\r\nok")


async def _content_typed(req: EvHttpRequest) -> bytes | bytearray:
    if req.path == "/own":
        req.output_headers["Content-Type"] = "application/json"
        return b"{}"
    if req.path == "/bytearray":
        return bytearray(b"raw")
    return b"plain bytes"


@frameworks
def test_returned_bytes_are_octet_stream_unless_the_handler_says(
    fw: Framework, base: EventBase, server: tuple[EvHttp, int]
) -> None:
    """Not libevent's ``text/html; charset=ISO-8859-1``: the handler's own type when it set one."""
    http, port = server

    def client(port: int, _serving: Serving) -> list[tuple[int, str, bytes]]:
        out = []
        for path in ("/plain", "/own", "/bytearray"):
            status, headers, body = request(port, "GET", path)
            out.append((status, headers.get("content-type", ""), body))
        return out

    plain, own, raw = fw.serve(base, http, port, _content_typed, client)
    assert plain == (200, "application/octet-stream", b"plain bytes")
    assert own == (200, "application/json", b"{}")
    assert raw == (200, "application/octet-stream", b"raw")


# -- cancellation


@frameworks
def test_the_handler_is_cancelled_when_the_client_leaves(
    fw: Framework, base: EventBase, server: tuple[EvHttp, int]
) -> None:
    http, port = server
    started: list[EvHttpRequest] = []
    events: list[str] = []

    async def handler(req: EvHttpRequest) -> bytes:
        started.append(req)
        try:
            await fw.sleep(30)
        except fw.cancelled:
            events.append("cancelled")
            assert req.closed
            raise
        return b"too late"

    def client(port: int, _serving: Serving) -> float:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            assert wait_for(lambda: bool(started), 10)
            t0 = time.monotonic()
        assert wait_for(lambda: bool(events), 10)
        return time.monotonic() - t0

    elapsed = fw.serve(base, http, port, handler, client)
    assert events == ["cancelled"]
    assert elapsed < 5
    assert EvHttpRequest.live() == 0


@frameworks
def test_cancelled_serve_http_answers_503(
    fw: Framework, base: EventBase, server: tuple[EvHttp, int]
) -> None:
    """The handler still running gets 503, and so do requests after serve_http ended."""
    http, port = server
    started: list[EvHttpRequest] = []

    async def handler(req: EvHttpRequest) -> bytes:
        started.append(req)
        await fw.sleep(3600)
        raise AssertionError("unreachable")

    def client(port: int, serving: Serving) -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(post("/", b""))
            assert wait_for(lambda: bool(started), 10)
            serving.stop()
            during = read_to_eof(sock)
        after = exchange(port, post("/", b""))
        return during, after

    during, after = fw.serve(base, http, port, handler, client)
    assert during.startswith(b"HTTP/1.1 503 ")
    assert after.startswith(b"HTTP/1.1 503 ")


@frameworks
def test_bad_arguments(fw: Framework, base: EventBase) -> None:
    async def handler(req: EvHttpRequest) -> None:
        pass

    async def main() -> None:
        with pytest.raises(TypeError, match="evhttp"):
            await fw.serve_http("x", handler)

    fw.run(base, main)


# -- closing the server while handlers run

N = 3  # handlers held when the server closes
HELD = b"GET /held HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


class Closing:
    """A base to run trio or asyncio on, a server on it, and how to close that server.

    Three ways: ``EvHttp.close()`` on a server Python owns (it frees its connections at once),
    closing an ``EvHttp.from_address`` wrapper of a host's evhttp (the host keeps the
    connections), and closing an ``EventBase.from_address`` wrapper with the server made on it.
    """

    def __init__(self, how: str) -> None:
        self.host_base: int | None = None
        self.host_http: int | None = None
        if how == "wrapper":  # a host's evhttp (libevent's own API), wrapped
            self.host_base = core.event_base_new()
            self.host_http = extra.evhttp_new(self.host_base)
            self.port = bind_loopback(self.host_http)
            self.base = EventBase.from_address(self.host_base)
            self.http = EvHttp.from_address(self.host_http)
            self.close: Callable[[], None] = self.http.close
            return
        self.base = obtain_event_base()
        if how == "server":
            self.http = obtain_evhttp(self.base)
            self.close = self.http.close
        else:  # the server is made on a wrapper of the base, and the wrapper is closed
            wrapper = EventBase.from_address(self.base.address)
            self.http = obtain_evhttp(wrapper)
            self.close = wrapper.close
        self.port = self.http.bind("127.0.0.1", 0)

    def free(self) -> None:
        if not self.base.closed:
            self.base.close()
        if self.host_http is not None:
            extra.evhttp_free(self.host_http)
            core.event_base_free(self.host_base)


@pytest.fixture(params=["server", "wrapper", "base"])
def closing(request: pytest.FixtureRequest) -> Iterator[Closing]:
    s = Closing(request.param)
    yield s
    s.free()


@frameworks
def test_close_cancels_every_handler_and_the_clients_get_503(
    fw: Framework, closing: Closing
) -> None:
    """Every handler is cancelled (plain ones too, not only those in ``iter_body`` or
    ``send_chunk``) and each client reads the 503 the server queued, before its connection goes."""
    started: list[EvHttpRequest] = []
    cancelled: list[str] = []

    async def handler(req: EvHttpRequest) -> bytes:
        started.append(req)
        try:
            await fw.sleep(30)
        except fw.cancelled:
            cancelled.append("cancelled")
            raise
        return b"too late"

    def client(port: int, serving: Serving) -> tuple[list[bytes], float]:
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(N)]
        try:
            for sock in socks:
                sock.sendall(HELD)
            assert wait_for(lambda: len(started) == N, 10)
            t0 = time.monotonic()
            serving.call(closing.close)
            responses = [read_to_eof(sock) for sock in socks]
        finally:
            for sock in socks:
                sock.close()
        assert wait_for(lambda: len(cancelled) == N, 10)
        return responses, time.monotonic() - t0

    responses, elapsed = fw.serve(closing.base, closing.http, closing.port, handler, client)
    assert len(responses) == N
    for data in responses:
        assert data.startswith(b"HTTP/1.1 503 "), data  # not EOF: the reply came first
    assert cancelled == ["cancelled"] * N
    assert elapsed < 10
    assert EvHttpRequest.live() == 0


# -- streaming: send_chunk and iter_body (SPEC section 4)

KiB = 1024


@frameworks
def test_send_chunk_keeps_the_queue_under_high_water(
    fw: Framework, base: EventBase, server: tuple[EvHttp, int]
) -> None:
    http, port = server
    after: list[int] = []
    chunk = b"s" * (64 * KiB)
    total = 8 << 20

    async def handler(req: EvHttpRequest) -> None:
        req.send_reply_start(200)
        for _ in range(total // len(chunk)):
            await fw.send_chunk(req, chunk, high_water=256 * KiB)
            after.append(req.output_buffered)
        req.send_reply_end()

    def client(port: int, _serving: Serving) -> int:
        got = 0
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            while data := sock.recv(16 * KiB):
                got += len(data)
                time.sleep(0.0002)  # a slow reader
        return got

    got = fw.serve(base, http, port, handler, client)
    assert got > total
    assert len(after) == total // len(chunk)
    assert max(after) < 256 * KiB
    assert EvHttpRequest.live() == 0


@frameworks
@pytest.mark.parametrize("leave", ["after_reading", "abort_unread"])
def test_send_chunk_when_the_client_leaves(
    fw: Framework, base: EventBase, server: tuple[EvHttp, int], leave: str
) -> None:
    """The waiting producer learns it: ClosedError from send_chunk, or its task cancelled."""
    http, port = server
    ended: list[str] = []

    async def handler(req: EvHttpRequest) -> None:
        req.send_reply_start(200)
        try:
            while True:
                await fw.send_chunk(req, b"x" * (256 * KiB), high_water=64 * KiB)
        except ClosedError:
            ended.append("closed")
        except fw.cancelled:
            ended.append("cancelled")
            raise

    def client(port: int, _serving: Serving) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            if leave == "after_reading":
                assert sock.recv(1000)
            else:  # never read: the queue fills and the producer waits; then a reset
                time.sleep(0.3)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert wait_for(lambda: bool(ended), 10)

    fw.serve(base, http, port, handler, client)
    assert ended in (["closed"], ["cancelled"])
    assert EvHttpRequest.live() == 0


@frameworks
def test_send_chunk_arguments(fw: Framework, base: EventBase) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="high_water"):
            await fw.send_chunk(None, b"x", high_water=0)

    fw.run(base, main)


@frameworks
@pytest.mark.parametrize("size", [4, 1024])
def test_iter_body_reads_a_body_sent_in_pauses(
    fw: Framework, base: EventBase, server: tuple[EvHttp, int], size: int
) -> None:
    http, port = server
    seen: list[bytes] = []
    pieces = [bytes([65 + i]) * size for i in range(5)]

    async def handler(req: EvHttpRequest) -> bytes:
        async for piece in fw.iter_body(req):
            seen.append(piece)
        return b"%d bytes" % sum(map(len, seen))

    def client(port: int, _serving: Serving) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            for piece in pieces:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                time.sleep(0.05)
            sock.sendall(b"0\r\n\r\n")
            return read_to_eof(sock)

    reply = fw.serve(base, http, port, handler, client, stream_body=True)
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"%d bytes" % (5 * size))
    assert b"".join(seen) == b"".join(pieces)
    assert len(seen) >= 3  # pieces as they came, not the whole body at the end


@frameworks
@pytest.mark.parametrize("framing", ["chunked", "content_length"])
def test_iter_body_over_the_limit(
    fw: Framework, base: EventBase, server: tuple[EvHttp, int], framing: str
) -> None:
    """413 for the client; a handler already reading gets ClosedError or is cancelled."""
    http, port = server
    errors: list[BaseException] = []

    async def handler(req: EvHttpRequest) -> bytes:
        try:
            async for _piece in fw.iter_body(req):
                pass
        except (ClosedError, fw.cancelled) as exc:  # serve_http cancels it: the request is gone
            errors.append(exc)
            raise
        return b"unreachable"

    def client(port: int, _serving: Serving) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            if framing == "chunked":  # refused in the middle of the body
                http_head = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                sock.sendall(http_head + b"200\r\n" + b"x" * 0x200 + b"\r\n")
                time.sleep(0.05)
                sock.sendall(b"400\r\n" + b"y" * 0x400 + b"\r\n")
            else:  # over the limit by its Content-Length, sent whole
                sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 65536\r\n\r\n")
                sock.sendall(b"z" * 65536)
            reply = read_to_eof(sock)
        if framing == "chunked":
            assert wait_for(lambda: bool(errors), 10)
        return reply

    http.set_max_body_size(1000 if framing == "chunked" else 4 * KiB)
    reply = fw.serve(base, http, port, handler, client, stream_body=True)
    assert reply.startswith(b"HTTP/1.1 413")
    if framing == "chunked":
        assert errors and (isinstance(errors[0], fw.cancelled) or "413" in str(errors[0]))
    assert EvHttpRequest.live() == 0
