"""Fixtures shared by the test files."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from http_helpers import LoopThread

from bitcoin_support import EventBase, obtain_event_base


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
