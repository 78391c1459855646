"""Differential fuzzing of the request framer against h11, seeded from llhttp's test cases.

Each input is framed by the package's framer (cdefs/http_framing.c, no socket) and by h11 as a
server reads it. A finding is a message the framer reads in full where h11 reads another one:
another method, target or body length, a message h11 has not finished, or bytes h11 refuses for
their framing. h11 refusing for something else (a missing Host) or the framer refusing what h11
takes (it is stricter: no BWS before a chunk extension, one empty line before a request line) is
not a finding.
Inputs: raw bytes, an llhttp case (tests/data/llhttp) with fuzzer bytes spliced in, or raw bytes
with a Host line added after their first line.
Run: python fuzz/fuzz_framing_h11.py -dict=fuzz/http.dict -runs=200000
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "bench"))

with atheris.instrument_imports():
    import h11
    from framing_events import METHODS, frame

from http_conformance import load_cases  # noqa: E402

SEEDS = [c.data for c in load_cases()]
NOT_FRAMING = ("Host", "Receive buffer too long")


@dataclass
class Ref:
    method: bytes
    target: bytes
    body: int = 0
    complete: bool = False


def reference(data: bytes) -> tuple[list[Ref], str | None, bool]:
    """h11's messages, its error (or None), and whether it stopped for a connection close."""
    conn = h11.Connection(h11.SERVER)
    if data:
        conn.receive_data(data)  # (empty data would tell h11 the connection closed)
    out: list[Ref] = []
    try:
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA or ev is h11.PAUSED or isinstance(ev, h11.ConnectionClosed):
                return out, None, False
            if isinstance(ev, h11.Request):
                out.append(Ref(bytes(ev.method), bytes(ev.target)))
            elif isinstance(ev, h11.Data):
                out[-1].body += len(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                out[-1].complete = True
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return out, None, True
                conn.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        return out, str(exc), False
    except h11.LocalProtocolError:
        return out, None, True  # h11 will not read on (Connection: close)


def check(data: bytes) -> None:
    ours = frame(data)
    for at in reversed(ours.skips):  # RFC 9112 2.2: h11 does not ignore it, the framer does
        data = data[:at] + data[at + 2 :]
    refs, error, closing = reference(data)
    for i, m in enumerate(ours.messages):
        if not m.complete:
            break
        if i >= len(refs):
            if closing or (error is not None and any(s in error for s in NOT_FRAMING)):
                break
            raise AssertionError(f"message {i}: the framer read it, h11 did not ({error})")
        r = refs[i]
        assert r.complete, f"message {i}: the framer ended it, h11 reads on"
        if m.method >= 0:
            assert r.method == METHODS[m.method].encode(), (i, m, r)
        assert r.target == m.target.encode("latin-1"), (i, m, r)
        assert r.body == m.body, (i, m, r)


def TestOneInput(data: bytes) -> None:
    if len(data) < 3:
        return
    mode, pick, rest = data[0] % 3, data[1] | data[2] << 8, data[3:]
    if mode == 1:
        seed = SEEDS[pick % len(SEEDS)]
        at = pick % (len(seed) + 1)
        rest = seed[:at] + rest + seed[at + len(rest) // 2 :]
    elif mode == 2:
        first, sep, tail = rest.partition(b"\r\n")
        rest = first + sep + b"Host: h\r\n" + tail if sep else rest
    check(rest)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
