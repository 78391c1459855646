"""The framer's events (cdefs/http_framing.c through ``bs_framer_run``) as messages, for the
framing fuzzers: no socket, no server, the framer alone."""

from __future__ import annotations

from dataclasses import dataclass, field

from bitcoin_support._native import ffi, lib

OUT = 1 << 20
METHODS = ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PATCH")


@dataclass
class Message:
    """One request as the framer read it."""

    method: int
    target: str
    head_len: int
    body: int = 0  # body bytes
    complete: bool = False  # its body's end was framed


@dataclass
class Framing:
    messages: list[Message] = field(default_factory=list)
    refused: int = 0  # the refusal's status, or 0
    left: int = 0  # bytes not framed at the end
    consumed: int = 0  # bytes the events named
    skips: list[int] = field(default_factory=list)  # where an empty line before a request was


def run(data: bytes, step: int = 0, max_head: int = 0) -> list[str]:
    """The raw event lines for ``data`` fed ``step`` bytes at a time (0: at once)."""
    out = ffi.new("char[]", OUT)
    n = lib.bs_framer_run(data, len(data), step, max_head, out, OUT)
    assert 0 <= n < OUT, n
    return ffi.string(out, n).decode("latin-1").splitlines()


def frame(data: bytes, step: int = 0, max_head: int = 0) -> Framing:
    """The messages the framer read in ``data``, checking the event grammar on the way."""
    f = Framing()
    cur: Message | None = None
    for line in run(data, step, max_head):
        kind, _, rest = line.partition(" ")
        assert not f.left and (not f.refused or kind == "R"), line  # nothing after these
        if kind == "H":
            assert cur is None or cur.complete, line
            method, target, body, _length, head_len = rest.split(" ")
            cur = Message(int(method), target, int(head_len))
            f.messages.append(cur)
            f.consumed += cur.head_len
            if body == "0":
                cur.complete = True
        elif kind == "D":
            assert cur is not None and not cur.complete, line
            cur.body += int(rest)
            f.consumed += int(rest)
        elif kind == "M":
            assert cur is not None and not cur.complete, line
            f.consumed += int(rest)
        elif kind == "E":
            assert cur is not None and not cur.complete, line
            cur.complete = True
        elif kind == "S":
            assert cur is None or cur.complete, line
            f.skips.append(f.consumed)
            f.consumed += int(rest)
        elif kind == "X":
            f.refused = int(rest)
        elif kind == "R":
            f.left = int(rest)
        else:
            raise AssertionError(line)
    if not f.refused:
        assert f.consumed + f.left == len(data), (f.consumed, f.left, len(data))
    return f
