"""LiveCounter: the lock-free live counter of _handles for hot-path kinds (no private stdlib)."""

from __future__ import annotations

import threading

import pytest

from bitcoin_support import _handles


@pytest.fixture
def counter() -> object:
    saved = dict(_handles._live_extra)
    c = _handles.LiveCounter("EvHttpConnection")
    yield c
    _handles._live_extra.clear()
    _handles._live_extra.update(saved)


def test_counts_across_threads_and_feeds_live_counts(counter: _handles.LiveCounter) -> None:
    base_count = _handles.live_counts()["EvHttpConnection"] - counter.value()

    def work() -> None:
        for _ in range(20000):
            counter.created()
        for _ in range(5000):
            counter.released()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert counter.value() == 4 * 15000
    assert _handles.live_counts()["EvHttpConnection"] == base_count + 60000
    # Released on another thread than the one that created: the sum is still right.
    t = threading.Thread(target=lambda: [counter.released() for _ in range(60000)])
    t.start()
    t.join(30)
    assert counter.value() == 0


def test_never_negative_while_threads_count(counter: _handles.LiveCounter) -> None:
    stop = threading.Event()
    seen: list[int] = []

    def churn() -> None:
        while not stop.is_set():
            counter.created()
            counter.released()

    threads = [threading.Thread(target=churn) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(2000):
        seen.append(counter.value())
    stop.set()
    for t in threads:
        t.join(30)
    assert min(seen) >= 0 and counter.value() == 0


def test_kind_must_be_known() -> None:
    with pytest.raises(ValueError, match="kind"):
        _handles.LiveCounter("nope")
