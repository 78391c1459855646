"""libevent's events as tracked handles on an EventBase, driven by Python or C callbacks.

Callbacks never go through ``ffi.callback`` (it needs writable-and-executable memory): libevent
calls one C trampoline per ABI (``cdefs/event.c``), which calls either the user's C
``EventCallback`` or one of the ``extern "Python+C"`` functions below, with the Python object as an
``ffi.new_handle``. Who keeps whom alive is written down in docs/design/lifetimes.md.
"""

from __future__ import annotations

import errno
import signal
from collections.abc import Callable
from typing import Any, Final, final

from ._args import MAX_SECONDS, _c_callback, _oserror, _seconds
from ._args import type_name as _type_name
from ._errors import ClosedError
from ._event_base import EventBase, _callback_error, _LoopState
from ._guard import _get_ident, _guarded
from ._handles import Finalized
from ._native import ffi, lib

__all__ = [
    "EV_CLOSED",
    "EV_ET",
    "EV_PERSIST",
    "EV_READ",
    "EV_SIGNAL",
    "EV_TIMEOUT",
    "EV_WRITE",
    "EvutilSocket",
    "LibEvent",
    "obtain_event",
]

EV_TIMEOUT: Final[int] = lib.EV_TIMEOUT
EV_READ: Final[int] = lib.EV_READ
EV_WRITE: Final[int] = lib.EV_WRITE
EV_SIGNAL: Final[int] = lib.EV_SIGNAL
EV_PERSIST: Final[int] = lib.EV_PERSIST
EV_ET: Final[int] = lib.EV_ET
EV_CLOSED: Final[int] = lib.EV_CLOSED

EvutilSocket = int
"""libevent's socket type on POSIX: a file descriptor."""

PyEventCallback = Callable[["LibEvent", Any], object]
"""A Python event callback: ``cb(ev, arg)``; its return value is ignored."""

_ALL_EVENTS: Final = EV_TIMEOUT | EV_READ | EV_WRITE | EV_SIGNAL | EV_PERSIST | EV_ET | EV_CLOSED
_RESULTS: Final = EV_TIMEOUT | EV_READ | EV_WRITE | EV_SIGNAL | EV_CLOSED
_READD: Final[int] = lib.BS_EVENT_READD
_MAX_S: Final = MAX_SECONDS
_IO: Final = EV_READ | EV_WRITE | EV_CLOSED
# Flags active() may defer: every non-empty combination of the result flags.
_DEFERRABLE: Final = frozenset(f for f in range(1, 256) if not f & ~_RESULTS)
_EVENT_CALLBACK: Final = ffi.typeof("EventCallback")


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

    # -- keep-alive: armed while pending or active (docs/design/lifetimes.md)

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

    def _dropped_open(self) -> bool:
        # An event that fired and then was let go (its base stops holding it once it is neither
        # pending nor active) did its job: fire and forget is how one-shot timers are used. One
        # its base still holds, or whose base went first (a garbage cycle), goes with a base
        # nobody holds either: the base's warning says it.
        base = self._base
        return self._rec.fired == 0 and base._rec is not None and self not in base._keep

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
def bs_py_event_fired(handle: Any, pending: int) -> int:
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
