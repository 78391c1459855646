"""The client room (SPEC section 4): EvHttpConnection and its requests."""

from __future__ import annotations

import gc
import socket
import threading
import time
import weakref
from typing import Any

import pytest
from http_helpers import LoopThread

import bitcoin_support as bs
from bitcoin_support import (
    EV_TIMEOUT,
    EvHttpRequest,
    obtain_event,
    obtain_event_base,
    obtain_evhttp_connection_base,
    obtain_evhttp_request,
)


def _client_round(
    base: Any, port: int, method: str = "GET", body: bytes | None = None, **conn_opts: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def done(req: EvHttpRequest, arg: Any) -> None:
        out.update(
            arg=arg,
            code=req.response_code,
            reason=req.response_reason,
            error=req.error,
            headers=dict(req.input_headers) if req.response_code else {},
            body=req.body if req.response_code else b"",
        )
        base.loopbreak()

    conn = obtain_evhttp_connection_base(base, "127.0.0.1", port)
    if "timeout" in conn_opts:
        conn.set_timeout(conn_opts["timeout"])
    conn.set_retries(0)
    req = obtain_evhttp_request(done, "ARG")
    req.output_headers.add("X-Client", "yes")
    req.output_headers.add("Content-Type", "text/x")
    if body is not None:
        req.set_body(body)
    conn.make_request(req, method, "/path?q=1")
    guard = obtain_event(base, -1, EV_TIMEOUT, lambda ev, a: base.loopbreak())
    guard.add(10)
    base.dispatch()
    guard.close()
    conn.close()
    return out


def test_client_against_own_server(server: LoopThread) -> None:
    def cb(req: EvHttpRequest, arg: Any) -> None:
        req.output_headers.add("X-Seen", req.input_headers.get("X-Client", "-"))
        req.send_reply(
            202,
            "Fine",
            body=req.method.encode() + b":" + req.body,
            content_type=req.input_headers.get("Content-Type"),
        )

    server.http.set_gencb(cb)
    server.start()
    base = obtain_event_base()
    out = _client_round(base, server.port, "POST", b"payload")
    assert out["arg"] == "ARG" and out["code"] == 202 and out["reason"] == "Fine"
    assert out["error"] is None and out["body"] == b"POST:payload"
    assert out["headers"]["X-Seen"] == "yes" and out["headers"]["Content-Type"] == "text/x"
    base.close()
    assert EvHttpRequest.live() == 0


def test_client_request_is_freed_without_the_cyclic_gc(server: LoopThread) -> None:
    """A client request whose header views were used (both ways) is freed by reference
    counting once its callback has run: the views and the request form no cycle then."""
    server.http.set_gencb(lambda req, arg: req.send_reply(200, body=req.body))
    server.start()
    base = obtain_event_base()
    refs: list[weakref.ref[Any]] = []

    def done(req: EvHttpRequest, arg: Any) -> None:
        assert req.input_headers.get("Content-Length") == "2"
        refs.append(weakref.ref(req))
        base.loopbreak()

    gc.disable()
    try:
        conn = obtain_evhttp_connection_base(base, "127.0.0.1", server.port)
        for _ in range(2):
            req = obtain_evhttp_request(done)
            req.output_headers["Content-Type"] = "text/x"
            req.set_body(b"hi")
            conn.make_request(req, "POST", "/")
            del req
            guard = obtain_event(base, -1, EV_TIMEOUT, lambda ev, a: base.loopbreak())
            guard.add(10)
            base.dispatch()
            guard.close()
        conn.close()
        assert len(refs) == 2 and [r() for r in refs] == [None, None]
    finally:
        gc.enable()
        base.close()


def test_client_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        base = obtain_event_base()
        out = _client_round(base, port)
    assert out["code"] == 0 and out["error"] == "connection refused"
    base.close()
    assert EvHttpRequest.live() == 0


def test_client_timeout() -> None:
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(4)  # accepts (backlog) but never answers
        base = obtain_event_base()
        t0 = time.monotonic()
        out = _client_round(base, lsock.getsockname()[1], timeout=0.3)
        assert time.monotonic() - t0 < 5
    assert out["code"] == 0 and out["error"] == "timeout"
    base.close()


def test_client_reset() -> None:
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(4)

        def rst() -> None:
            conn, _ = lsock.accept()
            conn.recv(1000)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            conn.close()

        t = threading.Thread(target=rst, daemon=True)
        t.start()
        base = obtain_event_base()
        out = _client_round(base, lsock.getsockname()[1], timeout=5)
        t.join(5)
    assert out["code"] == 0 and out["error"] in ("connection reset", "connection closed")
    base.close()


def test_client_request_lifetimes() -> None:
    base = obtain_event_base()
    n = EvHttpRequest.live()
    req = obtain_evhttp_request(lambda r, a: None)
    with pytest.warns(ResourceWarning, match="unclosed <_ClientRequest"):
        del req
        gc.collect()
    assert EvHttpRequest.live() == n  # never made: freed by its finalizer
    conn = obtain_evhttp_connection_base(base, "127.0.0.1", 9)
    req = obtain_evhttp_request(lambda r, a: pytest.fail("cancelled requests do not call back"))
    conn.make_request(req, "GET", "/")
    with pytest.raises(RuntimeError):
        conn.make_request(req, "GET", "/")
    conn.close()  # frees the pending request with the connection
    assert req.closed and EvHttpRequest.live() == n
    conn2 = obtain_evhttp_connection_base(base, "127.0.0.1", 9)
    req2 = obtain_evhttp_request(lambda r, a: pytest.fail("cancelled"))
    conn2.make_request(req2, "GET", "/")
    req2.close()  # cancels it
    assert EvHttpRequest.live() == n
    base.loop(bs.EVLOOP_NONBLOCK)
    base.close()


def test_client_callback_closes_its_connection(server: LoopThread) -> None:
    server.http.set_gencb(lambda req, arg: req.send_reply(200, body=b"ok"))
    server.start()
    base = obtain_event_base()
    conn = obtain_evhttp_connection_base(base, "127.0.0.1", server.port)
    got: list[int] = []

    def done(req: EvHttpRequest, arg: Any) -> None:
        got.append(req.response_code)
        req.close()  # only the wrapper: libevent frees the request after this callback
        conn.close()  # deferred: the connection is still in use by this callback

    conn.make_request(obtain_evhttp_request(done), "GET", "/")
    base.dispatch()
    assert got == [200] and conn.closed
    base.close()


def test_client_callback_exception_is_reraised(server: LoopThread) -> None:
    server.http.set_gencb(lambda req, arg: req.send_reply(200))
    server.start()
    base = obtain_event_base()
    conn = obtain_evhttp_connection_base(base, "127.0.0.1", server.port)

    def done(req: EvHttpRequest, arg: Any) -> None:
        raise ValueError("client callback")

    conn.make_request(obtain_evhttp_request(done), "GET", "/")
    with pytest.raises(ValueError, match="client callback"):
        base.dispatch()
    conn.close()
    base.close()
