"""libevent's event base and events as tracked handles, driven by Python or C callbacks.

Callbacks never go through ``ffi.callback`` (it needs writable-and-executable memory): libevent
calls one C trampoline per ABI (``cdefs/event.c``), which calls either the user's C
``EventCallback`` or one of the ``extern "Python+C"`` functions below, with the Python object as an
``ffi.new_handle``. Who keeps whom alive is written down in the README's "Lifetimes" chapter.
"""

from __future__ import annotations

import collections
import errno
import signal
import threading
import weakref
from collections.abc import Callable
from typing import Any, Final, final

from ._args import MAX_SECONDS, _address_arg, _c_callback, _oserror, _seconds
from ._errors import ClosedError
from ._errors import type_name as _type_name
from ._handles import Finalized, Handle, live_counts
from ._log import events_log
from ._native import ffi, lib

__all__ = [
    "EVLOOP_NONBLOCK",
    "EVLOOP_NO_EXIT_ON_EMPTY",
    "EVLOOP_ONCE",
    "EV_CLOSED",
    "EV_ET",
    "EV_PERSIST",
    "EV_READ",
    "EV_SIGNAL",
    "EV_TIMEOUT",
    "EV_WRITE",
    "EventBase",
    "EvutilSocket",
    "LibEvent",
    "live_counts",
    "obtain_event",
    "obtain_event_base",
]

EV_TIMEOUT: Final[int] = lib.EV_TIMEOUT
EV_READ: Final[int] = lib.EV_READ
EV_WRITE: Final[int] = lib.EV_WRITE
EV_SIGNAL: Final[int] = lib.EV_SIGNAL
EV_PERSIST: Final[int] = lib.EV_PERSIST
EV_ET: Final[int] = lib.EV_ET
EV_CLOSED: Final[int] = lib.EV_CLOSED
EVLOOP_ONCE: Final[int] = lib.EVLOOP_ONCE
EVLOOP_NONBLOCK: Final[int] = lib.EVLOOP_NONBLOCK
EVLOOP_NO_EXIT_ON_EMPTY: Final[int] = lib.EVLOOP_NO_EXIT_ON_EMPTY

EvutilSocket = int
"""libevent's socket type on POSIX: a file descriptor."""

PyEventCallback = Callable[["LibEvent", Any], object]
"""A Python event callback: ``cb(ev, arg)``; its return value is ignored."""

_ALL_EVENTS: Final = EV_TIMEOUT | EV_READ | EV_WRITE | EV_SIGNAL | EV_PERSIST | EV_ET | EV_CLOSED
_RESULTS: Final = EV_TIMEOUT | EV_READ | EV_WRITE | EV_SIGNAL | EV_CLOSED
_READD: Final[int] = lib.BS_EVENT_READD
_MAX_S: Final = MAX_SECONDS
_IO: Final = EV_READ | EV_WRITE | EV_CLOSED
_LOOP_FLAGS: Final = EVLOOP_ONCE | EVLOOP_NONBLOCK | EVLOOP_NO_EXIT_ON_EMPTY
# Flags active() may defer: every non-empty combination of the result flags.
_DEFERRABLE: Final = frozenset(f for f in range(1, 256) if not f & ~_RESULTS)
_EVENT_CALLBACK: Final = ffi.typeof("EventCallback")

if lib.bs_event_init() != 0:  # evthread_use_pthreads(), before any base exists
    raise ImportError("bitcoin_support: libevent's pthreads support could not be enabled")

# The loop state of the base whose loop() runs on this thread, for errors raised where no
# callback's own handler can catch them (a signal handler raising at a callback's first line).
_tls = threading.local()
# EventBase.from_address wrappers, by address: strong while open, so a C host's wrapper and the
# handles made on it live without Python references, until the wrapper is closed (or
# bs_python_detach). Python-owned bases by address (weak), so that a wrapper of one shares its
# thread guard and is closed before the owner frees the event_base.
_registry_lock = threading.RLock()
_wrappers: dict[int, EventBase] = {}
_owned: weakref.WeakValueDictionary[int, EventBase] = weakref.WeakValueDictionary()
_release_probe: Callable[[bytes], object] | None = None


_get_ident = threading.get_ident


class _Guard:
    """The thread rule of a base and its handles (shared by wrappers of the same event_base).

    ``lock`` is held by every operation on the base or its handles, and by ``loop()`` for the
    whole of a dispatch; ``thread`` is the ident of the thread dispatching, or None. An operation
    from another thread while the base is dispatched raises RuntimeError instead of waiting (the
    loop may run for ever); otherwise operations from several threads take turns. Finalizers
    take no lock: they run only for unreachable handles, which libevent is not running.

    ``acquire`` is the rule; ``held`` wraps it for a ``with`` block. Copies inlined for speed,
    each naming this one: ``_guarded`` (every guarded method), ``check_thread``'s in
    ``_request._other_thread`` (per request) and ``LibEvent.active`` (per callback).
    """

    __slots__ = ("lock", "thread")

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.thread: int | None = None

    def acquire(self, what: str) -> None:
        """Take ``lock`` under the rule; the caller releases it (``lock.release()``)."""
        if not self.lock.acquire(False):
            self.wait(what)

    def held(self, what: str) -> _Held:
        """``with guard.held(what):`` runs the block holding ``lock``, taken under the rule."""
        return _Held(self, what)

    def wait(self, what: str) -> None:
        """Take ``lock`` held by another thread, or raise if that thread dispatches the base."""
        lock = self.lock
        while True:
            thread = self.thread
            if thread is not None and thread != _get_ident():
                raise refusal(what, thread)
            if lock.acquire(timeout=0.02):
                return

    def check_thread(self, what: str) -> None:
        """The rule without the lock: RuntimeError from another thread while the base is
        dispatched (for calls that only read or act on the loop's own thread)."""
        thread = self.thread
        if thread is not None and thread != _get_ident():
            raise refusal(what, thread)


class _Held:
    """The ``with`` block of ``_Guard.held``."""

    __slots__ = ("guard", "what")

    def __init__(self, guard: _Guard, what: str) -> None:
        self.guard = guard
        self.what = what

    def __enter__(self) -> None:
        self.guard.acquire(self.what)

    def __exit__(self, *exc: object) -> None:
        self.guard.lock.release()


def refusal(what: str, thread: int) -> RuntimeError:
    """The thread rule's error: ``what`` was called while ``thread`` dispatches the base."""
    return RuntimeError(
        f"{what}: the base is being dispatched by another thread (ident {thread}); "
        "from other threads, only call_soon_threadsafe() may be called while it runs"
    )


def _guarded(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Run the method under the base's thread rule (see ``_Guard``)."""

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
            guard: _Guard = self._st.guard
            if not guard.lock.acquire(False):
                guard.wait(what)
            try:
                return method(self, *args, **kwargs)
            finally:
                guard.lock.release()

        guarded.__name__ = method.__name__
        guarded.__qualname__ = method.__qualname__
        guarded.__doc__ = method.__doc__
        return guarded

    return wrap


class _LoopState:
    """What the base's C record points at: the call_soon queue and the stored callback error.

    Kept apart from EventBase so that the C record's handle does not keep the base alive.
    """

    __slots__ = ("deferred", "error", "guard", "lock", "queue", "rec", "running")

    def __init__(self, rec: Any, guard: _Guard) -> None:
        self.rec: Any = rec
        self.guard = guard
        self.queue: collections.deque[tuple[Callable[..., object], tuple[Any, ...]]] = (
            collections.deque()
        )
        self.error: BaseException | None = None
        self.running = False
        self.lock = threading.RLock()
        # The event whose own callback, running now, deferred its re-activation (LibEvent.active).
        self.deferred: LibEvent | None = None

    def reraise(self) -> None:
        """Raise the first error a callback stored, with its traceback, and forget it."""
        err = self.error
        if err is not None:
            self.error = None
            try:
                raise err
            finally:
                err = None

    def fail(self, exc: BaseException) -> None:
        """A callback raised: store the first error and break the loop, log the others."""
        if self.running:
            if self.error is None:
                self.error = exc
                rec = self.rec
                if rec is not None:
                    lib.bs_base_loopbreak(rec)
                return
            events_log.error(
                "callback raised after an earlier error stopped the loop", exc_info=exc
            )
            return
        # A loop run by a C host: nobody to re-raise to. Log; stop it only for KeyboardInterrupt
        # and the like, which ask for the program to stop.
        events_log.error("callback raised in a loop run outside Python", exc_info=exc)
        if not isinstance(exc, Exception) and self.rec is not None:
            lib.bs_base_loopbreak(self.rec)


def _callback_error(exc_type: type[BaseException], exc: BaseException, tb: object) -> None:
    """onerror of the extern "Python" functions: errors raised outside their own try blocks."""
    st: _LoopState | None = getattr(_tls, "state", None)
    if st is not None:
        st.fail(exc)
    else:
        events_log.error("callback raised outside any loop run by Python", exc_info=exc)


@final
class EventBase(Finalized):
    """A libevent ``event_base`` (or a dummy): the loop, and owner of every handle made on it."""

    __slots__ = ("_address", "_held", "_keep", "_st", "_st_handle")

    _kind = "EventBase"

    _keep: set[LibEvent]
    # For a from_address wrapper: its address in _wrappers and its children, held strongly
    # (the host's loop may call any of them); None for a base Python owns.
    _address: int | None
    _held: dict[int, Handle] | None
    _st: _LoopState
    _st_handle: Any

    def __init__(self, *, dummy: bool = False, epoll_changelist: bool = False) -> None:
        """Create a base; see ``obtain_event_base`` for the options."""
        if not isinstance(dummy, bool):
            raise TypeError(f"obtain_event_base: dummy must be a bool, not {_type_name(dummy)}")
        if not isinstance(epoll_changelist, bool):
            raise TypeError(
                "obtain_event_base: epoll_changelist must be a bool, "
                f"not {_type_name(epoll_changelist)}"
            )
        flags = lib.EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST if epoll_changelist else 0
        rec = lib.bs_base_new(1 if dummy else 0, flags)
        if rec == ffi.NULL:
            raise _oserror("obtain_event_base: could not create an event_base")
        self._setup(rec, dummy, _Guard(), None)
        if not dummy:
            with _registry_lock:
                _owned[int(ffi.cast("uintptr_t", rec.base))] = self

    @classmethod
    def from_address(cls, ptr: int | Any) -> EventBase:
        """Wrap a ``struct event_base *`` owned by a C host; closing the wrapper never frees it.

        ``ptr`` is an address (int) or a cffi pointer. The host's base should have been created
        after ``evthread_use_pthreads()`` (importing this package runs it) for
        ``call_soon_threadsafe`` to wake it from other threads.
        """
        address = _address_arg("EventBase.from_address", ptr)
        with _registry_lock:
            wrapper = _wrappers.get(address)
            if wrapper is not None and wrapper._rec is not None:
                return wrapper
            rec = lib.bs_base_wrap(ffi.cast("struct event_base *", address))
            if rec == ffi.NULL:
                raise _oserror("EventBase.from_address: could not wrap the base")
            owner = _owned.get(address)
            self = cls.__new__(cls)
            self._setup(rec, False, owner._st.guard if owner is not None else _Guard(), address)
            _wrappers[address] = self
        return self

    def _setup(self, rec: Any, dummy: bool, guard: _Guard, address: int | None) -> None:
        self._keep = set()
        self._address = address
        self._held = None if address is None else {}
        self._st = st = _LoopState(rec, guard)
        self._st_handle = ffi.new_handle(st)
        rec.py = self._st_handle
        self._init_handle(rec, dummy=dummy, parent=None)

    # -- release

    def _loop_guard(self) -> _Guard:
        return self._st.guard

    def _check_close(self) -> None:
        rec = self._rec
        if rec is not None and (rec.depth > 0 or self._st.running):
            raise RuntimeError(
                "EventBase.close: the base's loop is running (a base cannot be "
                "closed from inside its own callbacks)"
            )

    def _adopt(self, child: Handle) -> None:
        super()._adopt(child)
        held = self._held
        if held is not None:
            held[child._id] = child

    def _forget(self, child_id: int) -> None:
        super()._forget(child_id)
        held = self._held
        if held is not None:
            held.pop(child_id, None)

    def _release_native(self, rec: Any) -> None:
        if self._address is None and not self._dummy:
            # Wrappers of this event_base go first: their events live in it.
            address = int(ffi.cast("uintptr_t", rec.base))
            with _registry_lock:
                wrapper = _wrappers.get(address)
                if _owned.get(address) is self:
                    del _owned[address]
            if wrapper is not None:
                wrapper._close(finalizing=False)
        st = self._st
        with st.lock:
            st.rec = None
            lib.bs_base_release(rec)

    def _after_release(self) -> None:
        self._keep.clear()
        self._st.queue.clear()
        if self._held is not None:
            self._held.clear()
        address = self._address
        if address is not None:
            with _registry_lock:
                if _wrappers.get(address) is self:
                    del _wrappers[address]

    # -- the loop

    def _native_base(self, what: str) -> Any:
        """The ``struct event_base *`` of an open, real base (for the evhttp layer)."""
        return self._require(what).base

    @property
    @_guarded("EventBase.address")
    def address(self) -> int:
        """Address of the ``struct event_base``, for C code that runs or extends the loop."""
        return int(ffi.cast("uintptr_t", self._native_base("address")))

    def dispatch(self) -> int:
        """Run the loop until no events are left or it is stopped; same as ``loop(0)``."""
        return self.loop(0)

    def loop(self, flags: int = 0) -> int:
        """Run the loop (``EVLOOP_*`` flags): 0 if it ran, 1 if there were no events.

        The first exception a callback raised stops the loop and is re-raised here, with its
        traceback. On the main thread, a signal (Ctrl-C) wakes the loop so that Python's handler
        runs at once, through ``signal.set_wakeup_fd`` unless another wakeup fd is already set.
        """
        self._require("loop")
        if isinstance(flags, bool) or not isinstance(flags, int):
            raise TypeError(f"EventBase.loop: flags must be an int, not {_type_name(flags)}")
        if flags & ~_LOOP_FLAGS:
            raise ValueError(f"EventBase.loop: flags has unknown bits: {flags:#x}")
        with self._session("EventBase.loop", wakeup=not flags & EVLOOP_NONBLOCK) as session:
            return session.round(flags)

    def _session(self, what: str, *, wakeup: bool = True) -> _Session:
        """The loop's set-up, torn down by the session's ``end()`` (or its ``with`` block).

        ``loop()`` is one round of a session; ``aio.EventLoop`` holds one across many rounds.
        Between rounds the base counts as dispatched by this thread (as in a callback of a
        ``loop()``); each ``round(flags)`` is one ``event_base_loop`` call that re-raises the first
        error a callback raised. ``end()`` must follow, on the same thread. ``wakeup``: on the
        main thread, let a signal wake the loop (see ``loop()``).
        """
        # ClosedError names the caller as _require does ("EventBase.loop").
        name = what.removeprefix("EventBase.")
        rec = self._require(name)
        st = self._st
        guard = st.guard
        guard.acquire(what)
        if st.running:
            guard.lock.release()
            raise RuntimeError(f"{what}: the base's loop is already running")
        if self._rec is None:  # closed by another thread while we waited for the lock
            guard.lock.release()
            self._closed_error(name)
        session = _Session(rec, st, getattr(_tls, "state", None), guard.thread)
        guard.thread = _get_ident()
        _tls.state = st
        st.running = True
        try:
            if wakeup and threading.current_thread() is threading.main_thread():
                session.wakeup = _install_wakeup(rec)
        except BaseException:
            session.end()
            raise
        return session

    @_guarded("EventBase.loopbreak")
    def loopbreak(self) -> None:
        """Stop the loop after the callback running now."""
        if lib.bs_base_loopbreak(self._require("loopbreak")) != 0:
            raise RuntimeError("EventBase.loopbreak: libevent refused")

    @_guarded("EventBase.loopexit")
    def loopexit(self, timeout: float | None = None) -> None:
        """Stop the loop after ``timeout`` seconds, or after the current round of callbacks."""
        rec = self._require("loopexit")
        seconds = (
            -1.0
            if timeout is None
            else _seconds("EventBase.loopexit", "timeout", timeout, zero=True)
        )
        if lib.bs_base_loopexit(rec, seconds) != 0:
            raise RuntimeError("EventBase.loopexit: libevent refused")

    @_guarded("EventBase.got_break")
    def got_break(self) -> bool:
        """Whether the last loop ended through ``loopbreak()``."""
        return bool(lib.bs_base_got(self._require("got_break"), 0))

    @_guarded("EventBase.got_exit")
    def got_exit(self) -> bool:
        """Whether the last loop ended through ``loopexit()``."""
        return bool(lib.bs_base_got(self._require("got_exit"), 1))

    @property
    @_guarded("EventBase.backend")
    def backend(self) -> str:
        """libevent's backend method, e.g. ``"epoll"``."""
        return ffi.string(lib.bs_base_backend(self._require("backend"))).decode()  # type: ignore[no-any-return]

    @_guarded("EventBase.now")
    def now(self) -> float:
        """The loop's cached time (seconds since the epoch); the current time outside a loop."""
        value: float = lib.bs_base_now(self._require("now"))
        return value

    def call_soon_threadsafe(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop's thread, in order of submission; wakes the loop.

        The one method that may be called from any thread.
        """
        if not callable(fn):
            raise TypeError(
                f"EventBase.call_soon_threadsafe: fn must be callable, not {_type_name(fn)}"
            )
        st = self._st
        with st.lock:
            rec = st.rec
            if rec is None:
                self._closed_error("call_soon_threadsafe")
            if self._dummy:
                self._require("call_soon_threadsafe")
            st.queue.append((fn, args))
            lib.bs_base_notify(rec)


class _Session:
    """A run of loop rounds on one thread (``EventBase._session``); ``end()`` or a ``with``
    block gives the base back."""

    __slots__ = ("prev", "prev_thread", "rec", "st", "wakeup")

    def __init__(self, rec: Any, st: _LoopState, prev: Any, prev_thread: int | None) -> None:
        self.rec = rec
        self.st = st
        self.prev = prev
        self.prev_thread = prev_thread
        self.wakeup = False

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()

    def round(self, flags: int) -> int:
        """One ``event_base_loop(flags)``; re-raises the first error of its callbacks."""
        rc: int = lib.bs_base_loop(self.rec, flags)
        self.st.reraise()
        if rc < 0:
            raise RuntimeError("EventBase.loop: event_base_loop failed")
        return rc

    def end(self) -> None:
        """Undo ``EventBase._session``'s set-up, in reverse order."""
        st = self.st
        st.running = False
        _tls.state = self.prev
        st.guard.thread = self.prev_thread
        st.guard.lock.release()
        if self.wakeup:
            self.wakeup = False
            _restore_wakeup(self.rec)


def _install_wakeup(rec: Any) -> bool:
    """Let a signal wake the base's loop (``signal.set_wakeup_fd``), unless another wakeup fd
    is set; whether it was installed (then ``_restore_wakeup`` must follow)."""
    fd = lib.bs_base_wake_fd(rec)
    if fd < 0:
        return False
    old = signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    if old != -1:  # someone else (trio, asyncio) listens for signals: leave them theirs
        signal.set_wakeup_fd(old)
        return False
    return True


def _restore_wakeup(rec: Any) -> None:
    """Undo ``_install_wakeup``, keeping a wakeup fd set meanwhile by a callback (asyncio's
    ``add_signal_handler``)."""
    fd = lib.bs_base_wake_fd(rec)
    other = signal.set_wakeup_fd(-1)
    if other != fd:
        signal.set_wakeup_fd(other, warn_on_full_buffer=False)


def obtain_event_base(*, dummy: bool = False, epoll_changelist: bool = False) -> EventBase:
    """A new event base; ``dummy=True`` gives one with no libevent behind it (for tests).

    ``epoll_changelist=True`` sets ``EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST``: libevent then batches
    the epoll changes of one loop round into fewer ``epoll_ctl`` calls (markedly faster servers).
    Caveat from libevent: with it, an fd that is ``dup()``-ed and has one copy closed can be left
    watched wrongly; leave it off when file descriptors are duplicated.
    """
    return EventBase(dummy=dummy, epoll_changelist=epoll_changelist)


def _fd_arg(fd: int | Any, events: int) -> tuple[int, object]:
    """The descriptor (or signal number) as an int, and the object to keep alive with it."""
    keep: object = None
    if isinstance(fd, bool):
        raise TypeError("obtain_event: fd must be an int or have fileno(), not bool")
    if not isinstance(fd, int):
        fileno = getattr(fd, "fileno", None)
        if fileno is None:
            raise TypeError(
                f"obtain_event: fd must be an int or have fileno(), not {_type_name(fd)}"
            )
        keep, fd = fd, fileno()
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError("obtain_event: fd.fileno() must return an int")
    if events & EV_SIGNAL:
        if not 1 <= fd < signal.NSIG:
            raise ValueError(f"obtain_event: fd must be a signal number for EV_SIGNAL, got {fd}")
    elif fd < -1 or fd > 2**31 - 1:
        raise ValueError(f"obtain_event: fd must be a descriptor >= 0 or -1, got {fd}")
    elif fd == -1 and events & _IO:
        raise ValueError(
            "obtain_event: fd -1 is for timers and user events; "
            "EV_READ/EV_WRITE/EV_CLOSED need a descriptor"
        )
    return fd, keep


def _events_arg(events: int) -> int:
    if isinstance(events, bool) or not isinstance(events, int):
        raise TypeError(f"obtain_event: events must be an int, not {_type_name(events)}")
    if events & ~_ALL_EVENTS or events < 0:
        raise ValueError(f"obtain_event: events has unknown bits: {events:#x}")
    if events & EV_SIGNAL and events & (_IO | EV_ET):
        raise ValueError(
            "obtain_event: events cannot mix EV_SIGNAL with EV_READ/EV_WRITE/EV_CLOSED/EV_ET"
        )
    if events & EV_ET and not events & _IO:
        raise ValueError("obtain_event: EV_ET needs EV_READ, EV_WRITE or EV_CLOSED in events")
    return events


@final
class LibEvent(Finalized):
    """A libevent ``struct event`` (or a dummy) on an EventBase, with a Python or C callback."""

    __slots__ = (
        "_again",
        "_arg",
        "_base",
        "_cb",
        "_events",
        "_fd",
        "_fdobj",
        "_handle",
        "_st",
    )

    _kind = "LibEvent"

    _base: EventBase
    _cb: PyEventCallback | None
    _arg: Any
    _fd: int
    _fdobj: object
    _events: int
    _handle: Any
    # None, except while its own Python callback runs and the base holds it: then the flags of
    # the active() calls made there, which the trampoline activates when the callback returns.
    _again: int | None
    _st: _LoopState

    def __init__(
        self,
        base: EventBase,
        fd: int | Any,
        events: int,
        cb: PyEventCallback | Any,
        arg: Any = None,
    ) -> None:
        """Create an event; see ``obtain_event``."""
        if not isinstance(base, EventBase):
            raise TypeError(f"obtain_event: base must be an EventBase, not {_type_name(base)}")
        events = _events_arg(events)
        fdnum, fdobj = _fd_arg(fd, events)
        if isinstance(cb, ffi.CData):
            c_cb, c_arg = _c_callback(
                "obtain_event", cb, arg, _EVENT_CALLBACK, "void (*)(LibEvent *, void *)"
            )
            py_cb: PyEventCallback | None = None
        elif callable(cb):
            c_cb, c_arg, py_cb = ffi.NULL, ffi.NULL, cb
        else:
            raise TypeError(
                f"obtain_event: cb must be callable or an EventCallback, not {_type_name(cb)}"
            )
        with base._st.guard.held("obtain_event"):
            brec = base._require_open("obtain_event")
            rec = lib.bs_event_new(brec, fdnum, events, c_cb, c_arg)
        if rec == ffi.NULL:
            if ffi.errno == errno.EPIPE:  # the base is being released
                raise ClosedError("obtain_event: the base is closed")
            raise _oserror("obtain_event: could not create the event")
        self._base = base
        self._cb = py_cb
        self._arg = arg
        self._fd = fdnum
        self._fdobj = fdobj
        self._events = events
        self._handle = None
        self._again = None
        self._st = base._st
        self._init_handle(rec, dummy=base._dummy, parent=base)

    # -- keep-alive: armed while pending or active (README, "Lifetimes")

    def _arm(self, what: str) -> None:
        """Hand the C record a handle to this object and let the base hold it."""
        rec = self._require(what)
        self._handle = handle = ffi.new_handle(self)
        rec.py = handle
        self._base._keep.add(self)

    def _disarm(self) -> None:
        if self._handle is None:
            return
        rec = self._rec
        if rec is not None:
            rec.py = ffi.NULL
        self._handle = None
        self._again = None  # active() must arm it again: no deferring
        if self._st.deferred is self:
            self._st.deferred = None
        self._base._keep.discard(self)

    def _release_native(self, rec: Any) -> None:
        lib.bs_event_release(rec)

    def _after_release(self) -> None:
        self._handle = None
        self._again = None
        if self._st.deferred is self:
            self._st.deferred = None
        self._base._keep.discard(self)

    def _own_turn(self) -> bool:
        """Called from the thread running this event's callback (``_again`` is set only while
        it runs): only then may a call be deferred to the trampoline. Another thread goes the
        guarded way, which tells it the thread rule. (A loop a C host runs records no thread.)
        The comparison is ``_Guard.check_thread``'s, without the error."""
        thread = self._st.guard.thread
        return thread is None or thread == _get_ident()

    def _flush(self) -> None:
        """Activate now what active() deferred (another event is being activated after it)."""
        again = self._again
        if again:
            self._again = again & _READD  # a deferred re-add still waits for the trampoline
        self._st.deferred = None
        if again and again & _RESULTS and self._rec is not None:
            lib.bs_event_active(self._rec, again & _RESULTS)

    # -- properties

    @property
    def base(self) -> EventBase:
        """The base the event was made on."""
        self._require_open("base")
        return self._base

    @property
    def fd(self) -> int:
        """The descriptor, the signal number for EV_SIGNAL, or -1."""
        self._require_open("fd")
        return self._fd

    @property
    def events(self) -> int:
        """The flags the event was made with."""
        self._require_open("events")
        return self._events

    @property
    @_guarded("LibEvent.fired")
    def fired(self) -> int:
        """Flags of the current (or last) activation; read it inside the callback."""
        fired: int = self._require_open("fired").fired
        return fired

    # -- operations

    def add(self, timeout: float | None = None) -> None:
        """Make the event pending, with an optional timeout in seconds.

        A timer re-armed from inside its own callback hands the re-add to the C trampoline,
        which makes it when the callback returns, as ``active()`` does: one call into C fewer on
        the path every periodic timer takes.
        """
        again = self._again
        if again is not None and self._fd == -1 and self._handle is not None and self._own_turn():
            if timeout is None:
                seconds = -1.0
            elif (type(timeout) is int or type(timeout) is float) and 0 <= timeout <= _MAX_S:
                seconds = timeout  # _seconds' checks, inlined on the re-arm path
            else:
                seconds = _seconds("LibEvent.add", "timeout", timeout, zero=True)  # raises
            self._rec.readd = seconds
            self._again = again | _READD
            return
        self._add(timeout)

    @_guarded("LibEvent.add")
    def _add(self, timeout: float | None) -> None:
        seconds = (
            -1.0 if timeout is None else _seconds("LibEvent.add", "timeout", timeout, zero=True)
        )
        was_armed = self._handle is not None
        if not was_armed:
            self._arm("add")
        if lib.bs_event_add(self._rec, seconds) != 0:
            error = _oserror("LibEvent.add: libevent could not add the event")
            if not was_armed:
                self._disarm()
            raise error

    @_guarded("LibEvent.delete")
    def delete(self) -> None:
        """Make the event neither pending nor active; the base stops holding it."""
        rec = self._require("delete")
        lib.bs_event_del(rec)
        self._disarm()  # also drops a deferred activation

    def active(self, what: int = EV_TIMEOUT) -> None:
        """Make the event active now, with ``what`` as its fired flags.

        From inside its own callback the activation is handed to the C trampoline, which makes
        it when the callback returns (libevent could not run it sooner): one call into C fewer
        on the hottest path. Activating another event of the base first flushes it, so libevent
        sees the activations in the order they were made.
        """
        again = self._again
        if (
            again is not None
            and what in _DEFERRABLE
            and ((thread := self._st.guard.thread) is None or thread == _get_ident())
        ):  # _own_turn(), inlined on the per-callback path (canonical: _Guard.check_thread)
            try:
                self._again = again | what
            except TypeError:  # 1.0 and the like compare equal to an int flag
                raise TypeError(f"LibEvent.active: what must be an int, not {what!r}") from None
            self._st.deferred = self
            return
        self._active(what)

    @_guarded("LibEvent.active")
    def _active(self, what: int) -> None:
        deferred = self._st.deferred
        if deferred is not None:
            deferred._flush()
        if self._handle is None:
            self._arm("active")
        try:
            rc = lib.bs_event_active(self._rec, what)
        except (TypeError, OverflowError):
            raise TypeError(
                f"LibEvent.active: what must be an int of EV_* flags, not {what!r}"
            ) from None
        if rc:
            raise ValueError(f"LibEvent.active: what has bits that are not event results: {what!r}")

    @_guarded("LibEvent.pending")
    def pending(self, what: int = EV_TIMEOUT | EV_READ | EV_WRITE | EV_SIGNAL) -> bool:
        """Whether the event is pending (or active) for any of the flags in ``what``."""
        rec = self._require("pending")
        if isinstance(what, bool) or not isinstance(what, int):
            raise TypeError(f"LibEvent.pending: what must be an int, not {_type_name(what)}")
        if what & ~_RESULTS:
            raise ValueError(f"LibEvent.pending: what has unknown bits: {what:#x}")
        again = self._again or 0
        if again & _READD and what & (self._events & _RESULTS | EV_TIMEOUT):
            return True  # re-added when its callback returns
        return bool(again & what or lib.bs_event_pending(rec, what))


def obtain_event(
    base: EventBase, fd: int | Any, events: int, cb: PyEventCallback | Any, arg: Any = None
) -> LibEvent:
    """A new event on ``base``: ``cb(ev, arg)`` in Python, or a C ``EventCallback`` given ``arg``.

    ``fd`` is a descriptor, an object with ``fileno()`` (kept alive with the event), -1 for timers
    and user events, or a signal number with ``EV_SIGNAL``. On a dummy base the event is a dummy.
    """
    return LibEvent(base, fd, events, cb, arg)


# -- the extern "Python+C" functions the trampolines call (cdefs/callbacks.h)

_from_handle = ffi.from_handle


@ffi.def_extern(onerror=_callback_error)  # type: ignore[untyped-decorator]
def bs_py_event_cb(handle: Any, pending: int) -> int:
    """A Python-callback event fired; returns the flags the trampoline re-activates it with.

    Not pending any more and not re-armed by its callback: the base stops holding it.
    """
    ev: LibEvent = _from_handle(handle)
    ev._again = 0
    try:
        ev._cb(ev, ev._arg)  # type: ignore[misc]
    except BaseException as exc:
        ev._st.fail(exc)
    again = ev._again
    ev._again = None
    if again:
        return again  # st.deferred may still name ev: harmless, it is held while active
    if not pending:
        rec = ev._rec
        if rec is not None and not lib.bs_event_pending(rec, _RESULTS):
            ev._disarm()
    return 0


@ffi.def_extern(onerror=_callback_error)  # type: ignore[untyped-decorator]
def bs_py_event_unheld(handle: Any) -> None:
    """A C-callback event fired and is not pending: the base stops holding it."""
    ev: LibEvent = _from_handle(handle)
    rec = ev._rec
    if rec is not None and not lib.bs_event_pending(rec, _RESULTS):
        ev._disarm()


@ffi.def_extern(onerror=_callback_error)  # type: ignore[untyped-decorator]
def bs_py_base_cb(handle: Any) -> None:
    """The base's notify or wakeup event fired: run the calls queued so far, in order."""
    st: _LoopState = _from_handle(handle)
    queue = st.queue
    for _ in range(len(queue)):
        fn, args = queue.popleft()
        try:
            fn(*args)
        except BaseException as exc:
            st.fail(exc)
            if queue and st.rec is not None:
                lib.bs_base_notify(st.rec)  # the rest runs on the next round
            return


@ffi.def_extern(onerror=_callback_error)  # type: ignore[untyped-decorator]
def bs_py_release_probe(record: Any, size: int) -> None:
    """Test probe: receives the bytes of each record just after it was wiped."""
    probe = _release_probe
    if probe is not None:
        probe(bytes(ffi.buffer(record, size)))


def _set_release_probe(probe: Callable[[bytes], object] | None) -> None:
    """Install (or remove) the test probe that sees each wiped record before it is freed."""
    global _release_probe
    _release_probe = probe
    lib.bs_set_release_probe(1 if probe is not None else 0)
