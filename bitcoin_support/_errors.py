"""The package's exceptions, and the argument checks that raise TypeError or ValueError naming
the argument."""

from __future__ import annotations


class BitcoinSupportError(Exception):
    """The base of the package's own exceptions; each also subclasses the builtin it refines,
    so callers may catch either (pynacl's pattern)."""


class ClosedError(BitcoinSupportError, ValueError):
    """A handle, block or container was used after it was closed or freed."""


class DummyHandleError(BitcoinSupportError, RuntimeError):
    """A dummy handle was asked for something that needs libevent."""


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
