"""EventBase (SPEC section 3): the loop, exceptions from callbacks, call_soon_threadsafe and
from_address."""

from __future__ import annotations

import logging
import socket
import threading
import time
import traceback

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
    EVLOOP_ONCE,
    EventBase,
    LibEvent,
    obtain_event,
    obtain_event_base,
)

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------- the base


def test_flag_constants_carry_libevent_values() -> None:
    values = (EV_TIMEOUT, EV_READ, EV_WRITE, EV_SIGNAL, EV_PERSIST, EV_ET, EV_CLOSED)
    assert values == (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x80)


def test_loop_flag_constants_carry_libevent_values() -> None:
    assert (bs.EVLOOP_ONCE, bs.EVLOOP_NONBLOCK, bs.EVLOOP_NO_EXIT_ON_EMPTY) == (1, 2, 4)


def test_evutil_socket_is_int() -> None:
    assert bs.EvutilSocket is int


def test_backend_is_epoll(base: EventBase) -> None:
    assert base.backend == "epoll"


def test_dispatch_without_events_returns_1(base: EventBase) -> None:
    assert base.dispatch() == 1


def test_dispatch_that_ran_out_of_events_returns_1(base: EventBase) -> None:
    obtain_event(base, -1, 0, nothing).add(0)
    assert base.dispatch() == 1


def test_loop_once_that_ran_returns_0(base: EventBase) -> None:
    obtain_event(base, -1, 0, nothing).add(0)
    assert base.loop(EVLOOP_ONCE) == 0


def test_dispatch_stopped_by_loopbreak_returns_0(base: EventBase) -> None:
    obtain_event(base, -1, 0, lambda ev, arg: base.loopbreak()).add(0)
    assert base.dispatch() == 0


def test_loop_nonblock_does_not_wait_for_a_timer(base: EventBase) -> None:
    fired: list[int] = []
    obtain_event(base, -1, 0, lambda ev, arg: fired.append(1)).add(5)
    base.loop(EVLOOP_NONBLOCK)
    assert fired == []


def test_loop_once_runs_one_round(base: EventBase) -> None:
    fired: list[str] = []
    obtain_event(base, -1, 0, lambda ev, arg: fired.append("a")).add(0)
    obtain_event(base, -1, 0, lambda ev, arg: fired.append("b")).add(1)
    base.loop(EVLOOP_ONCE)
    assert fired == ["a"]


def test_now_is_the_wall_clock(base: EventBase) -> None:
    assert abs(base.now() - time.time()) < 1.0


def test_now_is_cached_inside_a_callback(base: EventBase) -> None:
    seen: list[float] = []

    def cb(ev: LibEvent, arg: object) -> None:
        first = base.now()
        time.sleep(0.05)
        seen.extend((first, base.now()))

    obtain_event(base, -1, 0, cb).add(0)
    base.dispatch()
    assert seen[0] == seen[1]


def test_loopexit_with_timeout_ends_dispatch(base: EventBase) -> None:
    obtain_event(base, -1, 0, nothing).add(10)
    base.loopexit(0.05)
    start = time.monotonic()
    base.dispatch()
    assert time.monotonic() - start < 2.0


def test_loopexit_sets_got_exit(base: EventBase) -> None:
    obtain_event(base, -1, 0, nothing).add(10)
    base.loopexit(0.01)
    base.dispatch()
    assert base.got_exit()


def test_loopbreak_from_a_callback_sets_got_break(base: EventBase) -> None:
    obtain_event(base, -1, 0, nothing).add(10)
    obtain_event(base, -1, 0, lambda ev, arg: base.loopbreak()).add(0)
    base.dispatch()
    assert base.got_break() and not base.got_exit()


def test_epoll_changelist_base_runs_io(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    got: list[int] = []
    with obtain_event_base(epoll_changelist=True) as cbase:
        obtain_event(cbase, a, EV_READ, lambda ev, arg: got.append(ev.fired)).add()
        b.send(b"x")
        run_until(cbase, lambda: got)
    assert got == [EV_READ]


def test_dispatch_from_inside_a_callback_raises(base: EventBase) -> None:
    obtain_event(base, -1, 0, lambda ev, arg: base.dispatch()).add(0)
    with pytest.raises(RuntimeError, match="already running"):
        base.dispatch()


# ---------------------------------------------------------------- exceptions


def test_callback_exception_is_reraised_from_dispatch(base: EventBase) -> None:
    def boom(ev: LibEvent, arg: object) -> None:
        raise ZeroDivisionError("boom")

    obtain_event(base, -1, 0, boom).add(0)
    with pytest.raises(ZeroDivisionError, match="boom"):
        base.dispatch()


def test_reraised_exception_keeps_the_callbacks_traceback(base: EventBase) -> None:
    def raising_callback(ev: LibEvent, arg: object) -> None:
        raise KeyError("k")

    obtain_event(base, -1, 0, raising_callback).add(0)
    with pytest.raises(KeyError) as info:
        base.dispatch()
    names = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "raising_callback" in names


def test_callback_exception_breaks_the_loop(base: EventBase) -> None:
    late: list[int] = []

    def boom(ev: LibEvent, arg: object) -> None:
        raise ValueError("x")

    obtain_event(base, -1, 0, boom).add(0)
    obtain_event(base, -1, 0, lambda ev, arg: late.append(1)).add(0.2)
    with pytest.raises(ValueError):
        base.dispatch()
    assert late == []


def test_loop_is_usable_after_an_exception(base: EventBase) -> None:
    def boom(ev: LibEvent, arg: object) -> None:
        raise ValueError("x")

    later: list[int] = []
    obtain_event(base, -1, 0, boom).add(0)
    obtain_event(base, -1, 0, lambda ev, arg: later.append(1)).add(0.05)
    with pytest.raises(ValueError):
        base.dispatch()
    base.dispatch()
    assert later == [1]


def test_keyboard_interrupt_from_a_callback_is_reraised(base: EventBase) -> None:
    def interrupt(ev: LibEvent, arg: object) -> None:
        raise KeyboardInterrupt

    obtain_event(base, -1, 0, interrupt).active()
    with pytest.raises(KeyboardInterrupt):
        base.dispatch()


def test_exception_in_a_loop_run_outside_python_is_logged(
    base: EventBase, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(ev: LibEvent, arg: object) -> None:
        raise ValueError("from a host loop")

    obtain_event(base, -1, 0, boom).active()
    with caplog.at_level(logging.ERROR, logger="bitcoin_support.events"):
        bs.lib.bs_base_loop(base._rec, 0)  # as a C host runs it: nobody to re-raise to
    assert any(r.exc_info and "from a host loop" in str(r.exc_info[1]) for r in caplog.records)


def test_keyboard_interrupt_in_a_host_run_loop_stops_it(
    base: EventBase, caplog: pytest.LogCaptureFixture
) -> None:
    late: list[int] = []

    def interrupt(ev: LibEvent, arg: object) -> None:
        raise KeyboardInterrupt

    obtain_event(base, -1, 0, interrupt).active()
    obtain_event(base, -1, 0, lambda ev, arg: late.append(1)).add(0.2)
    with caplog.at_level(logging.ERROR, logger="bitcoin_support.events"):
        bs.lib.bs_base_loop(base._rec, 0)
    assert late == [] and caplog.records


def test_errors_after_the_first_are_logged_not_raised(
    base: EventBase, caplog: pytest.LogCaptureFixture
) -> None:
    def cb(ev: LibEvent, arg: object) -> None:
        base._st.fail(ValueError("first"))
        base._st.fail(ValueError("second"))

    obtain_event(base, -1, 0, cb).active()
    with caplog.at_level(logging.ERROR, logger="bitcoin_support.events"):
        with pytest.raises(ValueError, match="first"):
            base.dispatch()
    assert [str(r.exc_info[1]) for r in caplog.records if r.exc_info] == ["second"]


def test_dispatch_on_another_thread(base: EventBase) -> None:
    fired: list[int] = []
    obtain_event(base, -1, 0, lambda ev, arg: fired.append(threading.get_ident())).add(0.01)
    worker = threading.Thread(target=base.dispatch)
    worker.start()
    worker.join(10)
    assert fired == [worker.ident]


# ---------------------------------------------------------------- call_soon_threadsafe


def test_call_soon_threadsafe_runs_on_the_loop_thread(base: EventBase) -> None:
    where: list[int] = []
    t = threading.Thread(target=base.call_soon_threadsafe, args=(where.append, 0))
    t.start()
    t.join()
    base.call_soon_threadsafe(lambda: where.append(threading.get_ident()))
    base.dispatch()
    assert where == [0, threading.get_ident()]


def test_call_soon_threadsafe_passes_args_in_order(base: EventBase) -> None:
    got: list[tuple[int, ...]] = []
    for i in range(5):
        base.call_soon_threadsafe(lambda *a: got.append(a), i, i + 1)
    base.dispatch()
    assert got == [(i, i + 1) for i in range(5)]


def test_loop_once_returns_after_running_queued_calls(base: EventBase) -> None:
    ran: list[int] = []
    keep = bs.obtain_event(base, -1, bs.EV_PERSIST, lambda ev, arg: None)
    keep.add(60)  # a pending user event: the loop has something to wait for
    base.call_soon_threadsafe(ran.append, 1)
    assert base.loop(bs.EVLOOP_ONCE) == 0
    assert ran == [1]
    keep.close()


def test_call_soon_threadsafe_wakes_a_blocked_dispatch(base: EventBase) -> None:
    obtain_event(base, -1, 0, nothing).add(10)
    timer = threading.Timer(0.05, base.call_soon_threadsafe, (base.loopbreak,))
    timer.start()
    start = time.monotonic()
    base.dispatch()
    timer.join()
    assert time.monotonic() - start < 2.0


def test_call_soon_threadsafe_from_4_threads_exactly_once_in_order(base: EventBase) -> None:
    per_thread = 2000
    got: list[tuple[int, int]] = []
    done = threading.Barrier(5)

    def producer(t: int) -> None:
        for i in range(per_thread):
            base.call_soon_threadsafe(got.append, (t, i))
        done.wait()

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    keeper = obtain_event(base, -1, EV_PERSIST, nothing)
    keeper.add(10)  # keeps dispatch blocked while the producers run

    def finish() -> None:
        done.wait()
        base.call_soon_threadsafe(keeper.delete)

    closer = threading.Thread(target=finish)
    closer.start()
    base.dispatch()
    for th in [*threads, closer]:
        th.join()
    keeper.close()
    for t in range(4):
        assert [i for (tt, i) in got if tt == t] == list(range(per_thread))
    assert len(got) == 4 * per_thread


def test_call_soon_exception_is_reraised_and_the_rest_still_runs(base: EventBase) -> None:
    ran: list[int] = []

    def boom() -> None:
        raise OSError("soon")

    base.call_soon_threadsafe(boom)
    base.call_soon_threadsafe(ran.append, 1)
    with pytest.raises(OSError, match="soon"):
        base.dispatch()
    base.dispatch()
    assert ran == [1]


def test_call_soon_threadsafe_needs_a_callable(base: EventBase) -> None:
    with pytest.raises(TypeError, match="fn"):
        base.call_soon_threadsafe(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------- from_address


def test_from_address_events_run_on_the_wrapped_base(base: EventBase) -> None:
    fired: list[int] = []
    with EventBase.from_address(base.address) as wrapper:
        obtain_event(wrapper, -1, 0, lambda ev, arg: fired.append(1)).add(0)
        base.dispatch()
    assert fired == [1]


def test_closing_a_from_address_wrapper_never_frees_the_base(base: EventBase) -> None:
    wrapper = EventBase.from_address(base.address)
    obtain_event(wrapper, -1, 0, nothing).add(5)
    wrapper.close()
    fired: list[int] = []
    obtain_event(base, -1, 0, lambda ev, arg: fired.append(1)).add(0)
    base.dispatch()
    assert fired == [1]


def test_from_address_accepts_a_cffi_pointer(base: EventBase) -> None:
    ptr = bs.ffi.cast("struct event_base *", base.address)
    with EventBase.from_address(ptr) as wrapper:
        assert wrapper.address == base.address


@pytest.mark.parametrize(("ptr", "exc"), [(0, ValueError), (-5, ValueError), ("x", TypeError)])
def test_from_address_rejects_bad_pointers(ptr: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="ptr"):
        EventBase.from_address(ptr)
