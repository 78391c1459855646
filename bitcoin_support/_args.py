"""Argument checks shared by the handle rooms: ints in a range, seconds, text and bodies for C.

Each check names the call and the argument (``Type.method: name ...``) and returns the value in
the form C wants, or raises TypeError / ValueError.
"""

from __future__ import annotations

from typing import Any

from ._errors import type_name as _type_name
from ._native import ffi
from ._serialize import SerializeData

_NULL = ffi.NULL


def _check_int(where: str, name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: {name} must be an int, not {_type_name(value)}")
    if not low <= value <= high:
        raise ValueError(f"{where}: {name} must be in [{low}, {high}], got {value}")
    return value


def _seconds(where: str, seconds: object) -> Any:
    """A ``struct timeval *`` for a positive number of seconds."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"{where}: seconds must be a number, not {_type_name(seconds)}")
    if not 0 < seconds < 2**31:
        raise ValueError(f"{where}: seconds must be > 0, got {seconds}")
    tv = ffi.new("struct timeval *")
    whole = int(seconds)
    tv.tv_sec = whole
    tv.tv_usec = round((seconds - whole) * 1_000_000)
    return tv


def _text_arg(where: str, name: str, value: object) -> bytes:
    """A str or bytes argument as bytes for C, without NUL, CR or LF (no injection)."""
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogateescape")
    elif isinstance(value, bytes):
        data = value
    else:
        raise TypeError(f"{where}: {name} must be str or bytes, not {_type_name(value)}")
    if b"\r" in data or b"\n" in data or b"\0" in data:
        raise ValueError(f"{where}: {name} must not contain CR, LF or NUL")
    return data


def _body_arg(where: str, data: object) -> tuple[Any, int]:
    """A C pointer (or bytes) and length for any bytes-like object or a SerializeData."""
    if type(data) is bytes:
        return data, len(data)
    if isinstance(data, str):
        raise TypeError(f"{where}: body must be bytes-like, not str")
    if isinstance(data, SerializeData):
        data = data._buffer()
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{where}: body must be bytes-like, not {_type_name(data)}") from None
    with view:
        n = view.nbytes
    if n == 0:
        return _NULL, 0
    return ffi.from_buffer("char[]", data, require_writable=False), n
