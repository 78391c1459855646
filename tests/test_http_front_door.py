"""The HTTP front door (SPEC section 4): every connection of the default server and of the echo
server is framed strictly; pipelined requests each get their own body and answer; refusals are
answered, followed by a lingering close; a host's evhttp gets back what Python installed.

Raw sockets on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import ctypes
import itertools
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from http_helpers import LoopThread, open_fds, request, wait_for
from test_echo import Echo
from test_evhttp_from_address import Host, extra

from bitcoin_support import EvHttp, EvHttpRequest, _registry

LIMIT = 1024


class Srv(LoopThread):
    """The default server with whole and stream routes; records the paths it served."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []
        self.http.set_max_body_size(LIMIT)
        self.http.set_timeout(5.0)
        self.http.set_cb("/w", self.whole)
        self.http.set_cb("/s", self.stream, stream_body=True)
        self.http.set_gencb(self.whole)

    def whole(self, req: EvHttpRequest, _arg: object) -> None:
        self.seen.append(req.path)
        req.send_reply(200, body=b"w" + req.path.encode() + b":" + req.body)

    def stream(self, req: EvHttpRequest, _arg: object) -> None:
        self.seen.append(req.path)
        got: list[bytes] = []

        def piece(r: EvHttpRequest, chunk: bytes) -> None:
            got.append(chunk)
            if chunk == b"" and not r.closed:
                r.send_reply(200, body=b"s:" + b"".join(got))

        req.on_body(piece)


@pytest.fixture(scope="module")
def srv() -> Iterator[Srv]:
    s = Srv()
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def echo() -> Iterator[Echo]:
    e = Echo("--max-body", str(LIMIT))
    assert request(e.port, "POST", "/", b"warm")[2] == b"warm"  # its first request's set-up
    yield e
    e.stop()


def read_response(s: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    """One response with a Content-Length body; bytes past it stay in ``buf``."""
    while b"\r\n\r\n" not in buf:
        got = s.recv(65536)
        if not got:
            raise EOFError(bytes(buf))
        buf += got
    end = buf.index(b"\r\n\r\n")
    head = bytes(buf[:end])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(buf) < end + 4 + length:
        got = s.recv(65536)
        if not got:
            raise EOFError(bytes(buf))
        buf += got
    body = bytes(buf[end + 4 : end + 4 + length])
    del buf[: end + 4 + length]
    return int(head.split(b" ")[1]), body


def closed_after(s: socket.socket, buf: bytearray) -> bool:
    """True when the server closes after what was read (nothing else answered)."""
    s.settimeout(8)
    try:
        while True:
            got = s.recv(65536)
            if not got:
                return not buf
            buf += got
    except ConnectionResetError:
        return not buf
    except TimeoutError:
        return False


def exchange(port: int, data: bytes) -> tuple[int, bool]:
    """Send ``data`` at once; the first status, and whether the connection then closed with
    nothing more answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        buf = bytearray()
        status, _ = read_response(s, buf)
        return status, closed_after(s, buf)


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
CHUNKED = b"POST /w HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"

# Each class of refusal: what the default server read another way before (SPEC section 4).
REFUSED: dict[str, tuple[bytes, int]] = {
    **{
        f"chunk-size-{name}": (CHUNKED + size + b"\r\n\r\n" + SMUGGLED, 400)
        for name, size in {
            "plus": b"+0",
            "minus": b"-0",
            "hex-prefix": b"0x0",
            "space": b" 0",
            "tab": b"\t0",
            "space-ext": b"0 ;a",
            "nul": b"0\x00",
            "forty-zeros": b"0" * 40,
        }.items()
    },
    "chunk-data-no-crlf": (CHUNKED + b"5\r\nhelloXX0\r\n\r\n" + SMUGGLED, 400),
    "empty-line-before-last-chunk": (CHUNKED + b"5\r\nhello\r\n\r\n0\r\n\r\n" + SMUGGLED, 400),
    "bare-lf-chunk-line": (CHUNKED + b"5\nhello\r\n0\r\n\r\n" + SMUGGLED, 400),
    "nul-in-length": (
        b"POST /w HTTP/1.1\r\nHost: x\r\nContent-Length: 0\x0035\r\n\r\n" + SMUGGLED,
        400,
    ),
    "nul-in-coding": (
        b"POST /w HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\x00, gzip\r\n\r\n"
        b"0\r\n\r\n" + SMUGGLED,
        400,
    ),
    "nul-starts-a-line": (b"GET /w HTTP/1.1\r\n\x00Content-Length: 5\r\n\r\n" + SMUGGLED, 400),
    "control-in-value": (b"GET /w HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n", 400),
    "bare-lf-head": (b"GET /w HTTP/1.1\nHost: x\n\n", 400),
    "obs-fold": (b"GET /w HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", 400),
    "two-empty-lines-first": (b"\r\n\r\nGET /w HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "cl-and-te": (
        b"POST /w HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n0\r\n\r\n" + SMUGGLED,
        400,
    ),
    "over-the-limit": (
        b"POST /w HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1)
        + b"a" * (LIMIT + 1),
        413,
    ),
    "chunked-over-the-limit": (CHUNKED + b"%x\r\n" % (LIMIT + 1) + b"a" * (LIMIT + 1), 413),
}

# Legal framings the default server refused or misread before: served, with their bodies.
SERVED: dict[str, tuple[bytes, bytes]] = {
    "chunk-extensions": (
        CHUNKED + b'5;name=value\r\nhello\r\n3;a="q\\"x";b\r\nabc\r\n0\r\n\r\n',
        b"w/w:helloabc",
    ),
    "chunk-extension-bws": (CHUNKED + b"2; n = v\r\nok\r\n0\r\n\r\n", b"w/w:ok"),
    "trailers": (CHUNKED + b"2\r\nok\r\n0\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\n", b"w/w:ok"),
    "empty-line-first": (b"\r\nGET /w HTTP/1.1\r\nHost: x\r\n\r\n", b"w/w:"),
}


def check_refused(port: int, data: bytes, status: int) -> None:
    before = open_fds()
    got, closed = exchange(port, data)
    assert (got, closed) == (status, True)
    # a normal request on a new connection, and no descriptor left behind
    assert request(port, "POST", "/w", b"next")[0] == 200
    assert wait_for(lambda: open_fds() <= before, 8), (open_fds(), before)


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_by_the_default_server(srv: Srv, name: str) -> None:
    data, status = REFUSED[name]
    srv.seen.clear()
    check_refused(srv.port, data, status)
    assert "/smuggled" not in srv.seen


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_by_the_echo_server(echo: Echo, name: str) -> None:
    data, status = REFUSED[name]
    before = open_fds(echo.proc.pid)
    got, closed = exchange(echo.port, data)
    assert (got, closed) == (status, True)
    assert request(echo.port, "POST", "/", b"next")[2] == b"next"
    assert wait_for(lambda: open_fds(echo.proc.pid) <= before, 8)


@pytest.mark.parametrize("name", list(SERVED))
def test_legal_framings_served(srv: Srv, name: str) -> None:
    data, body = SERVED[name]
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(data)
        assert read_response(s, bytearray()) == (200, body)


def test_legal_chunk_extensions_served_by_the_echo_server(echo: Echo) -> None:
    data = SERVED["chunk-extensions"][0].replace(b"/w", b"/")
    with socket.create_connection(("127.0.0.1", echo.port), timeout=5) as s:
        s.sendall(data)
        assert read_response(s, bytearray()) == (200, b"helloabc")


# Requests of each kind, and the answer each gets.
KINDS: dict[str, tuple[bytes, bytes]] = {
    "whole-get": (b"GET /w HTTP/1.1\r\nHost: x\r\n\r\n", b"w/w:"),
    "whole-cl0": (b"POST /w HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", b"w/w:"),
    "whole-sized": (b"POST /w HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nwhole", b"w/w:whole"),
    "whole-chunked": (CHUNKED + b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", b"w/w:abcde"),
    "stream-get": (b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n", b"s:"),
    "stream-sized": (b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", b"s:hello"),
    "stream-chunked": (
        b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nstre\r\n2;e\r\n"
        b"am\r\n0\r\nT: 1\r\n\r\n",
        b"s:stream",
    ),
}


def pipeline(port: int, kinds: tuple[str, ...]) -> None:
    data = b"".join(KINDS[k][0] for k in kinds)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        buf = bytearray()
        got = [read_response(s, buf) for _ in kinds]
    assert got == [(200, KINDS[k][1]) for k in kinds], kinds


def test_two_pipelined_requests_of_every_kind(srv: Srv) -> None:
    for kinds in itertools.product(KINDS, repeat=2):
        pipeline(srv.port, kinds)


def test_three_pipelined_requests_across_routes(srv: Srv) -> None:
    for kinds in itertools.product(
        ("whole-get", "whole-chunked", "stream-get", "stream-sized", "stream-chunked"), repeat=3
    ):
        pipeline(srv.port, kinds)


def test_pipelined_requests_sent_byte_by_byte(srv: Srv) -> None:
    kinds = ("whole-get", "stream-sized", "whole-chunked", "stream-chunked", "whole-sized")
    data = b"".join(KINDS[k][0] for k in kinds)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            s.send(data[i : i + 1])
        buf = bytearray()
        got = [read_response(s, buf) for _ in kinds]
    assert got == [(200, KINDS[k][1]) for k in kinds]


def send_big(s: socket.socket, head: bytes, total: int, chunked: bool, box: list[str]) -> None:
    """The client keeps sending its body whatever the server says (as many clients do)."""
    try:
        s.sendall(head)
        piece = b"a" * 65536
        sent = 0
        while sent < total:
            s.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n" if chunked else piece)
            sent += len(piece)
        box.append("sent")
    except OSError as exc:
        box.append(f"send failed: {exc!r}")


@pytest.mark.parametrize("path", ["/w", "/s"])
@pytest.mark.parametrize("chunked", [False, True], ids=["sized", "chunked"])
def test_ten_megabytes_past_the_limit_then_the_413(srv: Srv, path: str, chunked: bool) -> None:
    total = 10 * 1024 * 1024
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % total
    head = b"POST %s HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n" % (path.encode(), framing)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        box: list[str] = []
        sender = threading.Thread(target=send_big, args=(s, head, total, chunked, box))
        sender.start()
        sender.join(15)
        assert box == ["sent"]  # the server read (and dropped) the body: no reset
        assert read_response(s, bytearray())[0] == 413
    assert request(srv.port, "POST", "/w", b"next")[0] == 200


def head_of(size: int) -> bytes:
    """A GET head of exactly ``size`` bytes, line ends included."""
    base = b"GET /w HTTP/1.1\r\nHost: x\r\nX-Pad: \r\n\r\n"
    return base.replace(b"X-Pad: ", b"X-Pad: " + b"p" * (size - len(base)))


def test_header_limit_at_its_edges() -> None:
    lt = LoopThread()
    lt.http.set_max_headers_size(8192)
    lt.http.set_gencb(lambda req, arg: req.send_reply(200, body=b"ok"))
    with lt:
        for size, status in ((8191, 200), (8192, 200), (8193, 431)):
            got, closed = exchange(lt.port, head_of(size))
            assert got == status, size
            assert closed == (status != 200)
        # 455 lines of 18 bytes: over 8192 once their CRLFs count
        many = b"GET / HTTP/1.1\r\n" + b"X-Header-Ab: 1234\r\n" * 455 + b"\r\n"
        assert exchange(lt.port, many) == (431, True)


def test_strict_framing_can_be_turned_off() -> None:
    lt = LoopThread()
    lt.http.set_strict_framing(False)
    lt.http.set_gencb(lambda req, arg: req.send_reply(200, body=req.body))
    with lt:
        # libevent's own reader takes a chunk size with a leading "+": lax, as documented
        data = CHUNKED + b"+2\r\nok\r\n0\r\n\r\n"
        with socket.create_connection(("127.0.0.1", lt.port), timeout=5) as s:
            s.sendall(data)
            assert read_response(s, bytearray()) == (200, b"ok")


# ---- a host's evhttp ----

GATE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
gate_calls: list[int] = []


@GATE
def keep_alive_gate(req: int, arg: int) -> int:
    """A host's gate answering 401 with keep-alive, as examples/c_host's does."""
    gate_calls.append(arg)
    extra.evhttp_send_reply(req, 401, b"no", None)
    return 1


@pytest.fixture
def host() -> Iterator[Host]:
    h = Host()
    yield h
    h.free()


def host_exchange(host: Host, s: socket.socket, data: bytes, buf: bytearray) -> tuple[int, bytes]:
    def call() -> tuple[int, bytes]:
        s.sendall(data)
        return read_response(s, buf)

    return host.run_until(host.pool.submit(call))


def test_gate_answering_a_stream_request_then_the_next_on_the_same_connection(
    host: Host,
) -> None:
    gate = ctypes.cast(keep_alive_gate, ctypes.c_void_p).value
    _registry.set_gate(host.http, gate, 5)
    try:
        http = EvHttp.from_address(host.http)
        http.set_strict_framing(True)
        ran: list[str] = []
        http.set_cb("/s", lambda req, arg: ran.append("py"), stream_body=True)
        gate_calls.clear()
        s = host.run_until(host.pool.submit(socket.create_connection, ("127.0.0.1", host.port), 5))
        with s:
            buf = bytearray()
            post = b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            assert host_exchange(host, s, post, buf)[0] == 401
            assert host_exchange(host, s, post, buf)[0] == 401
            get = b"GET /host HTTP/1.1\r\nHost: x\r\n\r\n"
            assert host_exchange(host, s, get, buf) == (200, b"")
        assert gate_calls == [5, 5] and ran == []
        http.close()
    finally:
        _registry.set_gate(host.http, 0, 0)


def test_detach_takes_back_the_framer(host: Host) -> None:
    http = EvHttp.from_address(host.http)
    http.set_cb("/up", lambda req, arg: req.send_reply(200, body=b"py"), stream_body=True)
    assert host.get("/up") == (200, b"py")
    old = host.run_until(host.pool.submit(socket.create_connection, ("127.0.0.1", host.port), 5))
    with old:
        buf = bytearray()
        get = b"GET /host HTTP/1.1\r\nHost: x\r\n\r\n"
        assert host_exchange(host, old, get, buf) == (200, b"")  # a framed connection
        http.close()  # the wrapper's record is freed: no callback may point at it
        for _ in range(3):
            assert host.get("/host") == (200, b"")  # new connections
            assert host_exchange(host, old, get, buf) == (200, b"")  # the old one
        chunked = b"POST /host HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        assert host_exchange(host, old, chunked, buf) == (200, b"")
    time.sleep(0.05)
    assert host.get("/host") == (200, b"")
