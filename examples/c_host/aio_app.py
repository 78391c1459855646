"""asyncio handlers for examples/c_host/host.c: ``./host PORT path/to/aio_app.py:setup``.

The host owns the event_base and runs it (``event_base_dispatch``); ``setup(base)`` attaches an
asyncio loop to it (``aio.attach``), so asyncio tasks run inside the host's dispatch, with no
Python thread of their own. HTTP on the host's socket is served by ``aio.serve_http``: each
request is an asyncio task that awaits a short sleep and answers JSON with the request's body,
the ticks of an asyncio ticker task, and whether ``asyncio.get_running_loop()`` is the attached
loop. ``teardown(base)``, after the host's loop has stopped, cancels the tasks, lets them finish
(``run_until_complete`` dispatches the host's base itself, since nobody else is now), closes the
loop and then the base wrapper.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from bitcoin_support import EventBase, EvHttpRequest, aio, obtain_evhttp

_runs: dict[int, tuple[aio.EventLoop, list[asyncio.Task[Any]]]] = {}


def setup(base: EventBase) -> None:
    loop = aio.attach(base)
    http = obtain_evhttp(base)
    http.accept_socket(int(os.environ["BS_HOST_LISTEN_FD"]))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    async def handler(req: EvHttpRequest) -> bytes:
        await asyncio.sleep(0.001)
        answer = {
            "body": req.body.decode(errors="replace"),
            "ticks": ticks,
            "running_loop_is_attached": asyncio.get_running_loop() is loop,
        }
        return json.dumps(answer).encode()

    tasks = [loop.create_task(ticker()), loop.create_task(aio.serve_http(http, handler))]
    _runs[id(base)] = (loop, tasks)


def teardown(base: EventBase) -> None:
    loop, tasks = _runs.pop(id(base))
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.close()  # detaches: the host's base stays the host's
    base.close()  # the wrapper: releases the evhttp, not the host's base
