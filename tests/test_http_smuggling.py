"""Request smuggling refused before any callback runs (SPEC section 4): 400, the connection
closed after the reply, the server still serving, and no descriptor left open.

Each case carries a smuggled second request where a parser that frames the first one
differently would find it; it must never be answered.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from http_helpers import LoopThread, open_fds, wait_for
from http_helpers import request as http_request

from bitcoin_support import EvHttpRequest

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


def handler(req: EvHttpRequest, srv: LoopThread) -> None:
    srv.seen.append(req.path)  # type: ignore[attr-defined]
    req.send_reply(200, body=req.body)


def stream_handler(req: EvHttpRequest, srv: LoopThread) -> None:
    srv.seen.append(req.path)  # type: ignore[attr-defined]
    got: list[bytes] = []

    def piece(r: EvHttpRequest, chunk: bytes) -> None:
        got.append(chunk)
        if not chunk:
            r.send_reply(200, body=b"".join(got))

    req.on_body(piece)


@pytest.fixture(scope="module", params=["whole", "stream_body"])
def srv(request: pytest.FixtureRequest) -> Iterator[LoopThread]:
    """The plain server, and one whose connections go through the stream_body framing."""
    s = LoopThread()
    s.seen = []  # type: ignore[attr-defined]
    if request.param == "whole":
        s.http.set_gencb(handler, s)
    else:
        s.http.set_gencb(stream_handler, s, stream_body=True)
    s.http.set_timeout(2.0)
    s.start()
    assert http_request(s.port)[0] == 200
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def still_serving(srv: LoopThread) -> Iterator[None]:
    """After each case: a normal request on a new connection gets 200, no descriptor leaks."""
    wait_for(lambda: EvHttpRequest.live() == 0, 3)
    before = open_fds()
    srv.seen.clear()  # type: ignore[attr-defined]
    yield
    status, _, body = http_request(srv.port, "POST", "/after", b"still here")
    assert (status, body) == (200, b"still here")
    assert wait_for(lambda: open_fds() <= before, 5), (open_fds(), before)
    assert srv.error is None


def exchange(port: int, data: bytes) -> tuple[bytes, bool]:
    """Send ``data``; read until the server closes (True) or goes quiet for a second (False)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.settimeout(1.0)
        chunks = []
        try:
            while True:
                got = s.recv(65536)
                if not got:
                    return b"".join(chunks), True
                chunks.append(got)
        except TimeoutError:
            return b"".join(chunks), False
        except ConnectionResetError:
            return b"".join(chunks), True


CASES = {
    "cl-and-te": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "te-and-cl": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 40\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "two-lengths": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 36\r\n\r\n"
    + SMUGGLED,
    "length-plus-sign": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +0\r\n\r\n" + SMUGGLED,
    "length-hex": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x0\r\n\r\n" + SMUGGLED,
    "length-empty": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n" + SMUGGLED,
    "te-gzip-chunked": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    b"0\r\n\r\n" + SMUGGLED,
    "te-identity": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n" + SMUGGLED,
    "te-twice": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "te-chunked-x": b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n" + SMUGGLED,
    "name-space-before-colon": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length : 36\r\n\r\n"
    + SMUGGLED,
    "name-with-space": b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n" + SMUGGLED,
    "name-with-slash": b"GET / HTTP/1.1\r\nHost: x\r\nX/Y: v\r\n\r\n" + SMUGGLED,
    "name-empty": b"GET / HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n" + SMUGGLED,
    "head-with-length": b"HEAD / HTTP/1.1\r\nHost: x\r\nContent-Length: 36\r\n\r\n" + SMUGGLED,
    "head-chunked": b"HEAD / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n" + SMUGGLED,
}


@pytest.mark.parametrize("raw", list(CASES.values()), ids=list(CASES))
def test_smuggling_refused(srv: LoopThread, raw: bytes) -> None:
    got, closed = exchange(srv.port, raw)
    assert got.startswith(b"HTTP/1.1 400 "), got[:200]
    assert got.count(b"HTTP/1.") == 1, got  # the smuggled request is never answered
    assert b"\r\nConnection: close\r\n" in got
    assert closed
    assert srv.seen == []  # type: ignore[attr-defined]  # no callback ran


def test_unrouted_path_refused_too() -> None:
    """A server with no generic callback checks the framing of requests no route matches."""
    s = LoopThread()
    s.http.set_cb("/only", lambda req, _a: req.send_reply(200))
    s.start()
    try:
        got, closed = exchange(s.port, CASES["te-gzip-chunked"])
        assert got.startswith(b"HTTP/1.1 400 ") and closed
        got, closed = exchange(s.port, b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 404 ")  # like libevent's own 404
    finally:
        s.stop()


@pytest.mark.parametrize(
    "raw",
    [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Odd!#$%&'*+-.^_`|~: v\r\n\r\n",
    ],
    ids=["same-length-twice", "chunked-any-case", "head-length-zero", "token-punctuation"],
)
def test_unambiguous_framings_served(srv: LoopThread, raw: bytes) -> None:
    got, closed = exchange(srv.port, raw)
    assert got.startswith(b"HTTP/1.1 200 "), got[:200]
    assert not closed
