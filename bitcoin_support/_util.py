"""Small utilities: alignment arithmetic and collision-free scratch paths."""

from __future__ import annotations

import itertools
import os
import secrets
import threading
from pathlib import Path


def align_up(x: int, align: int) -> int:
    """The smallest multiple of ``align`` (a power of two) that is ``>= x``."""
    for name, value in (("x", x), ("align", align)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if x < 0:
        raise ValueError(f"x must be >= 0, got {x}")
    if align <= 0 or align & (align - 1):
        raise ValueError(f"align must be a power of two, got {align}")
    return (x + align - 1) & ~(align - 1)


# A per-process random offset and odd multiplier turn a counter into 32-bit names: the map
# n -> (n * mult + offset) mod 2**32 is a bijection, so a process repeats no name before 2**32
# calls, and two processes start from unrelated points of unrelated sequences. A child made by
# fork() inherits all three, so it draws a fresh sequence: at fork (os.register_at_fork), and
# on its first call if it was forked behind Python's back (the pid changed).
_lock = threading.Lock()


def _reseed() -> None:
    global _OFFSET, _MULT, _counter, _pid, _lock
    _OFFSET = secrets.randbits(32)
    _MULT = secrets.randbits(32) | 1
    _counter = itertools.count()
    _pid = os.getpid()
    _lock = threading.Lock()  # another thread may have held the parent's at fork


_OFFSET = _MULT = _pid = 0
_counter = itertools.count()
_reseed()
os.register_at_fork(after_in_child=_reseed)


def get_unique_path(base: str | Path) -> Path:
    """``base / <8 lowercase hex chars>``, distinct on every call; touches no file."""
    if not isinstance(base, (str, Path)):
        raise TypeError(f"base must be a str or Path, not {type(base).__name__}")
    if os.getpid() != _pid:
        _reseed()
    with _lock:
        n = next(_counter)
        name = (n * _MULT + _OFFSET) & 0xFFFFFFFF
    return Path(base) / f"{name:08x}"
