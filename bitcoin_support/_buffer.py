"""The growable, wiping byte store under SecureString and SerializeData.

Ownership: the store owns at most one Block at a time (``_block``); ``_ptr`` is a non-owning
``uint8_t *`` into it, valid until the block is replaced or freed. Growth copies into a new block
and frees the old one, which wipes it. A view exported to the caller pins the block: growth,
shrinking and close raise ``BufferError`` until it is released, as ``bytearray`` does.

Threads: every method that reads or writes the bytes, or replaces the block, runs under the
store's own lock (``_locked``). cffi lets go of the GIL around each C call (the wipe, a request
body copied in), and Python may switch threads between any two lines; under the lock neither
can let another thread free, move or shrink the bytes mid-call: it waits for the call to end.
A method never holds two stores' locks at once: bytes read from another store are taken through
its pinned ``_buffer()``, so two threads copying in opposite directions cannot deadlock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Concatenate, ParamSpec, Self, TypeVar, cast

from ._args import nonnegative_int
from ._errors import ClosedError
from ._forward import forwarding
from ._native import ffi, lib
from ._secure import Allocator, Block, _bounded, _register_cleansable

_MIN_CAPACITY = 16
_EMPTY = ffi.NULL

_S = TypeVar("_S", bound="WipingBuffer")
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locked(method: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
    """Run the method under the store's lock (see the module's "Threads"); the wrapper has the
    method's own parameters and signature (``_forward.forwarding``)."""
    return cast(Callable[Concatenate[_S, _P], _R], forwarding(method, "locked", _LOCKED, {}))


_LOCKED = """\
    with $SELF._lock:
        return $CALL
"""


class WipingBuffer:
    """Bytes in allocator memory: geometric growth, every abandoned block wiped."""

    __slots__ = ("__weakref__", "_allocator", "_block", "_closed", "_len", "_lock", "_ptr")

    def __init__(self, allocator: Allocator) -> None:
        self._allocator = allocator
        self._block: Block | None = None
        self._ptr: Any = _EMPTY
        self._len = 0
        self._closed = False
        # Re-entrant: a method may call another (extend -> _append, __setitem__ -> __delitem__).
        self._lock = threading.RLock()

    def _check(self) -> None:
        if self._closed:
            raise ClosedError(f"{type(self).__name__} is closed")

    @property
    def closed(self) -> bool:
        """True once closed: the bytes are wiped and the memory given back."""
        return self._closed

    @property
    @_locked
    def capacity(self) -> int:
        """Bytes the current block holds before the next growth."""
        self._check()
        return 0 if self._block is None else self._block.size

    def __len__(self) -> int:
        self._check()
        return self._len

    def _move_to(self, capacity: int) -> None:
        """Copy the bytes into a new block of ``capacity`` and wipe-free the old one."""
        old = self._block
        if old is not None:
            old._check_unshared()
        new = self._allocator.allocate(capacity) if capacity else None
        if new is not None and self._len:
            ffi.memmove(new._raw, self._ptr, self._len)
        self._block = new
        self._ptr = _EMPTY if new is None else ffi.cast("uint8_t *", new._raw)
        if old is not None:
            old.free()

    def _ensure(self, total: int) -> None:
        """Room for ``total`` bytes, growing geometrically (amortised O(1) appends)."""
        cap = 0 if self._block is None else self._block.size
        if total > cap:
            self._move_to(max(total, 2 * cap, _MIN_CAPACITY))

    @_locked
    def reserve(self, additional: int) -> None:
        """Capacity of at least ``len + additional`` (Rust's ``reserve``)."""
        self._check()
        self._ensure(self._len + nonnegative_int("additional", additional))

    @_locked
    def shrink_to_fit(self) -> None:
        """Move the bytes to a block of exactly their size; the old block is wiped."""
        self._check()
        if self._block is not None and self._block.size != self._len:
            self._move_to(self._len)

    def _check_resizable(self) -> None:
        """BufferError while a view is exported, as ``bytearray`` does."""
        if self._block is not None:
            self._block._check_unshared()

    @_locked
    def _append(self, data: Any, n: int) -> None:
        self._check_resizable()
        self._ensure(self._len + n)
        ffi.memmove(self._ptr + self._len, data, n)
        self._len += n

    @_locked
    def _append_from(self, n: int, fill: Callable[[Any, int], int]) -> int:
        """Room for ``n`` more bytes, ``fill(ptr, n)`` writing at most ``n`` there (a C call
        may: the lock holds the block), and the length grown by what it returns."""
        self._check()
        self._check_resizable()
        self._ensure(self._len + n)
        got = fill(self._ptr + self._len, n)
        self._len += got
        return got

    @_locked
    def _truncate(self, n: int) -> None:
        """Drop the bytes past ``n``, wiping them."""
        if n < self._len:
            self._check_resizable()
            lib.bs_memory_cleanse(self._ptr + n, self._len - n)
            self._len = n

    @_locked
    def _buffer(self) -> Any:
        """A cffi buffer of the live bytes; the block cannot be freed while it exists (growth,
        shrinking and close raise BufferError), also after the lock is let go."""
        self._check()
        block = self._block
        if block is None:
            return bytearray()
        return block._pinned_buffer(self._len)

    @contextmanager
    def _view(self, readonly: bool) -> Iterator[memoryview]:
        mv = memoryview(self._buffer())
        ro = mv.toreadonly() if readonly else mv
        try:
            yield ro
        finally:
            ro.release()
            mv.release()

    @_locked
    def _wipe(self, size: int | None) -> None:
        """memory_cleanse(store): under the lock, so growth, clear or close on another thread
        waits for the wipe instead of freeing the bytes under it."""
        self._check()
        n = _bounded(size, self._len)
        if n:
            lib.bs_memory_cleanse(self._ptr, n)

    @_locked
    def close(self) -> None:
        """Wipe and free the bytes; idempotent. BufferError while a view is exported."""
        if self._closed:
            return
        if self._block is not None:
            self._block.free()
        self._block = None
        self._ptr = _EMPTY
        self._len = 0
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            return f"{type(self).__name__}(closed)"
        return f"{type(self).__name__}(len={self._len})"

    __str__ = __repr__


_register_cleansable(WipingBuffer)
