"""Per-callback cost of a persistent event re-activated from its own callback, four ways.

    .venv/bin/python bench/bench_callbacks.py [--n 1000000] [--repeat 3]

Each way runs one dispatch() in which a persistent event (fd -1) re-activates itself from its
callback n times, so the time per callback is libevent's activation plus the callback ABI:

- C: a C callback calling event_active (compiled here with cffi; no Python at all);
- bare cffi: a C trampoline calling an ``extern "Python"`` function that calls event_active;
- LibEvent: this package's Python callback, ``cb(ev, arg)`` calling ``ev.active()``;
- ctypes: a ``CFUNCTYPE`` callback calling event_active through ctypes;

and, as the reference row of a Python event loop, uvloop's ``call_soon`` chain (each callback
schedules the next with ``loop.call_soon``; uvloop comes with the ``bench`` extra).

All four use the same system libevent in the same process, with pthreads locking enabled
(importing bitcoin_support enables it). The runs are interleaved and the best of ``--repeat``
counts; times are the thread's CPU time (``time.thread_time``), so that a machine shared with
other work slows every row less than wall time would. Targets: LibEvent at most 1.3x the bare
trampoline and at least 2x faster than ctypes, and LibEvent at most
0.6x the uvloop chain (each of whose links costs a loop iteration).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import importlib.util
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import cffi

import bitcoin_support as bs

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"

CDEF = """
struct event_base;
struct event;
struct event_base *event_base_new(void);
void event_base_free(struct event_base *);
int event_base_dispatch(struct event_base *);
void event_active(struct event *, int, short);
void event_free(struct event *);
struct event *bare_event_new(struct event_base *base);
long c_run(struct event_base *base, long n);
long c_run_readd(struct event_base *base, long n);
extern "Python" void bare_py(void *arg);
"""

SOURCE = r"""
#include <event2/event.h>

static void bare_py(void *arg); /* defined by cffi below */

static void bare_trampoline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what;
    bare_py(arg);
}

struct event *bare_event_new(struct event_base *base)
{
    return event_new(base, -1, EV_PERSIST, bare_trampoline, NULL);
}

struct c_state { struct event *ev; long n, limit; };

static void c_cb(evutil_socket_t fd, short what, void *arg)
{
    struct c_state *s = arg;
    (void)fd; (void)what;
    if (++s->n < s->limit)
        event_active(s->ev, EV_TIMEOUT, 0);
}

long c_run(struct event_base *base, long limit)
{
    struct c_state s = {NULL, 0, limit};
    s.ev = event_new(base, -1, EV_PERSIST, c_cb, &s);
    event_active(s.ev, EV_TIMEOUT, 0);
    event_base_dispatch(base);
    event_free(s.ev);
    return s.n;
}

static void c_readd_cb(evutil_socket_t fd, short what, void *arg)
{
    struct c_state *s = arg;
    struct timeval zero = {0, 0};
    (void)fd; (void)what;
    if (++s->n < s->limit)
        event_add(s->ev, &zero);
}

long c_run_readd(struct event_base *base, long limit)
{
    struct c_state s = {NULL, 0, limit};
    struct timeval zero = {0, 0};
    s.ev = event_new(base, -1, 0, c_readd_cb, &s);
    event_add(s.ev, &zero);
    event_base_dispatch(base);
    event_free(s.ev);
    return s.n;
}
"""


def build() -> ModuleType:
    """Compile the C loop and the bare trampoline into bench/out (cached between runs)."""
    OUT.mkdir(exist_ok=True)
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "libevent_core"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        "_bench_native", SOURCE, extra_compile_args=["-O2"], extra_link_args=shlex.split(flags)
    )
    so = ffi.compile(tmpdir=str(OUT), verbose=False)
    spec = importlib.util.spec_from_file_location("_bench_native", so)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_c(native: ModuleType, n: int) -> float:
    lib = native.lib
    base = lib.event_base_new()
    t = time.thread_time()
    done = lib.c_run(base, n)
    t = time.thread_time() - t
    lib.event_base_free(base)
    assert done == n, done
    return t


def run_c_readd(native: ModuleType, n: int) -> float:
    """The same re-arm in C: what libevent's timer path costs by itself."""
    lib = native.lib
    base = lib.event_base_new()
    t = time.thread_time()
    done = lib.c_run_readd(base, n)
    t = time.thread_time() - t
    lib.event_base_free(base)
    assert done == n, done
    return t


def run_bare(native: ModuleType, n: int) -> float:
    ffi, lib = native.ffi, native.lib
    base = lib.event_base_new()
    ev = lib.bare_event_new(base)
    count = 0
    active = lib.event_active

    @ffi.def_extern()  # type: ignore[untyped-decorator]
    def bare_py(arg: Any) -> None:
        nonlocal count
        count += 1
        if count < n:
            active(ev, 1, 0)

    active(ev, 1, 0)
    t = time.thread_time()
    lib.event_base_dispatch(base)
    t = time.thread_time() - t
    lib.event_free(ev)
    lib.event_base_free(base)
    assert count == n, count
    return t


def run_libevent(n: int) -> float:
    count = 0

    def cb(ev: bs.LibEvent, arg: object) -> None:
        nonlocal count
        count += 1
        if count < n:
            ev.active()

    with bs.obtain_event_base() as base:
        ev = bs.obtain_event(base, -1, bs.EV_PERSIST, cb)
        ev.active()
        t = time.thread_time()
        base.dispatch()
        t = time.thread_time() - t
    assert count == n, count
    return t


def run_libevent_readd(n: int) -> float:
    """A non-persistent timer re-armed from its own callback with ``add(0)``: the path every
    periodic timer (and asyncio's timers on a libevent loop) takes."""
    count = 0

    def cb(ev: bs.LibEvent, arg: object) -> None:
        nonlocal count
        count += 1
        if count < n:
            ev.add(0)

    with bs.obtain_event_base() as base:
        ev = bs.obtain_event(base, -1, 0, cb)
        ev.add(0)
        t = time.thread_time()
        base.dispatch()
        t = time.thread_time() - t
    assert count == n, count
    return t


def run_ctypes(n: int) -> float:
    path = ctypes.util.find_library("event_core") or "libevent_core-2.1.so.7"
    le = ctypes.CDLL(path)
    le.event_base_new.restype = ctypes.c_void_p
    le.event_base_dispatch.argtypes = [ctypes.c_void_p]
    le.event_base_free.argtypes = [ctypes.c_void_p]
    cbtype = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_short, ctypes.c_void_p)
    le.event_new.restype = ctypes.c_void_p
    le.event_new.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_short, cbtype, ctypes.c_void_p]
    le.event_active.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_short]
    le.event_free.argtypes = [ctypes.c_void_p]
    count = 0
    active = le.event_active

    def py_cb(fd: int, what: int, arg: int | None) -> None:
        nonlocal count
        count += 1
        if count < n:
            active(ev, 1, 0)

    c_cb = cbtype(py_cb)
    base = le.event_base_new()
    ev = le.event_new(base, -1, bs.EV_PERSIST, c_cb, None)
    active(ev, 1, 0)
    t = time.thread_time()
    le.event_base_dispatch(base)
    t = time.thread_time() - t
    le.event_free(ev)
    le.event_base_free(base)
    assert count == n, count
    return t


def run_uvloop_chain(n: int) -> float:
    """uvloop's ``call_soon`` chain: each callback schedules the next one."""
    import uvloop

    loop = uvloop.new_event_loop()
    count = 0
    t = 0.0

    def step() -> None:
        nonlocal count
        count += 1
        if count < n:
            call_soon(step)
        else:
            loop.stop()

    call_soon = loop.call_soon
    try:
        call_soon(step)
        t = time.thread_time()
        loop.run_forever()
        t = time.thread_time() - t
    finally:
        loop.close()
    assert count == n, count
    return t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="callbacks per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per way; the best counts")
    args = parser.parse_args()
    native = build()
    n = args.n
    ways = {
        "C": lambda: run_c(native, n),
        "C add(0) re-arm": lambda: run_c_readd(native, n),
        "bare cffi extern Python": lambda: run_bare(native, n),
        "LibEvent (this package)": lambda: run_libevent(n),
        "LibEvent add(0) re-arm": lambda: run_libevent_readd(n),
        "ctypes CFUNCTYPE": lambda: run_ctypes(n),
    }
    if importlib.util.find_spec("uvloop") is not None:
        ways["uvloop call_soon chain"] = lambda: run_uvloop_chain(n)
    else:
        print("uvloop missing: no call_soon reference row (pip install -e '.[bench]')")
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(args.repeat):  # interleaved, so that drift in machine load hits all ways alike
        for name, fn in ways.items():
            best[name] = min(best[name], fn() / n * 1e9)
    bare, ours = best["bare cffi extern Python"], best["LibEvent (this package)"]
    ct = best["ctypes CFUNCTYPE"]
    version = bs.ffi.string(bs.lib.event_get_version()).decode()
    print(f"python {sys.version.split()[0]}, cffi {cffi.__version__}, libevent {version}")
    print(f"{n:,} callbacks per run, best of {args.repeat}")
    print(f"{'way':<26} {'ns/callback':>12} {'x bare':>8} {'x LibEvent':>11}")
    for name, ns in best.items():
        print(f"{name:<26} {ns:>12.1f} {ns / bare:>8.2f} {ns / ours:>11.2f}")
    ok_bare = ours <= 1.3 * bare
    ok_ctypes = ct >= 2 * ours
    readd = best["LibEvent add(0) re-arm"]
    ok_readd = readd <= 1.5 * ours
    print(f"LibEvent / bare = {ours / bare:.2f} (target <= 1.30): {'ok' if ok_bare else 'MISSED'}")
    print(
        f"ctypes / LibEvent = {ct / ours:.2f} (target >= 2.00): {'ok' if ok_ctypes else 'MISSED'}"
    )
    print(
        f"add(0) re-arm / active() = {readd / ours:.2f} (target <= 1.50): "
        f"{'ok' if ok_readd else 'MISSED'}"
    )
    if "uvloop call_soon chain" in best:
        uv = best["uvloop call_soon chain"]
        ok_uv = ours <= 0.6 * uv
        print(
            f"LibEvent / uvloop call_soon chain = {ours / uv:.2f} (target <= 0.60): "
            f"{'ok' if ok_uv else 'MISSED'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
