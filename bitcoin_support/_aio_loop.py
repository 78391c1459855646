"""asyncio's Unix selector loop over libevent: :class:`EventLoop`, its hot path, and attached mode.

The public face is :mod:`bitcoin_support.aio`; docs/design/asyncio-internals.md says which asyncio
internals this module relies on.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import heapq
import sys
import threading
import time
from asyncio import events as _events
from asyncio import format_helpers as _format_helpers
from asyncio import sslproto as _sslproto
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar, TypeVarTuple

from . import _aio_transport
from ._aio_selector import POLL_INTERVAL as _POLL_INTERVAL
from ._aio_selector import LibeventSelector
from ._args import type_name as _type_name
from ._errors import ClosedError, DummyHandleError
from ._event import LibEvent, obtain_event
from ._event_base import EventBase, obtain_event_base

__all__ = ["EventLoop"]

T = TypeVar("T")
_Handle: Final = asyncio.Handle
_TimerHandle: Final = asyncio.TimerHandle
_heappush: Final = heapq.heappush
_heappop: Final = heapq.heappop
_monotonic: Final = time.monotonic
# asyncio's constants for the same steps (base_events.py).
_MIN_SCHEDULED: Final = 100
_MIN_CANCELLED_FRACTION: Final = 0.5
_MAX_SELECT_TIMEOUT: Final = 24 * 3600
Ts = TypeVarTuple("Ts")

_get_ident: Final = threading.get_ident
_getframe: Final = sys._getframe
_extract_stack: Final = _format_helpers.extract_stack
_get_running_loop: Final = _events._get_running_loop
_set_running_loop: Final = _events._set_running_loop


# asyncio.TimerHandle's slots (CPython 3.11's), all of which _new_timer_fast fills.
_TIMER_SLOTS: Final = frozenset(
    {
        *("_callback", "_args", "_cancelled", "_loop", "_source_traceback", "_repr"),
        *("__weakref__", "_context", "_scheduled", "_when"),
    }
)
_object_new: Final = object.__new__
_copy_context: Final = contextvars.copy_context


def _new_timer_fast(
    when: float, callback: Any, args: Any, loop: Any, context: Any
) -> asyncio.TimerHandle:
    """``asyncio.TimerHandle(when, callback, args, loop, context)`` for a loop not in debug
    mode, without its two ``__init__`` frames and ``loop.get_debug()``: half the cost."""
    timer: Any = _object_new(_TimerHandle)
    timer._callback = callback
    timer._args = args
    timer._cancelled = False
    timer._loop = loop
    timer._source_traceback = None
    timer._repr = None
    timer._context = _copy_context() if context is None else context
    timer._when = when
    timer._scheduled = False
    return timer  # type: ignore[no-any-return]


def _slots(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        names.update((slots,) if isinstance(slots, str) else slots)
    return names


# Another Python's TimerHandle with other fields: its own constructor.
_new_timer: Final = _new_timer_fast if _slots(_TimerHandle) == _TIMER_SLOTS else _TimerHandle
# The same for Handle (call_soon fills its slots inline).
_FAST_HANDLES: Final = _slots(_Handle) == _TIMER_SLOTS - {"_scheduled", "_when"}


# _run_once runs asyncio's Handle._run inline where it is CPython 3.11's (3.12 has the same):
# its try block, and on an exception the same context for the exception handler.
_INLINE_RUN = sys.version_info[:2] in ((3, 11), (3, 12)) and _TimerHandle._run is _Handle._run


def _callback_failed(handle: Any, exc: BaseException) -> None:
    """What asyncio's ``Handle._run`` does with a callback's exception."""
    cb = _format_helpers._format_callback_source(handle._callback, handle._args)
    context: dict[str, Any] = {
        "message": f"Exception in callback {cb}",
        "exception": exc,
        "handle": handle,
    }
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    handle._loop.call_exception_handler(context)


def _check_base(where: str, base: object) -> EventBase:
    if not isinstance(base, EventBase):
        raise TypeError(f"{where}: base must be an EventBase or None, not {_type_name(base)}")
    if base.closed:
        raise ClosedError(f"{where}: the base is closed")
    if base.dummy:
        raise DummyHandleError(f"{where}: a dummy base has no libevent loop to run asyncio on")
    return base


class EventLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop on an :class:`EventBase` (its own one when ``base`` is None).

    With no ``base`` the loop makes its own and closes it in :meth:`close`; with one it uses that
    base and leaves it open. ``run_forever()`` / ``run_until_complete()`` dispatch the base one
    round at a time. See :func:`attach` for a loop that runs whenever someone else dispatches.
    """

    _bs_base: EventBase
    _bs_own: bool
    _bs_tick: LibEvent | None
    _bs_armed: bool
    _bs_in_run: bool
    _bs_streams: set[Any]
    _bs_detaching: bool
    _selector: LibeventSelector
    #: Plain TCP and Unix stream sockets get the transport whose reads and writes run in C
    #: (``_aio_transport``); False: asyncio's own selector transports, as before.
    c_streams: bool = True
    # asyncio's own (BaseEventLoop), which typeshed does not declare.
    _ready: collections.deque[asyncio.Handle]
    _scheduled: list[asyncio.TimerHandle]
    _thread_id: int | None
    _stopping: bool
    _closed: bool
    _debug: bool
    _timer_cancelled_count: int
    _clock_resolution: float
    _transports: Any

    if TYPE_CHECKING:

        def _check_closed(self) -> None: ...
        def _check_running(self) -> None: ...
        def _process_events(self, event_list: list[Any]) -> None: ...
        def _ensure_fd_no_transport(self, fd: Any) -> None: ...

    def __new__(cls, base: EventBase | None = None) -> EventLoop:
        # Checked here, before an object exists whose __del__ (asyncio's) would find it half made.
        if base is not None:
            _check_base("aio.EventLoop", base)
        return super().__new__(cls)

    def __init__(self, base: EventBase | None = None) -> None:
        own = base is None
        if base is None:
            base = obtain_event_base()
        self._bs_base = base
        self._bs_own = own
        self._bs_tick = None
        self._bs_forget_detach: Callable[[], None] | None = None
        self._bs_detaching = False  # a C host's detach cancelled the tasks: close when done
        self._bs_armed = False
        self._bs_in_run = False
        self._bs_streams = set()  # open C stream transports, held as the selector holds asyncio's
        self._bs_prev_loop: asyncio.AbstractEventLoop | None = None
        self._bs_rbuf: Any = None  # where the C stream transports read (made on first use)
        # time() is asyncio's (time.monotonic()): the hot paths may call the clock directly.
        self._bs_plain_time = type(self).time is asyncio.BaseEventLoop.time
        try:
            selector = LibeventSelector(base)
            try:
                super().__init__(selector)
            except BaseException:
                selector.close()
                raise
        except BaseException:
            if own:
                base.close()
            raise

    @property
    def base(self) -> EventBase:
        """The :class:`EventBase` the loop runs on."""
        return self._bs_base

    @property
    def attached(self) -> bool:
        """Whether the loop runs whenever its base is dispatched (see :func:`attach`)."""
        return self._bs_tick is not None

    def __repr__(self) -> str:
        mode = "attached" if self._bs_tick is not None else "own" if self._bs_own else "shared"
        return (
            f"<{type(self).__name__} running={self.is_running()} closed={self.is_closed()} "
            f"debug={self.get_debug()} base={mode}>"
        )

    # -- running

    def _bs_check_dispatch(self, what: str) -> None:
        base = self._bs_base
        if base.closed:
            raise ClosedError(f"aio.EventLoop.{what}: the loop's base is closed")
        st = base._st
        rec = base._rec
        if st.running or (rec is not None and rec.depth > 0):
            raise RuntimeError(
                f"aio.EventLoop.{what}: the base is already being dispatched by someone else; "
                "an attached loop runs in that dispatch (use create_task, not run_*)"
            )

    def run_forever(self) -> None:
        """Run until :meth:`stop`, dispatching the base one round per loop iteration.

        RuntimeError if the base is being dispatched already (by a C host, ``base.dispatch()``
        or another loop): an attached loop then runs in that dispatch by itself.
        """
        self._check_closed()
        self._check_running()
        self._bs_check_dispatch("run_forever")
        session = self._bs_base._session("aio.EventLoop.run_forever")
        self._bs_in_run = True
        sel = self._selector
        wake, sel.wake = sel.wake, None
        sel.round = session.round
        sel.last_poll = float("-inf")
        try:
            super().run_forever()
        finally:
            sel.round = None
            session.end()
            self._bs_in_run = False
            if not self.is_closed():
                sel.wake = wake
                self._bs_rearm()

    # -- attached mode

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

    # -- transports: plain stream sockets get the C one (TLS runs asyncio's sslproto on it)

    def _make_socket_transport(
        self,
        sock: Any,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[Any] | None = None,
        *,
        extra: dict[str, Any] | None = None,
        server: Any = None,
    ) -> asyncio.Transport:
        if self.c_streams and _aio_transport.usable(sock):
            self._ensure_fd_no_transport(sock)  # as asyncio's: one transport per descriptor
            if self._bs_rbuf is None:
                self._bs_rbuf = _aio_transport.read_buffer()
            return _aio_transport.StreamTransport(self, sock, protocol, waiter, extra, server)
        make = super()._make_socket_transport  # type: ignore[misc]
        return make(sock, protocol, waiter, extra=extra, server=server)  # type: ignore[no-any-return]

    def _make_ssl_transport(
        self,
        rawsock: Any,
        protocol: asyncio.BaseProtocol,
        sslcontext: Any,
        waiter: asyncio.Future[Any] | None = None,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
        **timeouts: Any,
    ) -> asyncio.Transport:
        if not (self.c_streams and _aio_transport.usable(rawsock)):
            make = super()._make_ssl_transport  # type: ignore[misc]
            return make(  # type: ignore[no-any-return]
                rawsock,
                protocol,
                sslcontext,
                waiter,
                server_side=server_side,
                server_hostname=server_hostname,
                extra=extra,
                server=server,
                **timeouts,
            )
        self._ensure_fd_no_transport(rawsock)
        if self._bs_rbuf is None:
            self._bs_rbuf = _aio_transport.read_buffer()
        ssl_protocol = _sslproto.SSLProtocol(
            self,
            protocol,
            sslcontext,
            waiter,  # type: ignore[arg-type]  # None is allowed (asyncio passes it)
            server_side,
            server_hostname,
            **timeouts,
        )
        _aio_transport.StreamTransport(self, rawsock, ssl_protocol, None, extra, server)
        return ssl_protocol._app_transport

    # -- the hot path: asyncio's own code, less what only debug mode needs

    def call_soon(
        self,
        callback: Callable[[*Ts], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        if self._debug:
            handle = super().call_soon(callback, *args, context=context)
            # From the caller's frame, as asyncio's own methods record it (not from this one).
            handle._source_traceback = _extract_stack(_getframe(1))  # type: ignore[attr-defined]
        else:
            if self._closed:
                raise RuntimeError("Event loop is closed")
            if _FAST_HANDLES:  # _new_timer_fast's way, inlined on the hottest path
                handle = _object_new(_Handle)
                handle._callback = callback  # type: ignore[attr-defined]
                handle._args = args
                handle._cancelled = False
                handle._loop = self  # type: ignore[attr-defined]
                handle._source_traceback = None  # type: ignore[attr-defined]
                handle._repr = None  # type: ignore[attr-defined]
                handle._context = _copy_context() if context is None else context  # type: ignore[attr-defined]
            else:
                handle = _Handle(callback, args, self, context)
            self._ready.append(handle)
        if self._bs_tick is not None and self._thread_id is None:
            self._bs_rearm()
        return handle

    def call_at(
        self,
        when: float,
        callback: Callable[[*Ts], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        if self._debug or when is None:
            timer = super().call_at(when, callback, *args, context=context)
            if self._debug:  # from the caller's frame, as in call_soon
                timer._source_traceback = _extract_stack(_getframe(1))  # type: ignore[attr-defined]
        else:
            if self._closed:
                raise RuntimeError("Event loop is closed")
            timer = _new_timer(when, callback, args, self, context)
            _heappush(self._scheduled, timer)
            timer._scheduled = True  # type: ignore[attr-defined]
        if self._bs_tick is not None and self._thread_id is None:
            self._bs_rearm()
        return timer

    def call_later(
        self,
        delay: float,
        callback: Callable[[*Ts], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        if delay is None or self._debug:
            timer = super().call_later(delay, callback, *args, context=context)
            if self._debug:  # from the caller's frame, as in call_soon
                timer._source_traceback = _extract_stack(_getframe(1))  # type: ignore[attr-defined]
            return timer
        if self._closed:
            raise RuntimeError("Event loop is closed")
        now = _monotonic() if self._bs_plain_time else self.time()
        timer = _new_timer(now + delay, callback, args, self, context)
        _heappush(self._scheduled, timer)
        timer._scheduled = True  # type: ignore[attr-defined]
        if self._bs_tick is not None and self._thread_id is None:
            self._bs_rearm()
        return timer

    def _run_once(self) -> None:
        """asyncio's ``BaseEventLoop._run_once``, the same steps with fewer attribute lookups."""
        if self._debug:
            super()._run_once()  # type: ignore[misc]
            return
        scheduled: list[Any] = self._scheduled
        clock = _monotonic if self._bs_plain_time else self.time
        if scheduled:
            n = len(scheduled)
            if n > _MIN_SCHEDULED and self._timer_cancelled_count / n > _MIN_CANCELLED_FRACTION:
                super()._run_once()  # type: ignore[misc]  # asyncio's own clean-up of many cancelled timers
                return
            while scheduled and scheduled[0]._cancelled:
                self._timer_cancelled_count -= 1
                _heappop(scheduled)._scheduled = False
        ready: collections.deque[Any] = self._ready
        if ready or self._stopping:
            timeout: float | None = 0
        elif scheduled:
            timeout = min(max(0.0, scheduled[0]._when - clock()), _MAX_SELECT_TIMEOUT)
        else:
            timeout = None
        event_list: Any = self._selector.select(timeout)
        if event_list:
            self._process_events(event_list)
            event_list = None
        if scheduled:
            end_time = clock() + self._clock_resolution
            while scheduled:
                if scheduled[0]._when >= end_time:
                    break
                handle = _heappop(scheduled)
                handle._scheduled = False
                ready.append(handle)
        popleft = ready.popleft
        sel = self._selector
        while True:
            for _ in range(len(ready)):
                handle = popleft()
                if not handle._cancelled:
                    kind = type(handle)
                    if _INLINE_RUN and (kind is _Handle or kind is _TimerHandle):
                        # Handle._run, inlined: one Python frame fewer per callback.
                        try:
                            handle._context.run(handle._callback, *handle._args)
                        except (SystemExit, KeyboardInterrupt):
                            raise
                        except BaseException as exc:
                            _callback_failed(handle, exc)
                    else:
                        handle._run()
            handle = None  # break cycles through a raised exception's frame
            # More iterations in this call while the next would not poll anyway (the base was
            # polled less than POLL_INTERVAL ago): what run_forever and the steps above would
            # do, minus their overhead. Timers due are moved to the ready queue as above.
            if self._stopping or sel.collect_only or _monotonic() - sel.last_poll >= _POLL_INTERVAL:
                return
            if scheduled:
                if scheduled[0]._cancelled:
                    return
                end_time = clock() + self._clock_resolution
                while scheduled and scheduled[0]._when < end_time:
                    handle = _heappop(scheduled)
                    handle._scheduled = False
                    ready.append(handle)
                handle = None
            if not ready:
                return

    # -- closing

    def close(self) -> None:
        """Close the loop; release its events; close the base if the loop made it.

        An attached loop drops its pending callbacks and leaves the base to its owner.
        """
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        forget, self._bs_forget_detach = self._bs_forget_detach, None
        if forget is not None:
            forget()
        tick, self._bs_tick = self._bs_tick, None
        try:
            if self._bs_base.closed:
                # The owner closed the base first: our events went with it.
                self._selector._keys.clear()
                self._selector._evs.clear()
            super().close()
        finally:
            if tick is not None:
                try:
                    tick.close()
                except ClosedError:
                    pass
            if self._bs_own:
                self._bs_base.close()


class _AttachedJob:
    """An attached loop on a C host's base, as a job of ``bs_python_detach``
    (``_attach.Job``): its tasks are cancelled and run to their end from the loop's ready
    queue and timers, then the loop is closed."""

    __slots__ = ("loop",)

    def __init__(self, loop: EventLoop) -> None:
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
