"""Re-entrancy: HTTP callbacks (server requests in Python and C, client responses) closing each
of their owners in turn, then traffic that proves nothing was shared, reused or leaked.

Server and clients share one base on this thread, so every case is deterministic.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import pytest

import bitcoin_support as bs
from bitcoin_support import (
    EV_TIMEOUT,
    EventBase,
    EvHttpRequest,
    ffi,
    obtain_event,
    obtain_event_base,
    obtain_evhttp,
    obtain_evhttp_connection_base,
    obtain_evhttp_request,
)

OWNERS = ("request", "server", "base", "other_server", "other_connection", "event")


def _fetch(base: EventBase, port: int, paths: list[str], timeout: float = 2.0) -> dict[str, Any]:
    """Send one request per path, each on its own connection, and run the loop until all answer."""
    got: dict[str, Any] = {}

    def done(req: EvHttpRequest, path: str) -> None:
        got[path] = (req.response_code, req.body if req.response_code else req.error)

    conns = []
    for path in paths:
        conn = obtain_evhttp_connection_base(base, "127.0.0.1", port)
        conns.append(conn)
        conn.set_timeout(timeout)
        conn.set_retries(0)
        conn.make_request(obtain_evhttp_request(done, path), "GET", path)
    guard = obtain_event(base, -1, EV_TIMEOUT, lambda ev, a: None)
    guard.add(timeout * 3)
    while len(got) < len(paths) and guard.pending():
        base.loop(bs.EVLOOP_ONCE)
    guard.close()
    for conn in conns:
        conn.close()
    return got


def _proves_nothing_shared(base: EventBase) -> None:
    """Two deferred requests answered in reverse order each get their own reply."""
    http = obtain_evhttp(base)
    port = http.bind()
    held: dict[str, EvHttpRequest] = {}

    def defer(req: EvHttpRequest, arg: Any) -> None:
        held[req.path] = req
        if len(held) == 2:
            for path in ("/b", "/a"):
                held[path].send_reply(200, body=path.encode())

    http.set_gencb(defer)
    got = _fetch(base, port, ["/a", "/b"])
    assert got == {"/a": (200, b"/a"), "/b": (200, b"/b")}
    http.close()


def _setup(base: EventBase) -> dict[str, Any]:
    http = obtain_evhttp(base)
    port = http.bind()
    other = obtain_evhttp(base)
    other.bind()
    conn = obtain_evhttp_connection_base(base, "127.0.0.1", port)
    ev = obtain_event(base, -1, EV_TIMEOUT, lambda e, a: None)
    ev.add(100)
    return {
        "http": http,
        "port": port,
        "server": http.close,
        "base": base.close,
        "other_server": other.close,
        "other_connection": conn.close,
        "event": ev.close,
    }


def _expected(owner: str, replies: bool) -> int:
    if owner == "request":
        return 500
    if owner == "server" and not replies:
        return 0
    return 200 if replies else 0


@pytest.mark.parametrize("owner", OWNERS)
def test_python_server_callback_closes(owner: str) -> None:
    base = obtain_event_base()
    env = _setup(base)
    refused: list[BaseException] = []

    def cb(req: EvHttpRequest, arg: Any) -> None:
        try:
            req.close() if owner == "request" else env[owner]()
        except RuntimeError as exc:
            refused.append(exc)
        if not req.closed:
            req.send_reply(200, body=b"after")

    env["http"].set_gencb(cb)
    got = _fetch(base, env["port"], ["/x"])
    assert got["/x"][0] == _expected(owner, True)
    assert len(refused) == (owner == "base")  # a base cannot be closed inside its own callback
    _proves_nothing_shared(base)
    base.close()
    gc.collect()
    assert set(bs.live_counts().values()) == {0}


@pytest.mark.parametrize("owner", [o for o in OWNERS if o != "request"])
def test_c_server_callback_closes(owner: str) -> None:
    base = obtain_event_base()
    env = _setup(base)
    refused: list[BaseException] = []
    ran: list[bool] = []

    @ffi.callback("EvHttpRequestCallback")
    def c_cb(req: Any, arg: Any) -> None:  # libevent calls it directly: no Python request
        ran.append(arg == ffi.NULL)
        try:
            env[owner]()
        except RuntimeError as exc:
            refused.append(exc)

    env["http"].set_gencb(c_cb)
    env["http"].set_timeout(0.5)  # unanswered: libevent closes the connection
    got = _fetch(base, env["port"], ["/x"], timeout=1.0)
    assert ran == [True] and got["/x"][0] == 0
    assert len(refused) == (owner == "base")
    _proves_nothing_shared(base)
    base.close()
    gc.collect()
    assert set(bs.live_counts().values()) == {0}


CLIENT_OWNERS = ("request", "connection", "base", "server", "other_connection", "event")


@pytest.mark.parametrize("owner", CLIENT_OWNERS)
def test_client_response_callback_closes(owner: str) -> None:
    base = obtain_event_base()
    http = obtain_evhttp(base)
    port = http.bind()
    http.set_gencb(lambda req, arg: req.send_reply(200, body=req.path.encode()))
    conn = obtain_evhttp_connection_base(base, "127.0.0.1", port)
    other = obtain_evhttp_connection_base(base, "127.0.0.1", port)
    ev = obtain_event(base, -1, EV_TIMEOUT, lambda e, a: None)
    ev.add(100)
    actions: dict[str, Callable[[EvHttpRequest], object]] = {
        "request": lambda req: req.close(),
        "connection": lambda req: conn.close(),
        "base": lambda req: base.close(),
        "server": lambda req: http.close(),
        "other_connection": lambda req: other.close(),
        "event": lambda req: ev.close(),
    }
    seen: list[tuple[str, int, Any]] = []
    refused: list[BaseException] = []

    def done(req: EvHttpRequest, name: str) -> None:
        seen.append((name, req.response_code, req.body if req.response_code else req.error))
        if name == "first":
            try:
                actions[owner](req)
            except RuntimeError as exc:
                refused.append(exc)

    conn.make_request(obtain_evhttp_request(done, "first"), "GET", "/first")
    conn.make_request(obtain_evhttp_request(done, "second"), "GET", "/second")
    guard = obtain_event(base, -1, EV_TIMEOUT, lambda e, a: None)
    guard.add(5)
    while len(seen) < 2 and guard.pending():
        base.loop(bs.EVLOOP_ONCE)
    guard.close()
    second = {
        "connection": ("second", 0, "cancelled"),
        "server": seen[1] if len(seen) > 1 else None,  # the server went: any clean failure
    }.get(owner, ("second", 200, b"/second"))
    assert seen[0] == ("first", 200, b"/first")
    assert seen[1] == second and len(seen) == 2
    assert len(refused) == (owner == "base")
    base.loop(bs.EVLOOP_NONBLOCK)  # deferred frees
    _proves_nothing_shared(base)
    base.close()
    gc.collect()
    assert set(bs.live_counts().values()) == {0}


def test_base_closed_inside_an_http_callback_of_a_host_run_loop_is_refused() -> None:
    # A loop run by C (here: the shim's loop call, as a host's event_base_dispatch) has no
    # Python loop() on the stack; the callback depth alone must keep the base alive.
    base = obtain_event_base()
    http = obtain_evhttp(base)
    port = http.bind()
    refused: list[BaseException] = []

    def cb(req: EvHttpRequest, arg: Any) -> None:
        try:
            base.close()
        except RuntimeError as exc:
            refused.append(exc)
        req.send_reply(200, body=b"still here")

    http.set_gencb(cb)
    import threading

    from http_helpers import request

    box: list[Any] = []
    t = threading.Thread(target=lambda: box.append(request(port)))
    t.start()
    while t.is_alive():
        bs.lib.bs_base_loop(base._rec, bs.EVLOOP_ONCE | bs.EVLOOP_NONBLOCK)
    t.join(10)
    assert len(refused) == 1 and box[0][2] == b"still here" and not base.closed
    base.close()
