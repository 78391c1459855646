"""EvHttp.from_address: Python serves paths on an evhttp a C host owns, next to its C callbacks.

The "host" here is libevent itself called through ctypes (the same libevent the package links):
it makes its own event_base and evhttp, registers a C callback, and runs its loop with
``event_base_loop``; Python only wraps what it is given. Clients run in threads, on 127.0.0.1.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import gc
import http.client
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from libevent_api import EVLOOP_NONBLOCK, REQUEST_CB, bind_loopback, core, extra

from bitcoin_support import (
    EV_PERSIST,
    EventBase,
    EvHttp,
    EvHttpRequest,
    LibEvent,
    obtain_event,
    obtain_event_base,
    obtain_evhttp,
)


@REQUEST_CB
def host_cb(req: int, arg: int) -> None:
    """The host's own C callback (a ctypes thunk is a C function pointer)."""
    extra.evhttp_send_reply(req, 200, b"host", None)


class Host:
    """A C host's base and evhttp, made and freed through libevent's own API."""

    def __init__(self, bind: bool = True) -> None:
        self.base = core.event_base_new()
        self.http = extra.evhttp_new(self.base)
        assert self.base and self.http
        assert extra.evhttp_set_cb(self.http, b"/host", host_cb, None) == 0
        self.port = 0
        if bind:
            self.port = bind_loopback(self.http)
        self.pool = concurrent.futures.ThreadPoolExecutor(4)

    def run_until(self, fut: concurrent.futures.Future[Any], timeout: float = 20.0) -> Any:
        """Run the host's loop (from C, as a host does) until ``fut`` is done."""
        deadline = time.monotonic() + timeout
        while not fut.done():
            assert time.monotonic() < deadline, "timed out"
            core.event_base_loop(self.base, EVLOOP_NONBLOCK)
            time.sleep(0.001)
        return fut.result()

    def get(self, path: str, body: bytes = b"") -> tuple[int, bytes]:
        def call() -> tuple[int, bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
            try:
                conn.request("POST" if body else "GET", path, body=body or None)
                resp = conn.getresponse()
                return resp.status, resp.read()
            finally:
                conn.close()

        return self.run_until(self.pool.submit(call))

    def free(self) -> None:
        """The host's shutdown: Python's wrappers go first (bs_python_detach does this)."""
        from bitcoin_support._native import ffi

        from bitcoin_support import _attach

        _attach.detach(ffi, ffi.cast("void *", self.base))
        extra.evhttp_free(self.http)
        core.event_base_free(self.base)
        self.pool.shutdown()


@pytest.fixture
def host() -> Iterator[Host]:
    h = Host()
    yield h
    h.free()


def reply(text: bytes) -> Callable[[EvHttpRequest, object], None]:
    def cb(req: EvHttpRequest, arg: object) -> None:
        req.send_reply(200, body=text + req.body)

    return cb


def test_python_routes_next_to_the_host_callbacks(host: Host) -> None:
    http = EvHttp.from_address(host.http)  # the base is found through the host's listener
    assert http._base.address == host.base
    assert EvHttp.from_address(host.http) is http  # one wrapper per address
    http.set_cb("/py", reply(b"py:"))
    http.set_gencb(reply(b"gen:"))
    assert host.get("/py", b"x") == (200, b"py:x")
    assert host.get("/host") == (200, b"")
    assert host.get("/other", b"y") == (200, b"gen:y")
    with pytest.raises(ValueError, match="host has a callback"):
        http.set_cb("/host", reply(b"no"))
    with pytest.raises(ValueError, match="Python registered no callback"):
        http.del_cb("/host")
    assert host.get("/host") == (200, b"")  # still the host's
    http.set_cb("/py", reply(b"py2:"))  # Python may replace its own
    assert host.get("/py", b"z") == (200, b"py2:z")
    http.del_cb("/py")
    assert host.get("/py", b"w") == (200, b"gen:w")
    for what in ("bind", "accept_socket", "stop_accepting"):
        with pytest.raises(RuntimeError, match="host owns"):
            getattr(http, what)(*([0] if what == "accept_socket" else []))
    assert http.address == host.http


def test_kept_alive_without_references(host: Host) -> None:
    def setup(http: EvHttp) -> None:
        ticks = [0]

        def tick(ev: LibEvent, arg: object) -> None:
            ticks[0] += 1

        obtain_event(http._base, -1, EV_PERSIST, tick).add(0.005)

        def stats(req: EvHttpRequest, arg: object) -> None:
            req.send_reply(200, body=str(ticks[0]).encode())

        http.set_cb("/stats", stats)

    setup(EvHttp.from_address(host.http))
    seen = []
    for _ in range(5):
        gc.collect()
        status, body = host.get("/stats")
        assert status == 200
        seen.append(int(body))
        host.run_until(host.pool.submit(time.sleep, 0.03))
    assert seen == sorted(seen) and seen[-1] > seen[0]


def test_close_removes_only_python_callbacks_and_answers_503(host: Host) -> None:
    http = EvHttp.from_address(host.http)
    held: list[EvHttpRequest] = []
    http.set_cb("/later", lambda req, arg: held.append(req))
    http.set_gencb(reply(b"gen:"))
    fut = host.pool.submit(
        lambda: http_status(host.port, "/later"),
    )
    deadline = time.monotonic() + 20
    while not held:
        assert time.monotonic() < deadline
        core.event_base_loop(host.base, EVLOOP_NONBLOCK)
        time.sleep(0.001)
    http.close()
    assert host.run_until(fut) == 503
    assert held[0].closed
    assert host.get("/later")[0] == 404  # no route, and libevent's default for the rest
    assert host.get("/else")[0] == 404
    assert host.get("/host") == (200, b"")
    again = EvHttp.from_address(host.http)  # a new wrapper after close
    assert again is not http
    again.set_cb("/later", reply(b"back:"))
    assert host.get("/later") == (200, b"back:")


def http_status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_close_inside_its_own_callback(host: Host) -> None:
    http = EvHttp.from_address(host.http)

    def closing(req: EvHttpRequest, arg: object) -> None:
        req.send_reply(200, body=b"bye")
        http.close()

    http.set_cb("/close", closing)
    assert host.get("/close") == (200, b"bye")
    assert http.closed
    assert host.get("/close")[0] == 404
    assert host.get("/host") == (200, b"")


def test_base_argument_and_errors() -> None:
    h = Host(bind=False)
    try:
        with pytest.raises(ValueError, match="pass base="):
            EvHttp.from_address(h.http)
        with pytest.raises(TypeError):
            EvHttp.from_address("0x1")
        with pytest.raises(ValueError):
            EvHttp.from_address(0)
        http = EvHttp.from_address(h.http, base=h.base)
        assert http._base is EventBase.from_address(h.base)
        base_wrapper = http._base
        base_wrapper.close()  # closing the base's wrapper releases the evhttp wrapper too
        assert http.closed
    finally:
        h.free()


def test_python_made_evhttp_is_not_wrapped() -> None:
    with obtain_event_base() as base:
        own = obtain_evhttp(base)
        with pytest.raises(ValueError, match="made by Python"):
            EvHttp.from_address(own.address, base=base)


GATE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
gated: list[int] = []


@GATE
def refuse_gate(req: int, arg: int) -> int:
    """A host's gate: refuses everything with 401 (a ctypes thunk is a C function pointer)."""
    gated.append(arg)
    extra.evhttp_send_reply(req, 401, b"no", None)
    return 1


def test_request_gate_runs_before_python_only(host: Host) -> None:
    from bitcoin_support import _registry

    gate = ctypes.cast(refuse_gate, ctypes.c_void_p).value
    assert gate is not None
    _registry.set_gate(host.http, gate, 7)  # before the wrapper exists, as a host may
    ran: list[str] = []
    http = EvHttp.from_address(host.http)
    http.set_cb("/py", lambda req, arg: (ran.append("py"), req.send_reply(200)))
    gated.clear()
    assert host.get("/py")[0] == 401
    assert host.get("/host") == (200, b"")  # the host's own callback is not gated
    assert ran == [] and gated == [7]
    http.close()  # re-wrapping does not get past the gate
    again = EvHttp.from_address(host.http)
    again.set_cb("/py", lambda req, arg: (ran.append("py"), req.send_reply(200)))
    assert host.get("/py")[0] == 401 and ran == []
    _registry.set_gate(host.http, 0, 0)  # removed
    assert host.get("/py")[0] == 200 and ran == ["py"]


def test_detach_finishes_a_trio_run_and_releases_everything(host: Host) -> None:
    import trio

    from bitcoin_support import trio_guest

    http = EvHttp.from_address(host.http)
    base = http.base
    ticks = [0]
    results: list[Any] = []

    async def job() -> None:
        while True:
            await trio.sleep(0.005)
            ticks[0] += 1

    trio_guest.start(base, job, done=results.append)
    held: list[EvHttpRequest] = []
    http.set_cb("/later", lambda req, arg: held.append(req))
    fut = host.pool.submit(http_status, host.port, "/later")
    deadline = time.monotonic() + 20
    while not held or ticks[0] < 3:
        assert time.monotonic() < deadline
        core.event_base_loop(host.base, EVLOOP_NONBLOCK)
        time.sleep(0.001)
    from bitcoin_support._native import ffi

    from bitcoin_support import _attach

    _attach.detach(ffi, ffi.cast("void *", host.base))
    assert len(results) == 1 and results[0].unwrap() is None  # cancelled, finished
    assert http.closed and base.closed
    assert host.run_until(fut) == 503
    before = ticks[0]
    assert host.get("/later")[0] == 404
    assert ticks[0] == before
    # Attaching again works on the same (still open) host base.
    again = EvHttp.from_address(host.http)
    assert again is not http and not again.base.closed
