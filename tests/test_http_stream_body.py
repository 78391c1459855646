"""Request bodies in pieces (SPEC section 4, "Streaming"): ``stream_body=True`` routes and
``req.on_body``, with bodies sent in pauses over raw sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from http_helpers import LoopThread, open_fds, request, wait_for

from bitcoin_support import EvHttpRequest
from bitcoin_support import _server_stream as server_room

MAX_BODY = 100_000


class Srv(LoopThread):
    def __init__(self) -> None:
        super().__init__()
        self.log: list[Any] = []
        self.errors: list[str] = []
        self.http.set_max_body_size(MAX_BODY)
        self.http.set_timeout(5.0)
        self.http.set_cb("/up", self.up, stream_body=True)
        self.http.set_cb("/early", self.early, stream_body=True)
        self.http.set_cb("/whole", self.whole)
        self.http.set_cb("/echo-chunked", self.echo_chunked, stream_body=True)
        self.http.set_gencb(self.up, stream_body=True)

    def up(self, req: EvHttpRequest, _arg: object) -> None:
        """Collects the pieces; answers with their count and total at the body's end."""
        self.log.append(
            (
                "callback",
                req.path,
                req.input_headers.get("Content-Length"),
                req.input_headers.get("Transfer-Encoding"),
            )
        )
        try:
            req.body  # noqa: B018
        except RuntimeError:
            self.log.append("body refused")
        got: list[bytes] = []

        def piece(r: EvHttpRequest, chunk: bytes) -> None:
            self.log.append(("piece", chunk))
            got.append(chunk)
            if chunk == b"":
                body = b"".join(got)
                r.send_reply(
                    200, body=b"%d pieces, %d bytes: %s" % (len(got) - 1, len(body), body[:20])
                )

        req.on_body(piece)

    def early(self, req: EvHttpRequest, _arg: object) -> None:
        """Answers before the body is read; keeps taking the pieces."""
        req.on_body(lambda r, chunk: self.log.append(("late piece", chunk, r.closed)))
        req.send_reply(201, body=b"early")

    def echo_chunked(self, req: EvHttpRequest, _arg: object) -> None:
        """Both ways at once: each piece goes back as a chunk while the body is still read."""
        req.send_reply_start(200)

        def piece(r: EvHttpRequest, chunk: bytes) -> None:
            if r.closed:
                return
            if chunk:
                r.send_reply_chunk(chunk, on_sent=lambda: self.log.append(("sent", chunk)))
            else:
                r.send_reply_end()

        req.on_body(piece)

    def whole(self, req: EvHttpRequest, _arg: object) -> None:
        req.send_reply(200, body=req.body)


@pytest.fixture(scope="module")
def srv() -> Iterator[Srv]:
    s = Srv()
    s.start()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def still_serving(srv: Srv) -> Iterator[None]:
    wait_for(lambda: EvHttpRequest.live() == 0, 3)
    before = open_fds()
    srv.log.clear()
    yield
    status, _, body = request(srv.port, "POST", "/whole", b"still here")
    assert (status, body) == (200, b"still here")
    assert wait_for(lambda: EvHttpRequest.live() == 0, 5)
    assert wait_for(lambda: open_fds() <= before, 5), (open_fds(), before)
    assert wait_for(lambda: not server_room._bodies, 5)
    assert srv.error is None


def connect(srv: Srv) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    return s


def read_response(s: socket.socket) -> tuple[int, bytes]:
    """One response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        got = s.recv(65536)
        if not got:
            raise EOFError(data)
        data += got
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = int(next(h.split(b":")[1] for h in lines if h.lower().startswith(b"content-length:")))
    while len(rest) < length:
        rest += s.recv(65536)
    return int(head.split(b" ")[1]), rest[:length]


def closed(s: socket.socket) -> bool:
    s.settimeout(3)
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def test_content_length_body_in_pauses(srv: Srv) -> None:
    with connect(srv) as s:
        s.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\n\r\nhello")
        assert wait_for(lambda: ("piece", b"hello") in srv.log, 5)
        # the callback ran with the headers, before the body was complete
        assert srv.log[0] == ("callback", "/up", "15", None)
        assert srv.log[1] == "body refused"
        time.sleep(0.05)
        s.sendall(b" big ")
        assert wait_for(lambda: ("piece", b" big ") in srv.log, 5)
        s.sendall(b"world")
        assert read_response(s) == (200, b"3 pieces, 15 bytes: hello big world")
        assert srv.log[-1] == ("piece", b"")
        # the connection serves the next request
        s.sendall(b"POST /whole HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nnext")
        assert read_response(s) == (200, b"next")


def test_chunked_body_in_pauses(srv: Srv) -> None:
    with connect(srv) as s:
        s.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        assert wait_for(lambda: srv.log and srv.log[0][0] == "callback", 5)
        assert srv.log[0] == ("callback", "/up", None, "chunked")
        time.sleep(0.05)
        s.sendall(b"lo\r\n")
        time.sleep(0.05)
        s.sendall(b"A\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n")
        assert read_response(s)[0] == 200
        pieces = b"".join(e[1] for e in srv.log if e[0] == "piece")
        assert pieces == b"hello0123456789"
        assert srv.log[-1] == ("piece", b"")
        # pipelined right after: a stream request, then a whole one
        s.sendall(
            b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"POST /whole HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz"
        )
        assert read_response(s) == (200, b"1 pieces, 3 bytes: abc")
        assert read_response(s) == (200, b"xyz")


def test_generic_callback_streams(srv: Srv) -> None:
    with connect(srv) as s:
        s.sendall(b"PUT /any/where HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
        assert read_response(s) == (200, b"1 pieces, 2 bytes: ok")
    assert srv.log[0][:2] == ("callback", "/any/where")


def test_over_the_limit_mid_stream_gets_413_and_closes(srv: Srv) -> None:
    with connect(srv) as s:
        s.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n" % 40_000 + b"c" * 40_000 + b"\r\n"
        s.sendall(chunk * 2)
        assert wait_for(lambda: sum(len(e[1]) for e in srv.log if e[0] == "piece") >= 80_000, 5)
        s.sendall(chunk)  # past 100 000 bytes
        status, _ = read_response(s)
        assert status == 413
        assert closed(s)
    time.sleep(0.1)
    assert ("piece", b"") not in srv.log  # no end: fn saw no more pieces
    assert sum(len(e[1]) for e in srv.log if e[0] == "piece") <= MAX_BODY


def test_announced_length_over_the_limit(srv: Srv) -> None:
    with connect(srv) as s:
        s.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\nabc")
        assert read_response(s)[0] == 413
        assert closed(s)
    assert not [e for e in srv.log if e[0] == "piece"]


def test_early_reply_then_the_body_then_the_next_request(srv: Srv) -> None:
    with connect(srv) as s:
        s.sendall(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01")
        assert read_response(s) == (201, b"early")  # before the body's end
        s.sendall(b"23456789")
        assert wait_for(lambda: srv.log and srv.log[-1][1] == b"", 5), srv.log
        assert b"".join(e[1] for e in srv.log) == b"0123456789"
        assert all(e[2] for e in srv.log)  # the request was closed by then
        # the rest of the body was not read as a request: the next one is served
        s.sendall(b"POST /whole HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nafter")
        assert read_response(s) == (200, b"after")


def test_client_leaves_mid_body(srv: Srv) -> None:
    with connect(srv) as s:
        s.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nsome")
        assert wait_for(lambda: ("piece", b"some") in srv.log, 5)
    time.sleep(0.2)
    assert ("piece", b"") not in srv.log


def test_bad_chunk_mid_stream_gets_400(srv: Srv) -> None:
    with connect(srv) as s:
        s.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        assert wait_for(lambda: ("piece", b"abc") in srv.log, 5)
        s.sendall(b"+5\r\nhello\r\n0\r\n\r\n")  # a size libevent's strtoll would take
        assert read_response(s)[0] == 400
        assert closed(s)


def test_expect_continue_falls_back_to_a_whole_body(srv: Srv) -> None:
    raw = b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\nbody"
    with connect(srv) as s:
        s.sendall(raw)
        data = b""
        while b"pieces" not in data:
            data += s.recv(65536)
        assert b"1 pieces, 4 bytes: body" in data


def test_chunked_reply_streams_back_while_the_body_is_read(srv: Srv) -> None:
    with connect(srv) as s:
        s.sendall(b"POST /echo-chunked HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\nping")
        data = b""
        while b"ping" not in data:
            data += s.recv(65536)
        assert data.startswith(b"HTTP/1.1 200")  # the reply's head and first chunk: body not done
        assert wait_for(lambda: ("sent", b"ping") in srv.log, 5)
        s.sendall(b"pong")
        while b"pong" not in data:
            data += s.recv(65536)
        s.sendall(b"done")
        while not data.endswith(b"0\r\n\r\n"):
            data += s.recv(65536)
        s.sendall(b"POST /whole HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
        assert read_response(s) == (200, b"ok")
