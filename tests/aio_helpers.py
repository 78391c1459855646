"""Helpers of the asyncio tests: the two loops a scenario runs on, to compare them (uvloop's
tests do the same), and the strict leak check of the aio test files."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from bitcoin_support import aio, live_counts

#: asyncio's own selector loop and ``aio.EventLoop``, by name.
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.SelectorEventLoop,
    "aio": aio.new_event_loop,
}
KINDS = tuple(LOOPS)


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new loop of ``kind`` (a key of ``LOOPS``)."""
    return LOOPS[kind]()


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """The live counts back where they were the moment a test ends, with no collection first
    (stricter than conftest's check): import it into a test file to apply it there."""
    before = live_counts()
    yield
    assert live_counts() == before
