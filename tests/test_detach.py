"""bs_python_detach from anywhere, through its Python side (``_attach.detach``), on a "host" made
with libevent's own API (ctypes, as in test_evhttp_from_address.py) whose loop runs from C.

Between rounds and inside the host's own callbacks every job finishes in the call (0); inside
one of the package's callbacks (a Python timer, a trio task, an asyncio task) the rest waits for
the host's next rounds (1, ``bs_python_pending`` says 1), and is then released by itself.
"""

from __future__ import annotations

import asyncio
import ctypes
import time
from collections.abc import Callable, Iterator
from typing import Any

import outcome
import pytest
import trio
from bitcoin_support._native import ffi
from libevent_api import EVLOOP_NONBLOCK, core, extra
from test_evhttp_from_address import Host

from bitcoin_support import EvHttp, _attach, aio, obtain_event, trio_guest

HOST_CB = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_short, ctypes.c_void_p)
core.event_base_once.argtypes = [
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.c_short,
    HOST_CB,
    ctypes.c_void_p,
    ctypes.c_void_p,
]


class Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


@pytest.fixture
def host() -> Iterator[Host]:
    h = Host()
    yield h
    h.free()


def detach(h: Host) -> int:
    return _attach.detach(ffi, ffi.cast("void *", h.base))


def pending(h: Host) -> int:
    return _attach.pending(ffi, ffi.cast("void *", h.base))


def spin_until(h: Host, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        core.event_base_loop(h.base, EVLOOP_NONBLOCK)
        time.sleep(0.001)


class Jobs:
    """A trio run and an asyncio task on the host's base, recording how they end."""

    def __init__(self, http: EvHttp) -> None:
        self.base = http.base
        self.trio: list[outcome.Outcome[Any]] = []
        self.asyncio: list[str] = []
        self.ticks = [0, 0]
        self.in_trio: list[Callable[[], None]] = []  # calls the trio job makes from its task

        async def trio_job() -> None:
            while True:
                await trio.sleep(0.002)
                self.ticks[0] += 1
                if self.in_trio:
                    self.in_trio.pop()()

        trio_guest.start(self.base, trio_job, done=self.trio.append)
        self.loop = aio.attach(self.base)

        async def asyncio_job() -> None:
            try:
                while True:
                    await asyncio.sleep(0.002)
                    self.ticks[1] += 1
            finally:
                self.asyncio.append("finally")

        self.loop.create_task(asyncio_job())

    def running(self) -> bool:
        return self.ticks[0] >= 3 and self.ticks[1] >= 3

    def finished(self) -> bool:
        return (
            len(self.trio) == 1
            and self.trio[0].unwrap() is None
            and self.asyncio == ["finally"]
            and self.loop.is_closed()
        )


def attach_jobs(h: Host) -> tuple[EvHttp, Jobs]:
    http = EvHttp.from_address(h.http)
    jobs = Jobs(http)
    spin_until(h, jobs.running)
    return http, jobs


def test_between_rounds_every_job_finishes_in_the_call(host: Host) -> None:
    for _ in range(3):  # and trio starts again each time
        http, jobs = attach_jobs(host)
        assert detach(host) == 0
        assert jobs.finished() and http.closed and jobs.base.closed
        assert pending(host) == 0


def test_inside_the_hosts_own_callback_every_job_finishes_in_the_call(host: Host) -> None:
    rcs: list[int] = []

    @HOST_CB
    def host_cb(fd: int, what: int, arg: int) -> None:
        rcs.append(detach(host))

    for cycle in range(1, 4):
        http, jobs = attach_jobs(host)
        assert core.event_base_once(host.base, -1, 1, host_cb, None, ctypes.byref(Timeval())) == 0
        spin_until(host, lambda: len(rcs) == cycle)  # noqa: B023
        assert rcs == [0] * cycle
        assert jobs.finished() and http.closed and jobs.base.closed


def run_inside(h: Host, jobs: Jobs, make: Callable[[Callable[[], None]], None]) -> None:
    """Detach from inside one of Python's own callbacks (``make`` arranges the call): 1, then
    the host's rounds finish everything."""
    rcs: list[int] = []
    seen: list[int] = []

    def call() -> None:
        rcs.append(detach(h))
        seen.append(pending(h))

    make(call)
    spin_until(h, lambda: bool(rcs))
    assert rcs == [1] and seen == [1]
    spin_until(h, lambda: pending(h) == 0)
    assert jobs.finished() and jobs.base.closed


def test_inside_a_python_timer(host: Host) -> None:
    _, jobs = attach_jobs(host)

    def arm(call: Callable[[], None]) -> None:
        obtain_event(jobs.base, -1, 0, lambda ev, arg: call()).add(0)

    run_inside(host, jobs, arm)


def test_inside_a_trio_task(host: Host) -> None:
    _, jobs = attach_jobs(host)
    run_inside(host, jobs, jobs.in_trio.append)


def test_inside_an_asyncio_task(host: Host) -> None:
    _, jobs = attach_jobs(host)

    def arm(call: Callable[[], None]) -> None:
        async def task() -> None:
            call()

        jobs.loop.create_task(task())

    run_inside(host, jobs, arm)


def test_attach_while_finishing_is_refused_then_works(host: Host) -> None:
    _, jobs = attach_jobs(host)
    refused: list[int] = []

    def call() -> None:
        assert detach(host) == 1
        module = ffi.new("char[]", b"bitcoin_support")
        function = ffi.new("char[]", b"obtain_evhttp")
        refused.append(_attach.attach(ffi, ffi.cast("void *", host.base), module, function))

    obtain_event(jobs.base, -1, 0, lambda ev, arg: call()).add(0)
    spin_until(host, lambda: bool(refused))
    assert refused == [-1]
    spin_until(host, lambda: pending(host) == 0)
    assert jobs.finished()
    _, jobs = attach_jobs(host)  # attaching again works once it is over
    assert detach(host) == 0 and jobs.finished()


BEVCB = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
extra.evhttp_set_bevcb.argtypes = [ctypes.c_void_p, BEVCB, ctypes.c_void_p]
core.bufferevent_socket_new.restype = ctypes.c_void_p
core.bufferevent_socket_new.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]


def test_closing_the_wrapper_takes_back_the_framing_filter(host: Host) -> None:
    """A framing filter Python put on the host's evhttp (a stream_body route) is taken back
    when the wrapper closes (its record is freed with it): the host's new connections are
    read by libevent again (under ASan, a filter left behind is a use after free)."""
    http = EvHttp.from_address(host.http)
    http.set_cb("/py", lambda req, arg: req.send_reply(200, body=b"py"), stream_body=True)
    assert host.get("/py") == (200, b"py")
    assert detach(host) == 0 and http.closed
    for _ in range(3):
        assert host.get("/host") == (200, b"")  # the host answers from C
    assert host.get("/py")[0] == 404


def test_the_hosts_own_bevcb_stays_while_python_needs_no_framing(host: Host) -> None:
    """A host's own bevcb (its TLS, say) is left in place by Python's ordinary routes; only
    the framing filter (a stream_body route or strict framing) takes the slot, and with no
    getter in libevent 2.1 the slot then goes back to libevent's default when it comes off."""
    made: list[int] = []

    @BEVCB
    def host_bevcb(base: int, arg: int) -> int:
        made.append(1)
        return int(core.bufferevent_socket_new(base, -1, 1))  # BEV_OPT_CLOSE_ON_FREE

    extra.evhttp_set_bevcb(host.http, host_bevcb, None)
    assert host.get("/host") == (200, b"") and len(made) == 1
    http = EvHttp.from_address(host.http)
    http.set_cb("/py", lambda req, arg: req.send_reply(200, body=b"py"))
    assert host.get("/py") == (200, b"py") and len(made) == 2  # still the host's bufferevent
    http.set_cb("/up", lambda req, arg: req.send_reply(200, body=b"up"), stream_body=True)
    assert host.get("/up") == (200, b"up") and len(made) == 2  # the framing filter's
    http.del_cb("/up")
    assert host.get("/py") == (200, b"py") and len(made) == 2  # libevent's default again
    assert detach(host) == 0 and http.closed
    assert host.get("/host") == (200, b"") and len(made) == 2
