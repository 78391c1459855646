"""Garbage cycles of event bases and events, and EventBase.from_address wrappers that nobody
holds: collected in every order, with finalizers that touch the handles (each call works or
raises ClosedError, never crashes), and live counts back to where they started. The cycle cases
run in a child interpreter so that a crash fails the test instead of ending the run."""

from __future__ import annotations

import gc
import itertools

import pytest
from test_reentrancy_events import run_scenario

import bitcoin_support as bs
from bitcoin_support import EV_PERSIST, EventBase, obtain_event, obtain_event_base

ORDERS = [",".join(p) for p in itertools.permutations(["base", "event", "self_event"])]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("wrapped", ["owned", "wrapper"])
def test_cycles_collected_in_every_order(order: str, wrapped: str) -> None:
    run_scenario("cycles", order, wrapped)


def test_host_timer_on_an_unreferenced_wrapper_survives_gc() -> None:
    # Regression: the wrapper and its event formed a cycle nobody held; gc.collect() released
    # them and the host's timer stopped.
    before = bs.live_counts()
    owner = obtain_event_base()
    fired: list[int] = []

    def setup(base: EventBase) -> None:  # what a C host's setup(base) does
        obtain_event(base, -1, 0, lambda ev, arg: fired.append(1)).add(0.01)

    setup(EventBase.from_address(owner.address))
    gc.collect()
    owner.dispatch()
    assert fired == [1]
    wrapper = EventBase.from_address(owner.address)
    assert EventBase.from_address(owner.address) is wrapper  # one wrapper per address
    wrapper.close()
    assert EventBase.from_address(owner.address) is not wrapper  # a closed one is replaced
    owner.close()
    gc.collect()
    assert bs.live_counts() == before


def test_wrapper_holds_its_persistent_events_and_closing_it_releases_them() -> None:
    before = bs.live_counts()
    owner = obtain_event_base()
    ticks: list[int] = []
    wrapper = EventBase.from_address(owner.address)

    def tick(ev: bs.LibEvent, arg: object) -> None:
        ticks.append(1)
        if len(ticks) == 3:
            owner.loopbreak()

    obtain_event(wrapper, -1, EV_PERSIST, tick).add(0.001)
    obtain_event(wrapper, -1, 0, lambda ev, arg: None)  # never added: held all the same
    del wrapper
    gc.collect()
    owner.dispatch()
    assert ticks == [1, 1, 1]
    EventBase.from_address(owner.address).close()
    gc.collect()
    assert owner.loop(bs.EVLOOP_NONBLOCK) == 1  # nothing of the wrapper's is left
    owner.close()
    assert bs.live_counts() == before
