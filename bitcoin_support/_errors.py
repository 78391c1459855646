"""The package's exceptions (the argument checks that raise builtin ones are in ``_args.py``)."""

from __future__ import annotations


class BitcoinSupportError(Exception):
    """The base of the package's own exceptions; each also subclasses the builtin it refines,
    so callers may catch either (pynacl's pattern)."""


class ClosedError(BitcoinSupportError, ValueError):
    """A handle, block or container was used after it was closed or freed."""


class DummyHandleError(BitcoinSupportError, RuntimeError):
    """A dummy handle was asked for something that needs libevent."""
