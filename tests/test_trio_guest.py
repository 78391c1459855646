"""trio in guest mode on an EventBase: bitcoin_support.trio_guest."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from typing import Any

import outcome
import pytest
import trio

import bitcoin_support
from bitcoin_support import (
    EV_PERSIST,
    EV_READ,
    EV_TIMEOUT,
    EVLOOP_NO_EXIT_ON_EMPTY,
    EventBase,
    EvHttp,
    EvHttpRequest,
    LibEvent,
    obtain_event,
    obtain_evhttp,
    trio_guest,
)


@pytest.fixture
def server(base: EventBase) -> tuple[EvHttp, int]:
    http = obtain_evhttp(base)
    return http, http.bind("127.0.0.1", 0)


async def http_exchange(port: int, request: bytes) -> bytes:
    """Send a raw request with Connection: close and read the whole response."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        data = b""
        with trio.fail_after(30):
            while chunk := await stream.receive_some():
                data += chunk
    return data


def post(path: str, body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def test_run_returns_the_result(base: EventBase) -> None:
    async def main(x: int, y: int) -> tuple[int, float]:
        await trio.sleep(0.01)
        return x + y, trio.current_time()

    total, _ = trio_guest.run(base, main, 40, 2)
    assert total == 42
    assert trio_guest.run(base, main, 1, 1)[0] == 2  # the base can host another run


def test_run_raises_the_exception(base: EventBase) -> None:
    class Boom(Exception):
        pass

    async def main() -> None:
        await trio.sleep(0)
        raise Boom("from trio")

    with pytest.raises(Boom, match="from trio") as info:
        trio_guest.run(base, main)
    assert info.traceback[-1].name == "main"  # the original traceback


def test_run_raises_keyboard_interrupt_from_a_signal(base: EventBase) -> None:
    cleaned: list[str] = []

    async def main() -> None:
        try:
            await trio.sleep_forever()
        finally:
            cleaned.append("finally")

    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            trio_guest.run(base, main)
    finally:
        timer.cancel()
    assert cleaned == ["finally"]  # delivered to the task, as trio.run does


def test_run_raises_keyboard_interrupt_raised_by_the_task(base: EventBase) -> None:
    async def main() -> None:
        await trio.sleep(0)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trio_guest.run(base, main)


def test_a_failing_libevent_callback_cancels_the_run(base: EventBase) -> None:
    cancelled: list[bool] = []

    def boom(ev: LibEvent, arg: object) -> None:
        raise ValueError("libevent callback")

    async def main() -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(True)
            raise

    obtain_event(base, -1, 0, boom).add(0.02)
    with pytest.raises(ValueError, match="libevent callback"):
        trio_guest.run(base, main)
    assert cancelled == [True]


def test_trio_and_a_libevent_timer_interleave(base: EventBase) -> None:
    order: list[str] = []

    def tick(ev: LibEvent, arg: object) -> None:
        order.append("libevent")

    timer = obtain_event(base, -1, EV_PERSIST, tick)
    timer.add(0.01)

    async def main() -> None:
        for _ in range(6):
            order.append("trio")
            await trio.sleep(0.025)

    trio_guest.run(base, main)
    timer.delete()
    assert order.count("trio") == 6 and order.count("libevent") >= 6
    # Both kinds keep running while the other waits: neither runs all of its turns in a row.
    first_trio_after_libevent = order.index("trio", order.index("libevent"))
    assert first_trio_after_libevent < len(order) - 1
    assert order.index("libevent") < len(order) - order[::-1].index("trio")


def test_wait_event_readable_timeout_and_cancel(base: EventBase) -> None:
    a, b = socket.socketpair()

    async def main() -> tuple[int, int, int, float]:
        timed_out = await trio_guest.wait_event(base, -1, 0, timeout=0.01)
        t0 = trio.current_time()
        with trio.move_on_after(0.05):
            await trio_guest.wait_event(base, a, EV_READ)  # nothing to read: cancelled
        waited = trio.current_time() - t0
        b.send(b"x")
        readable = await trio_guest.wait_event(base, a, EV_READ | EV_PERSIST, timeout=5)
        idle = await trio_guest.wait_event(base, a.fileno(), EV_READ, timeout=5)
        return timed_out, readable, idle, waited

    with a, b:
        timed_out, readable, idle, waited = trio_guest.run(base, main)
    assert timed_out == EV_TIMEOUT
    assert readable == EV_READ and idle == EV_READ
    assert 0.04 <= waited < 2
    assert LibEvent.live() == 0  # each wait's event was freed, the cancelled one included


def test_serve_http_100_concurrent_requests(base: EventBase, server: tuple[EvHttp, int]) -> None:
    http, port = server
    seen: set[int] = set()

    async def handler(req: EvHttpRequest) -> bytes:
        n = int(req.path.rsplit("/", 1)[1])
        seen.add(n)
        await trio.sleep(0.05 * (n % 3) / 2)  # answers come back out of order
        return b"echo %d:" % n + req.body

    async def main() -> list[bytes]:
        results: list[bytes] = [b""] * 100
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio_guest.serve_http, http, handler)

            async def client(i: int) -> None:
                results[i] = await http_exchange(port, post(f"/r/{i}", b"body%d" % i))

            async with trio.open_nursery() as clients:
                for i in range(100):
                    clients.start_soon(client, i)
            nursery.cancel_scope.cancel()
        return results

    results = trio_guest.run(base, main)
    assert seen == set(range(100))
    for i, response in enumerate(results):
        assert response.startswith(b"HTTP/1.1 200 OK\r\n"), response[:60]
        assert response.endswith(b"\r\n\r\necho %d:body%d" % (i, i)), response[-60:]


def test_serve_http_errors_and_own_replies(base: EventBase, server: tuple[EvHttp, int]) -> None:
    http, port = server

    async def handler(req: EvHttpRequest) -> Any:
        await trio.sleep(0)
        if req.path == "/raise":
            raise RuntimeError("handler failed")
        if req.path == "/none":
            return None
        if req.path == "/own":
            req.send_reply(201, body=b"made", content_type="text/plain")
            return None
        return bytearray(b"ok")

    async def main() -> list[bytes]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio_guest.serve_http, http, handler)
            out = [
                await http_exchange(port, post(p, b"")) for p in ("/raise", "/none", "/own", "/")
            ]
            nursery.cancel_scope.cancel()
        return out

    raised, none, own, ok = trio_guest.run(base, main)
    assert raised.startswith(b"HTTP/1.1 500 ")
    assert none.startswith(b"HTTP/1.1 500 ")
    assert own.startswith(b"HTTP/1.1 201 ") and own.endswith(b"made")
    assert ok.startswith(b"HTTP/1.1 200 ") and ok.endswith(b"\r\n\r\nok")


def test_serve_http_cancels_the_handler_when_the_client_leaves(
    base: EventBase, server: tuple[EvHttp, int]
) -> None:
    http, port = server
    started = trio.Event()
    events: list[str] = []

    async def handler(req: EvHttpRequest) -> bytes:
        started.set()
        try:
            await trio.sleep(30)
        except trio.Cancelled:
            events.append("cancelled")
            assert req.closed
            raise
        return b"too late"

    async def main() -> float:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio_guest.serve_http, http, handler)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            with trio.fail_after(10):
                await started.wait()
            t0 = trio.current_time()
            await stream.aclose()
            with trio.fail_after(10):
                while not events:
                    await trio.sleep(0.005)
            nursery.cancel_scope.cancel()
        return trio.current_time() - t0

    elapsed = trio_guest.run(base, main)
    assert events == ["cancelled"]
    assert elapsed < 5
    assert EvHttpRequest.live() == 0


def test_serve_http_cancelled_answers_503(base: EventBase, server: tuple[EvHttp, int]) -> None:
    http, port = server

    async def handler(req: EvHttpRequest) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def main() -> tuple[bytes, bytes]:
        pending: list[bytes] = []
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as serving:
                serving.start_soon(trio_guest.serve_http, http, handler)

                async def client() -> None:
                    pending.append(await http_exchange(port, post("/", b"")))

                outer.start_soon(client)
                await trio.sleep(0.2)
                serving.cancel_scope.cancel()
        after = await http_exchange(port, post("/", b""))
        return pending[0], after

    during, after = trio_guest.run(base, main)
    assert during.startswith(b"HTTP/1.1 503 ")
    assert after.startswith(b"HTTP/1.1 503 ")


def test_start_on_a_loop_the_test_dispatches(base: EventBase) -> None:
    """As a C host does: start(), then the host runs the base until done() stops it."""
    results: list[outcome.Outcome[Any]] = []
    ticks: list[int] = []

    async def main() -> str:
        await trio.sleep(0.05)
        return "done"

    def done(result: outcome.Outcome[Any]) -> None:
        results.append(result)
        base.loopbreak()

    timer = obtain_event(base, -1, EV_PERSIST, lambda ev, arg: ticks.append(1))
    timer.add(0.01)
    trio_guest.start(base, main, done=done)
    t0 = time.monotonic()
    base.loop(EVLOOP_NO_EXIT_ON_EMPTY)
    timer.delete()
    assert results and results[0].unwrap() == "done"
    assert len(results) == 1 and ticks and time.monotonic() - t0 < 10


def test_bad_arguments(base: EventBase) -> None:
    async def main() -> None:
        pass

    with pytest.raises(TypeError, match="base"):
        trio_guest.run("not a base", main)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="done"):
        trio_guest.start(base, main, done=None)  # type: ignore[arg-type]

    async def serve_bad() -> None:
        await trio_guest.serve_http("nope", main)  # type: ignore[arg-type]

    with pytest.raises(TypeError, match="evhttp"):
        trio_guest.run(base, serve_bad)


def test_example_runs() -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "examples" / "trio_guest.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--seconds", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    counts = dict(line.split(": ") for line in proc.stdout.splitlines()[1:])
    assert all(int(v) > 0 for v in counts.values()), proc.stdout


def test_start_on_a_closed_base_raises_closed_error() -> None:
    # Regression: start() only read base.call_soon_threadsafe, which checks nothing.
    b = bitcoin_support.obtain_event_base()
    b.close()
    outcomes: list[object] = []

    async def main() -> None:
        pass

    with pytest.raises(bitcoin_support.ClosedError, match=r"trio_guest\.start"):
        trio_guest.start(b, main, done=outcomes.append)
    assert outcomes == []


def test_a_dummy_or_closed_base_is_refused_before_trio_starts(base: EventBase) -> None:
    # Regression: on a dummy base start() began a guest run that trio then found abandoned
    # ("Trio guest run got abandoned"), since the base cannot run trio's ticks.
    dummy = bitcoin_support.obtain_event_base(dummy=True)
    closed = bitcoin_support.obtain_event_base()
    closed.close()
    outcomes: list[object] = []

    async def main() -> None:
        pass

    async def wait_on(other: EventBase) -> None:
        await trio_guest.wait_event(other, -1, 0, timeout=0.01)

    try:
        with pytest.raises(bitcoin_support.DummyHandleError, match=r"^trio_guest\.start: "):
            trio_guest.start(dummy, main, done=outcomes.append)
        with pytest.raises(bitcoin_support.DummyHandleError, match=r"^trio_guest\.run: "):
            trio_guest.run(dummy, main)
        with pytest.raises(bitcoin_support.ClosedError, match=r"^trio_guest\.run: "):
            trio_guest.run(closed, main)
        with pytest.raises(bitcoin_support.DummyHandleError, match=r"^trio_guest\.wait_event: "):
            trio_guest.run(base, wait_on, dummy)
        with pytest.raises(bitcoin_support.ClosedError, match=r"^trio_guest\.wait_event: "):
            trio_guest.run(base, wait_on, closed)
        with pytest.raises(TypeError, match=r"^trio_guest\.wait_event: base must be an EventBase,"):
            trio_guest.run(base, wait_on, "not a base")
    finally:
        dummy.close()
    assert outcomes == []
