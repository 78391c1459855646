"""The Python examples of the README and of every page under docs/ run as they are written, so
the docs cannot rot.

Each ```python block runs in a child interpreter with the few names it leaves to the reader
(``derive_key``, ``use``, ``payload``, ``sock``) defined; blocks that serve until stopped get
SIGINT after a short while, the way a reader stops them, and servers on a known port, or on the
port they print, are asked one request first.
"""

from __future__ import annotations

import http.client
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# Each example once, in the order the pages show them (the README's tour repeats a few).
BLOCKS = list(
    dict.fromkeys(
        block
        for page in PAGES
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    )
)

PRELUDE = textwrap.dedent(
    """
    import socket
    derive_key = lambda: bytes(range(32))
    use = lambda raw: None
    payload = b"payload"
    sock, _peer = socket.socketpair()
    _peer.send(b"readme")  # something for the event-loop example to read
    """
)


def _ids() -> list[str]:
    return [
        re.sub(r"\W+", "_", b.split("import", 2)[-1].split("\n", 1)[0]).strip("_")[:40]
        for b in BLOCKS
    ]


# The request asked of a server that printed its port: path, and the body it must answer.
PRINTED_PORT_CHECKS = {"/hello": ("/hello", b"hello readme"), "/upload": ("/upload", b"6 bytes")}


def _ask(port: int, deadline: float, path: str = "/") -> tuple[int, bytes] | None:
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("POST", path, body=b"readme")
                resp = conn.getresponse()
                return resp.status, resp.read()
            finally:
                conn.close()
        except OSError:
            time.sleep(0.05)
    return None


def test_the_docs_have_python_examples() -> None:
    assert len(BLOCKS) >= 7


def test_the_docs_pages_link_to_pages_that_exist() -> None:
    missing = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            if not (page.parent / target).exists():
                missing.append(f"{page.relative_to(ROOT)}: {target}")
    assert missing == []


@pytest.mark.parametrize("code", BLOCKS, ids=_ids())
def test_docs_example_runs(code: str) -> None:
    serves = "dispatch()" in code or "serve_http" in code
    if serves and re.search(r"bind\(\"127\.0\.0\.1\", 0\)", code):
        assert "listening on" in code, "a server on port 0 must print the port it got"
    port = re.search(r"bind\(\"127\.0\.0\.1\", (\d{4,5})\)", code)
    proc = subprocess.Popen(
        [sys.executable, "-c", PRELUDE + code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # no terminal: getpass reads the line given on stdin
        env={
            **{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},  # as run by hand
            "PYTHONWARNINGS": "ignore::getpass.GetPassWarning",
        },
    )
    assert proc.stdin is not None
    proc.stdin.write(b"correct horse\n")
    proc.stdin.close()
    proc.stdin = None  # given: communicate() must not flush it
    answer = None
    printed = None
    if serves:
        deadline = time.monotonic() + 10
        if port:
            answer = _ask(int(port.group(1)), deadline)
        elif "listening on" in code:  # a server on port 0 says which port it got
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 10)
            first = proc.stdout.readline().decode() if ready else "(nothing printed in 10 s)"
            m = re.match(r"listening on http://127\.0\.0\.1:(\d+)/", first)
            assert m, first
            path, expected = PRINTED_PORT_CHECKS["/hello" if "/hello" in code else "/upload"]
            printed = _ask(int(m.group(1)), deadline, path), expected
        else:
            time.sleep(1.0)
        os.kill(proc.pid, signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the example did not stop")
    text = err.decode(errors="replace")
    if serves:
        # stopped by the interrupt (trio reports it inside its nursery's exception group)
        lines = [ln.strip(" |+-") for ln in text.strip().splitlines()]
        last = [ln for ln in lines if ln][-1:]
        assert last == ["KeyboardInterrupt"], text
    else:
        assert proc.returncode == 0, text
    if port:
        assert answer is not None and answer[0] == 200 and answer[1] == b"echo: readme", answer
    if printed is not None:
        assert printed[0] == (200, printed[1])
    if "on_readable" in code:
        # The callback read what woke it: it ran once for the data, not again and again.
        assert out.decode().splitlines().count("read 6 bytes, flags 2") == 1, out
