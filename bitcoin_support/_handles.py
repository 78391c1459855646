"""Machinery shared by the five libevent handle types: ids, live counters, TRACE logs, close.

Who owns what (records, the keep-alive set, trampolines, ``from_address`` wrappers, finalizer
order, threads) is written down once, in docs/design/lifetimes.md.
"""

from __future__ import annotations

import itertools
import sys
import threading
import warnings
import weakref
from typing import Any, ClassVar, NoReturn, Self

from ._errors import ClosedError, DummyHandleError
from ._log import TRACE, events_log

__all__ = ["KINDS", "Finalized", "Handle", "dropped_message", "live_counts", "warn_dropped"]

KINDS: tuple[str, ...] = ("EventBase", "LibEvent", "EvHttp", "EvHttpRequest", "EvHttpConnection")

_next_id = itertools.count(1).__next__  # one C call, atomic under the GIL
_live_lock = threading.Lock()
_live: dict[str, int] = dict.fromkeys(KINDS, 0)
# Serialises the "is it still open?" check and the swap in close(): two threads closing the same
# handle must not both free its record. Re-entrant because a finalizer can run inside it.
_close_lock = threading.RLock()


_classes: dict[str, type[Handle]] = {}


def live_counts() -> dict[str, int]:
    """Live handles of each of the five types (a snapshot, thread-safe)."""
    return {kind: _classes[kind].live() if kind in _classes else 0 for kind in KINDS}


def _count(kind: str, delta: int) -> None:
    with _live_lock:
        _live[kind] += delta


class Handle:
    """Base of the five handle types: an id, a C record, a parent, children, close and finalizer.

    A subclass sets ``_kind`` (one of ``KINDS``), calls ``_init_handle`` once its C record exists,
    and implements ``_release_native(rec)`` (free the libevent object, wipe and free the record).
    The finalizer is ``Finalized``'s: a server request, made once per HTTP request and always
    held while open, does without one.
    """

    __slots__ = ("__weakref__", "_children", "_dummy", "_id", "_parent", "_rec")

    _kind: ClassVar[str] = ""

    _rec: Any
    _id: int
    _dummy: bool
    _parent: Handle | None
    _children: dict[int, weakref.ref[Handle]] | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls._kind and cls._kind not in _classes:
            _classes[cls._kind] = cls  # the class that answers live() for its kind

    def _trace_create(self, extra: str = "") -> tuple[int, bool]:
        """A new id, and whether TRACE logging is on (then the creation is logged)."""
        ident = _next_id()
        traced = events_log.isEnabledFor(TRACE)
        if traced:
            events_log.log(TRACE, "create %s id=%d%s", self._kind, ident, extra)
        return ident, traced

    def _trace_release(self) -> None:
        events_log.log(TRACE, "release %s id=%d", self._kind, self._id)

    def _init_handle(self, rec: Any, *, dummy: bool, parent: Handle | None) -> None:
        """Take ownership of ``rec``: assign the id, count, register with the parent, log."""
        self._rec = rec
        self._dummy = dummy
        self._children = None
        self._parent = parent
        _count(self._kind, 1)
        self._id = self._trace_create(" dummy" if dummy else "")[0]
        if parent is not None:
            parent._adopt(self)

    def _adopt(self, child: Handle) -> None:
        """Register ``child`` so that closing this handle releases it first."""
        children = self._children
        if children is None:
            with _close_lock:  # two threads adding the first children must share one dict
                if self._children is None:
                    self._children = {}
                children = self._children
        children[child._id] = weakref.ref(child)

    # -- public surface shared by all five types

    @property
    def id(self) -> int:
        """Positive integer, unique in the process across all five handle types."""
        return self._id

    @property
    def closed(self) -> bool:
        """True once the handle has been released."""
        return self._rec is None

    @property
    def dummy(self) -> bool:
        """True for a handle with no libevent object behind it (for tests)."""
        return self._dummy

    @classmethod
    def live(cls) -> int:
        """Number of handles of this type that are not yet released."""
        with _live_lock:
            return _live[cls._kind]

    def close(self) -> None:
        """Release the handle (children first); idempotent.

        Under the thread rule of the root base (``_loop_guard``): from a thread other than the
        one dispatching the base, RuntimeError.
        """
        guard = self._loop_guard()
        if guard is None:
            self._check_close()
            self._close(finalizing=False)
            return
        with guard.held(f"{type(self).__name__}.close"):
            self._check_close()
            self._close(finalizing=False)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        try:
            state = "closed" if self._rec is None else "dummy" if self._dummy else "open"
            return f"<{type(self).__name__} id={self._id} {state}>"
        except AttributeError:
            return f"<{type(self).__name__} (not initialised)>"

    # -- hooks and helpers for the subclasses

    def _forget(self, child_id: int) -> None:
        """A child was released: stop tracking it."""
        children = self._children
        if children is not None:
            children.pop(child_id, None)

    def _loop_guard(self) -> Any:
        """The thread guard of the base this handle belongs to (``_guard._Guard``), or None."""
        parent = self._parent
        return parent._loop_guard() if parent is not None else None

    def _check_close(self) -> None:
        """Raise if closing now is not allowed (a base inside its own callback)."""

    def _release_native(self, rec: Any) -> None:
        """Free the libevent object and the C record (wiped); called once, children already gone."""
        raise NotImplementedError

    def _after_release(self) -> None:
        """Drop Python-side references (keep-alive entries, handles) after the record is gone."""

    def _close(self, *, finalizing: bool) -> None:
        with _close_lock:
            rec = self._rec
            if rec is None:
                return
            self._rec = None
        try:
            children = self._children
            if children:
                for ref in reversed(list(children.values())):
                    child = ref()
                    if child is not None:
                        child._close(finalizing=finalizing)
            self._release_native(rec)
        finally:
            self._children = None
            parent = self._parent
            if parent is not None:
                parent._forget(self._id)
            self._after_release()
            _count(self._kind, -1)
            if events_log.isEnabledFor(TRACE):
                self._trace_release()

    def _closed_error(self, what: str) -> NoReturn:
        raise ClosedError(f"{type(self).__name__}.{what}: the handle is closed")

    def _require(self, what: str) -> Any:
        """The C record of a real, open handle, or ClosedError / DummyHandleError."""
        rec = self._rec
        if rec is None:
            self._closed_error(what)
        if self._dummy:
            raise DummyHandleError(f"{type(self).__name__}.{what}: a dummy handle has no libevent")
        return rec

    def _require_open(self, what: str) -> Any:
        """The C record of an open handle, dummy or not, or ClosedError."""
        rec = self._rec
        if rec is None:
            self._closed_error(what)
        return rec


class Finalized(Handle):
    """A handle released by its finalizer when it is dropped open, with a ResourceWarning."""

    __slots__ = ()

    def __del__(self) -> None:
        try:
            if self._rec is None:
                return
            message = dropped_message(self) if self._dropped_open() else None
            self._close(finalizing=True)
        except Exception:  # half made (its __init__ raised), or interpreter exit: nowhere to report
            return
        warn_dropped(message, self)

    def _dropped_open(self) -> bool:
        """Whether being finalized open deserves a ResourceWarning (checked before release)."""
        return True


def dropped_message(handle: Handle) -> str | None:
    """The ResourceWarning text for ``handle`` finalized open (taken while it still is)."""
    try:
        return f"unclosed {handle!r}; close it, or use it in a with block"
    except Exception:
        return None


def warn_dropped(message: str | None, handle: Handle) -> None:
    """A ResourceWarning from a finalizer, after the handle was released, as asyncio warns of an
    unclosed transport: silent by default; under an "error" filter it reaches
    ``sys.unraisablehook`` like any exception leaving ``__del__``, never the code that dropped
    it. Not at interpreter exit, where the warnings machinery may already be gone."""
    if message is None or sys.is_finalizing():
        return
    warnings.warn(message, ResourceWarning, source=handle, stacklevel=2)
