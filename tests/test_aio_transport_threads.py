"""aio's C stream transports and other threads: while the loop runs, a transport's C half is the
loop thread's, so every call that touches it from another thread is refused with the thread
rule's RuntimeError (no race with the C callbacks); ``call_soon_threadsafe`` is the way in, and
with the loop stopped any thread may call."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from bitcoin_support import aio
from bitcoin_support._aio_transport import StreamTransport

CALLS: dict[str, Callable[[Any], object]] = {
    "write": lambda tr: tr.write(b"from a thread"),
    "writelines": lambda tr: tr.writelines([b"from ", b"a thread"]),
    "write_eof": lambda tr: tr.write_eof(),
    "close": lambda tr: tr.close(),
    "abort": lambda tr: tr.abort(),
    "pause_reading": lambda tr: tr.pause_reading(),
    "resume_reading": lambda tr: tr.resume_reading(),
    "set_write_buffer_limits": lambda tr: tr.set_write_buffer_limits(high=1 << 20),
}


def in_thread(fn: Callable[[], object]) -> BaseException | None:
    """Run ``fn()`` on a new thread; what it raised, or None."""
    caught: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            caught.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    assert not t.is_alive()
    return caught[0] if caught else None


@pytest.mark.parametrize("call", sorted(CALLS))
def test_calls_from_another_thread_while_the_loop_runs_are_refused(call: str) -> None:
    loop = aio.new_event_loop()
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.settimeout(10)

    async def scenario() -> tuple[BaseException | None, bytes]:
        tr, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
        assert isinstance(tr, StreamTransport)
        # The blocking thread runs while this coroutine waits in the loop: the loop runs.
        refused = await loop.run_in_executor(None, in_thread, lambda: CALLS[call](tr))
        assert not tr.is_closing()  # nothing happened to the transport
        done = loop.create_future()

        def by_the_loop() -> None:
            tr.write(b"by the loop")
            done.set_result(None)

        await loop.run_in_executor(None, loop.call_soon_threadsafe, by_the_loop)
        await done
        got = peer.recv(100)
        tr.close()
        await asyncio.sleep(0)
        return refused, got

    try:
        refused, got = loop.run_until_complete(scenario())
    finally:
        loop.close()
        peer.close()
    assert isinstance(refused, RuntimeError), refused
    assert "call_soon_threadsafe" in str(refused)
    assert f"StreamTransport.{call.replace('writelines', 'write')}" in str(refused)
    assert got == b"by the loop"


def test_with_the_loop_stopped_another_thread_may_write_and_close() -> None:
    loop = aio.new_event_loop()
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.settimeout(10)
    try:
        tr, _ = loop.run_until_complete(loop.connect_accepted_socket(asyncio.Protocol, ours))
        assert in_thread(lambda: tr.write(b"while stopped")) is None
        assert peer.recv(100) == b"while stopped"
        assert in_thread(tr.close) is None
        loop.run_until_complete(asyncio.sleep(0.01))  # connection_lost runs on the loop
        assert peer.recv(100) == b""
    finally:
        loop.close()
        peer.close()
