"""libevent's event base: the loop and its state (call_soon queue, callback errors). The
wrappers of bases a C host owns are in the registry room (``_registry.py``).

Who keeps whom alive is written down in docs/design/lifetimes.md; the thread rule is
``_guard.py``'s; events on a base are ``_event.py``'s.
"""

from __future__ import annotations

import collections
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, final

from . import _registry
from ._args import _address_arg, _oserror, _seconds
from ._args import type_name as _type_name
from ._guard import _get_ident, _Guard, _guarded
from ._handles import Finalized, Handle
from ._log import events_log
from ._native import ffi, lib

if TYPE_CHECKING:
    from ._event import LibEvent

__all__ = [
    "EVLOOP_NONBLOCK",
    "EVLOOP_NO_EXIT_ON_EMPTY",
    "EVLOOP_ONCE",
    "EventBase",
    "obtain_event_base",
]

EVLOOP_ONCE: Final[int] = lib.EVLOOP_ONCE
EVLOOP_NONBLOCK: Final[int] = lib.EVLOOP_NONBLOCK
EVLOOP_NO_EXIT_ON_EMPTY: Final[int] = lib.EVLOOP_NO_EXIT_ON_EMPTY

_LOOP_FLAGS: Final = EVLOOP_ONCE | EVLOOP_NONBLOCK | EVLOOP_NO_EXIT_ON_EMPTY

if lib.bs_event_init() != 0:  # evthread_use_pthreads(), before any base exists
    raise ImportError("bitcoin_support: libevent's pthreads support could not be enabled")

# The loop state of the base whose loop() runs on this thread, for errors raised where no
# callback's own handler can catch them (a signal handler raising at a callback's first line).
_tls = threading.local()
# EventBase.from_address wrappers are held in _registry.bases while open, so a C host's wrapper
# and the handles made on it live without Python references until the wrapper is closed (or
# bs_python_detach); Python-owned bases are known there weakly, so that a wrapper of one shares
# its thread guard and is closed before the owner frees the event_base.
_release_probe: Callable[[bytes], object] | None = None


class _LoopState:
    """What the base's C record points at: the call_soon queue and the stored callback error.

    Kept apart from EventBase so that the C record's handle does not keep the base alive.
    """

    __slots__ = ("deferred", "draining", "error", "guard", "lock", "queue", "rec", "running")

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
        # Calls from the queue running now (bs_py_base_notified, run_queued): a C host's detach made
        # inside one of them must not run the queue again (trio's tick is not re-entrant).
        self.draining = 0

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
    # For a from_address wrapper: its address (in _registry.bases) and its children, held
    # strongly (the host's loop may call any of them); None for a base Python owns.
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
            _registry.bases.own(int(ffi.cast("uintptr_t", rec.base)), self)

    @classmethod
    def from_address(cls, ptr: int | Any) -> EventBase:
        """Wrap a ``struct event_base *`` owned by a C host; closing the wrapper never frees it.

        ``ptr`` is an address (int) or a cffi pointer. The host's base should have been created
        after ``evthread_use_pthreads()`` (importing this package runs it) for
        ``call_soon_threadsafe`` to wake it from other threads.
        """
        address = _address_arg("EventBase.from_address", ptr)
        room = _registry.bases
        with _registry.lock:
            wrapper = room.wrappers.get(address)
            if wrapper is not None and wrapper._rec is not None:
                return wrapper
            rec = lib.bs_base_wrap(ffi.cast("struct event_base *", address))
            if rec == ffi.NULL:
                raise _oserror("EventBase.from_address: could not wrap the base")
            owner = room.owned.get(address)
            self = cls.__new__(cls)
            self._setup(rec, False, owner._st.guard if owner is not None else _Guard(), address)
            room.wrappers[address] = self  # held until its release (_after_release)
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
            wrapper = _registry.bases.wrapper(address)
            _registry.bases.disown(address, self)
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
        if self._address is not None:
            _registry.bases.unwrap(self._address, self)  # held since from_address

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
        return bool(lib.bs_base_got_break(self._require("got_break")))

    @_guarded("EventBase.got_exit")
    def got_exit(self) -> bool:
        """Whether the last loop ended through ``loopexit()``."""
        return bool(lib.bs_base_got_exit(self._require("got_exit")))

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


# -- the extern "Python+C" functions C calls for the base and every record (cdefs/callbacks.h)

_from_handle = ffi.from_handle


@ffi.def_extern(onerror=_callback_error)  # type: ignore[untyped-decorator]
def bs_py_base_notified(handle: Any) -> None:
    """The base's notify or wakeup event fired: run the calls queued so far, in order."""
    st: _LoopState = _from_handle(handle)
    run_queued(st)


def run_queued(st: _LoopState) -> bool:
    """Run the calls queued so far on ``st``, in order; whether any ran.

    Also what a C host's ``bs_python_detach`` runs, inside the host's own callback, to let
    cancelled trio runs finish without a round of the host's loop. The queue may be emptied
    under us (a call that closed the base): the count is only an upper bound.
    """
    queue = st.queue
    ran = False
    st.draining += 1
    try:
        for _ in range(len(queue)):
            if not queue:
                break
            fn, args = queue.popleft()
            ran = True
            try:
                fn(*args)
            except BaseException as exc:
                st.fail(exc)
                if queue and st.rec is not None:
                    lib.bs_base_notify(st.rec)  # the rest runs on the next round
                break
    finally:
        st.draining -= 1
    return ran


@ffi.def_extern(onerror=_callback_error)  # type: ignore[untyped-decorator]
def bs_py_handle_wiped(record: Any, size: int) -> None:
    """Test probe: receives the bytes of each record just after it was wiped."""
    probe = _release_probe
    if probe is not None:
        probe(bytes(ffi.buffer(record, size)))


def _set_release_probe(probe: Callable[[bytes], object] | None) -> None:
    """Install (or remove) the test probe that sees each wiped record before it is freed."""
    global _release_probe
    _release_probe = probe
    lib.bs_set_release_probe(1 if probe is not None else 0)
