"""The thread rule of a base and its handles: one lock, and the thread dispatching the base.

Every operation on a base or a handle made on it runs under the rule of the base's ``_Guard``
(``acquire``/``held``, or the ``_guarded`` method decorator); an operation from another thread
while the base is dispatched raises RuntimeError instead of waiting for a loop that may run for
ever. ``call_soon_threadsafe`` is the one call meant for other threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Concatenate, ParamSpec, Protocol, TypeVar, cast

from ._forward import forwarding

if TYPE_CHECKING:
    from ._event_base import _LoopState

__all__ = ["_Guard", "_guarded", "_on_turn", "refusal"]

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


class _OnBase(Protocol):
    """What a ``_guarded`` method's owner has: the loop state of its base."""

    _st: _LoopState


_S = TypeVar("_S", bound=_OnBase)
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _guarded(
    what: str,
) -> Callable[[Callable[Concatenate[_S, _P], _R]], Callable[Concatenate[_S, _P], _R]]:
    """Run the method under the base's thread rule (see ``_Guard``).

    The wrapper is written with the method's own parameters (``_forward.forwarding``: no
    tuple and dict built per call) and keeps its return type (``ParamSpec``), name, docstring
    and ``__wrapped__``, so type checkers, ``help()`` and ``inspect.signature`` see the real
    method.
    """

    def wrap(method: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
        names = {"_bs_what": what}
        return cast(
            Callable[Concatenate[_S, _P], _R], forwarding(method, "guarded", _GUARDED, names)
        )

    return wrap


# The wrappers' bodies (_forward.forwarding: $SELF is self, $CALL the method's call). Both end
# in _Guard.acquire, inlined: the call holding the lock, taken under the rule.
_HOLDING = """\
    if not _bs_guard.lock.acquire(False):
        _bs_guard.wait(_bs_what)
    try:
        return $CALL
    finally:
        _bs_guard.lock.release()
"""
_GUARDED = "    _bs_guard = $SELF._st.guard\n" + _HOLDING


class _OnTurn(Protocol):
    """What an ``_on_turn`` method's owner has: the loop state of its base, or None."""

    @property
    def _st(self) -> _LoopState | None: ...


_T = TypeVar("_T", bound=_OnTurn)


def _on_turn(
    what: str,
) -> Callable[[Callable[Concatenate[_T, _P], _R]], Callable[Concatenate[_T, _P], _R]]:
    """The thread rule for the methods of an HTTP request and its headers (``self._st``: the
    loop state of its base, or None while a client request is not made): on the thread that
    dispatches the base, one comparison (``loop()`` holds the guard already); from any other
    thread, the method runs holding the guard (RuntimeError while another thread dispatches).
    Holding it, no other thread can close the request, its server or its base, or start
    dispatching (when libevent may free it), while a C call on the request lets go of the GIL.
    The wrapper keeps the method's signature, as ``_guarded`` does.
    """

    def wrap(method: Callable[Concatenate[_T, _P], _R]) -> Callable[Concatenate[_T, _P], _R]:
        names = {"_bs_what": f"EvHttpRequest.{what}", "_bs_get_ident": _get_ident}
        return cast(
            Callable[Concatenate[_T, _P], _R], forwarding(method, "on_turn", _ON_TURN, names)
        )

    return wrap


# The body of an _on_turn wrapper: on the dispatching thread (or before a client request has
# a base) one comparison, else _HOLDING.
_ON_TURN = (
    """\
    _bs_st = $SELF._st
    if _bs_st is None:
        return $CALL
    _bs_guard = _bs_st.guard
    if _bs_guard.thread == _bs_get_ident():
        return $CALL
"""
    + _HOLDING
)
