"""Scenarios of the re-entrancy and thread tests, run in a child interpreter (``python FILE
NAME ARGS...``) so that a crash is reported as a failed test instead of ending the test run.

Each scenario prints ``OK`` on success and raises (exit status 1) on a wrong result.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import bitcoin_support as bs
from bitcoin_support import EV_PERSIST, EventBase, LibEvent, ffi, obtain_event, obtain_event_base

ACTIONS = (
    "delete_self",
    "close_self",
    "close_others",
    "close_base",
    "readd_self",
    "delete_readd",
    "active_self",
    "active_close",
)

# ffi.callback objects must outlive every event that uses them.
_c_callbacks: list[Any] = []


def make_cb(kind: str, body: Callable[[LibEvent], None], holder: dict[str, LibEvent]) -> Any:
    """A Python callback or an ``EventCallback`` made with ffi.callback, both calling ``body``."""
    if kind == "py":
        return lambda ev, arg: body(ev)

    @ffi.callback("EventCallback")  # type: ignore[untyped-decorator]
    def c_cb(rec: Any, arg: Any) -> None:
        body(holder["ev"])

    _c_callbacks.append(c_cb)
    return c_cb


def run_until_idle(base: EventBase, seconds: float = 5.0) -> None:
    """Run the loop until no events are left, failing after ``seconds``."""
    deadline = time.monotonic() + seconds
    while base.loop(bs.EVLOOP_NONBLOCK) == 0:
        assert time.monotonic() < deadline, "events kept running"


def fresh_events(base: EventBase, kind: str, seen: set[int], n: int = 20) -> None:
    """``n`` new events fire exactly once each, with ids never seen before."""
    counts = [0] * n

    def body_for(i: int) -> Callable[[LibEvent], None]:
        def body(ev: LibEvent) -> None:
            counts[i] += 1

        return body

    events = []
    for i in range(n):
        holder: dict[str, LibEvent] = {}
        ev = obtain_event(base, -1, 0, make_cb(kind, body_for(i), holder))
        holder["ev"] = ev
        ev.add(0)
        events.append(ev)
    ids = {ev.id for ev in events}
    assert len(ids) == n and not ids & seen, "ids shared or reused"
    seen |= ids
    run_until_idle(base)
    assert counts == [1] * n, f"new events fired {counts}"
    for ev in events:
        ev.close()


def reentrancy(kind: str, persist: str, action: str) -> None:
    gc.collect()
    start = bs.live_counts()
    base = obtain_event_base()
    flags = EV_PERSIST if persist == "persist" else 0
    calls: list[int] = []
    raised: list[BaseException] = []
    other_fired: list[int] = []
    others = [obtain_event(base, -1, 0, lambda ev, arg: other_fired.append(1)) for _ in range(3)]
    others[0].add(1)
    others[1].add(10)  # others[2] is never added
    holder: dict[str, LibEvent] = {}

    def body(ev: LibEvent) -> None:
        calls.append(ev.fired)
        n = len(calls)
        if action == "delete_self":
            ev.delete()
        elif action == "close_self":
            holder.pop("ev").close()
        elif action == "close_others":
            for o in others:
                o.close()
            if flags:
                ev.delete()
        elif action == "close_base":
            try:
                base.close()
            except RuntimeError as exc:
                raised.append(exc)
            if flags:
                ev.delete()
        elif action == "readd_self":
            if n < 3:
                ev.add(0)
            elif flags:
                ev.delete()
        elif action == "delete_readd":
            ev.delete()
            if n < 3:
                ev.add(0)
        elif action == "active_self":
            if n < 3:
                ev.active()
            elif flags:
                ev.delete()
        elif action == "active_close":
            ev.active()
            holder.pop("ev").close()
        else:
            raise AssertionError(action)

    ev = obtain_event(base, -1, flags, make_cb(kind, body, holder))
    holder["ev"] = ev
    ev_id = ev.id
    ev.add(0)
    del ev  # the base alone keeps it alive while it is added
    if action != "close_others":  # there, the pending ones are closed by the callback
        others[0].delete()
        others[1].delete()
    run_until_idle(base)
    expected = 3 if action in ("readd_self", "delete_readd", "active_self") else 1
    assert len(calls) == expected, f"{action}: {len(calls)} calls, expected {expected}"
    if action == "close_base":
        assert len(raised) == expected and "callback" in str(raised[0]), raised
        assert not base.closed
    if action == "close_others":
        assert all(o.closed for o in others)
    else:
        for o in others:
            o.close()
    assert other_fired == []
    ev_left = holder.pop("ev", None)
    if action in ("close_self", "active_close"):
        assert ev_left is None
    else:
        assert ev_left is not None and not ev_left.closed and not ev_left.pending()
        ev_left.close()
    del ev_left
    fresh_events(base, kind, {ev_id})
    base.close()
    gc.collect()
    assert bs.live_counts() == start, (bs.live_counts(), start)


def threads(seconds: str = "1.5", hammers: str = "3") -> None:
    """Threads calling every EventBase and LibEvent operation while a third thread dispatches
    the base in short runs (so both "dispatching" and "idle" are hit): every call works or
    raises RuntimeError (ClosedError only on a handle another thread closed)."""
    gc.collect()
    start = bs.live_counts()
    base = obtain_event_base()
    shared = [obtain_event(base, -1, EV_PERSIST, lambda ev, arg: None) for _ in range(4)]
    ticks: list[int] = []
    ticker = obtain_event(base, -1, EV_PERSIST, lambda ev, arg: ticks.append(1))
    ticker.add(0.001)
    stop = threading.Event()
    results: dict[str, int] = {"ok": 0, "runtime": 0, "closed": 0}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def note(key: str) -> None:
        with lock:
            results[key] += 1

    def attempt(fn: Callable[[], object], handle: Any) -> None:
        try:
            fn()
        except RuntimeError as exc:
            if "call_soon_threadsafe" not in str(exc) and "running" not in str(exc):
                errors.append(exc)
            note("runtime")
        except bs.ClosedError as exc:
            if not handle.closed:
                errors.append(exc)
            note("closed")
        except BaseException as exc:
            errors.append(exc)
        else:
            note("ok")

    def dispatcher() -> None:
        while not stop.is_set():
            try:
                base.loopexit(0.02)
                base.loop()
            except RuntimeError as exc:  # a hammer's loop() holds the base right now
                if "dispatched" not in str(exc) and "running" not in str(exc):
                    errors.append(exc)
            except BaseException as exc:
                errors.append(exc)
                return
            time.sleep(0.003)

    def hammer(seed: int) -> None:
        mine: list[LibEvent] = []
        i = seed
        base_ops: list[Callable[[], object]] = [
            base.now,
            base.got_break,
            base.got_exit,
            lambda: base.backend,
            lambda: base.address,
            lambda: base.loopexit(0.5),
            lambda: base.loop(bs.EVLOOP_NONBLOCK),
            lambda: base.call_soon_threadsafe(ticks.append, 0),
        ]
        while not stop.is_set():
            i += 1
            if len(mine) < 8:
                attempt(lambda: mine.append(obtain_event(base, -1, 0, lambda ev, arg: None)), base)
            ev = mine[i % len(mine)] if mine else shared[i % len(shared)]
            target = shared[i % len(shared)] if i % 3 == 0 else ev
            op = i % 9
            if op == 0:
                attempt(lambda t=target: t.add(0), target)
            elif op == 1:
                attempt(lambda t=target: t.add(0.001), target)
            elif op == 2:
                attempt(target.delete, target)
            elif op == 3:
                attempt(target.active, target)
            elif op == 4:
                attempt(target.pending, target)
            elif op == 5:
                attempt(lambda t=target: t.fired, target)
            elif op in (7, 8):  # churn: an event added, firing on the loop thread, closed

                def churn() -> None:
                    ev = obtain_event(base, -1, 0, lambda ev, arg: ev.fired)
                    try:
                        ev.add(0)
                    finally:
                        ev.close()

                for _ in range(5):
                    attempt(churn, base)
            elif op == 6 and target in mine:
                attempt(target.close, target)
                if target.closed:
                    mine.remove(target)
            else:
                attempt(base_ops[i % len(base_ops)], base)
        for ev in mine:
            attempt(ev.close, ev)

    workers = [threading.Thread(target=hammer, args=(n * 1000,)) for n in range(int(hammers))]
    loop_thread = threading.Thread(target=dispatcher)
    loop_thread.start()
    for w in workers:
        w.start()
    time.sleep(float(seconds))
    stop.set()
    for t in [*workers, loop_thread]:
        t.join(30)
        assert not t.is_alive(), "a thread hung"
    assert not errors, errors[:5]
    assert results["ok"] > 0 and results["runtime"] > 0, results
    # A base close from another thread while it dispatches is refused too.
    closer_errors: list[BaseException] = []
    done = threading.Event()

    def close_from_other_thread() -> None:
        try:
            base.close()
        except RuntimeError as exc:
            closer_errors.append(exc)
        finally:
            done.set()

    base.call_soon_threadsafe(lambda: threading.Thread(target=close_from_other_thread).start())
    base.call_soon_threadsafe(lambda: done.wait(10) and base.loopbreak())
    base.dispatch()
    assert len(closer_errors) == 1 and not base.closed, closer_errors
    base.close()
    gc.collect()
    assert bs.live_counts() == start, (bs.live_counts(), start)


class Touch:
    """Calls methods of the handles it holds from its finalizer: each works or raises
    ClosedError (or RuntimeError for the rules), never crashes."""

    def __init__(self, *handles: Any) -> None:
        self.handles = handles
        self.self = self

    def __del__(self) -> None:
        for h in self.handles:
            for call in (
                lambda h=h: h.pending() if isinstance(h, LibEvent) else h.now(),
                lambda h=h: h.add(1) if isinstance(h, LibEvent) else h.backend,
                lambda h=h: h.fired if isinstance(h, LibEvent) else h.address,
                h.close,
            ):
                try:
                    call()
                except (bs.ClosedError, RuntimeError):
                    pass


def cycles(order: str, wrapped: str) -> None:
    """base <-> event through arg, an event holding itself through arg, and finalizers touching
    them, dropped and collected with the objects created in ``order``."""
    gc.collect()
    start = bs.live_counts()
    owner = obtain_event_base()
    for _ in range(3):
        gc.disable()
        made: dict[str, Any] = {}
        base = obtain_event_base() if wrapped == "owned" else EventBase.from_address(owner.address)
        for what in order.split(","):
            if what == "base":  # base <-> event through the event's arg
                ev = obtain_event(base, -1, EV_PERSIST, lambda e, a: None, base)
                ev.add(5)
                made[what] = Touch(base, ev)
            elif what == "event":  # pending event <-> finalizer object
                t = Touch()
                ev = obtain_event(base, -1, 0, lambda e, a: None, t)
                t.handles = (ev, base)
                ev.active()
                made[what] = t
            else:  # an idle event whose arg is the event itself
                holder: list[Any] = []
                ev = obtain_event(base, -1, 0, lambda e, a: None, holder)
                holder.append(ev)
                holder.append(Touch(ev))
                made[what] = holder
        del ev, made, base
        if wrapped == "wrapper":
            EventBase.from_address(owner.address).close()
        gc.enable()
        gc.collect()
    owner.loop(bs.EVLOOP_NONBLOCK)
    owner.close()
    del owner
    gc.collect()
    assert bs.live_counts() == start, (bs.live_counts(), start)


def requests(seconds: str = "1.5") -> None:
    """Held server requests used from two threads while the main thread closes them, closes
    their server and dispatches the base now and then: each call works or raises ClosedError
    or RuntimeError (the thread rule), never touches a freed request (cffi lets go of the GIL
    around every call into libevent)."""
    import socket

    # Large bodies: copying one out takes long enough, with the GIL let go, that a close on
    # another thread lands inside the copy when nothing holds the request for the call.
    payload = b"b" * (2 << 20)
    head = b"POST /x?q=1 HTTP/1.1\r\nHost: h\r\nX-Test: t\r\nContent-Length: %d\r\n\r\n"
    REQUEST = head % len(payload) + payload
    sys.setswitchinterval(1e-5)
    gc.collect()
    start = bs.live_counts()
    base = obtain_event_base()
    errors: list[BaseException] = []
    counts = {"ok": 0, "refused": 0}
    stop = threading.Event()
    held: list[bs.EvHttpRequest] = []
    body = bs.SerializeData()

    def calls(req: bs.EvHttpRequest) -> list[Callable[[], object]]:
        return [
            lambda: req.path,
            lambda: req.method,
            lambda: req.uri,
            lambda: req.host,
            lambda: req.peer,
            lambda: req.body,
            lambda: req.body_length,
            lambda: req.read_body(body),
            body.clear,
            lambda: req.read_body(bytearray(8)),
            lambda: dict(req.input_headers),
            lambda: req.input_headers.get("x-test"),
            lambda: req.output_headers.add("X-A", "1"),
            lambda: req.output_headers.remove("X-A"),
            lambda: req.send_reply(200, body=b"hello"),
            lambda: req.send_error(503),
            req.close,
        ]

    def hammer(seed: int) -> None:
        i = seed
        while not stop.is_set():
            i += 1
            if not held:
                time.sleep(0)
                continue
            try:
                req = held[i % len(held)]
                fns = calls(req)
                fns[i % len(fns)]()
            except (bs.ClosedError, RuntimeError, IndexError):
                counts["refused"] += 1
            except BaseException as exc:
                errors.append(exc)
                return
            else:
                counts["ok"] += 1

    workers = [threading.Thread(target=hammer, args=(n * 7,), daemon=True) for n in range(2)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + float(seconds)
    rounds = 0
    while time.monotonic() < deadline and not errors:
        http = bs.obtain_evhttp(base)
        port = http.bind()
        http.set_gencb(lambda req, arg: held.append(req))  # held: answered by the threads
        clients = []
        for _ in range(4):
            c = socket.create_connection(("127.0.0.1", port))
            threading.Thread(target=c.sendall, args=(REQUEST,), daemon=True).start()
            clients.append(c)
        until = time.monotonic() + 10
        while len(held) < 4 and time.monotonic() < until:
            try:
                base.loop(bs.EVLOOP_NONBLOCK)
            except RuntimeError:  # a thread's call holds the base's guard right now
                pass
        for j, req in enumerate(list(held)):
            time.sleep(0.0005)
            try:
                if j % 3 == 0:
                    req.close()
                elif j % 3 == 1:
                    base.loop(bs.EVLOOP_NONBLOCK)  # libevent may free what was answered
            except (bs.ClosedError, RuntimeError):
                pass
        time.sleep(0.002)
        http.close()  # answers (503) and frees what is still held
        held.clear()
        for c in clients:
            c.close()
        for _ in range(3):
            base.loop(bs.EVLOOP_NONBLOCK)
        rounds += 1
    stop.set()
    for w in workers:
        w.join(30)
        assert not w.is_alive(), "a thread hung"
    assert not errors, errors[:5]
    assert counts["ok"] > 0 and rounds > 0, (counts, rounds)
    body.close()
    base.close()
    gc.collect()
    assert bs.live_counts() == start, (bs.live_counts(), start)


if __name__ == "__main__":
    name, *args = sys.argv[1:]
    globals()[name](*args)
    print("OK")
