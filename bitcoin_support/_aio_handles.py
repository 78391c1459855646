"""asyncio's ``Handle`` and ``TimerHandle`` made and run the fast way, for ``aio.EventLoop``'s
hot path (``_aio_loop``): filled slot by slot where their slots are CPython's, and a callback's
exception handed on as ``Handle._run`` hands it on."""

from __future__ import annotations

import asyncio
import contextvars
import sys
from asyncio import format_helpers as _format_helpers
from typing import Any, Final

__all__ = [
    "FAST_HANDLES",
    "INLINE_RUN",
    "callback_failed",
    "copy_context",
    "new_timer",
    "object_new",
]

_Handle: Final = asyncio.Handle
_TimerHandle: Final = asyncio.TimerHandle

# asyncio.TimerHandle's slots (CPython 3.11's), all of which _new_timer_fast fills.
_TIMER_SLOTS: Final = frozenset(
    {
        *("_callback", "_args", "_cancelled", "_loop", "_source_traceback", "_repr"),
        *("__weakref__", "_context", "_scheduled", "_when"),
    }
)
object_new: Final = object.__new__
copy_context: Final = contextvars.copy_context


def _new_timer_fast(
    when: float, callback: Any, args: Any, loop: Any, context: Any
) -> asyncio.TimerHandle:
    """``asyncio.TimerHandle(when, callback, args, loop, context)`` for a loop not in debug
    mode, without its two ``__init__`` frames and ``loop.get_debug()``: half the cost."""
    timer: Any = object_new(_TimerHandle)
    timer._callback = callback
    timer._args = args
    timer._cancelled = False
    timer._loop = loop
    timer._source_traceback = None
    timer._repr = None
    timer._context = copy_context() if context is None else context
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
new_timer: Final = _new_timer_fast if _slots(_TimerHandle) == _TIMER_SLOTS else _TimerHandle
# The same for Handle (call_soon fills its slots inline).
FAST_HANDLES: Final = _slots(_Handle) == _TIMER_SLOTS - {"_scheduled", "_when"}


# _run_once runs asyncio's Handle._run inline where it is CPython 3.11's (3.12 has the same):
# its try block, and on an exception the same context for the exception handler.
INLINE_RUN: Final = sys.version_info[:2] in ((3, 11), (3, 12)) and _TimerHandle._run is _Handle._run


def callback_failed(handle: Any, exc: BaseException) -> None:
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
