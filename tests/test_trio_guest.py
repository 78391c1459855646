"""trio in guest mode on an EventBase: bitcoin_support.trio_guest."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from typing import Any

import outcome
import pytest
import trio

import bitcoin_support
from bitcoin_support import (
    EV_PERSIST,
    EV_READ,
    EV_TIMEOUT,
    EVLOOP_NO_EXIT_ON_EMPTY,
    EventBase,
    LibEvent,
    obtain_event,
    trio_guest,
)


def test_run_returns_the_result(base: EventBase) -> None:
    async def main(x: int, y: int) -> tuple[int, float]:
        await trio.sleep(0.01)
        return x + y, trio.current_time()

    total, _ = trio_guest.run(base, main, 40, 2)
    assert total == 42
    assert trio_guest.run(base, main, 1, 1)[0] == 2  # the base can host another run


def test_run_raises_the_exception(base: EventBase) -> None:
    class Boom(Exception):
        pass

    async def main() -> None:
        await trio.sleep(0)
        raise Boom("from trio")

    with pytest.raises(Boom, match="from trio") as info:
        trio_guest.run(base, main)
    assert info.traceback[-1].name == "main"  # the original traceback


def test_run_raises_keyboard_interrupt_from_a_signal(base: EventBase) -> None:
    cleaned: list[str] = []

    # Sent once the run has started (trio's handler in place): earlier, Python's own handler
    # would raise KeyboardInterrupt into the set-up itself, which no run can promise to survive.
    timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))

    async def main() -> None:
        try:
            timer.start()
            await trio.sleep_forever()
        finally:
            cleaned.append("finally")

    try:
        with pytest.raises(KeyboardInterrupt):
            trio_guest.run(base, main)
    finally:
        timer.cancel()
    assert cleaned == ["finally"]  # delivered to the task, as trio.run does


def test_run_raises_keyboard_interrupt_raised_by_the_task(base: EventBase) -> None:
    async def main() -> None:
        await trio.sleep(0)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trio_guest.run(base, main)


def test_a_failing_libevent_callback_cancels_the_run(base: EventBase) -> None:
    cancelled: list[bool] = []

    def boom(ev: LibEvent, arg: object) -> None:
        raise ValueError("libevent callback")

    async def main() -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(True)
            raise

    obtain_event(base, -1, 0, boom).add(0.02)
    with pytest.raises(ValueError, match="libevent callback"):
        trio_guest.run(base, main)
    assert cancelled == [True]


def test_trio_and_a_libevent_timer_interleave(base: EventBase) -> None:
    order: list[str] = []

    def tick(ev: LibEvent, arg: object) -> None:
        order.append("libevent")

    timer = obtain_event(base, -1, EV_PERSIST, tick)
    timer.add(0.01)

    async def main() -> None:
        for _ in range(6):
            order.append("trio")
            await trio.sleep(0.025)

    trio_guest.run(base, main)
    timer.delete()
    assert order.count("trio") == 6 and order.count("libevent") >= 6
    # Both kinds keep running while the other waits: neither runs all of its turns in a row.
    first_trio_after_libevent = order.index("trio", order.index("libevent"))
    assert first_trio_after_libevent < len(order) - 1
    assert order.index("libevent") < len(order) - order[::-1].index("trio")


def test_wait_event_readable_timeout_and_cancel(base: EventBase) -> None:
    a, b = socket.socketpair()

    async def main() -> tuple[int, int, int, float]:
        timed_out = await trio_guest.wait_event(base, -1, 0, timeout=0.01)
        t0 = trio.current_time()
        with trio.move_on_after(0.05):
            await trio_guest.wait_event(base, a, EV_READ)  # nothing to read: cancelled
        waited = trio.current_time() - t0
        b.send(b"x")
        readable = await trio_guest.wait_event(base, a, EV_READ | EV_PERSIST, timeout=5)
        idle = await trio_guest.wait_event(base, a.fileno(), EV_READ, timeout=5)
        return timed_out, readable, idle, waited

    with a, b:
        timed_out, readable, idle, waited = trio_guest.run(base, main)
    assert timed_out == EV_TIMEOUT
    assert readable == EV_READ and idle == EV_READ
    assert 0.04 <= waited < 2
    assert LibEvent.live() == 0  # each wait's event was freed, the cancelled one included


def test_start_on_a_loop_the_test_dispatches(base: EventBase) -> None:
    """As a C host does: start(), then the host runs the base until done() stops it."""
    results: list[outcome.Outcome[Any]] = []
    ticks: list[int] = []

    async def main() -> str:
        await trio.sleep(0.05)
        return "done"

    def done(result: outcome.Outcome[Any]) -> None:
        results.append(result)
        base.loopbreak()

    timer = obtain_event(base, -1, EV_PERSIST, lambda ev, arg: ticks.append(1))
    timer.add(0.01)
    trio_guest.start(base, main, done=done)
    t0 = time.monotonic()
    base.loop(EVLOOP_NO_EXIT_ON_EMPTY)
    timer.delete()
    assert results and results[0].unwrap() == "done"
    assert len(results) == 1 and ticks and time.monotonic() - t0 < 10


def test_bad_arguments(base: EventBase) -> None:
    async def main() -> None:
        pass

    with pytest.raises(TypeError, match="base"):
        trio_guest.run("not a base", main)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="done"):
        trio_guest.start(base, main, done=None)  # type: ignore[arg-type]
    # serve_http's: test_serve_http.py::test_bad_arguments, on both frameworks.


def test_example_runs() -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "examples" / "trio_guest.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--seconds", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    counts = dict(line.split(": ") for line in proc.stdout.splitlines()[1:])
    assert all(int(v) > 0 for v in counts.values()), proc.stdout


def test_start_on_a_closed_base_raises_closed_error() -> None:
    # Regression: start() only read base.call_soon_threadsafe, which checks nothing.
    b = bitcoin_support.obtain_event_base()
    b.close()
    outcomes: list[object] = []

    async def main() -> None:
        pass

    with pytest.raises(bitcoin_support.ClosedError, match=r"trio_guest\.start"):
        trio_guest.start(b, main, done=outcomes.append)
    assert outcomes == []


def test_a_dummy_or_closed_base_is_refused_before_trio_starts(base: EventBase) -> None:
    # Regression: on a dummy base start() began a guest run that trio then found abandoned
    # ("Trio guest run got abandoned"), since the base cannot run trio's ticks.
    dummy = bitcoin_support.obtain_event_base(dummy=True)
    closed = bitcoin_support.obtain_event_base()
    closed.close()
    outcomes: list[object] = []

    async def main() -> None:
        pass

    async def wait_on(other: EventBase) -> None:
        await trio_guest.wait_event(other, -1, 0, timeout=0.01)

    try:
        with pytest.raises(bitcoin_support.DummyHandleError, match=r"^trio_guest\.start: "):
            trio_guest.start(dummy, main, done=outcomes.append)
        with pytest.raises(bitcoin_support.DummyHandleError, match=r"^trio_guest\.run: "):
            trio_guest.run(dummy, main)
        with pytest.raises(bitcoin_support.ClosedError, match=r"^trio_guest\.run: "):
            trio_guest.run(closed, main)
        with pytest.raises(bitcoin_support.DummyHandleError, match=r"^trio_guest\.wait_event: "):
            trio_guest.run(base, wait_on, dummy)
        with pytest.raises(bitcoin_support.ClosedError, match=r"^trio_guest\.wait_event: "):
            trio_guest.run(base, wait_on, closed)
        with pytest.raises(TypeError, match=r"^trio_guest\.wait_event: base must be an EventBase,"):
            trio_guest.run(base, wait_on, "not a base")
    finally:
        dummy.close()
    assert outcomes == []
