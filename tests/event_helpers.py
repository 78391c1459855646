"""Helpers of the event tests: a do-nothing callback, a guard timer, bounded loop rounds."""

from __future__ import annotations

import time
from collections.abc import Callable

from bitcoin_support import EVLOOP_ONCE, EventBase, LibEvent, obtain_event


def nothing(ev: LibEvent, arg: object) -> None:
    """A callback that does nothing."""


def guard(base: EventBase, seconds: float = 5.0) -> LibEvent:
    """A timer that stops the loop if a test's event never comes."""
    ev = obtain_event(base, -1, 0, lambda ev, arg: base.loopbreak())
    ev.add(seconds)
    return ev


def run_until(base: EventBase, done: Callable[[], object], seconds: float = 5.0) -> None:
    """Run loop rounds until done() is true, for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    g = guard(base, seconds)
    while not done() and time.monotonic() < deadline:
        base.loop(EVLOOP_ONCE)
    g.close()
