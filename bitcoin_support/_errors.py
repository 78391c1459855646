"""The package's exceptions: each subclasses the builtin a caller would catch anyway."""

from __future__ import annotations


class ClosedError(ValueError):
    """A handle, block or container was used after it was closed or freed."""


class DummyHandleError(RuntimeError):
    """A dummy handle was asked for something that needs libevent."""
