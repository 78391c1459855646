"""Python handlers that examples/c_host/host.c loads with ``bs_python_attach_evhttp``.

``setup(http)`` gets the host's own evhttp (``EvHttp.from_address``: the host owns and frees it)
and registers Python's paths on it, next to the host's C handlers:

- ``/py/echo``: the request's body and ``Content-Type`` back, moved inside C;
- ``/py/stats``: JSON counters of the jobs below and of the requests Python served;
- ``/py/wait``: a long poll, answered after ``?seconds=S`` (default: never; the host's shutdown
  answers it 503 through ``bs_python_detach``).

It also starts a Python timer, a trio guest job and an asyncio job on an attached loop; each
counts its ticks for ``/py/stats``. The host checks the API token in C before
any of these routes runs, so nothing here deals with authentication.

Nothing here keeps references: the wrappers of the host's evhttp and base, and every handle,
route and deferred request on them, are held by the package until the host calls
``bs_python_detach``, which also cancels the trio job and lets it finish.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from typing import Any

import outcome
import trio

from bitcoin_support import (
    EV_PERSIST,
    EvHttp,
    EvHttpRequest,
    LibEvent,
    aio,
    locked_pool_stats,
    obtain_event,
    trio_guest,
)

TICK = 0.02  # seconds between ticks of each job


def setup(http: EvHttp) -> None:
    """Register the routes and start the jobs; called once by the host."""
    base = http.base
    stats: dict[str, Any] = {
        "timer_ticks": 0,
        "trio_ticks": 0,
        "asyncio_ticks": 0,
        "asyncio_loop_attached": False,
        "requests": 0,
    }

    def tick(ev: LibEvent, arg: object) -> None:
        stats["timer_ticks"] += 1

    def echo(req: EvHttpRequest, arg: object) -> None:
        stats["requests"] += 1
        req.send_echo(200, default_content_type="application/octet-stream")

    def report(req: EvHttpRequest, arg: object) -> None:
        stats["requests"] += 1
        if req.query_params.get("gc"):
            gc.collect()  # the tests force collections between requests
        body = json.dumps({**stats, "pool_used": locked_pool_stats().used})
        req.send_reply(200, body=body.encode(), content_type="application/json")

    def wait(req: EvHttpRequest, arg: object) -> None:
        stats["requests"] += 1
        seconds = req.query_params.get("seconds")
        if seconds is not None:  # answered by a one-shot timer; else held until shutdown
            obtain_event(base, -1, 0, lambda ev, a: req.send_reply(200, body=b"waited")).add(
                float(seconds)
            )

    http.set_cb("/py/echo", echo)
    http.set_cb("/py/stats", report)
    http.set_cb("/py/wait", wait)
    obtain_event(base, -1, EV_PERSIST, tick).add(TICK)

    async def trio_job() -> None:
        while True:
            await trio.sleep(TICK)
            stats["trio_ticks"] += 1

    def trio_done(result: outcome.Outcome[Any]) -> None:
        print(f"c_host_app: trio job finished: {result!r}", file=sys.stderr, flush=True)

    trio_guest.start(base, trio_job, done=trio_done)

    # asyncio on the host's base (SPEC section 8): the task runs whenever the host dispatches
    # it; bs_python_detach cancels it, lets it finish and closes the loop.
    loop = aio.attach(base)
    stats["asyncio_ticks"] = 0

    async def asyncio_job() -> None:
        while True:
            await asyncio.sleep(TICK)
            stats["asyncio_ticks"] += 1
            stats["asyncio_loop_attached"] = asyncio.get_running_loop() is loop

    loop.create_task(asyncio_job())
