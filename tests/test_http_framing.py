"""The request framer on its own (http_framing.c through bs_framer_run): RFC 9112, strictly.

Each case is framed whole and fed one byte at a time; both give the same events.
"""

from __future__ import annotations

import pytest
from bitcoin_support._native import ffi, lib


def frame(data: bytes, step: int = 0, max_head: int = 0) -> list[str]:
    """The framer's events for ``data`` fed in pieces of ``step`` bytes (0: at once)."""
    out = ffi.new("char[]", 65536)
    n = lib.bs_framer_run(data, len(data), step, max_head, out, 65536)
    assert n >= 0
    return ffi.string(out, n).decode("latin-1").splitlines()


def events(data: bytes, max_head: int = 0) -> list[str]:
    """Events with data and framing events merged, checked the same fed byte by byte."""
    whole = merge(frame(data, 0, max_head))
    assert merge(frame(data, 1, max_head)) == whole, data
    assert merge(frame(data, 7, max_head)) == whole, data
    return whole


def merge(evs: list[str]) -> list[str]:
    """Adjacent "D n" events summed (how bytes arrive decides how data events split); after a
    refusal, the count of bytes left (how much was fed by then) is dropped."""
    out: list[str] = []
    if any(e.startswith("X ") for e in evs):
        evs = [e for e in evs if not e.startswith("R ")]
    for e in evs:
        if e.startswith("D ") and out and out[-1].startswith("D "):
            out[-1] = f"D {int(out[-1][2:]) + int(e[2:])}"
        else:
            out.append(e)
    return out


def refused(data: bytes, max_head: int = 0) -> int | None:
    """The refusal status, or None when the framer accepted everything."""
    for e in events(data, max_head):
        if e.startswith("X "):
            return int(e[2:])
    return None


CHUNKED = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_a_plain_request() -> None:
    data = b"GET /a?b HTTP/1.1\r\nHost: a\r\n\r\n"
    assert events(data) == [f"H 0 /a?b 0 0 {len(data)}", "R 0"]


def test_sized_body_and_the_next_request() -> None:
    data = b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n"
    assert events(data) == ["H 1 /x 1 5 39", "D 5", "E", "H 0 / 0 0 18", "R 0"]


def test_chunked_body_with_extensions_and_trailers() -> None:
    body = b'5;a=b;c="q\\"x"\r\nhello\r\n3; n = v\r\nabc\r\n'
    data = CHUNKED + body + b"0\r\nX-T: 1\r\n\r\n"
    evs = events(data)
    assert evs[0].startswith("H 1 /x 2 0 ")
    assert [e for e in evs if e.startswith("D")] == ["D 5", "D 3"]
    assert evs[-2:] == ["E", "R 0"]


def test_one_empty_line_before_a_request_line_is_ignored() -> None:
    assert events(b"\r\nGET / HTTP/1.1\r\n\r\n")[:2] == ["S 2", "H 0 / 0 0 18"]
    assert refused(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n") == 400


@pytest.mark.parametrize(
    "size",
    [
        b"+0",
        b"-0",
        b"0x0",
        b" 0",
        b"\t0",
        b"0 ;a",
        b"0\x00",
        b"0" * 40,
        b"",
        b"g",
        b"0;",
        b"0;a=",
        b'0;a="x',
        b"0;=b",
        b"1" * 16,
    ],
)
def test_chunk_sizes_refused(size: bytes) -> None:
    assert refused(CHUNKED + size + b"\r\n\r\n") == 400


@pytest.mark.parametrize(
    "body",
    [
        b"5\r\nhelloX\r\n0\r\n\r\n",  # data not followed by CRLF
        b"5\r\nhello\r\n\r\n0\r\n\r\n",  # an empty line before the last chunk
        b"5\nhello\r\n0\r\n\r\n",  # a bare-LF chunk line
        b"5\r\nhello\n0\r\n\r\n",  # a bare LF after data
        b"0\r\nX-T: 1\n\r\n",  # a bare LF in trailers
        b"0\r\nbad trailer\r\n\r\n",  # not a field line
        b"0\r\nX: \x00\r\n\r\n",  # NUL in a trailer
    ],
)
def test_broken_chunked_bodies_refused(body: bytes) -> None:
    assert refused(CHUNKED + body) == 400


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nContent-Length: 0\x0035\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\x00, gzip\r\n\r\n",
        b"GET / HTTP/1.1\r\n\x00X: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n",
        b"GET / HTTP/1.1\r\nX : a\r\n\r\n",
        b"GET / HTTP/1.1\r\n: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nX\r\n\r\n",
        b"GET /  HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.2\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET\t/ HTTP/1.1\r\n\r\n",
        b"GET /\x80 HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        b"TRACE / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
)
def test_heads_refused(head: bytes) -> None:
    assert refused(head) == 400


def test_same_length_twice_is_one_length() -> None:
    data = b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"
    assert events(data)[1:] == ["D 2", "E", "R 0"]


def test_unknown_method_is_framed_with_no_index() -> None:
    assert events(b"PROPFIND / HTTP/1.1\r\n\r\n")[0].startswith("H -1 / 0 0 ")


def test_head_limit_counts_line_ends() -> None:
    head = b"GET / HTTP/1.1\r\n" + b"X-A: 12345678901\r\n" * 10 + b"\r\n"
    n = len(head)
    assert refused(head, n) is None
    assert refused(head, n - 1) == 431
    assert refused(head[:-2] + b"XY", n - 1) == 431  # refused before the head is complete


def test_incomplete_input_waits() -> None:
    assert events(b"GET / HTTP/1.1\r\nHost") == ["R 20"]
    assert events(CHUNKED + b"5\r\nhel")[-2:] == ["D 3", "R 0"]


def test_a_huge_length_saturates() -> None:
    head = b"POST / HTTP/1.1\r\nContent-Length: " + b"9" * 30 + b"\r\n\r\n"
    assert events(head)[0] == f"H 1 / 1 {1 << 62} {len(head)}"
