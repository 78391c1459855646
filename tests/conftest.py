"""Fixtures shared by the test files."""

from __future__ import annotations

import gc
import socket
import time
from collections.abc import Iterator

import pytest
from http_helpers import LoopThread

from bitcoin_support import EventBase, live_counts, obtain_event_base


@pytest.fixture
def base() -> Iterator[EventBase]:
    """A real event base, closed (with every handle made on it) after the test."""
    b = obtain_event_base()
    yield b
    b.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair of non-blocking sockets."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def server() -> Iterator[LoopThread]:
    """An evhttp server whose loop runs on a thread (start it after setting it up)."""
    srv = LoopThread()
    yield srv
    if srv._thread.is_alive() or not srv.http.closed:
        srv.stop()


@pytest.fixture(autouse=True)
def _no_handle_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every handle a test makes is released by its end (uvloop's test base checks the same).

    Runs outside every other function fixture, so a fixture's handles are closed before the check.
    A test that must leave handles to a later collection says so with
    ``@pytest.mark.keeps_handles(reason=...)``.
    """
    marker = request.node.get_closest_marker("keeps_handles")
    if marker is not None:
        if not marker.kwargs.get("reason"):
            pytest.fail("keeps_handles needs a reason=", pytrace=False)
        yield
        return
    start = live_counts()
    yield
    gc.collect()
    now = live_counts()
    deadline = time.monotonic() + 1.0
    while now != start and time.monotonic() < deadline:  # a closing thread or finalizer finishes
        time.sleep(0.01)
        gc.collect()
        now = live_counts()
    if now != start:
        left = {kind: now[kind] - start[kind] for kind in start if now[kind] != start[kind]}
        pytest.fail(f"live handles changed during the test: {left}", pytrace=False)
