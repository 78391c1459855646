"""asyncio's Unix selector loop over libevent: :class:`EventLoop` and its hot path.

The public face is :mod:`bitcoin_support.aio`; the attached mode is ``_aio_attached``'s, the
fast handles ``_aio_handles``'s, the C stream transport ``_aio_transport``'s.
docs/design/asyncio-internals.md says which asyncio internals these modules rely on.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import heapq
import sys
import time
from asyncio import format_helpers as _format_helpers
from asyncio import sslproto as _sslproto
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar, TypeVarTuple

from . import _aio_transport
from ._aio_attached import AttachedMode
from ._aio_handles import FAST_HANDLES as _FAST_HANDLES
from ._aio_handles import INLINE_RUN as _INLINE_RUN
from ._aio_handles import callback_failed as _callback_failed
from ._aio_handles import copy_context as _copy_context
from ._aio_handles import new_timer as _new_timer
from ._aio_handles import object_new as _object_new
from ._aio_selector import POLL_INTERVAL as _POLL_INTERVAL
from ._aio_selector import LibeventSelector
from ._errors import ClosedError
from ._event_base import EventBase, obtain_event_base
from ._host_base import check_host_base

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

_getframe: Final = sys._getframe
_extract_stack: Final = _format_helpers.extract_stack


class EventLoop(AttachedMode):
    """An asyncio event loop on an :class:`EventBase` (its own one when ``base`` is None).

    With no ``base`` the loop makes its own and closes it in :meth:`close`; with one it uses that
    base and leaves it open. ``run_forever()`` / ``run_until_complete()`` dispatch the base one
    round at a time. See :func:`attach` for a loop that runs whenever someone else dispatches.
    """

    _bs_own: bool
    _bs_streams: set[Any]
    #: Plain TCP and Unix stream sockets get the transport whose reads and writes run in C
    #: (``_aio_transport``); False: asyncio's own selector transports, as before.
    c_streams: bool = True
    # asyncio's own (BaseEventLoop), which typeshed does not declare (more in AttachedMode).
    _debug: bool
    _timer_cancelled_count: int
    _transports: Any

    if TYPE_CHECKING:

        def _check_closed(self) -> None: ...
        def _check_running(self) -> None: ...
        def _process_events(self, event_list: list[Any]) -> None: ...
        def _ensure_fd_no_transport(self, fd: Any) -> None: ...

    def __new__(cls, base: EventBase | None = None) -> EventLoop:
        # Checked here, before an object exists whose __del__ (asyncio's) would find it half made.
        if base is not None:
            check_host_base("aio.EventLoop", base, none_ok=True)
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
        self._bs_prev_loop = None
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
            super()._run_once()
            return
        scheduled: list[Any] = self._scheduled
        clock = _monotonic if self._bs_plain_time else self.time
        if scheduled:
            n = len(scheduled)
            if n > _MIN_SCHEDULED and self._timer_cancelled_count / n > _MIN_CANCELLED_FRACTION:
                super()._run_once()  # asyncio's own clean-up of many cancelled timers
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
