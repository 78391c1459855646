"""Python handlers that examples/c_host/host.c loads with ``bs_python_attach``.

``setup(base)`` gets the host's event_base (``EventBase.from_address``: the host owns and frees
it). It serves HTTP on the host's listening socket (``BS_HOST_LISTEN_FD``) with an evhttp on that
base: every request is echoed back (200, same body and ``Content-Type``), and ``/stats`` reports
how many times a 50 ms timer fired and how much of the locked pool is in use (the host keeps a
32-byte secret there, allocated from C). The host runs the loop; ``teardown(base)`` runs after
the loop has stopped and releases everything registered here, before the host frees its base.

Nothing here keeps references: the wrapper of the host's base, and every handle made on it, stay
alive until the wrapper is closed, and ``teardown`` gets that same wrapper.
"""

from __future__ import annotations

import json
import os

from bitcoin_support import (
    EV_PERSIST,
    EventBase,
    EvHttpRequest,
    LibEvent,
    locked_pool_stats,
    obtain_event,
    obtain_evhttp,
)


def setup(base: EventBase) -> None:
    """Serve on the host's socket and start the timer; called once by the host."""
    ticks = 0

    def tick(ev: LibEvent, arg: object) -> None:
        nonlocal ticks
        ticks += 1

    def echo(req: EvHttpRequest, arg: object) -> None:
        req.send_echo(200, default_content_type="application/octet-stream")

    def stats(req: EvHttpRequest, arg: object) -> None:
        body = json.dumps({"ticks": ticks, "pool_used": locked_pool_stats().used})
        req.send_reply(200, body=body.encode(), content_type="application/json")

    http = obtain_evhttp(base)
    http.accept_socket(int(os.environ["BS_HOST_LISTEN_FD"]))
    http.set_gencb(echo)
    http.set_cb("/stats", stats)
    obtain_event(base, -1, EV_PERSIST, tick).add(0.05)


def teardown(base: EventBase) -> None:
    """Release the evhttp, the timer and the base wrapper; called by the host after its loop."""
    base.close()  # the wrapper setup() got: releases the evhttp and the timer, not the host's base
