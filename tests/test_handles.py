"""The handle machinery shared by the five types: ids, live counters, logs, wipe, close, threads."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

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
    with obtain_event_base() as b:
        assert b.id > 0 and obtain_event(b, -1, 0, nothing).id > 0


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
    obtain_event(d, -1, 0, nothing)
    d.close()
    assert len(wiped) == 2 and not any(b"".join(wiped))


def test_finalized_records_are_wiped(wiped: list[bytes]) -> None:
    b = obtain_event_base()
    obtain_event(b, -1, EV_PERSIST, nothing).add(5)
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
    del b
    assert EventBase.live() == before


def test_dropped_event_is_released_by_its_finalizer() -> None:
    with obtain_event_base() as b:
        before = LibEvent.live()
        obtain_event(b, -1, 0, nothing)
        assert LibEvent.live() == before


def test_event_keeps_its_base_alive() -> None:
    before = EventBase.live()
    ev = obtain_event(obtain_event_base(), -1, 0, nothing)
    gc.collect()
    alive = EventBase.live()
    base = ev.base
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
