"""Header lookups of a server request: one C call each, no exception on a miss, the lifetime and
thread rules kept (``get``/``[]``/``in`` on input headers, ``[] =`` on output headers)."""

from __future__ import annotations

import sys
import threading
from typing import Any

from http_helpers import LoopThread, RawClient

from bitcoin_support import ClosedError, EvHttpRequest


def _serve_one(server: LoopThread, cb: Any, head: bytes) -> tuple[int, dict[str, str]]:
    server.http.set_gencb(cb)
    server.start()
    with RawClient(server.port) as c:
        c.send(head)
        status, headers, _ = c.response("GET")
    return status, headers


def test_lookups_hit_miss_and_odd_names(server: LoopThread) -> None:
    seen: dict[str, Any] = {}
    missing = object()

    def cb(req: EvHttpRequest, arg: Any) -> None:
        h = req.input_headers
        seen["same view"] = h is req.input_headers
        seen["hit"] = (h.get("content-type"), h["CONTENT-TYPE"], "Content-Type" in h)
        seen["miss"] = (h.get("X-None"), h.get("X-None", missing), "X-None" in h)
        seen["odd"] = (h.get(3), h.get("X\0Test"), h.get("X-\u20ac"), h.get("x-latin"))  # type: ignore[call-overload]
        seen["odd in"] = (3 in h, "X\0Test" in h, "X-\u20ac" in h)
        try:
            h["X-None"]
        except KeyError as exc:
            seen["key error"] = exc.args
        out = req.output_headers
        out.add("X-Rep", "1")
        out.add("x-rep", "2")
        out["X-REP"] = "3"  # replaces both lines
        seen["set"] = (out.get_all("x-rep"), out.get("X-Rep"), "X-Rep" in out)
        for name, value in (("Bad Name", "v"), ("X-A", "v\r\nX-Evil: 1"), ("", "v")):
            try:
                out[name] = value
            except ValueError:
                seen.setdefault("refused", []).append(name)
        req.send_reply(200, body=b"ok")

    status, headers = _serve_one(
        server,
        cb,
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Type: text/x-a\r\nX-Latin: caf\xe9\r\n"
        b"X-Test: t\r\n\r\n",
    )
    assert status == 200 and headers["x-rep"] == "3" and "x-evil" not in headers
    assert seen["same view"] is True
    assert seen["hit"] == ("text/x-a", "text/x-a", True)
    assert seen["miss"] == (None, missing, False)
    assert seen["odd"] == (None, None, None, "caf\xe9")
    assert seen["odd in"] == (False, False, False)
    assert seen["key error"] == ("X-None",)
    assert seen["set"] == (["3"], "3", True)
    assert seen["refused"] == ["Bad Name", "X-A", ""]


def test_a_miss_raises_nothing_inside(server: LoopThread) -> None:
    raised: list[str] = []

    def cb(req: EvHttpRequest, arg: Any) -> None:
        h = req.input_headers

        def trace(frame: Any, event: str, arg: Any) -> Any:
            if event == "exception":
                raised.append(frame.f_code.co_name)
            return trace

        sys.settrace(trace)
        try:
            h.get("X-None")
            _ = "X-None" in h
        finally:
            sys.settrace(None)
        req.send_reply(200, body=b"ok")

    assert _serve_one(server, cb, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200
    assert raised == []


def test_lookups_after_release_raise_closed(server: LoopThread) -> None:
    errors: list[type[BaseException]] = []

    def cb(req: EvHttpRequest, arg: Any) -> None:
        h, out = req.input_headers, req.output_headers  # views made before the release
        req.send_reply(200, body=b"ok")
        for call in (
            lambda: h.get("X-Test"),
            lambda: h["X-Test"],
            lambda: "X-Test" in h,
            lambda: h.get("X-None"),
            lambda: out.__setitem__("X-A", "1"),
            lambda: req.input_headers,
        ):
            try:
                call()
            except ClosedError:
                errors.append(ClosedError)

    assert _serve_one(server, cb, b"GET / HTTP/1.1\r\nHost: x\r\nX-Test: t\r\n\r\n")[0] == 200
    assert errors == [ClosedError] * 6


def test_lookups_from_another_thread_while_dispatched_are_refused(server: LoopThread) -> None:
    outcome: dict[str, Any] = {}
    ready = threading.Event()
    answered = threading.Event()

    def cb(req: EvHttpRequest, arg: Any) -> None:
        h, out = req.input_headers, req.output_headers

        def other() -> None:
            for name, call in (
                ("get", lambda: h.get("X-Test")),
                ("in", lambda: "X-Test" in h),
                ("set", lambda: out.__setitem__("X-A", "1")),
            ):
                try:
                    call()
                    outcome[name] = "ran"
                except RuntimeError as exc:
                    outcome[name] = "refused" if "another thread" in str(exc) else repr(exc)
            ready.set()

        t = threading.Thread(target=other)
        t.start()
        t.join(30)
        req.send_reply(200, body=b"ok")
        answered.set()

    assert _serve_one(server, cb, b"GET / HTTP/1.1\r\nHost: x\r\nX-Test: t\r\n\r\n")[0] == 200
    assert ready.is_set() and answered.is_set()
    assert outcome == {"get": "refused", "in": "refused", "set": "refused"}
