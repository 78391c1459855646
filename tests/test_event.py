"""LibEvent (SPEC section 3): timers, io, user and signal events, callbacks changing handles,
keep-alive, close, dummies, C callbacks and bad arguments."""

from __future__ import annotations

import gc
import itertools
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from event_helpers import nothing, run_until

import bitcoin_support as bs
from bitcoin_support import (
    EV_CLOSED,
    EV_ET,
    EV_PERSIST,
    EV_READ,
    EV_SIGNAL,
    EV_TIMEOUT,
    EV_WRITE,
    EVLOOP_NONBLOCK,
    ClosedError,
    DummyHandleError,
    EventBase,
    LibEvent,
    obtain_event,
    obtain_event_base,
)

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------- timers, io, user events


def test_timers_fire_in_order_of_their_timeouts(base: EventBase) -> None:
    order: list[float] = []
    for delay in (0.06, 0.02, 0.04, 0.0):
        obtain_event(base, -1, 0, lambda ev, arg: order.append(arg), delay).add(delay)
    base.dispatch()
    assert order == [0.0, 0.02, 0.04, 0.06]


def test_timer_waits_about_its_timeout(base: EventBase) -> None:
    at: list[float] = []
    obtain_event(base, -1, 0, lambda ev, arg: at.append(time.monotonic())).add(0.1)
    start = time.monotonic()
    base.dispatch()
    assert 0.09 <= at[0] - start < 1.0


def test_timer_fired_flag_is_ev_timeout(base: EventBase) -> None:
    fired: list[int] = []
    obtain_event(base, -1, 0, lambda ev, arg: fired.append(ev.fired)).add(0)
    base.dispatch()
    assert fired == [EV_TIMEOUT]


def test_read_event_fires_when_data_arrives(
    base: EventBase, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    got: list[bytes] = []
    obtain_event(base, a.fileno(), EV_READ, lambda ev, arg: got.append(a.recv(10))).add()
    b.send(b"ping")
    run_until(base, lambda: got)
    assert got == [b"ping"]


def test_read_event_reports_ev_read_in_fired(
    base: EventBase, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    fired: list[int] = []
    obtain_event(base, a, EV_READ, lambda ev, arg: fired.append(ev.fired)).add()
    b.send(b"x")
    run_until(base, lambda: fired)
    assert fired == [EV_READ]


def test_fd_accepts_an_object_with_fileno(
    base: EventBase, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, _ = pair
    with obtain_event(base, a, EV_READ, nothing) as ev:
        assert ev.fd == a.fileno()


def test_write_event_fires_on_a_writable_socket(
    base: EventBase, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, _ = pair
    fired: list[int] = []
    obtain_event(base, a, EV_WRITE, lambda ev, arg: fired.append(ev.fired)).add()
    run_until(base, lambda: fired)
    assert fired == [EV_WRITE]


def test_io_event_with_timeout_fires_ev_timeout_when_idle(
    base: EventBase, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, _ = pair
    fired: list[int] = []
    obtain_event(base, a, EV_READ, lambda ev, arg: fired.append(ev.fired)).add(0.02)
    base.dispatch()
    assert fired == [EV_TIMEOUT]


def test_persistent_read_event_fires_for_each_message(
    base: EventBase, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    got: list[bytes] = []

    def cb(ev: LibEvent, arg: object) -> None:
        got.append(a.recv(10))
        if len(got) == 3:
            ev.delete()
        else:
            b.send(b"m%d" % len(got))

    obtain_event(base, a, EV_READ | EV_PERSIST, cb).add()
    b.send(b"m0")
    run_until(base, lambda: len(got) == 3)
    assert got == [b"m0", b"m1", b"m2"]


def test_persistent_timer_repeats(base: EventBase) -> None:
    ticks: list[int] = []

    def cb(ev: LibEvent, arg: object) -> None:
        ticks.append(1)
        if len(ticks) == 4:
            ev.delete()

    obtain_event(base, -1, EV_PERSIST, cb).add(0.005)
    base.dispatch()
    assert len(ticks) == 4


def test_edge_triggered_event_fires_once_per_new_data(
    base: EventBase, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    calls: list[int] = []

    def cb(ev: LibEvent, arg: object) -> None:
        calls.append(ev.fired)  # never reads: level-triggered would fire on every round

    obtain_event(base, a, EV_READ | EV_ET | EV_PERSIST, cb).add()
    b.send(b"x")
    for _ in range(5):
        base.loop(EVLOOP_NONBLOCK)
    assert len(calls) == 1


def test_closed_event_fires_when_the_peer_closes(
    base: EventBase, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    fired: list[int] = []
    obtain_event(base, a, EV_CLOSED, lambda ev, arg: fired.append(ev.fired)).add()
    b.shutdown(socket.SHUT_RDWR)
    run_until(base, lambda: fired)
    assert fired[0] & EV_CLOSED


def test_active_runs_a_user_event_with_the_given_flags(base: EventBase) -> None:
    fired: list[int] = []
    ev = obtain_event(base, -1, 0, lambda ev, arg: fired.append(ev.fired))
    ev.active(EV_READ | EV_WRITE)
    base.dispatch()
    assert fired == [EV_READ | EV_WRITE]


def test_active_default_flag_is_ev_timeout(base: EventBase) -> None:
    fired: list[int] = []
    obtain_event(base, -1, 0, lambda ev, arg: fired.append(ev.fired)).active()
    base.dispatch()
    assert fired == [EV_TIMEOUT]


def test_persistent_event_reactivated_from_its_own_callback(base: EventBase) -> None:
    count = [0]

    def cb(ev: LibEvent, arg: object) -> None:
        count[0] += 1
        if count[0] < 1000:
            ev.active()

    obtain_event(base, -1, EV_PERSIST, cb).active()
    base.dispatch()
    assert count[0] == 1000


def test_activations_keep_their_order_when_one_is_deferred(base: EventBase) -> None:
    order: list[str] = []
    other = obtain_event(base, -1, 0, lambda ev, arg: order.append("other"))

    def cb(ev: LibEvent, arg: object) -> None:
        order.append("self")
        if len(order) == 1:
            ev.active()  # from its own callback: handed to the trampoline
            other.active()  # must still run after the first

    obtain_event(base, -1, EV_PERSIST, cb).active()
    base.dispatch()
    assert order == ["self", "self", "other"]


def test_pending_after_add(base: EventBase) -> None:
    ev = obtain_event(base, -1, 0, nothing)
    ev.add(5)
    assert ev.pending()


def test_pending_timeout_flag_only(base: EventBase) -> None:
    ev = obtain_event(base, -1, 0, nothing)
    ev.add(5)
    assert ev.pending(EV_TIMEOUT) and not ev.pending(EV_READ)


def test_not_pending_after_delete(base: EventBase) -> None:
    ev = obtain_event(base, -1, 0, nothing)
    ev.add(5)
    ev.delete()
    assert not ev.pending()
    ev.close()


def test_not_pending_after_a_non_persistent_event_fired(base: EventBase) -> None:
    ev = obtain_event(base, -1, 0, nothing)
    ev.add(0)
    base.dispatch()
    assert not ev.pending()


def test_pending_inside_own_callback_after_active(base: EventBase) -> None:
    seen: list[bool] = []

    def cb(ev: LibEvent, arg: object) -> None:
        if not seen:
            ev.active()
            seen.append(ev.pending())
        else:
            seen.append(False)

    obtain_event(base, -1, 0, cb).active()
    base.dispatch()
    assert seen == [True, False]


def test_deleted_event_does_not_fire(base: EventBase) -> None:
    fired: list[int] = []
    ev = obtain_event(base, -1, 0, lambda ev, arg: fired.append(1))
    ev.add(0)
    ev.delete()
    base.dispatch()
    assert fired == []
    ev.close()


def test_delete_cancels_a_deferred_reactivation(base: EventBase) -> None:
    calls: list[int] = []

    def cb(ev: LibEvent, arg: object) -> None:
        calls.append(1)
        ev.active()
        ev.delete()

    obtain_event(base, -1, EV_PERSIST, cb).active()
    base.dispatch()
    assert calls == [1]


def test_callback_receives_the_event_and_arg(base: EventBase) -> None:
    seen: list[tuple[LibEvent, object]] = []
    token = object()
    ev = obtain_event(base, -1, 0, lambda e, a: seen.append((e, a)), token)
    ev.active()
    base.dispatch()
    assert seen == [(ev, token)]


def test_event_properties(base: EventBase) -> None:
    ev = obtain_event(base, 7, EV_READ | EV_PERSIST, nothing)
    assert (ev.base, ev.fd, ev.events) == (base, 7, EV_READ | EV_PERSIST)
    ev.close()


# ---------------------------------------------------------------- signals


def test_signal_event_fires_on_a_signal_sent_to_the_process(base: EventBase) -> None:
    fired: list[tuple[int, int]] = []

    def cb(ev: LibEvent, arg: object) -> None:
        fired.append((ev.fd, ev.fired))
        ev.delete()

    sig = obtain_event(base, signal.SIGUSR1, EV_SIGNAL | EV_PERSIST, cb)
    sig.add()
    kick = obtain_event(base, -1, 0, lambda ev, arg: os.kill(os.getpid(), signal.SIGUSR1))
    kick.add(0.01)
    run_until(base, lambda: fired)
    assert fired == [(signal.SIGUSR1, EV_SIGNAL)]


@pytest.mark.parametrize("what", [EV_SIGNAL, EV_TIMEOUT])
@pytest.mark.parametrize("persist", [0, EV_PERSIST])
def test_active_on_a_signal_event_runs_its_callback(
    base: EventBase, what: int, persist: int
) -> None:
    # Regression: libevent runs a signal event's callback "ncalls" times, and active() passed 0.
    fired: list[int] = []
    sig = obtain_event(
        base, signal.SIGUSR1, EV_SIGNAL | persist, lambda ev, arg: fired.append(ev.fired)
    )
    sig.active(what)
    base.loop(EVLOOP_NONBLOCK)
    assert fired == [what]
    sig.close()


def test_python_signal_handler_runs_promptly_during_dispatch(base: EventBase) -> None:
    ran: list[float] = []

    def handler(signum: int, frame: object) -> None:
        ran.append(time.monotonic())
        base.loopbreak()

    old = signal.signal(signal.SIGUSR2, handler)
    try:
        obtain_event(base, -1, 0, nothing).add(10)
        timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR2))
        timer.start()
        start = time.monotonic()
        base.dispatch()
        timer.join()
    finally:
        signal.signal(signal.SIGUSR2, old)
    assert ran and ran[0] - start < 0.5


def test_dispatch_restores_the_signal_wakeup_fd(base: EventBase) -> None:
    obtain_event(base, -1, 0, nothing).add(0)
    base.dispatch()
    assert signal.set_wakeup_fd(-1) == -1


def test_sigint_raises_keyboard_interrupt_within_100ms(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        import bitcoin_support as bs
        base = bs.obtain_event_base()
        bs.obtain_event(base, -1, 0, lambda ev, arg: None).add(30)
        print("ready", flush=True)
        try:
            base.dispatch()
        except KeyboardInterrupt:
            print(time.monotonic(), flush=True)
            sys.exit(0)
        sys.exit(3)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            time.sleep(0.3)  # the child is now blocked in epoll_wait
            sent = time.monotonic()
            child.send_signal(signal.SIGINT)
            caught = float(child.stdout.readline())
            assert child.wait(10) == 0
        finally:
            child.kill()
    assert caught - sent < 0.1


# ---------------------------------------------------------------- callbacks changing handles


def test_callback_may_close_its_own_event(base: EventBase) -> None:
    closed: list[bool] = []

    def cb(ev: LibEvent, arg: object) -> None:
        ev.close()
        closed.append(ev.closed)

    obtain_event(base, -1, EV_PERSIST, cb).add(0)
    base.dispatch()
    assert closed == [True]


def test_callback_may_close_its_own_event_after_reactivating_it(base: EventBase) -> None:
    calls: list[int] = []

    def cb(ev: LibEvent, arg: object) -> None:
        calls.append(1)
        ev.active()
        ev.close()

    obtain_event(base, -1, EV_PERSIST, cb).active()
    base.dispatch()
    assert calls == [1]


def test_callback_may_delete_and_readd_its_own_event(base: EventBase) -> None:
    calls: list[int] = []

    def cb(ev: LibEvent, arg: object) -> None:
        calls.append(1)
        ev.delete()
        if len(calls) < 3:
            ev.add(0)

    obtain_event(base, -1, 0, cb).add(0)
    base.dispatch()
    assert calls == [1, 1, 1]


def test_callback_may_close_another_pending_event(base: EventBase) -> None:
    fired: list[str] = []
    victim = obtain_event(base, -1, 0, lambda ev, arg: fired.append("victim"))

    def killer(ev: LibEvent, arg: object) -> None:
        fired.append("killer")
        victim.close()

    victim.add(0.02)
    obtain_event(base, -1, 0, killer).add(0)
    base.dispatch()
    assert fired == ["killer"]


def test_callback_may_close_another_active_event(base: EventBase) -> None:
    fired: list[str] = []
    second = obtain_event(base, -1, 0, lambda ev, arg: fired.append("second"))

    def first(ev: LibEvent, arg: object) -> None:
        fired.append("first")
        second.close()

    obtain_event(base, -1, 0, first).active()
    second.active()
    base.dispatch()
    assert fired == ["first"]


def test_closing_the_base_inside_its_own_callback_raises(base: EventBase) -> None:
    errors: list[BaseException] = []

    def cb(ev: LibEvent, arg: object) -> None:
        try:
            base.close()
        except RuntimeError as exc:
            errors.append(exc)

    obtain_event(base, -1, 0, cb).active()
    base.dispatch()
    assert len(errors) == 1 and not base.closed


def test_closing_the_base_inside_a_call_soon_function_raises(base: EventBase) -> None:
    base.call_soon_threadsafe(base.close)
    with pytest.raises(RuntimeError):
        base.dispatch()


# ---------------------------------------------------------------- keep-alive and GC


def test_pending_timer_fires_without_a_user_reference(base: EventBase) -> None:
    fired: list[int] = []
    obtain_event(base, -1, 0, lambda ev, arg: fired.append(1)).add(0.01)
    gc.collect()
    base.dispatch()
    assert fired == [1]


def test_active_event_fires_without_a_user_reference(base: EventBase) -> None:
    fired: list[int] = []
    obtain_event(base, -1, 0, lambda ev, arg: fired.append(1)).active()
    gc.collect()
    base.dispatch()
    assert fired == [1]


def test_fired_non_persistent_event_is_no_longer_held(base: EventBase) -> None:
    ev = obtain_event(base, -1, 0, nothing)
    ev.add(0)
    ref = weakref.ref(ev)
    del ev
    base.dispatch()
    assert ref() is None


def test_persistent_added_event_stays_held_after_firing(base: EventBase) -> None:
    ev = obtain_event(base, -1, EV_PERSIST, lambda ev, arg: base.loopbreak())
    ev.add(0.001)  # libevent takes a zero timeout of a persistent event as none
    ref = weakref.ref(ev)
    del ev
    base.dispatch()
    gc.collect()
    assert ref() is not None


def test_deleted_event_is_no_longer_held(base: EventBase) -> None:
    ev = obtain_event(base, -1, 0, nothing)
    ev.add(5)
    ev.delete()
    ref = weakref.ref(ev)
    with pytest.warns(ResourceWarning, match="unclosed <LibEvent"):
        del ev
    assert ref() is None


def test_dropping_an_unadded_event_releases_it(base: EventBase) -> None:
    before = LibEvent.live()
    ev = obtain_event(base, -1, 0, nothing)
    with pytest.warns(ResourceWarning, match="unclosed <LibEvent"):
        del ev
    assert LibEvent.live() == before


def test_wrapper_lives_until_closed_and_goes_with_the_owner(base: EventBase) -> None:
    before = bs.live_counts()
    fired: list[int] = []
    wrapper = EventBase.from_address(base.address)
    obtain_event(wrapper, -1, 0, lambda ev, arg: fired.append(1)).active()
    del wrapper  # the registry keeps it (and its events) until it is closed
    base.dispatch()
    gc.collect()
    assert fired == [1]
    assert EventBase.from_address(base.address).live() == before["EventBase"] + 1
    base.close()  # closes the wrapper of its event_base first
    gc.collect()
    after = bs.live_counts()
    assert after["EventBase"] == before["EventBase"] - 1
    assert after["LibEvent"] == before["LibEvent"]


def test_dropping_the_base_with_pending_events_releases_everything() -> None:
    before = bs.live_counts()
    b = obtain_event_base()
    for i in range(10):
        obtain_event(b, -1, EV_PERSIST, nothing).add(1 + i)
    obtain_event(b, -1, 0, nothing).active()
    with pytest.warns(ResourceWarning, match="unclosed <EventBase"):
        del b
        gc.collect()
    assert bs.live_counts() == before


def test_gc_of_a_cycle_holding_base_and_idle_events() -> None:
    before = bs.live_counts()

    class Holder:
        pass

    h = Holder()
    h.base = obtain_event_base()  # type: ignore[attr-defined]
    h.events = [obtain_event(h.base, -1, 0, nothing) for _ in range(5)]  # type: ignore[attr-defined]
    h.self = h  # type: ignore[attr-defined]
    del h
    with pytest.warns(ResourceWarning, match="unclosed <"):
        gc.collect()
    assert bs.live_counts() == before


# ---------------------------------------------------------------- close and use after close


def test_closing_the_base_closes_its_events() -> None:
    b = obtain_event_base()
    events = [obtain_event(b, -1, 0, nothing) for _ in range(3)]
    events[0].add(1)
    b.close()
    assert all(ev.closed for ev in events)


def test_closing_the_base_brings_live_counts_back() -> None:
    before = bs.live_counts()
    b = obtain_event_base()
    keep = [obtain_event(b, -1, 0, nothing) for _ in range(3)]
    keep[1].add(1)
    keep[2].active()
    b.close()
    assert bs.live_counts() == before


def test_closed_base_events_never_fire() -> None:
    fired: list[int] = []
    b = obtain_event_base()
    obtain_event(b, -1, 0, lambda ev, arg: fired.append(1)).active()
    b.close()
    with obtain_event_base() as other:
        obtain_event(other, -1, 0, nothing).add(0)
        other.dispatch()
    assert fired == []


def closed_base() -> EventBase:
    b = obtain_event_base()
    b.close()
    return b


BASE_USES: dict[str, Callable[[EventBase], object]] = {
    "dispatch": lambda b: b.dispatch(),
    "loop": lambda b: b.loop(),
    "loopbreak": lambda b: b.loopbreak(),
    "loopexit": lambda b: b.loopexit(),
    "got_break": lambda b: b.got_break(),
    "got_exit": lambda b: b.got_exit(),
    "backend": lambda b: b.backend,
    "now": lambda b: b.now(),
    "address": lambda b: b.address,
    "call_soon_threadsafe": lambda b: b.call_soon_threadsafe(print),
    "obtain_event": lambda b: obtain_event(b, -1, 0, nothing),
}


@pytest.mark.parametrize("use", BASE_USES.values(), ids=BASE_USES.keys())
def test_closed_base_raises_closed_error(use: Callable[[EventBase], object]) -> None:
    with pytest.raises(ClosedError):
        use(closed_base())


EVENT_USES: dict[str, Callable[[LibEvent], object]] = {
    "add": lambda e: e.add(),
    "add_timeout": lambda e: e.add(1),
    "delete": lambda e: e.delete(),
    "active": lambda e: e.active(),
    "pending": lambda e: e.pending(),
    "fired": lambda e: e.fired,
    "fd": lambda e: e.fd,
    "events": lambda e: e.events,
    "base": lambda e: e.base,
}


@pytest.mark.parametrize("use", EVENT_USES.values(), ids=EVENT_USES.keys())
def test_closed_event_raises_closed_error(
    base: EventBase, use: Callable[[LibEvent], object]
) -> None:
    ev = obtain_event(base, -1, 0, nothing)
    ev.close()
    with pytest.raises(ClosedError):
        use(ev)


@pytest.mark.parametrize("use", EVENT_USES.values(), ids=EVENT_USES.keys())
def test_event_of_a_closed_base_raises_closed_error(use: Callable[[LibEvent], object]) -> None:
    b = obtain_event_base()
    ev = obtain_event(b, -1, 0, nothing)
    b.close()
    with pytest.raises(ClosedError):
        use(ev)


def test_closed_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        closed_base().dispatch()


# ---------------------------------------------------------------- dummies


def test_dummy_base_is_dummy() -> None:
    with obtain_event_base(dummy=True) as d:
        assert d.dummy


def test_real_base_is_not_dummy(base: EventBase) -> None:
    assert not base.dummy


def test_event_on_a_dummy_base_is_dummy() -> None:
    with obtain_event_base(dummy=True) as d, obtain_event(d, -1, 0, nothing) as ev:
        assert ev.dummy


DUMMY_BASE_USES = {k: v for k, v in BASE_USES.items() if k != "obtain_event"}


@pytest.mark.parametrize("use", DUMMY_BASE_USES.values(), ids=DUMMY_BASE_USES.keys())
def test_dummy_base_raises_dummy_handle_error(use: Callable[[EventBase], object]) -> None:
    with obtain_event_base(dummy=True) as d, pytest.raises(DummyHandleError):
        use(d)


DUMMY_EVENT_USES = {k: EVENT_USES[k] for k in ("add", "add_timeout", "delete", "active", "pending")}


@pytest.mark.parametrize("use", DUMMY_EVENT_USES.values(), ids=DUMMY_EVENT_USES.keys())
def test_dummy_event_raises_dummy_handle_error(use: Callable[[LibEvent], object]) -> None:
    with obtain_event_base(dummy=True) as d:
        ev = obtain_event(d, -1, 0, nothing)
        with pytest.raises(DummyHandleError):
            use(ev)


def test_dummy_handle_error_is_a_runtime_error() -> None:
    with obtain_event_base(dummy=True) as d, pytest.raises(RuntimeError):
        d.dispatch()


def test_dummy_event_keeps_its_attributes() -> None:
    with obtain_event_base(dummy=True) as d:
        ev = obtain_event(d, 5, EV_READ, nothing)
        assert (ev.fd, ev.events, ev.base) == (5, EV_READ, d)


def test_closing_a_dummy_base_closes_its_dummy_events() -> None:
    d = obtain_event_base(dummy=True)
    ev = obtain_event(d, -1, 0, nothing)
    d.close()
    assert ev.closed


# ---------------------------------------------------------------- C callbacks


C_SOURCE = r"""
struct probe { int calls; void *last_ev; };
void count_cb(void *ev, void *arg)
{
    struct probe *p = arg;
    p->calls++;
    p->last_ev = ev;
}
"""


@pytest.fixture(scope="module")
def cmod(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """A tiny C callback compiled with cffi for these tests."""
    import importlib.util

    import cffi

    ffi = cffi.FFI()
    ffi.cdef("struct probe { int calls; void *last_ev; }; void count_cb(void *ev, void *arg);")
    ffi.set_source("_event_test_cb", C_SOURCE)
    out = tmp_path_factory.mktemp("ccb")
    so = ffi.compile(tmpdir=str(out))
    spec = importlib.util.spec_from_file_location("_event_test_cb", so)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def c_callback(cmod: ModuleType) -> Any:
    return bs.ffi.cast("EventCallback", cmod.ffi.addressof(cmod.lib, "count_cb"))


def test_c_callback_runs_with_its_arg(base: EventBase, cmod: ModuleType) -> None:
    probe = cmod.ffi.new("struct probe *")
    obtain_event(base, -1, 0, c_callback(cmod), probe).add(0)
    base.dispatch()
    assert probe.calls == 1


def test_c_callback_gets_the_event_record(base: EventBase, cmod: ModuleType) -> None:
    probe = cmod.ffi.new("struct probe *")
    ev = obtain_event(base, -1, 0, c_callback(cmod), probe)
    ev.active()
    base.dispatch()
    assert cmod.ffi.cast("uintptr_t", probe.last_ev) == bs.ffi.cast("uintptr_t", ev._rec)


def test_c_function_pointer_of_another_ffi_is_accepted(base: EventBase, cmod: ModuleType) -> None:
    probe = cmod.ffi.new("struct probe *")
    fn = cmod.ffi.addressof(cmod.lib, "count_cb")
    obtain_event(base, -1, 0, fn, probe).active()
    base.dispatch()
    assert probe.calls == 1


def test_persistent_c_callback_fires_repeatedly(base: EventBase, cmod: ModuleType) -> None:
    probe = cmod.ffi.new("struct probe *")
    ev = obtain_event(base, -1, EV_PERSIST, c_callback(cmod), probe)
    ev.add(0.001)
    stop = obtain_event(base, -1, 0, lambda e, a: ev.delete())
    stop.add(0.05)
    base.dispatch()
    assert probe.calls >= 3


def test_c_and_python_callbacks_on_one_base(base: EventBase, cmod: ModuleType) -> None:
    probe = cmod.ffi.new("struct probe *")
    py_calls: list[int] = []
    obtain_event(base, -1, 0, c_callback(cmod), probe).add(0)
    obtain_event(base, -1, 0, lambda e, a: py_calls.append(1)).add(0.01)
    obtain_event(base, -1, 0, c_callback(cmod), probe).active()
    base.dispatch()
    assert (probe.calls, py_calls) == (2, [1])


def test_fired_c_event_is_no_longer_held(base: EventBase, cmod: ModuleType) -> None:
    probe = cmod.ffi.new("struct probe *")
    ev = obtain_event(base, -1, 0, c_callback(cmod), probe)
    ev.active()
    ref = weakref.ref(ev)
    del ev
    base.dispatch()
    assert probe.calls == 1 and ref() is None


def test_c_callback_arg_must_be_a_pointer(base: EventBase, cmod: ModuleType) -> None:
    with pytest.raises(TypeError, match="arg"):
        obtain_event(base, -1, 0, c_callback(cmod), "not a pointer")


def test_c_callback_of_the_wrong_signature_is_rejected(base: EventBase) -> None:
    wrong = bs.ffi.cast("int (*)(int)", 1)
    with pytest.raises(TypeError, match="cb"):
        obtain_event(base, -1, 0, wrong)


def test_null_c_callback_is_rejected(base: EventBase) -> None:
    with pytest.raises(ValueError, match="cb"):
        obtain_event(base, -1, 0, bs.ffi.cast("EventCallback", 0))


# ---------------------------------------------------------------- bad arguments


BAD_EVENT_ARGS: dict[str, tuple[tuple[Any, ...], type[Exception], str]] = {
    "base type": (("base", -1, 0, nothing), TypeError, "base"),
    "fd type": ((None, 1.5, 0, nothing), TypeError, "fd"),
    "fd bool": ((None, True, 0, nothing), TypeError, "fd"),
    "fd negative": ((None, -2, 0, nothing), ValueError, "fd"),
    "fd -1 with EV_READ": ((None, -1, EV_READ, nothing), ValueError, "fd"),
    "signal number": ((None, 0, EV_SIGNAL, nothing), ValueError, "fd"),
    "events type": ((None, -1, "r", nothing), TypeError, "events"),
    "events unknown bits": ((None, -1, 0x4000, nothing), ValueError, "events"),
    "signal with read": ((None, 2, EV_SIGNAL | EV_READ, nothing), ValueError, "events"),
    "et without io": ((None, -1, EV_ET, nothing), ValueError, "EV_ET"),
    "cb type": ((None, -1, 0, 42), TypeError, "cb"),
}


@pytest.mark.parametrize("case", BAD_EVENT_ARGS.values(), ids=BAD_EVENT_ARGS.keys())
def test_bad_obtain_event_arguments(
    base: EventBase, case: tuple[tuple[Any, ...], type[Exception], str]
) -> None:
    args, exc, word = case
    real = tuple(base if a is None else a for a in args)
    with pytest.raises(exc, match=word):
        obtain_event(*real)


@pytest.mark.parametrize(
    ("timeout", "exc"), [(-1, ValueError), (float("nan"), ValueError), ("1", TypeError)]
)
def test_bad_add_timeout(base: EventBase, timeout: Any, exc: type[Exception]) -> None:
    with obtain_event(base, -1, 0, nothing) as ev, pytest.raises(exc, match="timeout"):
        ev.add(timeout)


@pytest.mark.parametrize(("what", "exc"), [("x", TypeError), (0x40, ValueError)])
def test_bad_active_what(base: EventBase, what: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="what"):
        obtain_event(base, -1, 0, nothing).active(what)


def test_bad_active_what_inside_own_callback(base: EventBase) -> None:
    errors: list[BaseException] = []

    def cb(ev: LibEvent, arg: object) -> None:
        try:
            ev.active(0x40)
        except ValueError as exc:
            errors.append(exc)

    obtain_event(base, -1, 0, cb).active()
    base.dispatch()
    assert len(errors) == 1


def test_float_active_what_inside_own_callback(base: EventBase) -> None:
    errors: list[BaseException] = []

    def cb(ev: LibEvent, arg: object) -> None:
        try:
            ev.active(1.0)  # type: ignore[arg-type]
        except TypeError as exc:
            errors.append(exc)

    obtain_event(base, -1, 0, cb).active()
    base.dispatch()
    assert len(errors) == 1 and "what" in str(errors[0])


@pytest.mark.parametrize(("flags", "exc"), [("x", TypeError), (0x100, ValueError)])
def test_bad_loop_flags(base: EventBase, flags: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="flags"):
        base.loop(flags)


def test_bad_loopexit_timeout(base: EventBase) -> None:
    with pytest.raises(ValueError, match="timeout"):
        base.loopexit(-1)


def test_bad_dummy_flag() -> None:
    with pytest.raises(TypeError, match="dummy"):
        obtain_event_base(dummy="yes")  # type: ignore[arg-type]


def test_add_of_a_closed_descriptor_raises_oserror(base: EventBase) -> None:
    a, b = socket.socketpair()
    fd = a.fileno()
    ev = obtain_event(base, fd, EV_READ, nothing)
    a.close()
    b.close()
    with pytest.raises(OSError):
        ev.add()


# ---------------------------------------------------------------- re-arming a timer in its callback


def test_timer_re_added_from_its_own_callback_fires_each_time(base: EventBase) -> None:
    seen: list[bool] = []

    def tick(ev: LibEvent, arg: object) -> None:
        seen.append(ev.pending())  # not pending: it fired
        if len(seen) < 50:
            ev.add(0)
            assert ev.pending() and ev.pending(EV_TIMEOUT) and not ev.pending(EV_READ)

    obtain_event(base, -1, 0, tick).add(0)
    base.dispatch()
    assert seen == [False] * 50


def test_re_add_then_delete_or_close_in_the_callback_cancels_it(base: EventBase) -> None:
    fired: list[str] = []

    def once(ev: LibEvent, how: str) -> None:
        fired.append(how)
        ev.add(0)
        if how == "delete":
            ev.delete()
            assert not ev.pending()
        else:
            ev.close()

    for how in ("delete", "close"):
        obtain_event(base, -1, 0, once, how).add(0)
    base.dispatch()  # returns: neither is pending any more
    assert sorted(fired) == ["close", "delete"]


def test_re_add_with_a_timeout_waits_that_long(base: EventBase) -> None:
    times: list[float] = []

    def tick(ev: LibEvent, arg: object) -> None:
        times.append(time.monotonic())
        if len(times) < 3:
            ev.add(0.05)

    obtain_event(base, -1, 0, tick).add(0)
    base.dispatch()
    assert len(times) == 3 and all(b - a >= 0.045 for a, b in itertools.pairwise(times))


def test_re_add_and_active_in_one_callback(base: EventBase) -> None:
    fired: list[int] = []

    def cb(ev: LibEvent, arg: object) -> None:
        fired.append(ev.fired)
        if len(fired) == 1:
            ev.add(0.01)
            ev.active(EV_READ)

    obtain_event(base, -1, 0, cb).add(0)
    base.dispatch()
    # As outside the callback: a non-persistent event that runs is no longer pending, so the
    # activation's run removes the re-added timeout.
    assert fired == [EV_TIMEOUT, EV_READ]
    outside: list[int] = []
    ev = obtain_event(base, -1, 0, lambda e, a: outside.append(e.fired))
    ev.add(0.01)
    ev.active(EV_READ)
    base.dispatch()
    assert outside == [EV_READ]


def test_bad_re_add_timeout_inside_the_callback_raises(base: EventBase) -> None:
    errors: list[BaseException] = []

    def cb(ev: LibEvent, arg: object) -> None:
        for bad in (-1, float("nan"), "1", True):
            try:
                ev.add(bad)  # type: ignore[arg-type]
            except (TypeError, ValueError) as exc:
                errors.append(exc)

    obtain_event(base, -1, 0, cb).add(0)
    base.dispatch()
    assert len(errors) == 4


def test_libevent_is_the_2_1_series_event_c_reads() -> None:
    # cdefs/event.c reads libevent's private event flags (mark_internal, still_busy) through
    # <event2/event_struct.h>, whose layout is libevent 2.1's; another series must fail here.
    version = bs.ffi.string(bs.lib.event_get_version()).decode()
    assert version.startswith("2.1."), version
