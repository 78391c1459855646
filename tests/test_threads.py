"""The thread rule of the libevent handles: from a thread other than the one dispatching a base,
any call on the base or its handles works (when the base is not being dispatched) or raises
RuntimeError naming call_soon_threadsafe; it never crashes. Runs in a child interpreter
(``event_scenarios.py``) so that a crash fails the test instead of ending the run."""

from __future__ import annotations

import threading

import pytest
from test_reentrancy_events import run_scenario

import bitcoin_support as bs
from bitcoin_support import EV_PERSIST, EventBase, obtain_event


def test_threads_hammering_every_operation_while_the_base_dispatches() -> None:
    run_scenario("threads", "1.5", "3")


def test_a_foreign_thread_is_told_the_rule(base: EventBase) -> None:
    ev = obtain_event(base, -1, EV_PERSIST, lambda ev, arg: None)
    seen: list[BaseException] = []

    def other() -> None:
        for fn in (ev.add, ev.delete, ev.active, ev.pending, ev.close, base.now, base.close):
            try:
                fn()
            except RuntimeError as exc:
                seen.append(exc)

    def in_loop() -> None:
        t = threading.Thread(target=other)
        t.start()
        t.join(10)
        base.loopbreak()

    base.call_soon_threadsafe(in_loop)
    base.dispatch()
    assert len(seen) == 7
    assert all("call_soon_threadsafe" in str(e) for e in seen)
    assert not ev.closed and not base.closed
    # Once the loop is not running, other threads may use the base again.
    t = threading.Thread(target=ev.close)
    t.start()
    t.join(10)
    assert ev.closed
    assert bs.LibEvent.live() >= 0


def test_loop_from_a_second_thread_is_refused(base: EventBase) -> None:
    errors: list[BaseException] = []

    def second() -> None:
        with pytest.raises(RuntimeError, match="another thread") as info:
            base.loop(bs.EVLOOP_NONBLOCK)
        errors.append(info.value)

    def in_loop() -> None:
        t = threading.Thread(target=second)
        t.start()
        t.join(10)
        base.loopbreak()

    base.call_soon_threadsafe(in_loop)
    base.dispatch()
    assert len(errors) == 1
