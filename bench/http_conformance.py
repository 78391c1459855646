"""The package's HTTP server against llhttp's request test cases (the conformance table).

Each request case of ``shared/conformance/llhttp/*.md`` (strict mode only: ``type`` is
``request``, no pause) is turned into bytes as llhttp's own ``md-test.ts`` does, sent over a raw
socket on 127.0.0.1 to an evhttp server of this package (a plain one, and one with a
``stream_body`` route, whose connections go through the package's framing filter), and the
server's answer is recorded next to llhttp's verdict (from the case's ``log`` block, and from
``httptools``, which embeds llhttp, when it is installed).

Checked (``tests/test_http_conformance.py``): every case llhttp rejects as a framing error
(length, chunk, header name) is refused by the package too, or is in ``DIVERGENCES`` with the
reason libevent 2.1 prevents it; and no case makes the server answer a request that llhttp
would have read as something else (a body, or bytes after an error).

    python bench/http_conformance.py [--llhttp DIR] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_DIR = HERE.parent / "tests" / "data" / "llhttp"  # from shared/conformance/llhttp

# llhttp error codes that are framing errors: how long a message is, or whose header it is.
FRAMING_CODES = {4, 11, 12, 15}  # Content-Length, chunk size, Transfer-Encoding
FRAMING_REASONS = ("header token", "header field char", "chunk")  # names, chunk syntax
PAUSES = {21, 22, 23}  # llhttp stops (CONNECT, Upgrade): not a rejection

# Framing errors llhttp reports that the default server answers anyway, with the reason; none
# since every server frames its connections strictly (set_strict_framing(False) opts out).
DIVERGENCES: dict[str, str] = {}

MODES = ("default", "lax", "stream_body")  # lax: set_strict_framing(False), the opt-out


@dataclass
class Case:
    name: str
    where: str
    data: bytes
    urls: list[str]  # llhttp: the request targets it read, in order
    completed: int  # llhttp: messages complete before an error or pause
    error: tuple[int, str] | None  # llhttp's error (code, reason); pauses are not errors
    log: str = ""
    httptools: str = ""  # "ok", "error: ..." or "" when httptools is missing

    @property
    def framing(self) -> bool:
        if self.error is None:
            return False
        code, reason = self.error
        return code in FRAMING_CODES or any(r in reason for r in FRAMING_REASONS)


@dataclass
class Outcome:
    statuses: list[int] = field(default_factory=list)
    closed: bool = False
    seen: list[str] = field(default_factory=list)  # the targets the callback was given

    @property
    def answered(self) -> int:
        return sum(1 for s in self.statuses if s < 300)

    def describe(self) -> str:
        parts = [f"{self.answered} answered"] if self.answered else []
        parts += [str(s) for s in self.statuses if s >= 300]
        parts.append("closed" if self.closed else "open")
        return ", ".join(parts)


# ---- reading the cases, as llhttp's md-test.ts does


def _js(code: str) -> str:
    """The few ${...} expressions the cases use: 'x'.repeat(n) and string concatenation."""
    m = re.fullmatch(r"""\s*(['"])(.*?)\1\.repeat\((\d+)\)\s*""", code)
    if m:
        return m.group(2) * int(m.group(3))
    raise ValueError(f"unsupported inline expression: {code}")


def to_bytes(block: str) -> bytes:
    s = block[:-1] if block.endswith("\n") else block  # JS /\n$/: the very end only
    s = re.sub(r"\\(\r\n|\r|\n)", "", s)
    s = re.sub(r"\r\n|\r|\n", "\r\n", s)
    s = s.replace("\\r", "\r").replace("\\n", "\n").replace("\\t", "\t").replace("\\f", "\f")
    s = re.sub(r"\\x([0-9a-fA-F]+)", lambda m: chr(int(m.group(1), 16)), s)
    s = re.sub(r"\\([0-7]{1,3})", lambda m: chr(int(m.group(1), 8)), s)
    s = re.sub(r"\$\{(.+?)\}", lambda m: _js(m.group(1)), s)
    return s.encode("utf-8")  # as Node.js writes a JS string


# a case: its metadata, its http block (to the line holding only ```), maybe some prose, its log
_BLOCK = re.compile(
    r"<!--\s*meta=(\{.*?\})\s*-->\s*```http\n(.*?\n)```\n((?:(?!<!--).)*?)```log\n(.*?)```", re.S
)


def load_cases(folder: Path = DEFAULT_DIR) -> list[Case]:
    cases = []
    for md in sorted(folder.glob("*.md")):
        text = md.read_text()
        heading = ""
        headings = [(m.start(), m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)]
        for m in _BLOCK.finditer(text):
            meta = json.loads(m.group(1))
            if meta.get("type") != "request" or meta.keys() & {"pause", "skip", "skipBody"}:
                continue
            for pos, h in headings:
                if pos < m.start():
                    heading = h
            line = text.count("\n", 0, m.start()) + 1
            log = m.group(4)
            urls = re.findall(r'span\[url\]="(.*)"', log)
            completed = log.count("message complete")
            err = re.search(r'error code=(\d+) reason="(.*)"', log)
            error = None
            if err and int(err.group(1)) not in PAUSES:
                error = (int(err.group(1)), err.group(2))
            cases.append(
                Case(
                    heading.strip("`").strip(),
                    f"{md.name}:{line}",
                    to_bytes(m.group(2)),
                    urls,
                    completed,
                    error,
                    log,
                )
            )
    _httptools(cases)
    return cases


def _httptools(cases: list[Case]) -> None:
    try:
        import httptools  # type: ignore[import-untyped]
    except ImportError:
        return
    for case in cases:
        parser = httptools.HttpRequestParser(object())
        try:
            parser.feed_data(case.data)
            case.httptools = "ok"
        except httptools.HttpParserUpgrade:
            case.httptools = "ok (upgrade)"
        except httptools.HttpParserError as exc:
            case.httptools = f"error: {exc}"


# ---- the package's servers


class Server:
    """An evhttp server of the package on a loop thread: 200 with the target as body."""

    def __init__(self, mode: str) -> None:
        stream = mode == "stream_body"
        from bitcoin_support import EVLOOP_NO_EXIT_ON_EMPTY, obtain_event_base, obtain_evhttp

        self.base = obtain_event_base()
        self.http = obtain_evhttp(self.base)
        self.http.set_timeout(1.0)
        self.http.set_allowed_methods(
            "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PATCH"
        )
        self.port = self.http.bind("127.0.0.1", 0)
        self.seen: dict[int, list[str]] = {}  # by the client's port
        if mode == "lax":
            self.http.set_strict_framing(False)
        self.http.set_gencb(self._stream if stream else self._whole, stream_body=stream)
        self._thread = threading.Thread(
            target=self.base.loop, args=(EVLOOP_NO_EXIT_ON_EMPTY,), daemon=True
        )
        self._thread.start()

    def _note(self, req: Any) -> None:
        self.seen.setdefault(req.peer[1], []).append(req.uri)

    def _whole(self, req: Any, _arg: object) -> None:
        self._note(req)
        req.send_reply(200, body=b"ok")

    def _stream(self, req: Any, _arg: object) -> None:
        self._note(req)

        def piece(r: Any, chunk: bytes) -> None:
            if not chunk and not r.closed:
                r.send_reply(200, body=b"ok")

        req.on_body(piece)

    def close(self) -> None:
        self.base.call_soon_threadsafe(self.base.loopbreak)
        self._thread.join(10)
        self.http.close()
        self.base.close()


_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})[^\r\n]*\r\n")


def statuses(got: bytes) -> list[int]:
    """The status codes of the responses in ``got``, read one after the other."""
    found, pos = [], 0
    while (m := _STATUS.match(got, pos)) is not None:
        found.append(int(m.group(1)))
        end = got.find(b"\r\n\r\n", m.end() - 2)
        if end < 0:
            break
        length = re.search(rb"(?im)^content-length:\s*(\d+)", got[m.end() : end])
        pos = end + 4 + (int(length.group(1)) if length else 0)
    return found


def exchange(server: Server, data: bytes, quiet: float = 0.3, limit: float = 3.0) -> Outcome:
    """Send ``data`` and read until the server closes, or says nothing for ``quiet`` seconds."""
    out = Outcome()
    with socket.create_connection(("127.0.0.1", server.port), timeout=limit) as s:
        port = s.getsockname()[1]
        got = b""
        try:
            s.sendall(data)
        except OSError:
            pass
        deadline = time.monotonic() + limit
        s.settimeout(quiet)
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            except OSError:
                out.closed = True
                break
            if not chunk:
                out.closed = True
                break
            got += chunk
    out.statuses = statuses(got)
    out.seen = server.seen.pop(port, [])
    return out


@dataclass
class Row:
    case: Case
    outcome: Outcome

    @property
    def llhttp(self) -> str:
        if self.case.error is None:
            return f"{self.case.completed} message(s)"
        code, reason = self.case.error
        return f"{self.case.completed} then error {code} ({reason})"

    @property
    def refused(self) -> bool:
        """The package did not answer the request llhttp rejects (nor anything after it)."""
        return self.outcome.answered <= self.case.completed

    @property
    def beyond_llhttp(self) -> bool:
        """The server answered a request that llhttp did not accept as one: past its error, or
        a target other than llhttp's at that position."""
        urls = self.case.urls[: self.case.completed]
        seen = self.outcome.seen[: self.outcome.answered]
        return any(i >= len(urls) or seen[i] != urls[i] for i in range(len(seen)))

    @property
    def body_as_request(self) -> bool:
        """The server answered a request made of bytes that llhttp read as a message body."""
        if not self.beyond_llhttp or "span[body]" not in self.case.log:
            return False
        urls = self.case.urls
        seen = self.outcome.seen[: self.outcome.answered]
        return any(i >= len(urls) or seen[i] != urls[i] for i in range(len(seen)))

    @property
    def agrees(self) -> bool:
        if self.beyond_llhttp:
            return False
        if self.case.error is None:
            return self.outcome.answered == self.case.completed
        return self.refused


def run(cases: list[Case], mode: str) -> list[Row]:
    """Every case on its own connection, 16 at a time (each waits for the server's silence)."""
    from concurrent.futures import ThreadPoolExecutor

    server = Server(mode)
    try:
        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(lambda c: exchange(server, c.data), cases))
        return [Row(c, o) for c, o in zip(cases, outcomes, strict=True)]
    finally:
        server.close()


def table(results: dict[str, list[Row]]) -> str:
    """The table of docs/http-conformance.md: every case, llhttp's verdict, what each server did."""
    lines = [
        "| case | llhttp (strict) | httptools | default server | lax (opt-out) | stream_body |",
        "|---|---|---|---|---|---|",
    ]
    for rows in zip(*(results[m] for m in MODES), strict=True):
        r = rows[0]
        marks = "".join("" if x.agrees else " **≠**" for x in rows[:1])
        cells = " | ".join(x.outcome.describe() + ("" if x.agrees else " ≠") for x in rows)
        lines.append(
            f"| {r.case.where} {r.case.name.replace('|', '/')}{marks} | {r.llhttp} "
            f"| {r.case.httptools or '-'} | {cells} |"
        )
    return "\n".join(lines)


def totals(rows: list[Row]) -> dict[str, int]:
    framing = [r for r in rows if r.case.framing]
    return {
        "cases": len(rows),
        "agree": sum(r.agrees for r in rows),
        "llhttp rejects": sum(r.case.error is not None for r in rows),
        "framing rejects": len(framing),
        "framing refused": sum(r.refused for r in framing),
        "package stricter": sum(r.case.error is None and not r.agrees for r in rows),
        "package laxer": sum(r.case.error is not None and not r.refused for r in rows),
        "answered beyond llhttp": sum(r.beyond_llhttp for r in rows),
        "body answered as request": sum(r.body_as_request for r in rows),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llhttp", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--markdown", action="store_true", help="print the whole table")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent))
    cases = load_cases(args.llhttp)
    results = {mode: run(cases, mode) for mode in MODES}
    for mode, rows in results.items():
        print(mode, totals(rows))
        for r in rows:
            if not r.agrees:
                print(
                    f"  {r.case.where:28} {r.case.name[:40]:40} llhttp: {r.llhttp[:50]:50} "
                    f"package: {r.outcome.describe()}"
                )
    if args.markdown:
        print(table(results))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
