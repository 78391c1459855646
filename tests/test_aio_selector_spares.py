"""aio's selector keeps a descriptor's events, deleted, after unregister, for the next
registration of the same descriptor (asyncio's ``sock_*`` calls register and unregister per
call): a bounded number of them, closed with the loop, never firing while parked, and right for a
new file that gets the same descriptor number."""

from __future__ import annotations

import asyncio
import socket

from bitcoin_support import LibEvent, aio
from bitcoin_support._aio_selector import SPARE_MAX


def test_sock_calls_reuse_one_pair_of_events_per_descriptor() -> None:
    loop = aio.new_event_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:

        async def ping_pong() -> int:
            live = []
            for _ in range(20):
                recv = asyncio.ensure_future(loop.sock_recv(b, 1))
                await asyncio.sleep(0)  # the reader is registered now
                await loop.sock_sendall(a, b"x")
                assert await recv == b"x"
                live.append(LibEvent.live())
            assert len(set(live[1:])) == 1  # no event made per call after the first
            return live[-1]

        loop.run_until_complete(ping_pong())
        selector = loop._selector  # type: ignore[attr-defined]
        assert b.fileno() in selector._spare
    finally:
        a.close()
        b.close()
        loop.close()
    assert LibEvent.live() == 0  # the parked events went with the loop


def test_a_parked_event_does_not_fire_and_serves_a_new_file_on_the_same_number() -> None:
    loop = aio.new_event_loop()
    fired: list[str] = []
    try:
        a, b = socket.socketpair()
        loop.add_reader(b.fileno(), fired.append, "old")
        a.send(b"x")
        loop.run_until_complete(asyncio.sleep(0.01))
        assert fired and set(fired) == {"old"}
        loop.remove_reader(b.fileno())
        fired.clear()
        number = b.fileno()
        loop.run_until_complete(asyncio.sleep(0.01))  # parked: still readable, never reported
        assert fired == []
        a.close()
        b.close()
        c, d = socket.socketpair()
        pair = [c, d]
        target = next((s for s in pair if s.fileno() == number), None)
        if target is None:  # the number went elsewhere: any new file will do for the rest
            target = d
        other = c if target is d else d
        loop.add_reader(target.fileno(), fired.append, "new")
        loop.run_until_complete(asyncio.sleep(0.01))
        assert fired == []  # nothing to read yet
        other.send(b"y")
        loop.run_until_complete(asyncio.sleep(0.01))
        assert fired and set(fired) == {"new"}
        loop.remove_reader(target.fileno())
        c.close()
        d.close()
    finally:
        loop.close()
    assert LibEvent.live() == 0


def test_parked_descriptors_are_bounded() -> None:
    loop = aio.new_event_loop()
    socks = [socket.socketpair() for _ in range(SPARE_MAX + 8)]
    before = LibEvent.live()
    try:
        for a, _b in socks:
            loop.add_reader(a.fileno(), lambda: None)
            loop.remove_reader(a.fileno())
        selector = loop._selector  # type: ignore[attr-defined]
        assert len(selector._spare) == SPARE_MAX
        assert socks[0][0].fileno() not in selector._spare  # the oldest went first
        assert LibEvent.live() == before + SPARE_MAX  # one parked reader each, no more
    finally:
        for a, b in socks:
            a.close()
            b.close()
        loop.close()
    assert LibEvent.live() == 0
