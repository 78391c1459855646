"""``aio.EventLoop``'s attached mode: the loop runs inside dispatches of its base that someone
else makes (a C host, or ``base.dispatch()``), one asyncio iteration per "tick" event.

The tick is a timer event on the base, re-armed with a zero timeout while callbacks are ready and
with the next timer's delay otherwise; readiness that arrives while the loop is idle arms it too
(the selector's wake hook). :class:`AttachedMode` is the loop's base class holding that part;
:class:`AttachedJob` is what a C host's ``bs_python_detach`` runs to finish an attached loop.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from asyncio import events as _events
from typing import TYPE_CHECKING, Final

from ._aio_selector import LibeventSelector
from ._event import LibEvent, obtain_event
from ._event_base import EventBase

__all__ = ["AttachedJob", "AttachedMode"]

_get_ident: Final = threading.get_ident
_get_running_loop: Final = _events._get_running_loop
_set_running_loop: Final = _events._set_running_loop


class AttachedMode(asyncio.SelectorEventLoop):
    """The attached mode of ``aio.EventLoop`` (its base class; ``EventLoop.__init__`` sets the
    ``_bs_*`` fields): the tick event, its re-arming, and entering the loop around a C stream
    callback that runs in someone else's dispatch."""

    _bs_base: EventBase
    _bs_tick: LibEvent | None
    _bs_armed: bool  # a zero-timeout tick is due this round
    _bs_in_run: bool  # run_forever() runs the loop: no tick
    _bs_detaching: bool
    _bs_prev_loop: asyncio.AbstractEventLoop | None
    _selector: LibeventSelector
    # asyncio's own (BaseEventLoop), which typeshed does not declare.
    _ready: collections.deque[asyncio.Handle]
    _scheduled: list[asyncio.TimerHandle]
    _thread_id: int | None
    _stopping: bool
    _closed: bool
    _clock_resolution: float

    if TYPE_CHECKING:

        def _run_once(self) -> None: ...

    @property
    def attached(self) -> bool:
        """Whether the loop runs whenever its base is dispatched (see ``aio.attach``)."""
        return self._bs_tick is not None

    def _bs_attach(self) -> None:
        if self._bs_tick is None:
            self._bs_tick = obtain_event(self._bs_base, -1, 0, self._bs_on_tick)
            self._selector.attach(self._bs_wake)
            self._bs_rearm()

    def _bs_wake(self) -> None:
        """Readiness arrived while the attached loop is idle: run a tick after this round."""
        if not self._bs_armed and not self._bs_in_run:
            tick = self._bs_tick
            if tick is not None:
                self._bs_armed = True
                tick.add(0)

    def _bs_rearm(self) -> None:
        """After a tick (or between runs): schedule the next one, for callbacks or the timer."""
        tick = self._bs_tick
        if tick is None or self._bs_in_run or self._bs_armed:
            return  # not attached, run by run_forever(), or a tick is due this round anyway
        if self._ready:
            self._bs_armed = True
            tick.add(0)
        elif self._scheduled:
            tick.add(max(0.0, self._scheduled[0].when() - self.time()))
        else:
            tick.delete()

    def _bs_on_tick(self, _ev: LibEvent | None, _arg: object) -> None:
        """One iteration of asyncio's loop, inside the base's dispatch (attached mode)."""
        self._bs_armed = False
        if self.is_closed() or self._bs_in_run or self._thread_id is not None:
            return
        sel = self._selector
        previous = _get_running_loop()
        self._thread_id = _get_ident()
        _set_running_loop(self)
        sel.collect_only = True
        try:
            self._run_once()
        finally:
            sel.collect_only = False
            self._stopping = False  # stop() only ends run_forever()
            self._thread_id = None
            _set_running_loop(previous)
            if not self.is_closed():
                self._bs_rearm()
                if self._bs_detaching:
                    self._bs_detach_check()

    def _bs_detach_check(self) -> None:
        """After a C host's detach cancelled the tasks: close the loop once none is left."""
        if self.is_closed() or self._thread_id is not None or self._bs_in_run:
            return
        if any(not t.done() for t in asyncio.all_tasks(self)):
            return
        self.close()

    def _bs_enter(self) -> bool:
        """Before a C stream callback outside the loop's run (an attached loop's base, run by
        its owner): make the loop the running one, as its tick does. False if it cannot be."""
        if self._closed:
            return False
        self._bs_prev_loop = _get_running_loop()
        self._thread_id = _get_ident()
        _set_running_loop(self)
        return True

    def _bs_leave(self) -> None:
        """After _bs_enter's callback: not running any more; schedule what it made ready."""
        previous, self._bs_prev_loop = self._bs_prev_loop, None
        self._thread_id = None
        _set_running_loop(previous)
        if not self._closed:
            self._bs_rearm()


class AttachedJob:
    """An attached loop on a C host's base, as a job of ``bs_python_detach``
    (``_attach.Job``): its tasks are cancelled and run to their end from the loop's ready
    queue and timers, then the loop is closed."""

    __slots__ = ("loop",)

    def __init__(self, loop: AttachedMode) -> None:
        self.loop = loop

    @property
    def finished(self) -> bool:
        return self.loop.is_closed()

    def cancel(self) -> None:
        loop = self.loop
        if loop.is_closed():
            return
        loop._bs_detaching = True
        for task in asyncio.all_tasks(loop):
            task.cancel()
        if not self.blocked():
            loop._bs_detach_check()

    def blocked(self) -> bool:
        loop = self.loop
        return loop._thread_id is not None or loop._bs_in_run

    def step(self) -> float | None:
        loop = self.loop
        if loop.is_closed():
            return None
        scheduled = loop._scheduled
        if not loop._ready and scheduled:
            wait = scheduled[0].when() - loop.time()
            if wait > loop._clock_resolution:
                return wait
        if loop._ready or scheduled:
            loop._bs_on_tick(None, None)  # one iteration, as the tick event would run it
            return 0.0
        loop._bs_detach_check()
        return None
