"""Lifetimes of evhttp requests and connections: the audit's defects, one regression each.

Cases that crashed the interpreter before their fix run in a child process, so that a
regression shows as a failed test rather than a dead suite. Everything talks to 127.0.0.1.
"""

from __future__ import annotations

import gc
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from http_helpers import RawClient, request

import bitcoin_support as bs
from bitcoin_support import (
    EV_TIMEOUT,
    EventBase,
    EvHttpConnection,
    EvHttpRequest,
    obtain_event,
    obtain_event_base,
    obtain_evhttp,
    obtain_evhttp_connection_base,
    obtain_evhttp_request,
)

HERE = os.path.dirname(os.path.abspath(__file__))


def run_child(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new interpreter (tests/ on its path); its result, never a hang."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([HERE, env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def assert_child_ok(code: str) -> str:
    proc = run_child(code)
    assert proc.returncode == 0, f"child exited {proc.returncode}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port that refuses connections: bound, never listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


# -- 1. a connection closed inside its own response callback (cross-client reply)

CROSS_CLIENT = """
    import socket
    from collections.abc import Iterator
    from bitcoin_support import *
    from http_helpers import RawClient

    base = obtain_event_base()
    http = obtain_evhttp(base)
    port = http.bind("127.0.0.1", 0)
    held = {}

    def deferred(req, arg):
        held[req.path] = req  # answered later, from a timer

    http.set_gencb(deferred)

    def close_in_callback(target_port):
        conn = obtain_evhttp_connection_base(base, "127.0.0.1", target_port)
        conn.set_retries(0)
        done_flag = []
        def done(req, arg):
            done_flag.append(req.response_code)
            conn.close()
        conn.make_request(obtain_evhttp_request(done), "GET", "/first")
        guard = obtain_event(base, -1, EV_TIMEOUT, lambda ev, a: done_flag.append("timeout"))
        guard.add(5)
        while not done_flag:
            base.loop(EVLOOP_ONCE)
        guard.close()
        base.loop(EVLOOP_NONBLOCK)
        assert len(done_flag) == 1, done_flag

    with socket.socket() as refuse:
        refuse.bind(("127.0.0.1", 0))
        close_in_callback(refuse.getsockname()[1])  # connect refused
    server2 = obtain_evhttp(base)
    http2_port = server2.bind("127.0.0.1", 0)
    server2.set_gencb(lambda req, arg: req.send_reply(200, body=b"ok"))
    close_in_callback(http2_port)  # answered

    x = RawClient(port)
    y = RawClient(port)
    x.send(b"GET /x HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n")
    y.send(b"GET /y HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n")
    def until_both(ev, arg):
        if len(held) == 2:
            held["/x"].send_reply(200, body=b"for x")
            held["/y"].send_reply(200, body=b"for y")
            base.loopexit(0.2)
        else:
            ev.add(0.01)
    obtain_event(base, -1, EV_TIMEOUT, until_both).add(0.01)
    guard = obtain_event(base, -1, EV_TIMEOUT, lambda ev, a: base.loopbreak())
    guard.add(10)
    base.dispatch()
    print(x.response()[2].decode(), y.response()[2].decode())
"""


def test_connection_closed_in_its_response_callback_keeps_replies_apart() -> None:
    # Before the fix the request record was released twice: the next two server requests
    # shared one record and x's reply went to y (or ASan reported a use after free).
    out = assert_child_ok(CROSS_CLIENT)
    assert out.split() == ["for", "x", "for", "y"]


def test_close_in_callback_finishes_queued_requests_once(base: EventBase) -> None:
    http = obtain_evhttp(base)
    port = http.bind("127.0.0.1", 0)
    http.set_gencb(lambda req, arg: req.send_reply(200, body=req.path.encode()))
    conn = obtain_evhttp_connection_base(base, "127.0.0.1", port)
    seen: list[tuple[str, int, str | None]] = []

    def done(req: EvHttpRequest, name: str) -> None:
        seen.append((name, req.response_code, req.error))
        if name == "first":
            conn.close()
            base.loopexit(0.1)

    for name in ("first", "second", "third"):
        conn.make_request(obtain_evhttp_request(done, name), "GET", f"/{name}")
    obtain_event(base, -1, EV_TIMEOUT, lambda ev, a: base.loopbreak()).add(10)
    base.dispatch()
    assert seen == [("first", 200, None), ("second", 0, "cancelled"), ("third", 0, "cancelled")]
    assert conn.closed
    # Independent of what came before: a new connection and request work as usual.
    again = obtain_evhttp_connection_base(base, "127.0.0.1", port)
    got: list[bytes] = []

    def last(req: EvHttpRequest, arg: Any) -> None:
        got.append(req.body)
        base.loopbreak()

    again.make_request(obtain_evhttp_request(last), "GET", "/after")
    base.dispatch()
    assert got == [b"/after"]
    again.close()
    http.close()


def test_close_with_queued_requests_cancels_each_once(base: EventBase, refused_port: int) -> None:
    port = refused_port
    conn = obtain_evhttp_connection_base(base, "127.0.0.1", port)
    seen: list[tuple[int, str | None]] = []
    reqs = [
        obtain_evhttp_request(lambda r, a: seen.append((r.response_code, r.error))) for _ in "ab"
    ]
    for r in reqs:
        conn.make_request(r, "GET", "/")
    n = EvHttpRequest.live()
    conn.close()
    assert seen == [(0, "cancelled"), (0, "cancelled")]
    assert all(r.closed for r in reqs) and EvHttpRequest.live() == n - 2
    base.loop(bs.EVLOOP_NONBLOCK)
    assert len(seen) == 2


def test_refused_callback_closing_its_connection_and_request(
    base: EventBase, refused_port: int
) -> None:
    port = refused_port
    conn = obtain_evhttp_connection_base(base, "127.0.0.1", port)
    conn.set_retries(0)
    seen: list[str | None] = []

    def done(req: EvHttpRequest, arg: Any) -> None:
        seen.append(req.error)
        req.close()
        conn.close()
        req.close()
        base.loopbreak()

    conn.make_request(obtain_evhttp_request(done), "GET", "/")
    obtain_event(base, -1, EV_TIMEOUT, lambda ev, a: base.loopbreak()).add(10)
    base.dispatch()
    assert seen == ["connection refused"]
    live = EvHttpConnection.live()
    base.loop(bs.EVLOOP_NONBLOCK)  # the deferred free of the connection
    assert conn.closed and EvHttpConnection.live() == live


# -- 4. one route per path, whatever its type

ROUTE_ALIAS = """
    from bitcoin_support import *
    from http_helpers import LoopThread, request
    with LoopThread() as srv:
        pass
    srv = LoopThread()
    srv.http.set_cb(b"/x", lambda req, arg: req.send_reply(200, body=b"bytes route"))
    srv.http.set_cb("b'/x'", lambda req, arg: req.send_reply(200, body=b"odd route"))
    import gc; gc.collect()
    srv.start()
    print(request(srv.port, path="/x")[2].decode())
    print(sorted(srv.http._routes))
    srv.stop()
"""


def test_bytes_and_str_paths_are_one_route() -> None:
    # Before the fix routes were keyed by str(path): the second set_cb dropped the first
    # route object while libevent still called it (abort on GET /x).
    out = assert_child_ok(ROUTE_ALIAS)
    assert out.splitlines() == ["bytes route", "['/x', \"b'/x'\"]"]


def test_bytes_path_replaces_str_path(base: EventBase) -> None:
    http = obtain_evhttp(base)
    http.set_cb("/x", lambda req, arg: None)
    http.set_cb(b"/x", lambda req, arg: None)
    assert list(http._routes) == ["/x"]
    http.del_cb(b"/x")
    with pytest.raises(ValueError):
        http.del_cb("/x")
    with pytest.raises(ValueError, match="ASCII"):
        http.set_cb("/é".encode(), lambda req, arg: None)
    with pytest.raises(TypeError):
        http.set_cb(bytearray(b"/x"), lambda req, arg: None)  # type: ignore[arg-type]


# -- 5. a base collected before its pending client requests

GC_ORDER = """
    import gc, socket
    from bitcoin_support import *
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]

    class Holder:
        pass

    def cycle(order, requests_before_base):
        h = Holder()
        if requests_before_base:  # the collector finalizes in allocation order
            h.reqs = [obtain_evhttp_request(lambda r, a: None, h) for _ in range(3)]
        base = obtain_event_base()
        conn = obtain_evhttp_connection_base(base, "127.0.0.1", port)
        h.base, h.conn = base, conn
        if not requests_before_base:
            h.reqs = [obtain_evhttp_request(lambda r, a: None, h) for _ in range(3)]
        for r in h.reqs:
            conn.make_request(r, "GET", "/")
        h.me = h
        # Drop the package's own hold on the in-flight requests, as module teardown does.
        import bitcoin_support._client as m
        for r in h.reqs:
            m._client_pending.pop(r.id, None)
        order(h)

    def base_first(h):
        h.base.__del__()

    def requests_first(h):
        for r in h.reqs:
            r.__del__()

    for order in (base_first, requests_first, lambda h: None):
        for early in (False, True):
            cycle(order, early)
            gc.collect()
    print(live_counts())
"""


def test_base_collected_before_its_pending_client_requests() -> None:
    # Before the fix: a request's finalizer cancelled a request libevent had already freed
    # with the connection (double free).
    out = assert_child_ok(GC_ORDER)
    assert "'EvHttpRequest': 0" in out and "'EventBase': 0" in out


# -- 9. accept_socket refuses anything but a listening TCP socket


def test_accept_socket_refuses_pipes_files_and_connected_sockets(
    base: EventBase, tmp_path: Any
) -> None:
    http = obtain_evhttp(base)
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="listening"):
            http.accept_socket(r)
    finally:
        os.close(r)
        os.close(w)
    with open(tmp_path / "f", "wb") as f, pytest.raises(ValueError, match="listening"):
        http.accept_socket(f)
    with socket.socket() as unbound, pytest.raises(ValueError, match="listening"):
        http.accept_socket(unbound)
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError, match="listening"):
            http.accept_socket(bound)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError, match="listening"):
            http.accept_socket(udp)
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        with socket.create_connection(lsock.getsockname()) as client:
            with pytest.raises(ValueError, match="listening"):
                http.accept_socket(client)
        with pytest.raises(ValueError):
            http.accept_socket(-1)
        with pytest.raises(TypeError):
            http.accept_socket("3")  # type: ignore[arg-type]
        # Nothing was left registered: the loop does not spin, and a real listener works.
        assert http._bound == []
        assert base.loop(bs.EVLOOP_NONBLOCK) in (0, 1)
        port = http.accept_socket(lsock)
        http.set_gencb(lambda req, arg: req.send_reply(200, body=b"ok"))
        assert port == lsock.getsockname()[1]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _refused_objects(tmp_path: pathlib.Path) -> Iterator[tuple[str, Any, list[Any]]]:
    """Each kind of object accept_socket refuses: (name, object, what to close afterwards)."""
    r, w = os.pipe()
    yield "pipe", r, [r, w]
    fd = os.open(tmp_path / "plain", os.O_RDWR | os.O_CREAT)
    yield "regular file", fd, [fd]
    f = open(tmp_path / "object", "wb")  # closed by the caller
    yield "file object", f, [f]
    unbound = socket.socket()
    yield "unbound socket", unbound, [unbound]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    yield "udp socket", udp, [udp]
    lsock = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(lsock.getsockname())
    yield "connected socket", client, [client, lsock]
    closed_r, closed_w = os.pipe()
    os.close(closed_r)
    os.close(closed_w)
    yield "closed descriptor", closed_r, []


def test_accept_socket_leaves_no_descriptor_behind_when_it_refuses(
    base: EventBase, tmp_path: pathlib.Path
) -> None:
    with obtain_evhttp(base) as http:
        leaked: dict[str, int] = {}
        for name, obj, owned in _refused_objects(tmp_path):
            try:
                before = _open_fds()
                for _ in range(20):
                    with pytest.raises(ValueError):
                        http.accept_socket(obj)
                leaked[name] = _open_fds() - before
            finally:
                for o in owned:
                    o.close() if hasattr(o, "close") else os.close(o)
        assert leaked == dict.fromkeys(leaked, 0), leaked
        assert len(leaked) == 7 and http._bound == []


ACCEPT_SPIN = """
    import os, socket, time
    from bitcoin_support import *
    base = obtain_event_base()
    http = obtain_evhttp(base)
    r, w = os.pipe()
    os.write(w, b"x")
    for bad in (r,):
        try:
            http.accept_socket(bad)
        except (ValueError, OSError):
            pass
    with socket.create_server(("127.0.0.1", 0)) as l:
        c = socket.create_connection(l.getsockname())
        a, _ = l.accept()
        try:
            http.accept_socket(a)
        except (ValueError, OSError, IndexError):
            pass
    t = time.monotonic()
    obtain_event(base, -1, EV_TIMEOUT, lambda ev, a: base.loopbreak()).add(0.3)
    n = 0
    while base.loop(EVLOOP_ONCE) == 0 and not base.got_break():
        n += 1
    print(n, round(time.monotonic() - t, 1))
"""


def test_refused_sockets_leave_no_listener_spinning_the_loop() -> None:
    out = assert_child_ok(ACCEPT_SPIN)
    rounds, _seconds = out.split()
    assert int(rounds) < 5  # one timer round, not thousands of accept errors


# -- 11. bodies and headers: TypeError for read-only buffers, no truncation, no control chars


def test_read_body_refuses_read_only_buffers_and_headers_refuse_controls() -> None:
    seen: dict[str, Any] = {}

    def cb(req: EvHttpRequest, arg: Any) -> None:
        for bad in (b"...", "text", memoryview(b"ro"), 3):
            try:
                req.read_body(bad)
            except TypeError as exc:
                seen.setdefault("read_body", []).append("into" in str(exc))
        out = req.output_headers
        out.add("X", "kept")
        for name in ("X\x00junk", "X junk", "", "X\r\n"):
            try:
                out.remove(name)
            except ValueError:
                seen.setdefault("remove", []).append(name)
        seen["x"] = out.get("X")
        for value in ("a\x0bb", "a\x7fb", "a\x01b", "a\x1fb", "a\x00b", "a\rb"):
            try:
                out.add("X-Bad", value)
            except ValueError:
                seen.setdefault("values", []).append(value)
        out.add("X-Tab", "a\tb and obs-text \xe9")
        seen["tab"] = out.get("X-Tab")
        req.send_reply(200, body=b"ok")

    base = obtain_event_base()
    http = obtain_evhttp(base)
    port = http.bind()
    http.set_gencb(cb)
    import threading

    t = threading.Thread(target=lambda: seen.update(resp=request(port, "POST", body=b"b")))
    t.start()
    obtain_event(base, -1, EV_TIMEOUT, lambda ev, a: base.loopbreak()).add(5)
    while t.is_alive() and not base.got_break():
        base.loop(bs.EVLOOP_ONCE)
    t.join(5)
    base.close()
    assert seen["read_body"] == [True, True, True, True]
    assert seen["remove"] == ["X\x00junk", "X junk", "", "X\r\n"]
    assert seen["x"] == "kept"
    assert seen["values"] == ["a\x0bb", "a\x7fb", "a\x01b", "a\x1fb", "a\x00b", "a\rb"]
    assert seen["tab"] == "a\tb and obs-text \xe9"
    assert seen["resp"][0] == 200 and seen["resp"][1]["x"] == "kept"


# -- 15. no private attributes of the standard library


def test_package_reads_no_private_stdlib_attributes() -> None:
    for path in pathlib.Path(bs.__file__).parent.glob("*.py"):
        src = path.read_text()
        assert ".__reduce__()" not in src and "._cache" not in src, path.name
    before = EvHttpRequest.live()
    req = obtain_evhttp_request(lambda r, a: None)
    assert EvHttpRequest.live() == before + 1 == bs.live_counts()["EvHttpRequest"]
    req.close()
    assert EvHttpRequest.live() == before


def test_server_closed_from_its_own_request_callback() -> None:
    base = obtain_event_base()
    http = obtain_evhttp(base)
    port = http.bind()
    held: list[EvHttpRequest] = []

    def first(req: EvHttpRequest, arg: Any) -> None:
        held.append(req)  # deferred: answered 503 when the server closes

    def closer(req: EvHttpRequest, arg: Any) -> None:
        req.send_reply(200, body=b"closing")
        http.close()

    http.set_cb("/wait", first)
    http.set_cb("/close", closer)
    results: dict[str, Any] = {}
    import threading

    def client() -> None:
        with RawClient(port) as waiting:
            waiting.send(b"GET /wait HTTP/1.1\r\nHost: a\r\n\r\n")
            import time

            time.sleep(0.2)
            results["close"] = request(port, path="/close")[0]
            results["wait"] = waiting.response()[0]

    t = threading.Thread(target=client)
    t.start()
    obtain_event(base, -1, EV_TIMEOUT, lambda ev, a: base.loopbreak()).add(5)
    while t.is_alive() and not base.got_break():
        base.loop(bs.EVLOOP_ONCE)
    t.join(5)
    assert results == {"close": 200, "wait": 503}
    assert http.closed and held[0].closed
    base.loop(bs.EVLOOP_NONBLOCK)
    base.close()
    gc.collect()
    assert bs.live_counts()["EvHttp"] == 0


# -- garbage cycles: a server, its base and its deferred requests, with finalizers touching them

SERVER_CYCLE = """
    import gc, itertools, socket
    from bitcoin_support import *

    class Toucher:
        def __del__(self):
            for call in (lambda: self.req.send_reply(200, body=b"late"),
                         lambda: self.req.output_headers.add("X", "y"),
                         lambda: self.http.set_cb("/p", lambda r, a: None),
                         lambda: self.base.loop(EVLOOP_NONBLOCK)):
                try:
                    call()
                except (ClosedError, RuntimeError):
                    pass

    def cycle(order):
        base = obtain_event_base()
        http = obtain_evhttp(base)
        port = http.bind()
        got = []
        http.set_gencb(lambda req, arg: got.append(req))
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        for c in clients:
            c.sendall(b"GET / HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n")
        while len(got) < 2:
            base.loop(EVLOOP_ONCE)
        objs = {"base": base, "http": http, "req": got[0]}
        t = Toucher()
        t.__dict__.update(objs)
        t.me = t
        for name in order:  # finalizers run in allocation order: this one first
            holder = type("H", (), {})()
            holder.obj, holder.me = objs[name], holder
        del base, http, got, objs, t, holder
        gc.collect()
        for c in clients:
            c.close()

    for order in itertools.permutations(["base", "http", "req"]):
        cycle(order)
    gc.collect()
    print(live_counts())
"""


def test_server_base_and_deferred_requests_collected_in_any_order() -> None:
    out = assert_child_ok(SERVER_CYCLE)
    assert "'EvHttpRequest': 0" in out and "'EvHttp': 0" in out and "'EventBase': 0" in out
