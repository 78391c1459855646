"""Python side of ``bs_python_attach()``, ``bs_python_attach_evhttp()``, ``bs_python_detach()``
and ``bs_python_pending()`` for C hosts (see ``cdefs/embed/attach.c``).

Runs inside the embeddable library's interpreter, on the host's thread, with the GIL held. The
host's ``struct event_base *`` and ``struct evhttp *`` stay owned by the host: they are wrapped
with ``EventBase.from_address`` and ``EvHttp.from_address``, which never free them. The
wrappers hold everything Python makes on them until ``bs_python_detach`` closes them.

Jobs (a trio run started with ``trio_guest.start``, an asyncio loop made with ``aio.attach``)
must finish before their base's wrapper goes: ``bs_python_detach`` cancels them and runs what
they need without the host's loop (the base's call queue, the asyncio loop's ticks). What
still needs the host's loop (a job whose own code is running, a clean-up waiting for I/O, a
detach made inside one of the package's callbacks) keeps the base's Python state until it is
done; detach then returns 1 and ``bs_python_pending`` says 1 until the state is released.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, Final, ParamSpec, Protocol

from . import _registry

_P = ParamSpec("_P")

# Modules loaded from a file path, by real path: a later attach (e.g. "teardown") finds the same
# module object, with the state its "setup" left behind.
_file_modules: dict[str, ModuleType] = {}
# How long bs_python_detach lets cancelled jobs finish before it leaves them to the host's loop.
DETACH_SECONDS: Final = 10.0
# Sleep between looks while cancelled jobs wait for a thread (trio's I/O wait) or a timer.
_IDLE: Final = 0.0005


class Job(Protocol):
    """Work on a C host's base that ``bs_python_detach`` must see finish."""

    @property
    def finished(self) -> bool:
        """Whether the job is over (its ``done`` ran, its loop is closed)."""

    def cancel(self) -> None:
        """Deliver the cancellation; the job finishes in later steps."""

    def blocked(self) -> bool:
        """Whether the job's own code is on the stack now, so that it cannot be stepped."""

    def step(self) -> float | None:
        """Run what is ready without the base's loop; the seconds until the job has more to
        do by itself (0: it ran something), or None when it waits for something else."""


_lock = threading.RLock()
_jobs: dict[int, list[Job]] = {}
# Bases whose detach left jobs finishing, by address: their wrappers stay until then.
_finishing: set[int] = set()


def add_job(base_address: int, job: Job) -> Callable[[], None]:
    """Track ``job`` on a C host's base; returns ``ended()``, which the job calls once it is
    over (the base's release follows when a detach was waiting for it)."""
    with _lock:
        _jobs.setdefault(base_address, []).append(job)

    def ended() -> None:
        with _lock:
            jobs = _jobs.get(base_address)
            if jobs is not None and job in jobs:
                jobs.remove(job)
                if not jobs:
                    del _jobs[base_address]
            last = base_address in _finishing and base_address not in _jobs
        if last:
            _release_soon(base_address)

    return ended


def load_module(name: str) -> ModuleType:
    """A dotted module name (imported as usual) or the path of a ``.py`` file (loaded once)."""
    if not name.endswith(".py"):
        return importlib.import_module(name)
    path = os.path.realpath(name)
    module = _file_modules.get(path)
    if module is not None:
        return module
    if not os.path.isfile(path):
        raise ModuleNotFoundError(f"bs_python_attach: no such file: {path!r}", path=path)
    stem = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"bs_python_attach: cannot load {path!r} as a module", path=path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _file_modules[path] = module
    return module


def _flush() -> None:
    # The host's stdio and Python's are separate buffers: flush so output keeps its order.
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()


@contextlib.contextmanager
def _printing() -> Iterator[None]:
    """Print any exception (``SystemExit`` and ``KeyboardInterrupt`` included) to stderr with
    its traceback, and go on: the host keeps running whatever the Python code does."""
    try:
        yield
    except BaseException:
        traceback.print_exc()


def _reporting(fn: Callable[_P, int]) -> Callable[_P, int]:
    """For the functions a C host calls: an exception is printed (``_printing``) and turned
    into -1, and Python's output is flushed before the host goes on."""

    @functools.wraps(fn)
    def call(*args: _P.args, **kwargs: _P.kwargs) -> int:
        rc = -1
        try:
            with _printing():
                rc = fn(*args, **kwargs)
        finally:
            _flush()
        return rc

    return call


def _call(ffi: Any, module: Any, function: Any, wrap: Callable[[], object]) -> int:
    """Load ``module``, call ``module.function(wrap())``; 0."""
    module_name = os.fsdecode(ffi.string(module))
    function_name = ffi.string(function).decode()
    target = getattr(load_module(module_name), function_name)
    target(wrap())
    return 0


def _refuse_finishing(address: int, what: str) -> None:
    if address in _finishing:
        raise RuntimeError(
            f"{what}: Python is still finishing on this base after bs_python_detach; run the "
            "host's loop until bs_python_pending(base) returns 0, then attach again"
        )


@_reporting
def attach(ffi: Any, base: Any, module: Any, function: Any) -> int:
    """``bs_python_attach``: ``module.function(EventBase.from_address(base))``; 0 or -1."""
    from ._event_base import EventBase

    def wrap() -> object:
        address = _address(ffi, base)
        _refuse_finishing(address, "bs_python_attach")
        return EventBase.from_address(address)

    return _call(ffi, module, function, wrap)


@_reporting
def attach_evhttp(ffi: Any, http: Any, module: Any, function: Any) -> int:
    """``bs_python_attach_evhttp``: ``module.function(EvHttp.from_address(http))``; 0 or -1."""
    from ._native import ffi as native_ffi
    from ._native import lib
    from ._server import EvHttp

    def wrap() -> object:
        address = _address(ffi, http)
        found = lib.bs_evhttp_find_base(native_ffi.cast("struct evhttp *", address))
        _refuse_finishing(_address(native_ffi, found), "bs_python_attach_evhttp")
        return EvHttp.from_address(address)

    return _call(ffi, module, function, wrap)


@_reporting
def detach(ffi: Any, base: Any) -> int:
    """``bs_python_detach``: release everything Python made on the host's base; 0, or 1 when
    jobs still need the host's loop to finish (the rest follows by itself once they have).

    Cancels the base's jobs and runs them to their end without the host's loop (at most
    ``DETACH_SECONDS``), closes the wrappers of the host's evhttp servers on the base (their
    routes go; the requests Python holds get 503 and their handlers are cancelled), then the
    wrapper of the base (every event, server and connection made on it). Errors are printed to
    stderr. Called again while jobs are finishing, it tries again.
    """
    return _detach(_address(ffi, base))


@_reporting
def pending(ffi: Any, base: Any) -> int:
    """``bs_python_pending``: 1 while a detach of the base waits for its jobs (the state is
    kept: the base must not be freed yet); else 2 while replies Python made on the host's
    evhttp servers are still being written (or their connections still open); else 0."""
    address = _address(ffi, base)
    if address in _finishing:
        return 1
    return 2 if _registry.live_requests(address) > 0 else 0


def _detach(address: int) -> int:
    _registry.forget_host_choices(address)
    with _lock:
        jobs = list(_jobs.get(address, ()))
    for job in jobs:
        with _printing():
            job.cancel()
    wrapper = _registry.bases.wrapper(address)
    st = wrapper._st if wrapper is not None and wrapper._rec is not None else None
    done = _finish(st, jobs, time.monotonic() + DETACH_SECONDS)
    inside = st is not None and st.rec is not None and (st.rec.depth > 0 or st.draining > 0)
    if done and not inside:
        _release(address)
        return 0
    # Something must wait for the host's loop: the servers go now where that is safe (so no
    # new request reaches Python), the base's wrapper once the jobs are over.
    _close_servers(address, only_idle=True)
    with _lock:
        _finishing.add(address)
        last = address not in _jobs
    if last:
        _release_soon(address)
    return 1


def _finish(st: Any, jobs: list[Job], deadline: float) -> bool:
    """Run cancelled jobs to their end without the host's loop; whether all finished.

    Trio's ticks come through the base's call queue (from trio's I/O thread), asyncio's from
    its ready queue and timers. Stops when every unfinished job is blocked (its own code is on
    the stack: only the host's loop can finish it) or at ``deadline``.
    """
    from ._event_base import run_queued

    while True:
        waiting = [j for j in jobs if not j.finished]
        if not waiting:
            return True
        if st is None or st.rec is None or st.draining > 0:
            return False  # no queue to run, or running it already (a call on the stack)
        free = [j for j in waiting if not j.blocked()]
        if not free:
            return False
        now = time.monotonic()
        if now >= deadline:
            return False
        ran = run_queued(st)
        pause = deadline - now
        for job in free:
            if job.finished:
                continue
            wait = job.step()
            if wait is not None:
                pause = min(pause, wait)
        if not ran and pause > 0:
            time.sleep(min(pause, _IDLE))


def _release_soon(address: int) -> None:
    """Release the base's state in the next round of the host's loop (from its call queue),
    outside whatever callback is on the stack now."""
    wrapper = _registry.bases.wrapper(address)
    if wrapper is None or wrapper._rec is None:
        _release(address)
        return
    wrapper.call_soon_threadsafe(_release, address)


def _close_servers(address: int, *, only_idle: bool) -> None:
    """Close the wrappers of the host's evhttp servers on the base (not one whose request
    trampoline is running when ``only_idle``: libevent still needs its route)."""
    for h in _registry.servers_on(address):
        rec = h._rec
        if rec is None or (only_idle and rec.running > 0):
            continue
        with _printing():
            h.close()


def _release(address: int) -> None:
    """Close everything Python has on the base: servers, gates, then the base's wrapper (also
    from inside one of the base's callbacks: the host's event_base is never freed here, and
    the C record is freed when the callback returns)."""
    with _lock:
        _finishing.discard(address)
    _close_servers(address, only_idle=False)
    _registry.forget_host_choices(address)
    wrapper = _registry.bases.wrapper(address)
    if wrapper is None:
        return
    guard = wrapper._st.guard
    with guard.lock, _printing():
        wrapper._close(finalizing=False)


@_reporting
def set_gate(ffi: Any, http: Any, gate: Any, arg: Any) -> int:
    """``bs_python_set_request_gate``: the host's C check before Python's routes; 0 or -1."""
    _registry.set_gate(_address(ffi, http), _address(ffi, gate), _address(ffi, arg))
    return 0


@_reporting
def set_strict(ffi: Any, http: Any, on: int) -> int:
    """``bs_python_set_strict_framing``: the host's evhttp framed strictly (or not); 0 or -1."""
    address = _address(ffi, http)
    if _registry.set_strict(address, bool(on)):
        from ._server import EvHttp

        EvHttp.from_address(address)  # applies the choice; held until detach
    return 0


def _address(ffi: Any, ptr: Any) -> int:
    return int(ffi.cast("uintptr_t", ptr))
