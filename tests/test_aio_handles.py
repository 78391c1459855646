"""aio's cheaper timers and inlined callback runs keep asyncio's contracts: the same handle
types, fields, ordering, cancellation and exception-handler context as asyncio's own loop."""

from __future__ import annotations

import asyncio
from typing import Any

from aio_helpers import LOOPS

from bitcoin_support import aio


def scenario(kind: str) -> dict[str, Any]:
    loop = LOOPS[kind]()
    out: dict[str, Any] = {}
    order: list[str] = []
    contexts: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _l, ctx: contexts.append(ctx))

    def boom(x: int) -> None:
        raise ValueError(x)

    try:
        t0 = loop.time()
        later = loop.call_later(0.01, order.append, "later")
        at = loop.call_at(t0 + 0.005, order.append, "at")
        zero = loop.call_later(0, order.append, "zero")
        cancelled = loop.call_later(0.002, order.append, "cancelled")
        soon = loop.call_soon(order.append, "soon")
        failing = loop.call_later(0, boom, 7)
        cancelled.cancel()
        out["types"] = [type(h).__name__ for h in (later, at, zero, soon)]
        out["when"] = (
            t0 <= zero.when() <= loop.time(),
            at.when() == t0 + 0.005,
            later.when() >= t0 + 0.01,
        )
        out["repr"] = repr(at).startswith("<TimerHandle when=")
        out["scheduled"] = [later._scheduled, cancelled._scheduled]  # type: ignore[attr-defined]
        loop.run_until_complete(asyncio.sleep(0.05))
        out["order"] = order
        out["after"] = [later._scheduled, cancelled.cancelled()]  # type: ignore[attr-defined]
        ctx = contexts[0]
        out["handler"] = (
            ctx["message"],
            type(ctx["exception"]).__name__,
            ctx["exception"].args,
            ctx["handle"] is failing,
        )
    finally:
        loop.close()
    return out


def test_timers_and_handles_as_on_asyncios_loop() -> None:
    ref = scenario("asyncio")
    got = scenario("aio")
    assert got == ref
    assert got["types"] == ["TimerHandle", "TimerHandle", "TimerHandle", "Handle"]
    assert got["when"] == (True, True, True)
    assert got["order"] == ["soon", "zero", "at", "later"]
    assert got["scheduled"] == [True, True] and got["after"] == [False, True]
    # "boom(7) at ..." (3.13 leaves the arguments out outside debug mode, on both loops)
    assert got["handler"][0].startswith("Exception in callback scenario.<locals>.boom(")
    assert got["handler"][1:] == ("ValueError", (7,), True)


def test_a_subclassed_handle_runs_its_own_run() -> None:
    ran: list[str] = []

    class Mine(asyncio.Handle):
        def _run(self) -> None:
            ran.append("own _run")
            super()._run()

    loop = aio.new_event_loop()
    try:
        loop._ready.append(Mine(ran.append, ("callback",), loop, None))
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    assert ran == ["own _run", "callback"]


def test_a_loop_with_its_own_clock() -> None:
    class Shifted(aio.EventLoop):
        def time(self) -> float:
            return super().time() + 1000.0

    loop = Shifted()
    try:
        timer = loop.call_later(0.001, lambda: None)
        assert timer.when() > loop.time() - 1 > 999
        loop.run_until_complete(asyncio.sleep(0.01))
        assert not timer._scheduled  # type: ignore[attr-defined]
    finally:
        loop.close()
