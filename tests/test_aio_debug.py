"""aio in debug mode: a handle's recorded creation traceback ends at its caller's line, as on
asyncio's own loop (``source_traceback``, ``repr(handle)``, the "created at" block in logs)."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import pytest
from aio_helpers import LOOPS

from bitcoin_support import aio


def record(kind: str) -> dict[str, Any]:
    """Schedule through each method on a debug loop; the last recorded frame of each handle,
    and the handler's context for a callback that raises."""
    out: dict[str, Any] = {}
    here = __file__

    def boom() -> None:
        raise ValueError("boom")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        contexts: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _l, ctx: contexts.append(ctx))
        line = sys._getframe().f_lineno
        handles = {
            "call_soon": (loop.call_soon(lambda: None), line + 2),
            "call_later": (loop.call_later(0, lambda: None), line + 3),
            "call_at": (loop.call_at(loop.time(), lambda: None), line + 4),
        }
        raiser = loop.call_soon(boom)
        raiser_line = sys._getframe().f_lineno - 1
        await asyncio.sleep(0.01)
        for name, (handle, expected) in handles.items():
            last = handle._source_traceback[-1]
            out[name] = (last.filename == here, last.lineno == expected)
            out[name + " repr"] = f"created at {here}:{expected}" in repr(handle)
        last = contexts[0]["source_traceback"][-1]
        out["handler"] = (last.filename == here, last.lineno == raiser_line)
        assert raiser.cancelled() is False

    runner = asyncio.Runner(debug=True, loop_factory=LOOPS[kind])
    with runner:
        runner.run(main())
    return out


def test_creation_traceback_ends_at_the_callers_line() -> None:
    ref = record("asyncio")
    got = record("aio")
    assert got == ref
    assert all(v is True or v == (True, True) for v in got.values()), got


def test_handle_created_at_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    def boom() -> None:
        raise ValueError("boom")

    async def main() -> int:
        loop = asyncio.get_running_loop()
        line = sys._getframe().f_lineno + 1
        loop.call_soon(boom)
        await asyncio.sleep(0.01)
        return line

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        line = aio.run(main(), debug=True)
    block = caplog.text.split("created at (most recent call last):", 1)[1]
    block = block.split("Traceback (most recent call last):", 1)[0]
    frames = [ln.strip() for ln in block.splitlines() if ln.strip().startswith("File ")]
    assert frames[-1].startswith(f'File "{__file__}", line {line}, in main'), frames
