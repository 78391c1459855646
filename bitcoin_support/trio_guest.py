"""trio on a libevent loop: trio runs in guest mode on an EventBase.

Trio's guest mode splits trio's loop in two: its scheduler runs on the host's thread, in callbacks
the host schedules through ``run_sync_soon_threadsafe``, and its I/O wait (epoll) runs in a worker
thread that hands results back the same way. Here the host is an :class:`EventBase`, and
``run_sync_soon_threadsafe`` is :meth:`EventBase.call_soon_threadsafe`, which wakes the libevent
loop from any thread and runs the call on the loop's thread. So trio tasks and libevent callbacks
(events, evhttp requests) take turns on one thread, and each may touch the other's objects
without locks: a trio task may reply to an evhttp request, and a libevent callback may reschedule
a trio task.

- :func:`run` starts trio and dispatches the base until trio finishes (like ``trio.run``).
- :func:`start` only starts trio, for hosts that run the loop themselves, C hosts included.
- :func:`wait_event` waits for a libevent event from trio code.
- :func:`serve_http` serves an evhttp server with one trio task per request.
- :func:`send_chunk` streams a chunked reply with back-pressure.
- :func:`iter_body` reads a ``stream_body`` request's body piece by piece.

Signals: ``KeyboardInterrupt`` behaves as under ``trio.run`` (trio installs its SIGINT handler on
the main thread when Python's default one is in place, and delivers the interrupt to the main
task). Trio keeps its own ``signal.set_wakeup_fd``; the base's loop leaves it alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

try:
    import outcome
    import trio
except ImportError as exc:  # trio is the optional extra [trio]
    raise ImportError(
        f"bitcoin_support.trio_guest needs trio ({exc}): pip install 'bitcoin_support[trio]'",
        name=exc.name,
    ) from exc

from . import _attach
from ._args import type_name as _type_name
from ._event import EV_PERSIST, LibEvent, obtain_event
from ._event_base import EVLOOP_NO_EXIT_ON_EMPTY, EventBase
from ._host_base import check_host_base
from ._trio_http import iter_body, send_chunk, serve_http

__all__ = ["iter_body", "run", "send_chunk", "serve_http", "start", "wait_event"]

T = TypeVar("T")


def start(
    base: EventBase,
    async_fn: Callable[..., Awaitable[Any]],
    *args: Any,
    done: Callable[[outcome.Outcome[Any]], object],
) -> None:
    """Start ``async_fn(*args)`` as a trio guest run on ``base``, without running the loop.

    For hosts that dispatch the base themselves (a C host after ``bs_python_attach``, or Python
    code calling ``base.loop()``). Call it on the loop's thread. ``done(outcome)`` is called once,
    on the loop's thread, with trio's :class:`outcome.Outcome` of the run (what ``trio.run``
    would have returned or raised); keep dispatching until then, as trio's guest mode requires.
    """
    base = check_host_base("trio_guest.start", base)
    if not callable(async_fn):
        raise TypeError(f"trio_guest.start: async_fn must be callable, not {_type_name(async_fn)}")
    if not callable(done):
        raise TypeError(f"trio_guest.start: done must be callable, not {_type_name(done)}")
    if base._address is None:
        trio.lowlevel.start_guest_run(
            async_fn,
            *args,
            run_sync_soon_threadsafe=base.call_soon_threadsafe,
            done_callback=done,
        )
        return
    # A C host's base: bs_python_detach cancels the run and sees it finish first.
    guest = _Guest(base, done)
    guest.ended = _attach.add_job(base.address, guest)
    try:
        trio.lowlevel.start_guest_run(
            guest.main,
            async_fn,
            *args,
            run_sync_soon_threadsafe=base.call_soon_threadsafe,
            done_callback=guest.done,
        )
    except BaseException:
        guest.finished = True
        guest.ended()
        raise


class _Guest:
    """A trio run started on a C host's base, as a job of ``bs_python_detach``
    (``_attach.Job``): cancelled there, and finished through the base's call queue, where
    trio's ticks arrive."""

    __slots__ = ("base", "cancelled", "ended", "finished", "scope", "token", "user_done")

    def __init__(self, base: EventBase, done: Callable[[outcome.Outcome[Any]], object]) -> None:
        self.base = base
        self.user_done = done
        self.finished = False
        self.cancelled = False
        self.ended: Callable[[], None] = _no_op
        self.scope: trio.CancelScope | None = None
        self.token: trio.lowlevel.TrioToken | None = None

    async def main(self, async_fn: Callable[..., Awaitable[T]], *args: Any) -> T | None:
        self.token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self.scope:
            if self.cancelled:  # bs_python_detach came before trio's first tick
                self.scope.cancel()
            return await async_fn(*args)
        return None  # cancelled by bs_python_detach

    def done(self, result: outcome.Outcome[Any]) -> None:
        self.finished = True
        self.ended()
        self.user_done(result)

    def cancel(self) -> None:
        if self.cancelled or self.finished:
            return
        self.cancelled = True
        scope, token = self.scope, self.token
        if scope is not None and token is not None:
            try:
                token.run_sync_soon(scope.cancel)
            except trio.RunFinishedError:
                pass

    def blocked(self) -> bool:
        st = self.base._st
        return st.draining > 0  # trio's tick may be the call running now: not re-entrant

    def step(self) -> float | None:
        return None  # its ticks come through the base's call queue, which detach runs


def _no_op() -> None:
    pass


class _Run:
    """State of one :func:`run`: the outcome, and the cancel scope around the main function."""

    __slots__ = ("base", "outcome", "scope", "token")

    def __init__(self, base: EventBase) -> None:
        self.base = base
        self.outcome: outcome.Outcome[Any] | None = None
        self.scope: trio.CancelScope | None = None
        self.token: trio.lowlevel.TrioToken | None = None

    async def main(self, async_fn: Callable[..., Awaitable[T]], *args: Any) -> T | None:
        self.token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self.scope:
            return await async_fn(*args)
        return None  # cancelled by run() because the loop failed; run() raises that error

    def done(self, result: outcome.Outcome[Any]) -> None:
        self.outcome = result
        self.base.loopbreak()

    def cancel(self) -> None:
        scope, token = self.scope, self.token
        if scope is not None and token is not None:
            token.run_sync_soon(scope.cancel)


def run(base: EventBase, async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``async_fn(*args)`` under trio on ``base``'s loop; return its result or raise.

    Dispatches the base until the trio run finishes; the base's other events and evhttp
    callbacks run meanwhile, interleaved with trio's tasks. If the loop itself fails (a libevent
    callback on the base raised, which stops ``dispatch()``), the trio run is cancelled, the loop
    runs on until trio has finished cleaning up, and that error is raised, as ``trio.run`` does
    with an error that escapes its own machinery.
    """
    base = check_host_base("trio_guest.run", base)
    state = _Run(base)
    start(base, state.main, async_fn, *args, done=state.done)
    loop_error: BaseException | None = None
    while state.outcome is None:
        try:
            base.loop(EVLOOP_NO_EXIT_ON_EMPTY)
        except BaseException as exc:
            if loop_error is None:
                loop_error = exc
                state.cancel()
    result = state.outcome
    if loop_error is not None:
        try:
            raise loop_error
        finally:
            loop_error = None
    return result.unwrap()  # type: ignore[no-any-return]


async def wait_event(
    base: EventBase, fd: int | Any, events: int, timeout: float | None = None
) -> int:
    """Wait for a libevent event on ``base`` from trio code; return the fired flags.

    ``fd``, ``events`` are those of ``obtain_event`` (``EV_PERSIST`` is ignored: the wait ends
    at the first activation). Returns ``EV_TIMEOUT`` when ``timeout`` seconds passed first.
    ``base`` must be the base trio runs on. Cancelling the waiting task removes the event.
    """
    base = check_host_base("trio_guest.wait_event", base)
    await trio.lowlevel.checkpoint_if_cancelled()
    task = trio.lowlevel.current_task()
    waiting = True

    def fired(ev: LibEvent, _arg: object) -> None:
        # On the loop's thread, between trio ticks: trio's sync API works here (guest mode).
        nonlocal waiting
        if waiting:
            waiting = False
            trio.lowlevel.reschedule(task, outcome.Value(ev.fired))

    def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
        nonlocal waiting
        waiting = False
        if not ev.closed:  # closed with its base (a C host's detach): nothing to delete
            ev.delete()
        return trio.lowlevel.Abort.SUCCEEDED

    # The event lives only for this call: deleted on cancel, closed (freed) on the way out.
    with obtain_event(base, fd, events & ~EV_PERSIST, fired) as ev:
        ev.add(timeout)
        result: int = await trio.lowlevel.wait_task_rescheduled(abort)
    return result
