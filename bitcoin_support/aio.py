"""asyncio on a libevent loop: an asyncio event loop whose readiness and timers are libevent's.

:class:`EventLoop` is asyncio's own Unix selector loop (``asyncio.SelectorEventLoop``: its
transports, TLS, pipes, subprocesses, signals, executors) over a selector whose registrations are
libevent events on an :class:`EventBase` (``_aio_selector``). Waiting for I/O and timers is one
round of the base, so the base's other users (``LibEvent`` callbacks, evhttp servers, a
``trio_guest`` run, a C host's own events) run in the same rounds, on the same thread.

- :func:`new_event_loop`, :class:`EventLoopPolicy`, :func:`run` are asyncio's, for this loop.
- :func:`attach` binds a loop to a base that someone else dispatches (a C host, or Python's
  ``base.dispatch()``): its callbacks run in libevent callbacks of the base (one "tick" event,
  re-armed with a zero timeout while callbacks are ready and with the next timer's delay
  otherwise), with ``asyncio.get_running_loop()`` returning the loop inside them.
- :func:`serve_http` serves an evhttp server with one asyncio task per request.

docs/asyncio.md gives the design and its figures; docs/design/asyncio-internals.md which asyncio
internals the loop relies on.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from . import _attach
from ._aio_attached import AttachedJob
from ._aio_http import iter_body, send_chunk, serve_http
from ._aio_loop import EventLoop
from ._event_base import EventBase
from ._host_base import check_host_base

__all__ = [
    "EventLoop",
    "EventLoopPolicy",
    "attach",
    "iter_body",
    "new_event_loop",
    "run",
    "send_chunk",
    "serve_http",
]

T = TypeVar("T")


def attach(base: EventBase) -> EventLoop:
    """An :class:`EventLoop` on ``base`` that runs whenever someone else dispatches ``base``.

    Tasks created with ``loop.create_task()`` progress in the base's dispatch (a C host's, or
    ``base.dispatch()`` from Python) with ``asyncio.get_running_loop()`` returning the loop; no
    Python thread blocks. ``close()`` drops pending callbacks, releases the loop's events and
    leaves the base open. ``run_until_complete`` / ``run_forever`` dispatch the base themselves
    when nobody else is, and raise RuntimeError when the base is being dispatched.
    """
    loop = EventLoop(check_host_base("aio.attach", base))
    try:
        loop._bs_attach()
    except BaseException:
        loop.close()
        raise
    loop._bs_forget_detach = _attach.add_job(base.address, AttachedJob(loop))
    return loop


def new_event_loop(base: EventBase | None = None) -> EventLoop:
    """A new :class:`EventLoop` (on its own base when ``base`` is None)."""
    return EventLoop(base)


if sys.version_info >= (3, 14):
    # 3.14 deprecates the policy classes (removal planned for 3.16): the public name warns when
    # read, the class it names does not. The same class on every version.
    from asyncio.unix_events import _DefaultEventLoopPolicy as _DefaultPolicy
else:
    _DefaultPolicy = asyncio.DefaultEventLoopPolicy


class EventLoopPolicy(_DefaultPolicy):
    """asyncio's Unix policy, with :class:`EventLoop` as its loops.

    From Python 3.14 asyncio deprecates policies: prefer :func:`run` or
    ``asyncio.Runner(loop_factory=aio.new_event_loop)``.
    """

    def new_event_loop(self) -> EventLoop:
        return EventLoop()


def run(main: Coroutine[Any, Any, T], *, debug: bool | None = None) -> T:
    """Run ``main`` on a new :class:`EventLoop`, like ``asyncio.run``."""
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
