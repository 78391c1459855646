"""Fuzz the request framer directly (cdefs/http_framing.c through ``bs_framer_run``): no socket.

Every input is framed whole and fed in pieces of 1 to 16 bytes; both must give the same
messages, the same refusal and the same bytes left, and the events must follow the framer's
grammar (a head, then its body data and framing, then its end; nothing after a refusal; every
byte named by exactly one event or left over).
Run: python fuzz/fuzz_framing.py -dict=fuzz/http.dict -runs=200000
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports():
    from framing_events import frame

PREFIXES = (
    b"",
    b"GET / HTTP/1.1\r\n",
    b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
)


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    step = 1 + data[0] % 16
    payload = PREFIXES[data[1] % len(PREFIXES)] + data[2:]
    max_head = 0 if data[0] < 128 else 64 + data[0]
    whole = frame(payload, 0, max_head)
    split = frame(payload, step, max_head)
    assert whole.messages == split.messages, (payload, step)
    assert whole.refused == split.refused, (payload, step)
    if not whole.refused:
        assert whole.left == split.left, (payload, step)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
