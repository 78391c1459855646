"""The thread rule of the libevent handles: from a thread other than the one dispatching a base,
any call on the base or its handles works (when the base is not being dispatched) or raises
RuntimeError naming call_soon_threadsafe; it never crashes. Runs in a child interpreter
(``event_scenarios.py``) so that a crash fails the test instead of ending the run."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from http_helpers import request
from test_reentrancy_events import run_scenario

import bitcoin_support as bs
from bitcoin_support import EV_PERSIST, EventBase, obtain_event


def test_threads_hammering_every_operation_while_the_base_dispatches() -> None:
    run_scenario("threads", "1.5", "3")


def test_held_requests_used_from_threads_while_closed_and_dispatched() -> None:
    # A C call on a request lets go of the GIL: before, a close, a server close or a dispatch
    # on another thread freed the request under it (heap corruption, SIGSEGV).
    run_scenario("requests", "1.5", timeout=120)


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


def test_a_foreign_thread_is_told_the_rule_for_http_handles(base: EventBase) -> None:
    http = bs.obtain_evhttp(base)
    port = http.bind()
    conn = bs.obtain_evhttp_connection_base(base, "127.0.0.1", port)
    held: list[bs.EvHttpRequest] = []
    http.set_gencb(lambda req, arg: held.append(req))  # deferred
    seen: list[BaseException] = []
    calls = 0

    def other() -> None:
        nonlocal calls
        req = held[0]
        client = bs.obtain_evhttp_request(lambda r, a: None)
        ops = [
            lambda: http.bind(),
            lambda: http.set_cb("/p", lambda r, a: None),
            lambda: http.del_cb("/p"),
            lambda: http.set_timeout(1),
            lambda: http.stop_accepting(),
            http.close,
            lambda: conn.set_timeout(1),
            lambda: conn.make_request(client, "GET", "/"),
            conn.close,
            lambda: req.path,
            lambda: req.input_headers.get("Host"),
            lambda: req.output_headers.add("X", "y"),
            lambda: req.send_reply(200),
            lambda: req.send_echo(),
            lambda: req.send_error(500),
            lambda: req.send_reply_start(200),
            req.close,
        ]
        for fn in ops:
            calls += 1
            try:
                fn()
            except RuntimeError as exc:
                seen.append(exc)
        client.close()

    def in_loop(ev: Any, arg: Any) -> None:
        if not held:
            ev.add(0.01)
            return
        t = threading.Thread(target=other)
        t.start()
        t.join(10)
        held[0].send_reply(200, body=b"from the loop")
        base.loopexit(0.2)

    obtain_event(base, -1, bs.EV_TIMEOUT, in_loop).add(0.01)
    box: list[Any] = []
    client_thread = threading.Thread(target=lambda: box.append(request(port)))
    client_thread.start()
    base.dispatch()
    client_thread.join(10)
    assert calls == 17 and len(seen) == 17
    assert all("call_soon_threadsafe" in str(e) for e in seen)
    assert box[0][0] == 200 and box[0][2] == b"from the loop"
    assert not http.closed and not conn.closed


def test_another_thread_cannot_slip_into_an_events_own_callback_deferrals(base: EventBase) -> None:
    # Inside its own callback an event defers active() and a timer's add() to the trampoline.
    # Another thread calling them then must get the thread rule, not a share of that deferral:
    # a write landing after the trampoline took it would leave the event deferring for ever.
    seen: list[BaseException] = []
    fired: list[int] = []

    def other(ev: bs.LibEvent) -> None:
        for fn in (ev.active, lambda: ev.add(0)):
            try:
                fn()
            except RuntimeError as exc:
                seen.append(exc)

    def cb(ev: bs.LibEvent, arg: Any) -> None:
        fired.append(ev.fired)
        if len(fired) == 1:
            t = threading.Thread(target=other, args=(ev,))
            t.start()
            t.join(10)
            ev.active()  # the loop's own thread still defers as before

    obtain_event(base, -1, 0, cb).add(0)
    base.dispatch()
    assert len(seen) == 2 and all("call_soon_threadsafe" in str(e) for e in seen)
    assert fired == [bs.EV_TIMEOUT, bs.EV_TIMEOUT]
