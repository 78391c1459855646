"""The server room (SPEC section 4): EvHttp, its requests, replies, headers, limits, C callbacks."""

from __future__ import annotations

import ctypes
import gc
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
from http_helpers import LoopThread, RawClient, request, wait_for

import bitcoin_support as bs
from bitcoin_support import (
    EV_TIMEOUT,
    ClosedError,
    DummyHandleError,
    EvHttp,
    EvHttpConnection,
    EvHttpRequest,
    SerializeData,
    ffi,
    obtain_event,
    obtain_event_base,
    obtain_evhttp,
    obtain_evhttp_connection_base,
    obtain_evhttp_request,
)


def echo_cb(req: EvHttpRequest, arg: Any) -> None:
    req.send_reply(200, body=req.body, content_type=req.input_headers.get("Content-Type"))


# -- the server object


def test_bind_port_zero_and_twice() -> None:
    base = obtain_event_base()
    http = obtain_evhttp(base)
    p1 = http.bind("127.0.0.1", 0)
    p2 = http.bind("127.0.0.1", 0)
    assert p1 > 0 and p2 > 0 and p1 != p2
    with pytest.raises(OSError):
        http.bind("127.0.0.1", p1)
    with pytest.raises(TypeError, match="host must be a str, not int"):
        http.bind(123, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not contain NUL"):
        http.bind("127.0.0.1\x00junk", 0)  # C would have bound 127.0.0.1
    with pytest.raises(ValueError, match=r"port must be in \[0, 65535\], got 65536"):
        http.bind("127.0.0.1", 65536)
    http.close()
    base.close()


def test_handle_surface_and_counters() -> None:
    base = obtain_event_base()
    before = bs.live_counts()
    http = obtain_evhttp(base)
    conn = obtain_evhttp_connection_base(base, "127.0.0.1", 9)
    req = obtain_evhttp_request(lambda r, a: None)
    assert isinstance(http, EvHttp) and isinstance(conn, EvHttpConnection)
    assert len({http.id, conn.id, req.id, base.id}) == 4
    counts = bs.live_counts()
    for kind in ("EvHttp", "EvHttpConnection", "EvHttpRequest"):
        assert counts[kind] == before[kind] + 1
    assert EvHttp.live() == counts["EvHttp"]
    with req:
        pass
    assert req.closed
    req.close()
    base.close()  # releases the server and the connection first
    assert http.closed and conn.closed
    assert bs.live_counts() == {**before, "EventBase": before["EventBase"] - 1}
    for call in (lambda: http.bind(), lambda: http.set_timeout(1), lambda: conn.set_retries(1)):
        with pytest.raises(ClosedError):
            call()
    with pytest.raises(ClosedError):
        req.set_body(b"x")


def test_trace_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(bs.TRACE, logger="bitcoin_support.events")
    base = obtain_event_base()
    http = obtain_evhttp(base)
    http.close()
    base.close()
    text = caplog.text
    assert f"create EvHttp id={http.id}" in text and f"release EvHttp id={http.id}" in text


def test_dummies() -> None:
    base = obtain_event_base(dummy=True)
    http = obtain_evhttp(base)
    conn = obtain_evhttp_connection_base(base, "127.0.0.1", 80)
    req = obtain_evhttp_request(lambda r, a: None)
    assert http.dummy and conn.dummy
    for call in (
        lambda: http.bind(),
        lambda: http.set_gencb(echo_cb),
        lambda: http.set_max_body_size(10),
        lambda: conn.set_timeout(1),
        lambda: conn.make_request(req, "GET", "/"),
    ):
        with pytest.raises(DummyHandleError):
            call()
    req.close()
    base.close()
    assert http.closed and conn.closed


def test_dropped_server_is_released() -> None:
    base = obtain_event_base()
    n = EvHttp.live()
    http = obtain_evhttp(base)
    http.bind()
    with pytest.warns(ResourceWarning, match="unclosed <EvHttp"):
        del http
        gc.collect()
    assert EvHttp.live() == n
    base.close()


def test_argument_errors() -> None:
    base = obtain_event_base()
    http = obtain_evhttp(base)
    with pytest.raises(TypeError):
        http.set_gencb(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown method"):
        http.set_allowed_methods("BREW")
    with pytest.raises(ValueError):
        http.set_timeout(0)
    with pytest.raises(ValueError):
        http.bind(port=70000)
    with pytest.raises(ValueError):
        http.del_cb("/nothing")
    with pytest.raises(TypeError):
        obtain_evhttp(object())  # type: ignore[arg-type]
    base.close()


# -- requests and replies


def test_request_properties(server: LoopThread) -> None:
    seen: dict[str, Any] = {}

    def cb(req: EvHttpRequest, arg: Any) -> None:
        seen.update(
            arg=arg,
            method=req.method,
            uri=req.uri,
            path=req.path,
            query=req.query,
            params=req.query_params,
            host=req.host,
            peer=req.peer,
            ua=req.input_headers["x-test"],
            all=req.input_headers.get_all("X-Multi"),
            has=("X-TEST" in req.input_headers, "nope" in req.input_headers),
            length=req.body_length,
            body=req.body,
        )
        req.output_headers.add("X-Out", "1")
        req.output_headers["X-Set"] = "a"
        req.output_headers.set("X-Set", "b")
        req.send_reply(201, "Made", b"done", content_type="text/plain")

    server.http.set_gencb(cb, "ARG")
    server.start()
    with RawClient(server.port) as c:
        c.send(
            b"POST /a/b%20c?x=1&y=%41&x=2 HTTP/1.1\r\nHost: example.org:81\r\nX-Test: yes\r\n"
            b"X-Multi: 1\r\nx-multi: 2\r\nContent-Length: 5\r\n\r\nhello"
        )
        status, headers, body = c.response("POST")
        peer_port = c.sock.getsockname()[1]
    assert (status, body) == (201, b"done")
    assert headers["x-out"] == "1" and headers["x-set"] == "b"
    assert headers["content-type"] == "text/plain"
    assert seen["arg"] == "ARG" and seen["method"] == "POST"
    assert seen["uri"] == "/a/b%20c?x=1&y=%41&x=2"
    assert seen["path"] == "/a/b%20c" and seen["query"] == "x=1&y=%41&x=2"
    assert seen["params"] == {"x": "2", "y": "A"}
    assert seen["host"] == "example.org"
    assert seen["peer"] == ("127.0.0.1", peer_port)
    assert seen["ua"] == "yes" and seen["all"] == ["1", "2"] and seen["has"] == (True, False)
    assert seen["length"] == 5 and seen["body"] == b"hello"


def test_read_body_into_serialize_data(server: LoopThread) -> None:
    got: list[bytes] = []

    def cb(req: EvHttpRequest, arg: Any) -> None:
        sd = SerializeData(b">")
        n = req.read_body(sd)
        buf = bytearray(3)
        m = req.read_body(buf)
        got.append(bytes(sd) + b"|" + bytes(buf[:m]) + str(n).encode())
        sd.close()
        req.send_reply(200, body=SerializeData(b"sd-body"))

    server.http.set_gencb(cb)
    server.start()
    status, _, body = request(server.port, "POST", "/", b"secret-body")
    assert (status, body) == (200, b"sd-body")
    assert got == [b">secret-body|sec11"]


def test_answered_request_is_freed_without_the_cyclic_gc(server: LoopThread) -> None:
    """A request wrapper whose header views were used is freed by reference counting once
    answered (the views and the request form no cycle then), and a view kept past the reply
    raises ClosedError."""
    refs: list[weakref.ref[Any]] = []
    kept: list[Any] = []
    after: list[str] = []

    def cb(req: EvHttpRequest, arg: Any) -> None:
        ctype = req.input_headers.get("Content-Type", "x/none")
        req.output_headers["Content-Type"] = ctype
        refs.append(weakref.ref(req))
        if not kept:
            kept.append(req.input_headers)
            req.send_reply(200, body=req.body)
            try:
                kept[0].get("Content-Type")
            except ClosedError:
                after.append("closed")
        else:
            req.send_reply(200, body=req.body)

    server.http.set_gencb(cb)
    gc.disable()
    try:
        server.start()
        for _ in range(2):
            status, headers, body = request(
                server.port, "POST", "/", b"abc", {"Content-Type": "a/b"}
            )
            assert (status, body, headers["content-type"]) == (200, b"abc", "a/b")
        kept.clear()
        assert wait_for(lambda: all(r() is None for r in refs))
    finally:
        gc.enable()
    assert len(refs) == 2 and after == ["closed"]


def test_header_injection_rejected(server: LoopThread) -> None:
    errors: list[str] = []

    def cb(req: EvHttpRequest, arg: Any) -> None:
        out = req.output_headers
        for name, value in (
            ("X-A", "v\r\nInjected: 1"),
            ("X-A", "v\n"),
            ("X-A", "folded\r\n continued"),
            ("Bad\r\nName", "v"),
            ("Bad Name", "v"),
            ("", "v"),
            ("X-A", "nul\0"),
        ):
            try:
                out.add(name, value)
            except ValueError:
                errors.append(name)
        try:
            req.send_reply(200, "OK\r\nX-Evil: 1")
        except ValueError:
            errors.append("reason")
        try:
            req.send_reply(200, content_type="text/plain\r\nX-Evil: 1")
        except ValueError:
            errors.append("ctype")
        req.send_reply(200, body=b"clean")

    server.http.set_gencb(cb)
    server.start()
    status, headers, body = request(server.port)
    assert (status, body) == (200, b"clean")
    assert len(errors) == 9
    assert "injected" not in headers and "x-evil" not in headers


def test_send_echo_answers_with_the_body_and_its_content_type(server: LoopThread) -> None:
    errors: list[str] = []

    def cb(req: EvHttpRequest, arg: Any) -> None:
        for name, call in (
            ("code", lambda: req.send_echo(99)),
            ("code-type", lambda: req.send_echo(200.0)),  # type: ignore[arg-type]
            ("ctype", lambda: req.send_echo(200, default_content_type="a\r\nX-Evil: 1")),
            ("ctype-bytes", lambda: req.send_echo(200, default_content_type=b"a\nX-Evil: 1")),
        ):
            try:
                call()
            except (TypeError, ValueError):
                errors.append(name)
        default = "text/plain" if req.path == "/str" else b"application/x-default"
        req.send_echo(201, default_content_type=default)
        assert req.closed
        try:
            req.send_echo()
        except ClosedError:
            errors.append("closed")

    server.http.set_gencb(cb)
    server.start()
    typed = request(server.port, "POST", body=b"secret", headers={"Content-Type": "x/y"})
    assert (typed[0], typed[1]["content-type"], typed[2]) == (201, "x/y", b"secret")
    untyped = request(server.port, "POST", path="/str", body=b"abc")
    assert (untyped[0], untyped[1]["content-type"], untyped[2]) == (201, "text/plain", b"abc")
    plain = request(server.port, "POST", body=b"")
    assert (plain[0], plain[1]["content-type"]) == (201, "application/x-default")
    assert errors == ["code", "code-type", "ctype", "ctype-bytes", "closed"] * 3
    assert "x-evil" not in typed[1]
    assert wait_for(lambda: EvHttpRequest.live() == 0)


def test_send_echo_refuses_nul_and_non_text_defaults(server: LoopThread) -> None:
    errors: list[str] = []

    def cb(req: EvHttpRequest, arg: Any) -> None:
        path = req.path
        for name, bad in (
            ("nul-bytes", b"x/y\0\r\nX-Evil: 1"),  # C would have read "x/y" and stopped
            ("nul-str", "x/y\0\r\nX-Evil: 1"),
            ("none", None),
            ("zero", 0),
            ("bytearray", bytearray()),
        ):
            try:
                req.send_echo(200, default_content_type=bad)  # type: ignore[arg-type]
            except (TypeError, ValueError) as exc:
                errors.append(f"{name}:{type(exc).__name__}")
            if req.closed:
                return
        if path == "/str":
            req.send_echo(200, default_content_type="")
        else:
            req.send_echo(200)

    server.http.set_gencb(cb)
    server.start()
    as_bytes = request(server.port, "POST", body=b"abc")
    as_str = request(server.port, "POST", path="/str", body=b"abc")
    assert (as_bytes[0], as_bytes[2], as_str[0], as_str[2]) == (200, b"abc", 200, b"abc")
    # no default (b"" or ""): no empty Content-Type field, the same answer either way
    assert as_bytes[1]["content-type"] == as_str[1]["content-type"] != ""
    refused = ["nul-bytes:ValueError", "nul-str:ValueError"] + [
        f"{name}:TypeError" for name in ("none", "zero", "bytearray")
    ]
    assert errors == refused * 2
    assert wait_for(lambda: EvHttpRequest.live() == 0)


def test_path_callbacks_and_404(server: LoopThread) -> None:
    server.http.set_cb("/a", lambda req, arg: req.send_reply(200, body=b"a"))
    server.http.set_cb("/b", lambda req, arg: req.send_reply(200, body=b"b"))
    server.http.set_cb("/b", lambda req, arg: req.send_reply(200, body=b"b2"))
    server.http.del_cb("/a")
    server.start()
    assert request(server.port, path="/b")[2] == b"b2"
    assert request(server.port, path="/a")[0] == 404
    server.call(server.http.set_gencb, lambda req, arg: req.send_reply(200, body=b"gen"))
    assert request(server.port, path="/a")[2] == b"gen"


def test_chunked_reply_and_send_error(server: LoopThread) -> None:
    def cb(req: EvHttpRequest, arg: Any) -> None:
        if req.path == "/err":
            req.send_error(418, "Teapot")
            return
        req.send_reply_start(200)
        for part in (b"one,", bytearray(b"two,"), memoryview(b"three")):
            req.send_reply_chunk(part)
        req.send_reply_end()
        assert req.closed

    server.http.set_gencb(cb)
    server.start()
    status, headers, body = request(server.port)
    assert (status, body) == (200, b"one,two,three")
    assert headers.get("transfer-encoding") == "chunked"
    assert request(server.port, path="/err")[0] == 418


def test_reply_twice_and_after_close(server: LoopThread) -> None:
    errors: list[type[BaseException]] = []
    kept: list[EvHttpRequest] = []

    def cb(req: EvHttpRequest, arg: Any) -> None:
        req.send_reply(200, body=b"x")
        kept.append(req)
        for call in (lambda: req.send_reply(200), lambda: req.body, lambda: req.output_headers):
            try:
                call()
            except ClosedError:
                errors.append(ClosedError)

    server.http.set_gencb(cb)
    server.start()
    assert request(server.port)[0] == 200
    assert errors == [ClosedError] * 3 and kept[0].closed
    assert wait_for(lambda: EvHttpRequest.live() == 0)


def test_callback_exception_gives_500_and_server_keeps_serving(
    server: LoopThread, caplog: pytest.LogCaptureFixture
) -> None:
    def cb(req: EvHttpRequest, arg: Any) -> None:
        if req.path == "/boom":
            raise RuntimeError("boom")
        if req.path == "/late-boom":
            req.send_reply(200, body=b"sent first")
            raise KeyError("after reply")
        req.send_reply(200, body=b"fine")

    server.http.set_gencb(cb)
    caplog.set_level(logging.ERROR, logger="bitcoin_support.http")
    server.start()
    assert request(server.port, path="/boom")[0] == 500
    assert request(server.port, path="/late-boom")[2] == b"sent first"
    assert request(server.port)[2] == b"fine"
    records = [r for r in caplog.records if r.name == "bitcoin_support.http"]
    assert len(records) == 2 and all(r.levelno == logging.ERROR for r in records)
    assert "boom" in caplog.text
    assert server.error is None  # the loop did not stop
    assert wait_for(lambda: EvHttpRequest.live() == 0)


def test_exception_mid_chunked_reply_ends_it(server: LoopThread) -> None:
    def cb(req: EvHttpRequest, arg: Any) -> None:
        req.send_reply_start(200)
        req.send_reply_chunk(b"partial")
        raise RuntimeError("half way")

    server.http.set_gencb(cb)
    server.start()
    logging.getLogger("bitcoin_support.http").disabled = True
    try:
        status, _, body = request(server.port)
    finally:
        logging.getLogger("bitcoin_support.http").disabled = False
    assert (status, body) == (200, b"partial")


def test_deferred_reply_from_a_timer(server: LoopThread) -> None:
    def cb(req: EvHttpRequest, arg: Any) -> None:
        def later(ev: Any, r: EvHttpRequest) -> None:
            r.send_reply(200, body=b"later:" + r.body)

        obtain_event(server.base, -1, EV_TIMEOUT, later, req).add(0.05)

    server.http.set_gencb(cb)
    server.start()
    t0 = time.monotonic()
    status, _, body = request(server.port, "POST", "/", b"x")
    assert (status, body) == (200, b"later:x") and time.monotonic() - t0 >= 0.04
    assert wait_for(lambda: EvHttpRequest.live() == 0)


def test_late_reply_after_hangup_raises_closed(server: LoopThread) -> None:
    held: list[EvHttpRequest] = []
    server.http.set_gencb(lambda req, arg: held.append(req))
    server.start()
    c = RawClient(server.port)
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wait_for(lambda: len(held) == 1)
    assert not held[0].closed and EvHttpRequest.live() == 1
    c.close()  # the client goes away while its request waits
    assert wait_for(lambda: held[0].closed)
    with pytest.raises(ClosedError):
        server.call(held[0].send_reply, 200)
    assert EvHttpRequest.live() == 0


def test_closing_server_closes_waiting_requests(server: LoopThread) -> None:
    held: list[EvHttpRequest] = []
    server.http.set_gencb(lambda req, arg: held.append(req))
    server.start()
    with RawClient(server.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_for(lambda: len(held) == 1)
        server.call(server.http.close)
        assert held[0].closed and c.closed_by_peer()
    assert EvHttpRequest.live() == 0


def test_close_unanswered_request_sends_500(server: LoopThread) -> None:
    server.http.set_gencb(lambda req, arg: req.close())
    server.start()
    assert request(server.port)[0] == 500


def test_server_closed_inside_its_callback_still_sends_that_reply(server: LoopThread) -> None:
    def cb(req: EvHttpRequest, arg: Any) -> None:
        server.http.close()  # freed on the next loop round, not under libevent's feet
        req.send_reply(200, body=b"last")

    server.http.set_gencb(cb)
    server.start()
    status, _, body = request(server.port)
    assert (status, body) == (200, b"last") and server.http.closed
    with pytest.raises(OSError):
        request(server.port)  # no longer accepting


def test_allowed_methods(server: LoopThread) -> None:
    server.http.set_gencb(lambda req, arg: req.send_reply(200, body=req.method.encode()))
    server.start()
    assert request(server.port, "OPTIONS")[0] == 501
    server.call(server.http.set_allowed_methods, "GET", "OPTIONS", "PATCH")
    assert request(server.port, "OPTIONS")[2] == b"OPTIONS"
    assert request(server.port, "PATCH", body=b"p")[2] == b"PATCH"
    assert request(server.port, "POST", body=b"x")[0] == 501


def test_body_and_header_limits(server: LoopThread) -> None:
    server.http.set_gencb(echo_cb)
    server.http.set_max_body_size(100)
    server.http.set_max_headers_size(1000)
    server.start()
    assert request(server.port, "POST", body=b"x" * 100)[2] == b"x" * 100
    assert request(server.port, "POST", body=b"x" * 101)[0] == 413
    status = request(server.port, headers={"X-Big": "y" * 2000})[0]
    assert status in (400, 413, 431)


def test_accept_socket(server: LoopThread) -> None:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    port = server.http.accept_socket(lsock)
    assert port == lsock.getsockname()[1]
    lsock.close()  # the server keeps its own duplicate
    server.http.set_gencb(echo_cb)
    server.start()
    assert request(port, "POST", body=b"via accept")[2] == b"via accept"


def test_c_request_callback(server: LoopThread, tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    src = tmp_path / "cb.c"
    src.write_text(
        "#include <event2/http.h>\n#include <event2/buffer.h>\n"
        "typedef struct EvHttpRequest EvHttpRequest;\n"
        "void c_cb(EvHttpRequest *r, void *arg) {\n"
        "  struct evhttp_request *req = (struct evhttp_request *)r;\n"
        '  evbuffer_add_printf(evhttp_request_get_output_buffer(req), "from C %s", (char *)arg);\n'
        '  evhttp_send_reply(req, 200, "OK", NULL);\n}\n'
    )
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "libevent_core", "libevent_extra"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    so = tmp_path / "cb.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(so), str(src), *flags], check=True)
    lib = ctypes.CDLL(str(so))
    addr = ctypes.cast(lib.c_cb, ctypes.c_void_p).value
    cb = ffi.cast("EvHttpRequestCallback", addr)
    arg = ffi.new("char[]", b"with arg")
    server.http.set_cb("/c", cb, arg)
    server.http.set_gencb(lambda req, a: req.send_reply(200, body=b"from Python"))
    server.start()
    assert request(server.port, path="/c")[2] == b"from C with arg"
    assert request(server.port, path="/py")[2] == b"from Python"


def test_sigpipe_never_kills(tmp_path: Path) -> None:
    """A reply written to a client that has gone: SIGPIPE at its default would kill the process."""
    code = (
        "import signal, socket, sys, time\n"
        "signal.signal(signal.SIGPIPE, signal.SIG_DFL)\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from http_helpers import LoopThread\n"
        "from bitcoin_support import obtain_event\n"
        "srv = LoopThread()\n"
        "held = []\n"
        "srv.http.set_gencb(lambda req, arg: held.append(req))\n"
        "srv.start()\n"
        "for _ in range(20):\n"
        "    c = socket.create_connection(('127.0.0.1', srv.port))\n"
        "    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\\x01\\0\\0\\0\\0\\0\\0\\0')\n"
        "    c.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n"
        "    while len(held) < 1: time.sleep(0.001)\n"
        "    req = held.pop()\n"
        "    c.close()\n"
        "    try:\n"
        "        srv.call(req.send_reply, 200, None, b'x' * 1000000)\n"
        "    except ValueError:\n"
        "        pass\n"
        "time.sleep(0.2)\n"
        "print('alive', signal.getsignal(signal.SIGPIPE))\n"
        "srv.stop()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.returncode != -signal.SIGPIPE and "alive" in proc.stdout
