"""The one rule for a base that hosts another framework's loop (``aio``'s EventLoop and
``attach``, ``trio_guest``'s ``run``, ``start`` and ``wait_event``): an open, real EventBase."""

from __future__ import annotations

from ._args import type_name as _type_name
from ._errors import ClosedError, DummyHandleError
from ._event_base import EventBase

__all__ = ["check_host_base"]


def check_host_base(where: str, base: object, *, none_ok: bool = False) -> EventBase:
    """``base`` if a framework can run on it; else TypeError (not an EventBase), ClosedError
    (closed) or DummyHandleError (a dummy base has no loop), each naming ``where``.

    ``none_ok`` only says, in the TypeError, that the caller also takes None (it checks that
    case itself)."""
    if not isinstance(base, EventBase):
        what = "an EventBase or None" if none_ok else "an EventBase"
        raise TypeError(f"{where}: base must be {what}, not {_type_name(base)}")
    if base.closed:
        raise ClosedError(f"{where}: the base is closed")
    if base.dummy:
        raise DummyHandleError(f"{where}: a dummy base has no libevent loop to run on")
    return base
