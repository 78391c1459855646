"""The handle machinery shared by the five types: ids, live counters, logs, wipe, close, threads."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

import bitcoin_support as bs
from bitcoin_support import (
    EV_PERSIST,
    EventBase,
    LibEvent,
    live_counts,
    obtain_event,
    obtain_event_base,
)
from bitcoin_support._event_base import _set_release_probe
from bitcoin_support._log import TRACE, events_log

pytestmark = pytest.mark.timeout(120)

KINDS = ["EventBase", "LibEvent", "EvHttp", "EvHttpRequest", "EvHttpConnection"]


def nothing(ev: LibEvent, arg: object) -> None:
    """A callback that does nothing."""


@pytest.fixture
def wiped() -> Iterator[list[bytes]]:
    """The bytes of every C record released while the test runs, read just after the wipe."""
    records: list[bytes] = []
    _set_release_probe(records.append)
    yield records
    _set_release_probe(None)


# ---------------------------------------------------------------- ids and counters


def test_ids_are_positive() -> None:
    with obtain_event_base() as b, obtain_event(b, -1, 0, nothing) as ev:
        assert b.id > 0 and ev.id > 0


def test_ids_are_unique_across_types() -> None:
    with obtain_event_base() as b, obtain_event_base(dummy=True) as d:
        handles = [b, d] + [obtain_event(x, -1, 0, nothing) for x in (b, d) for _ in range(50)]
        assert len({h.id for h in handles}) == len(handles)


def test_live_counts_names_all_five_types() -> None:
    assert sorted(live_counts()) == sorted(KINDS)


def test_live_counts_follow_creation_and_release() -> None:
    before = live_counts()
    b = obtain_event_base()
    ev = obtain_event(b, -1, 0, nothing)
    during = live_counts()
    ev.close()
    b.close()
    assert (during["EventBase"] - before["EventBase"], during["LibEvent"] - before["LibEvent"]) == (
        1,
        1,
    ) and live_counts() == before


def test_class_live_matches_live_counts() -> None:
    with obtain_event_base() as b:
        ev = obtain_event(b, -1, 0, nothing)
        assert (EventBase.live(), LibEvent.live()) == (
            live_counts()["EventBase"],
            live_counts()["LibEvent"],
        )
        ev.close()


def test_live_counts_returns_a_snapshot() -> None:
    counts = live_counts()
    counts["EventBase"] = -100
    assert live_counts()["EventBase"] >= 0


# ---------------------------------------------------------------- logging


def test_trace_level_is_registered() -> None:
    assert logging.getLevelName(TRACE) == "TRACE" and TRACE == 5


def test_create_and_release_are_logged_at_trace(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(TRACE, logger="bitcoin_support.events"):
        b = obtain_event_base()
        ev = obtain_event(b, -1, 0, nothing)
        ids = (b.id, ev.id)
        b.close()
    messages = [r.getMessage() for r in caplog.records if r.levelno == TRACE]
    assert messages == [
        f"create EventBase id={ids[0]}",
        f"create LibEvent id={ids[1]}",
        f"release LibEvent id={ids[1]}",
        f"release EventBase id={ids[0]}",
    ]


def test_dummy_creation_log_says_dummy(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(TRACE, logger="bitcoin_support.events"):
        obtain_event_base(dummy=True).close()
    assert "dummy" in caplog.records[0].getMessage()


def test_no_logging_call_when_trace_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("formatted a log record with logging off")

    monkeypatch.setattr(events_log, "log", forbidden)
    with obtain_event_base() as b:
        obtain_event(b, -1, 0, nothing).close()
    assert not events_log.isEnabledFor(TRACE)


# ---------------------------------------------------------------- wipe on release


def test_released_base_record_is_wiped(wiped: list[bytes]) -> None:
    obtain_event_base().close()
    assert len(wiped) == 1 and not any(wiped[0])


def test_released_event_record_is_wiped(wiped: list[bytes]) -> None:
    with obtain_event_base() as b:
        ev = obtain_event(b, -1, 0, nothing)
        ev.add(1)
        ev.close()
        assert len(wiped) == 1 and not any(wiped[0])


def test_dummy_records_are_wiped_too(wiped: list[bytes]) -> None:
    d = obtain_event_base(dummy=True)
    ev = obtain_event(d, -1, 0, nothing)
    d.close()
    assert ev.closed
    assert len(wiped) == 2 and not any(b"".join(wiped))


def test_finalized_records_are_wiped(wiped: list[bytes]) -> None:
    b = obtain_event_base()
    obtain_event(b, -1, EV_PERSIST, nothing).add(5)
    with pytest.warns(ResourceWarning, match="unclosed <EventBase"):
        del b
        gc.collect()
    assert len(wiped) == 2 and not any(b"".join(wiped))


# ---------------------------------------------------------------- close, context manager, finalizer


def test_close_is_idempotent() -> None:
    b = obtain_event_base()
    before = EventBase.live()
    b.close()
    b.close()
    assert EventBase.live() == before - 1


def test_closed_property() -> None:
    b = obtain_event_base()
    open_state = b.closed
    b.close()
    assert (open_state, b.closed) == (False, True)


def test_context_manager_closes() -> None:
    with obtain_event_base() as b:
        ev = obtain_event(b, -1, 0, nothing)
    assert b.closed and ev.closed


def test_context_manager_returns_the_handle() -> None:
    b = obtain_event_base()
    with b as entered:
        assert entered is b


def test_dropped_base_is_released_by_its_finalizer() -> None:
    before = EventBase.live()
    b = obtain_event_base()
    with pytest.warns(ResourceWarning, match="unclosed <EventBase"):
        del b
    assert EventBase.live() == before


def test_dropped_event_is_released_by_its_finalizer() -> None:
    with obtain_event_base() as b:
        before = LibEvent.live()
        with pytest.warns(ResourceWarning, match="unclosed <LibEvent"):
            obtain_event(b, -1, 0, nothing)
        assert LibEvent.live() == before


def test_event_keeps_its_base_alive() -> None:
    before = EventBase.live()
    ev = obtain_event(obtain_event_base(), -1, 0, nothing)
    gc.collect()
    alive = EventBase.live()
    base = ev.base
    ev.close()
    del ev
    base.close()
    assert alive == before + 1


def test_repr_names_type_id_and_state() -> None:
    b = obtain_event_base()
    text = repr(b)
    b.close()
    assert text == f"<EventBase id={b.id} open>" and repr(b) == f"<EventBase id={b.id} closed>"


def test_id_and_dummy_stay_readable_after_close() -> None:
    d = obtain_event_base(dummy=True)
    d.close()
    assert d.id > 0 and d.dummy


# ---------------------------------------------------------------- threads


@pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning")  # a third are dropped on purpose
def test_8_threads_creating_and_releasing_10000_handles_leave_no_live_handle() -> None:
    before = live_counts()
    errors: list[BaseException] = []
    ids: list[set[int]] = [set() for _ in range(8)]
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            start.wait()
            seen = ids[n]
            base = obtain_event_base(dummy=(n % 2 == 1))
            seen.add(base.id)
            for i in range(10_000 - 2):
                ev = obtain_event(base, -1, EV_PERSIST, nothing)
                seen.add(ev.id)
                if i % 3 == 0:
                    ev.close()  # explicit release
                elif i % 3 == 1 and not base.dummy:
                    ev.add(60)  # held by the base until the base closes
                # otherwise dropped: released by its finalizer
                if i % 1000 == 0:
                    with obtain_event_base(dummy=True) as extra:
                        seen.add(extra.id)
            base.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gc.collect()
    assert not errors and live_counts() == before
    assert len(set().union(*ids)) == sum(len(s) for s in ids)


def test_closing_the_same_handles_from_many_threads() -> None:
    b = obtain_event_base()
    events = [obtain_event(b, -1, 0, nothing) for _ in range(2000)]
    before = LibEvent.live()
    start = threading.Barrier(4)

    def closer() -> None:
        start.wait()
        for ev in events:
            ev.close()

    threads = [threading.Thread(target=closer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = LibEvent.live()
    b.close()
    assert before - after == 2000


# ---------------------------------------------------------------- dropped open: ResourceWarning

_DROPPED: dict[str, Any] = {
    "EventBase": lambda b: obtain_event_base(),
    "LibEvent": lambda b: obtain_event(b, -1, 0, nothing),
    "EvHttp": lambda b: bs.obtain_evhttp(b),
    "EvHttpConnection": lambda b: bs.obtain_evhttp_connection_base(b, "127.0.0.1", 9),
    "EvHttpRequest": lambda b: bs.obtain_evhttp_request(lambda req, arg: None),
}


@pytest.mark.parametrize("kind", sorted(_DROPPED))
def test_a_handle_dropped_open_warns_and_is_released(base: EventBase, kind: str) -> None:
    before = live_counts()[kind]
    handle = _DROPPED[kind](base)
    assert live_counts()[kind] == before + 1
    text = repr(handle)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        del handle
        gc.collect()
    assert live_counts()[kind] == before
    dropped = [w for w in seen if issubclass(w.category, ResourceWarning)]
    assert [str(w.message) for w in dropped] == [
        f"unclosed {text}; close it, or use it in a with block"
    ]
    assert isinstance(dropped[0].source, getattr(bs, kind))  # source=: the handle itself


@pytest.mark.parametrize("kind", sorted(_DROPPED))
def test_a_closed_handle_dropped_does_not_warn(base: EventBase, kind: str) -> None:
    handle = _DROPPED[kind](base)
    handle.close()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        del handle
        gc.collect()
    assert [w for w in seen if issubclass(w.category, ResourceWarning)] == []


def test_a_fired_event_let_go_does_not_warn(base: EventBase) -> None:
    # Fire and forget: the base holds a one-shot timer until it fires, then lets it go.
    fired: list[int] = []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        obtain_event(base, -1, 0, lambda ev, arg: fired.append(ev.fired)).add(0)
        base.dispatch()
        gc.collect()
    assert fired and LibEvent.live() == 0
    assert [w for w in seen if issubclass(w.category, ResourceWarning)] == []


def test_the_warning_is_silent_by_default() -> None:
    code = (
        "import gc, bitcoin_support as bs\n"
        "b = bs.obtain_event_base()\n"
        "e = bs.obtain_event(b, -1, 0, lambda ev, arg: None)\n"
        "del e, b\n"
        "gc.collect()\n"
        "assert bs.live_counts() == dict.fromkeys(bs.live_counts(), 0)\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0 and proc.stdout == "ok\n" and proc.stderr == "", proc.stderr


def test_an_error_filter_never_keeps_the_finalizer_from_releasing() -> None:
    # Under "error" the warning leaves __del__ as an exception: sys.unraisablehook gets it (the
    # test run fails on it), the handle is released all the same, nothing else sees it.
    caught: list[BaseException | None] = []
    old = sys.unraisablehook
    sys.unraisablehook = lambda u: caught.append(u.exc_value)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            b = obtain_event_base()
            del b
            gc.collect()
    finally:
        sys.unraisablehook = old
    assert EventBase.live() == 0
    assert len(caught) == 1 and isinstance(caught[0], ResourceWarning)


def test_a_handle_dropped_at_interpreter_exit_is_released_quietly() -> None:
    code = (
        "import warnings, bitcoin_support as bs\n"
        "warnings.simplefilter('error')\n"
        "KEPT = [bs.obtain_event_base()]\n"
        "KEPT.append(bs.obtain_event(KEPT[0], -1, 0, lambda ev, arg: None))\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0 and proc.stdout == "ok\n" and proc.stderr == "", proc.stderr
