"""asyncio on libevent: bitcoin_support.aio (own loops, attached loops, serve_http)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from aio_helpers import no_leaks  # noqa: F401 (autouse)
from http_helpers import post

from bitcoin_support import (
    EV_PERSIST,
    EVLOOP_NO_EXIT_ON_EMPTY,
    ClosedError,
    DummyHandleError,
    EventBase,
    LibEvent,
    aio,
    live_counts,
    obtain_event,
    obtain_event_base,
    obtain_evhttp,
    trio_guest,
)


@contextlib.contextmanager
def attached(base: EventBase) -> Iterator[aio.EventLoop]:
    loop = aio.attach(base)
    try:
        yield loop
    finally:
        loop.close()


def dispatch_until(base: EventBase, pred: Any, timeout: float = 10.0) -> None:
    """Dispatch ``base`` from Python, as a host would, until ``pred()`` (bounded in time)."""
    deadline = time.monotonic() + timeout

    def check(ev: LibEvent, _arg: object) -> None:
        if pred() or time.monotonic() > deadline:
            base.loopbreak()

    with obtain_event(base, -1, EV_PERSIST, check) as ev:
        ev.add(0.002)
        base.loop(EVLOOP_NO_EXIT_ON_EMPTY)
    assert pred(), "timed out"


async def http_exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    await writer.wait_closed()
    return data


# -- own loops


def test_run_and_runner() -> None:
    async def main() -> tuple[Any, float]:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.01)
        return loop, await loop.run_in_executor(None, lambda: 4.5)

    loop, value = aio.run(main())
    assert isinstance(loop, aio.EventLoop) and loop.is_closed() and value == 4.5
    with asyncio.Runner(loop_factory=aio.new_event_loop) as runner:
        assert isinstance(runner.get_loop(), aio.EventLoop)
        assert runner.run(asyncio.sleep(0, "x")) == "x"
    # the policy: tests/test_aio_versions.py (3.14 deprecates policies)


def test_loop_owns_its_base_or_leaves_a_given_one_open(base: EventBase) -> None:
    own = aio.EventLoop()
    own_base = own.base
    own.close()
    assert own_base.closed
    shared = aio.new_event_loop(base)
    assert shared.base is base and not shared.attached
    assert shared.run_until_complete(asyncio.sleep(0.001, 7)) == 7
    shared.close()
    assert not base.closed
    shared.close()  # twice is fine


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="base must be an EventBase"):
        aio.EventLoop(base="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^aio\.EventLoop: base must be an EventBase or None,"):
        aio.EventLoop(base="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        aio.attach("x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^aio\.attach: base must be an EventBase, not str"):
        aio.attach("x")  # type: ignore[arg-type]
    closed = obtain_event_base()
    closed.close()
    with pytest.raises(ClosedError):
        aio.attach(closed)
    with pytest.raises(ClosedError):
        aio.EventLoop(closed)
    dummy = obtain_event_base(dummy=True)
    with pytest.raises(DummyHandleError):
        aio.attach(dummy)
    with pytest.raises(DummyHandleError):
        aio.EventLoop(dummy)
    with pytest.raises(DummyHandleError, match=r"^aio\.attach: "):
        aio.attach(dummy)
    with pytest.raises(ClosedError, match=r"^aio\.EventLoop: "):
        aio.EventLoop(closed)
    dummy.close()


def test_tcp_echo_and_no_handle_left_after_close() -> None:
    async def main() -> bytes:
        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(await r.readexactly(5))
            await w.drain()
            w.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"hello")
        data = await r.read()
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
        return data

    before = live_counts()
    loop = aio.new_event_loop()
    assert live_counts()["LibEvent"] > before["LibEvent"]
    assert loop.run_until_complete(main()) == b"hello"
    loop.close()
    assert live_counts() == before


def test_exceptions_go_to_the_exception_handler() -> None:
    seen: list[dict[str, Any]] = []

    def boom() -> None:
        raise ValueError("from a callback")

    async def main() -> str:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx))
        loop.call_soon(boom)
        loop.call_later(0.001, boom)
        await asyncio.sleep(0.02)
        return "still running"

    assert aio.run(main()) == "still running"
    assert [type(c["exception"]) for c in seen] == [ValueError, ValueError]


def test_keyboard_interrupt_stops_the_loop() -> None:
    loop = aio.new_event_loop()
    ran: list[str] = []

    def interrupt() -> None:
        raise KeyboardInterrupt

    loop.call_soon(interrupt)
    loop.call_later(0.01, ran.append, "later")
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert not loop.is_running()
    loop.call_later(0.02, loop.stop)
    loop.run_forever()  # the loop is usable again
    assert ran == ["later"]
    loop.close()


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals")
def test_sigint_cancels_aio_run_like_asyncio_run() -> None:
    async def main() -> None:
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGINT)
        await asyncio.sleep(10)

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        aio.run(main())
    assert time.monotonic() - t0 < 5


def test_add_signal_handler() -> None:
    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        got: list[int] = []
        done = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, lambda: (got.append(1), done.set_result(None)))
        threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        await asyncio.wait_for(done, 5)
        loop.remove_signal_handler(signal.SIGUSR1)
        return got

    assert aio.run(main()) == [1]


def test_call_soon_threadsafe_from_threads() -> None:
    loop = aio.new_event_loop()
    got: list[int] = []
    n_threads, per = 4, 500

    def work(k: int) -> None:
        for i in range(per):
            loop.call_soon_threadsafe(got.append, k * per + i)

    async def main() -> None:
        threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
        for t in threads:
            t.start()
        while len(got) < n_threads * per:
            await asyncio.sleep(0.001)
        for t in threads:
            t.join()

    loop.run_until_complete(asyncio.wait_for(main(), 10))
    assert sorted(got) == list(range(n_threads * per))
    for k in range(n_threads):  # each thread's calls in its own order
        mine = [g for g in got if g // per == k]
        assert mine == sorted(mine)
    loop.close()


# -- attached mode


def test_attached_tasks_run_when_the_base_is_dispatched(base: EventBase) -> None:
    with attached(base) as loop:
        assert loop.attached and not loop.is_running()
        seen: list[Any] = []

        async def task(i: int) -> int:
            seen.append(asyncio.get_running_loop())
            await asyncio.sleep(0.01 * i)
            seen.append(i)
            return i

        tasks = [loop.create_task(task(i)) for i in range(3)]
        assert seen == []  # nothing runs until the base is dispatched
        dispatch_until(base, lambda: all(t.done() for t in tasks))
        assert [t.result() for t in tasks] == [0, 1, 2]
        assert seen[:3] == [loop, loop, loop]
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()  # outside its callbacks no loop is running
        # later callbacks and threads wake it too
        done: list[str] = []
        threading.Timer(0.01, loop.call_soon_threadsafe, (done.append, "thread")).start()
        dispatch_until(base, lambda: done == ["thread"])
    assert not base.closed


def test_attached_close_drops_pending_callbacks(base: EventBase) -> None:
    before = live_counts()
    loop = aio.attach(base)
    ran: list[int] = []
    loop.call_soon(ran.append, 1)
    loop.call_later(0.01, ran.append, 2)
    loop.close()
    assert live_counts() == before
    with obtain_event(base, -1, 0, lambda ev, arg: None) as ev:
        ev.add(0.03)
        base.loop(0)
    assert ran == []
    assert not base.closed


def test_attached_run_until_complete(base: EventBase) -> None:
    with attached(base) as loop:
        assert loop.run_until_complete(asyncio.sleep(0.01, "own")) == "own"
        errors: list[BaseException] = []

        def inside(_ev: LibEvent, _arg: object) -> None:
            try:
                loop.run_until_complete(asyncio.sleep(0))
            except RuntimeError as exc:
                errors.append(exc)

        with obtain_event(base, -1, 0, inside) as ev:
            ev.add(0)
            dispatch_until(base, lambda: bool(errors))
        assert len(errors) == 1 and "dispatched" in str(errors[0])
        # a task that was created before the run still runs in a later dispatch
        t = loop.create_task(asyncio.sleep(0.01, "later"))
        dispatch_until(base, t.done)
        assert t.result() == "later"

        # and run_until_complete from inside the loop's own task is asyncio's error
        async def nested() -> None:
            coro = asyncio.sleep(0)
            try:
                loop.run_until_complete(coro)
            finally:
                coro.close()

        t2 = loop.create_task(nested())
        dispatch_until(base, t2.done)
        assert isinstance(t2.exception(), RuntimeError)


def test_attached_exception_handler_and_keyboard_interrupt(base: EventBase) -> None:
    with attached(base) as loop:
        seen: list[Any] = []
        loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx["exception"]))

        def boom() -> None:
            raise ValueError("x")

        def interrupt() -> None:
            raise KeyboardInterrupt

        loop.call_soon(boom)
        after: list[int] = []
        loop.call_later(0.005, after.append, 1)
        dispatch_until(base, lambda: after == [1])
        assert [type(e) for e in seen] == [ValueError]
        loop.call_soon(interrupt)
        loop.call_soon(after.append, 2)
        with pytest.raises(KeyboardInterrupt):
            base.loop(EVLOOP_NO_EXIT_ON_EMPTY)  # stops the host's dispatch, as in asyncio
        dispatch_until(base, lambda: after == [1, 2])  # and the rest runs on


def test_attached_signal_handler(base: EventBase) -> None:
    with attached(base) as loop:
        got: list[int] = []
        loop.add_signal_handler(signal.SIGUSR1, got.append, 1)
        try:
            threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGUSR1)).start()
            dispatch_until(base, lambda: got == [1])
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)


def test_one_base_shared_by_aio_libevent_evhttp_and_trio(base: EventBase) -> None:
    """An attached asyncio loop, a LibEvent timer, an evhttp server and a trio guest: all run."""
    ticks: list[int] = []
    timer = obtain_event(base, -1, EV_PERSIST, lambda ev, arg: ticks.append(1))
    timer.add(0.002)
    http = obtain_evhttp(base)
    port = http.bind("127.0.0.1", 0)
    http.set_gencb(lambda req, arg: req.send_reply(200, body=b"evhttp:" + req.body))
    trio_steps: list[int] = []
    trio_done: list[Any] = []

    async def trio_main() -> str:
        for i in range(20):
            trio_steps.append(i)
            await trio.sleep(0.002)
        return "trio"

    trio_guest.start(base, trio_main, done=trio_done.append)
    with attached(base) as loop:

        async def asyncio_main() -> list[bytes]:
            async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                w.write(b"aio:" + await r.readexactly(3))
                await w.drain()
                w.close()

            server = await asyncio.start_server(echo, "127.0.0.1", 0)
            aport = server.sockets[0].getsockname()[1]
            out = []
            for _ in range(5):
                out.append(await http_exchange(port, post("/", b"abc")))
                out.append(await http_exchange(aport, b"xyz"))
            server.close()
            await server.wait_closed()
            return out

        task = loop.create_task(asyncio_main())
        dispatch_until(base, lambda: task.done() and bool(trio_done))
        results = task.result()
    timer.close()
    http.close()
    assert trio_done[0].unwrap() == "trio" and trio_steps == list(range(20))
    assert len(ticks) > 5
    for i in range(5):
        assert results[2 * i].startswith(b"HTTP/1.1 200") and results[2 * i].endswith(b"evhttp:abc")
        assert results[2 * i + 1] == b"aio:xyz"


def test_own_loop_runs_the_bases_other_users(base: EventBase) -> None:
    """run_until_complete dispatches the base: LibEvent callbacks and evhttp run in it."""
    ticks: list[int] = []
    http = obtain_evhttp(base)
    port = http.bind("127.0.0.1", 0)
    http.set_gencb(lambda req, arg: req.send_reply(200, body=b"hi"))
    loop = aio.EventLoop(base)
    with obtain_event(base, -1, EV_PERSIST, lambda ev, arg: ticks.append(1)) as timer:
        timer.add(0.002)

        async def main() -> bytes:
            await asyncio.sleep(0.05)
            return await http_exchange(
                port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )

        response = loop.run_until_complete(main())
    loop.close()
    http.close()
    assert response.endswith(b"\r\n\r\nhi")
    assert len(ticks) > 5


def test_socketpair_readers_and_writers() -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        got = loop.create_future()
        loop.add_reader(b.fileno(), lambda: got.set_result(b.recv(100)))
        writable = loop.create_future()
        loop.add_writer(a.fileno(), lambda: writable.done() or writable.set_result(None))
        await writable
        loop.remove_writer(a.fileno())
        a.send(b"ping")
        data = await got
        loop.remove_reader(b.fileno())
        a.close()
        b.close()
        return data

    assert aio.run(main()) == b"ping"


@pytest.mark.parametrize("mode", [[], ["--attached"]])
def test_example_runs(mode: list[str]) -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "examples" / "aio_on_libevent.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--seconds", "0.5", *mode],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    counts = dict(line.split(": ") for line in proc.stdout.splitlines() if ": " in line)
    assert {k: int(v) > 0 for k, v in counts.items()} == {
        "evhttp replies": True,
        "stream echoes": True,
        "libevent ticks": True,
    }, proc.stdout


def test_io_is_polled_during_a_long_callback_chain() -> None:
    """Ready callbacks skip the poll for at most POLL_INTERVAL: I/O is not starved by a chain."""

    async def main() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        seen: list[float] = []
        loop.add_reader(b.fileno(), lambda: (b.recv(10), seen.append(time.monotonic())))
        deadline = time.monotonic() + 0.2
        steps = 0

        def step() -> None:
            nonlocal steps
            steps += 1
            if time.monotonic() < deadline:
                loop.call_soon(step)

        loop.call_soon(step)
        await asyncio.sleep(0)
        sent = time.monotonic()
        a.send(b"x")
        while time.monotonic() < deadline:
            await asyncio.sleep(0)
        loop.remove_reader(b.fileno())
        a.close()
        b.close()
        assert seen, "the reader never ran during the chain"
        return steps, seen[0] - sent

    steps, latency = aio.run(main())
    assert steps > 1000
    assert latency < 0.05


def test_debug_mode_and_a_loop_on_another_thread() -> None:
    async def main() -> str:
        loop = asyncio.get_running_loop()
        assert loop.get_debug()
        fut = loop.create_future()
        loop.call_later(0.001, fut.set_result, "debug")
        return await fut

    assert aio.run(main(), debug=True) == "debug"
    out: list[Any] = []

    def thread_main() -> None:
        async def inner() -> str:
            await asyncio.sleep(0.001)
            a, b = socket.socketpair()
            r, w = await asyncio.open_unix_connection(sock=a)
            b.sendall(b"line\n")
            line = await r.readline()
            w.close()
            await w.wait_closed()
            b.close()
            return line.decode().strip() + " on a thread"

        out.append(aio.run(inner()))

    t = threading.Thread(target=thread_main)
    t.start()
    t.join(30)
    assert out == ["line on a thread"]
