"""aio's C stream transports when nobody closes them: garbage cycles that hold a transport, its
protocol and the loop are collected in whatever order the collector picks, with queued bytes
still in C, and nothing is left behind (the suite's live-count check runs after each test)."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from typing import Any, ClassVar

import pytest

from bitcoin_support import aio
from bitcoin_support._aio_transport import StreamTransport


class Echo(asyncio.Protocol):
    """Holds its transport (a cycle once the transport holds it) and answers each read with
    far more than a socket buffer takes, so that bytes stay queued in C."""

    transports: ClassVar[list[weakref.ref[Any]]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, StreamTransport)  # the C transport, not asyncio's
        self.transport: Any = transport
        Echo.transports.append(weakref.ref(transport))

    def data_received(self, data: bytes) -> None:
        self.transport.write(data * 50_000)


def open_transports(loop: asyncio.AbstractEventLoop, n: int) -> list[socket.socket]:
    """``n`` accepted transports on ``loop``, each with megabytes queued; the peers' ends."""
    peers = []

    async def start() -> None:
        for _ in range(n):
            ours, peer = socket.socketpair()
            ours.setblocking(False)
            await loop.connect_accepted_socket(Echo, ours)
            peer.send(b"x" * 100)
            peers.append(peer)
        await asyncio.sleep(0.05)  # the reads arrive; the replies queue

    loop.run_until_complete(start())
    for ref in Echo.transports:
        tr = ref()
        assert tr is not None and tr.get_write_buffer_size() > 0
    return peers


@pytest.fixture(autouse=True)
def fresh() -> None:
    Echo.transports = []


def collect_with_warnings() -> list[str]:
    """One full collection; the ResourceWarnings it raised, as their first words."""
    with pytest.warns(ResourceWarning) as caught:
        gc.collect()
    return [str(w.message).split(" ", 2)[1] for w in caught]


def test_transports_dropped_after_the_loop_closed_are_collected() -> None:
    loop = aio.new_event_loop()
    peers = open_transports(loop, 3)
    loop.close()  # the loop lets go of its transports; their cycles remain
    del loop
    kinds = collect_with_warnings()
    assert kinds.count("transport") == 3
    assert [ref() for ref in Echo.transports] == [None, None, None]
    for peer in peers:
        peer.close()


def test_loop_and_transports_in_one_cycle_collect_in_any_order() -> None:
    loop: Any = aio.new_event_loop()
    peers = open_transports(loop, 3)
    loop.cycle = loop
    for ref in Echo.transports:  # every transport and protocol holds the loop too
        tr: Any = ref()
        tr.loop_again = loop
        tr.get_protocol().loop_again = loop
    loop_ref = weakref.ref(loop)
    del loop, tr
    kinds = collect_with_warnings()
    assert "event" in kinds and kinds.count("transport") == 3  # "unclosed event loop"
    assert loop_ref() is None
    assert [ref() for ref in Echo.transports] == [None, None, None]
    for peer in peers:
        peer.close()


def test_protocol_closing_its_own_transport_and_dropping_it_from_data_received() -> None:
    # A callback closes what owns it: the transport is closed and forgotten from inside the C
    # read callback that is running for it, and collected before that callback returns.
    class Drop(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport

        def data_received(self, data: bytes) -> None:
            tr, self.transport = self.transport, None
            tr.abort()
            gc.collect()

    loop = aio.new_event_loop()
    ours, peer = socket.socketpair()
    ours.setblocking(False)

    async def run() -> bytes:
        await loop.connect_accepted_socket(Drop, ours)
        peer.send(b"bye")
        await asyncio.sleep(0.05)
        peer.setblocking(False)
        try:
            return peer.recv(10)
        except BlockingIOError:
            return b"open"

    try:
        assert loop.run_until_complete(run()) == b""  # the peer sees the close
    finally:
        loop.close()
        peer.close()
