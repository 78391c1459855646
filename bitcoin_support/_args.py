"""The one home of argument checks (pynacl's ``ensure`` style): ints in a range, sizes, seconds,
C callbacks and their ``arg``, text and bodies for C, and the OSError of a failed C call.

Each check names the call and the argument (``Type.method: name ...``) and returns the value in
the form C wants, or raises TypeError / ValueError. Only ``_native`` is below this module, so
every other one, the secure-memory ones included, may import it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Final

from ._native import ffi

_NULL = ffi.NULL
_VOID_P: Final = ffi.typeof("void *")
_ADDRESS_LIMIT: Final = 2 ** (8 * ffi.sizeof("void *"))

# Types whose bytes a body is read through (the method that gives them), not through the buffer
# protocol: SerializeData adds itself in _serialize.py, which this module is below.
BODY_VIEWS: dict[type, Callable[[Any], object]] = {}


def type_name(obj: object) -> str:
    """The name of ``obj``'s type, for messages about a bad argument."""
    return type(obj).__name__


def nonnegative_int(name: str, value: object) -> int:
    """``value`` if it is an int >= 0 (bool excluded), else TypeError or ValueError naming it."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type_name(value)}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _check_int(where: str, name: str, value: object, low: int, high: int) -> int:
    """``value`` if it is an int in [low, high] (bool excluded)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: {name} must be an int, not {type_name(value)}")
    if not low <= value <= high:
        raise ValueError(f"{where}: {name} must be in [{low}, {high}], got {value}")
    return value


MAX_SECONDS: Final = float(2**31)


def _seconds(where: str, name: str, value: object, *, zero: bool) -> float:
    """Seconds as a float up to 2**31; 0 only where ``zero`` (an event's "at once").

    The one conversion to libevent's ``struct timeval`` is C's (``bs_to_timeval`` in event.c),
    for the event timeouts and the evhttp ones alike.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{where}: {name} must be seconds (int or float), not {type_name(value)}")
    seconds = float(value)
    low_ok = seconds >= 0.0 if zero else seconds > 0.0
    if not (low_ok and seconds <= MAX_SECONDS):  # also refuses NaN
        bound = ">= 0" if zero else "> 0"
        raise ValueError(
            f"{where}: {name} must be {bound} and at most 2**31 seconds, got {value!r}"
        )
    return seconds


def _oserror(where: str, err: int | None = None) -> OSError:
    """An OSError for a failed C call, from ``err`` or the errno C left."""
    code = (ffi.errno if err is None else err) or 0
    return OSError(code, f"{where}: {os.strerror(code) if code else 'libevent refused'}")


def _c_callback(where: str, cb: Any, arg: object, ctype: Any, shape: str) -> tuple[Any, Any]:
    """A C callback of type ``ctype`` (``void (*)(X *, void *)``, spelled ``shape`` in messages)
    from any cffi function or function pointer of that shape, and its ``arg`` as ``void *``."""
    t = ffi.typeof(cb)
    if t != ctype:
        fn = t.item if t.kind == "pointer" else t
        if (
            fn.kind != "function"
            or fn.ellipsis
            or len(fn.args) != 2
            or fn.result.cname != "void"
            or any(a.kind != "pointer" for a in fn.args)
        ):
            raise TypeError(
                f"{where}: cb must be a Python callable or a C function pointer {shape}, "
                f"not {t.cname}"
            )
        cb = ffi.cast(ctype, cb)
    if cb == _NULL:
        raise ValueError(f"{where}: cb is a NULL function pointer")
    if arg is None:
        return cb, _NULL
    if isinstance(arg, ffi.CData) and ffi.typeof(arg).kind in ("pointer", "array"):
        return cb, ffi.cast(_VOID_P, arg)
    if isinstance(arg, int) and not isinstance(arg, bool) and 0 <= arg < _ADDRESS_LIMIT:
        return cb, ffi.cast(_VOID_P, arg)
    raise TypeError(
        f"{where}: arg of a C callback must be None, a cffi pointer or an int address, "
        f"not {type_name(arg)}"
    )


def _text_arg(where: str, name: str, value: object) -> bytes:
    """A str or bytes argument as bytes for C, without NUL, CR or LF (no injection)."""
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogateescape")
    elif isinstance(value, bytes):
        data = value
    else:
        raise TypeError(f"{where}: {name} must be str or bytes, not {type_name(value)}")
    if b"\r" in data or b"\n" in data or b"\0" in data:
        raise ValueError(f"{where}: {name} must not contain CR, LF or NUL")
    return data


def _body_arg(where: str, data: object) -> tuple[Any, int]:
    """A C pointer (or bytes) and length for any bytes-like object or a SerializeData
    (``BODY_VIEWS``)."""
    if type(data) is bytes:
        return data, len(data)
    if isinstance(data, str):
        raise TypeError(f"{where}: body must be bytes-like, not str")
    view_of = BODY_VIEWS.get(type(data))
    if view_of is not None:  # a SerializeData: its bytes, pinned
        data = view_of(data)
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{where}: body must be bytes-like, not {type_name(data)}") from None
    with view:
        n = view.nbytes
    if n == 0:
        return _NULL, 0
    return ffi.from_buffer("char[]", data, require_writable=False), n


def _address_arg(where: str, ptr: int | Any) -> int:
    """The address of a C object given as an int or a cffi pointer; TypeError/ValueError."""
    if isinstance(ptr, ffi.CData):
        if ffi.typeof(ptr).kind != "pointer":
            raise TypeError(
                f"{where}: ptr must be a pointer or an int address, not {ffi.typeof(ptr).cname}"
            )
        address = int(ffi.cast("uintptr_t", ptr))
    elif isinstance(ptr, int) and not isinstance(ptr, bool):
        address = ptr
    else:
        raise TypeError(
            f"{where}: ptr must be an int address or a cffi pointer, not {type_name(ptr)}"
        )
    if address <= 0 or address >= 2 ** (8 * ffi.sizeof("void *")):
        raise ValueError(f"{where}: ptr must be a non-NULL address, got {ptr!r}")
    return address
