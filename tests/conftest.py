"""Fixtures shared by the test files."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bitcoin_support import EventBase, obtain_event_base


@pytest.fixture
def base() -> Iterator[EventBase]:
    """A real event base, closed (with every handle made on it) after the test."""
    b = obtain_event_base()
    yield b
    b.close()
