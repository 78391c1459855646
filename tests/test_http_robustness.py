"""Malformed and hostile clients against the package's own evhttp server, over raw sockets.

Every case is followed by a normal request that must still get 200, and the server's process
(this one: the loop runs on a thread) must be back to the open descriptors it had before.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from http_helpers import LoopThread, RawClient, open_fds, request, wait_for

from bitcoin_support import EV_TIMEOUT, ClosedError, EvHttpRequest, obtain_event

MAX_BODY = 4096
MAX_HEADERS = 16384


def handler(req: EvHttpRequest, srv: LoopThread) -> None:
    path = req.path
    if path == "/chunks":
        # A chunked reply spread over timers, for clients that leave half way.
        req.send_reply_start(200)
        req.send_reply_chunk(b"first;")
        state = {"n": 0}

        def more(ev: Any, r: EvHttpRequest) -> None:
            try:
                state["n"] += 1
                r.send_reply_chunk(b"x" * 65536)
                if state["n"] < 20:
                    ev.add(0.01)
                else:
                    r.send_reply_end()
            except ClosedError:
                srv.late_errors += 1  # type: ignore[attr-defined]

        obtain_event(srv.base, -1, EV_TIMEOUT, more, req).add(0.01)
        return
    req.output_headers.add("X-Path", path)
    req.output_headers.add("X-Params", repr(sorted(req.query_params.items())))
    req.send_reply(200, body=req.body, content_type=req.input_headers.get("Content-Type"))


@pytest.fixture(scope="module")
def srv() -> Iterator[LoopThread]:
    s = LoopThread()
    s.late_errors = 0  # type: ignore[attr-defined]
    s.http.set_gencb(handler, s)
    s.http.set_max_body_size(MAX_BODY)
    s.http.set_max_headers_size(MAX_HEADERS)
    s.http.set_timeout(1.0)
    s.start()
    assert request(s.port)[0] == 200
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def still_serving(srv: LoopThread) -> Iterator[None]:
    """After each case: a normal request gets 200 and no descriptor was left open."""
    wait_for(lambda: EvHttpRequest.live() == 0, 3)
    before = open_fds()
    yield
    status, _, body = request(srv.port, "POST", "/after", b"still here")
    assert (status, body) == (200, b"still here")
    assert wait_for(lambda: open_fds() <= before, 5), (open_fds(), before)
    assert srv.error is None


def exchange(port: int, data: bytes, *, half_close: bool = False, timeout: float = 5) -> bytes:
    """Send ``data``, optionally half-close, and read until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused the rest (over a limit): read what it answered
        if half_close:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        s.settimeout(1.5)
        try:
            while True:
                got = s.recv(65536)
                if not got:
                    break
                chunks.append(got)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def status_of(raw: bytes) -> int | None:
    if not raw.startswith(b"HTTP/1."):
        return None
    return int(raw.split(b" ", 2)[1])


def test_empty_request_then_half_close(srv: LoopThread) -> None:
    assert exchange(srv.port, b"", half_close=True) == b""


def test_request_in_one_byte_writes(srv: LoopThread) -> None:
    data = b"POST /bytes HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    with RawClient(srv.port) as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            c.send(data[i : i + 1])
        status, headers, body = c.response("POST")
    assert (status, body, headers["x-path"]) == (200, b"hello", "/bytes")


def test_trailing_space_after_version(srv: LoopThread) -> None:
    raw = exchange(srv.port, b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n")
    assert status_of(raw) == 400  # strict framing (libevent 2.1 alone takes it)


def test_absolute_uri(srv: LoopThread) -> None:
    with RawClient(srv.port) as c:
        c.send(b"GET http://example.org:8080/abs/path?q=1 HTTP/1.1\r\nHost: other\r\n\r\n")
        status, headers, _ = c.response()
    assert status == 200 and headers["x-path"] == "/abs/path"


def test_non_conformant_uri(srv: LoopThread) -> None:
    raw = exchange(srv.port, b'GET /a|b^{}`"<> HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
    assert status_of(raw) == 200  # parsed with EVHTTP_URI_NONCONFORMANT


def test_http10_keep_alive_then_close(srv: LoopThread) -> None:
    with RawClient(srv.port) as c:
        c.send(b"GET /one HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = c.response()
        assert status == 200 and headers.get("connection", "").lower() == "keep-alive"
        c.send(b"GET /two HTTP/1.0\r\n\r\n")
        status, headers, _ = c.response()
        assert status == 200 and headers["x-path"] == "/two"
        assert c.closed_by_peer()


def test_folded_headers(srv: LoopThread) -> None:
    raw = exchange(
        srv.port,
        b"GET /fold HTTP/1.1\r\nHost: x\r\nX-Long: part one\r\n  part two\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert status_of(raw) == 400  # obs-fold: strict framing refuses it (RFC 9112 5.2)


@pytest.mark.parametrize(
    "header",
    [b"X-Bad: a\rInjected: 1", b"X-Bad\r\n: v", b"X-Bad: a\0b", b"Bad Name: v"],
    ids=["cr-in-value", "crlf-in-name", "nul", "space-in-name"],
)
def test_crlf_injection_in_request_headers(srv: LoopThread, header: bytes) -> None:
    raw = exchange(
        srv.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + header + b"\r\nConnection: close\r\n\r\n"
    )
    assert status_of(raw) in (200, 400, None)
    assert b"\r\nInjected:" not in raw


@pytest.mark.parametrize(
    ("length", "status"),
    [(b"-1", 400), (b"abc", 400), (b"99999999999999999999999999", 413), (b"1 2", 400)],
)
def test_bad_content_length(srv: LoopThread, length: bytes, status: int) -> None:
    raw = exchange(
        srv.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\nabc"
    )
    assert status_of(raw) == status


def test_huge_header_over_limit(srv: LoopThread) -> None:
    raw = exchange(
        srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Huge: " + b"h" * 3_000_000 + b"\r\n\r\n"
    )
    assert status_of(raw) in (400, 413, 431, None)


def test_huge_uri_over_limit(srv: LoopThread) -> None:
    raw = exchange(srv.port, b"GET /" + b"u" * 3_000_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(raw) in (400, 413, 414, 431, None)


def test_body_over_max_body_size(srv: LoopThread) -> None:
    status, _, _ = request(srv.port, "POST", "/", b"b" * (MAX_BODY + 1))
    assert status == 413
    raw = exchange(
        srv.port,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"1000\r\n" + b"c" * 0x1000 + b"\r\n") * 2
        + b"0\r\n\r\n",
    )
    assert status_of(raw) == 413


def test_expect_100_continue_small_body(srv: LoopThread) -> None:
    with RawClient(srv.port) as c:
        c.send(
            b"POST /exp HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        line = c.file.readline()
        assert line.startswith(b"HTTP/1.1 100")
        assert c.file.readline() == b"\r\n"
        c.send(b"body")
        status, _, body = c.response("POST")
    assert (status, body) == (200, b"body")


def test_expect_100_continue_large_body(srv: LoopThread) -> None:
    with RawClient(srv.port) as c:
        c.send(
            b"POST /exp HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        status, _, _ = c.response("POST")
    assert status == 413


def test_unknown_method_and_allowed_extra_methods(srv: LoopThread) -> None:
    raw = exchange(srv.port, b"BREW /pot HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(raw) == 501
    assert request(srv.port, "OPTIONS")[0] == 501
    srv.call(srv.http.set_allowed_methods, "GET", "POST", "HEAD", "OPTIONS", "PATCH")
    try:
        assert request(srv.port, "OPTIONS")[0] == 200
        assert request(srv.port, "PATCH", body=b"p")[2] == b"p"
    finally:
        srv.call(srv.http.set_allowed_methods, "GET", "POST", "HEAD", "PUT", "DELETE")


def test_incomplete_headers_closed_by_timeout(srv: LoopThread) -> None:
    with RawClient(srv.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Partial: ")
        t0 = time.monotonic()
        assert c.closed_by_peer(timeout=5)
        assert time.monotonic() - t0 < 4


def test_head_with_a_body(srv: LoopThread) -> None:
    # libevent reads no body for HEAD: the announced bytes would be read as the next request,
    # so the request is refused as smuggling (tests/test_http_smuggling.py).
    raw = exchange(
        srv.port,
        b"HEAD /h HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    assert status_of(raw) == 400
    _, _, rest = raw.partition(b"\r\n\r\n")
    assert b"hello" not in rest


def test_client_closes_mid_body(srv: LoopThread) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        time.sleep(0.05)


def test_client_closes_mid_chunked_reply(srv: LoopThread) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"GET /chunks HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")  # RST
    assert wait_for(lambda: EvHttpRequest.live() == 0, 5)


def test_pipelined_requests_answered_in_order(srv: LoopThread) -> None:
    with RawClient(srv.port) as c:
        c.send(
            b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /p2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /p3 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        paths = [c.response()[1]["x-path"] for _ in range(3)]
    assert paths == ["/p1", "/p2", "/p3"]


@pytest.mark.parametrize(
    "chunk", [b"zz\r\nabc\r\n", b"-5\r\nabc\r\n", b"ffffffffffffffffff\r\nab\r\n"]
)
def test_bad_chunk_sizes(srv: LoopThread, chunk: bytes) -> None:
    raw = exchange(
        srv.port,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk + b"0\r\n\r\n",
    )
    assert status_of(raw) in (400, 413, None)


def test_bad_percent_escapes(srv: LoopThread) -> None:
    with RawClient(srv.port) as c:
        c.send(b"GET /a%zz%4/b%?x=%zz&y=%4&%=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = c.response()
    assert status == 200 and headers["x-path"] == "/a%zz%4/b%"
    assert "'x'" in headers["x-params"]  # undecodable escapes are kept, never a crash
