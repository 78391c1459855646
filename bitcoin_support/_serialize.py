"""SerializeData: a bytearray-like buffer in wipe-on-free memory, for serialization."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any, SupportsIndex, final, overload

from ._args import BODY_VIEWS, nonnegative_int
from ._buffer import WipingBuffer, _locked
from ._native import ffi, lib
from ._secure import Allocator, ZeroAfterFreeAllocator


def _as_bytes_like(data: Any, what: str) -> memoryview:
    """A byte-format view of ``data``, or TypeError naming ``what``."""
    if isinstance(data, str):
        raise TypeError(f"{what} must be bytes-like, not str")
    if isinstance(data, SerializeData):
        data = data._buffer()
    try:
        return memoryview(data).cast("B")
    except TypeError:
        raise TypeError(f"{what} must be bytes-like, not {type(data).__name__}") from None


@final
class SerializeData(WipingBuffer):
    """Growable bytes (``Vec<u8, ZeroAfterFreeAllocator>``): every block it leaves is wiped."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, initial: Any = b"", *, allocator: Allocator | None = None) -> None:
        super().__init__(allocator if allocator is not None else ZeroAfterFreeAllocator())
        if not isinstance(self._allocator, Allocator):
            raise TypeError(f"allocator must be an allocator, not {type(allocator).__name__}")
        self._extend(initial, "initial")

    @classmethod
    def new_in(cls, allocator: Allocator) -> SerializeData:
        """An empty buffer whose memory comes from ``allocator``."""
        return cls(allocator=allocator)

    # -- reading

    def _index(self, i: SupportsIndex) -> int:
        i = operator.index(i)
        n = self._len
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("SerializeData index out of range")
        return i

    @overload
    def __getitem__(self, key: SupportsIndex) -> int: ...
    @overload
    def __getitem__(self, key: slice) -> bytes: ...
    @_locked
    def __getitem__(self, key: SupportsIndex | slice) -> int | bytes:
        self._check()
        if isinstance(key, slice):
            with memoryview(self._buffer()) as mv:
                return mv[key].tobytes()
        return int(self._ptr[self._index(key)])

    def __iter__(self) -> Iterator[int]:
        self._check()
        i = 0
        while True:  # reads in place, one byte at a time under the lock: no copy of the bytes
            with self._lock:
                self._check()
                if i >= self._len:
                    return
                byte = int(self._ptr[i])
            yield byte
            i += 1

    def __bytes__(self) -> bytes:
        return bytes(self._buffer())

    def hex(self, *args: Any) -> str:
        """Hexadecimal text of the bytes, as ``bytes.hex``."""
        with memoryview(self._buffer()) as mv:
            return mv.hex(*args)

    def __eq__(self, other: object) -> bool:
        self._check()
        if isinstance(other, str):
            return False
        try:
            theirs = _as_bytes_like(other, "other")
        except TypeError:
            return NotImplemented
        with memoryview(self._buffer()) as mine, theirs:
            return mine == theirs

    # -- writing

    def __setitem__(self, key: SupportsIndex | slice, value: Any) -> None:
        self._check()
        if not isinstance(key, slice):
            self._set_byte(key, _check_byte(value))
            return
        # A wiped copy of the value, so that value may be this buffer itself; made before this
        # buffer's lock is taken, as value may be another buffer (one lock at a time).
        with SerializeData(value) as src:
            self._set_slice(key, src)

    @_locked
    def _set_byte(self, key: SupportsIndex, value: int) -> None:
        self._check()
        self._ptr[self._index(key)] = value

    @_locked
    def _set_slice(self, key: slice, src: SerializeData) -> None:
        self._check()
        start, stop, step = key.indices(self._len)
        if step != 1 and not src._len:
            del self[key]  # as bytearray: an empty value deletes an extended slice
        elif step != 1:
            with memoryview(self._buffer()) as mv, src._view(readonly=True) as data:
                mv[key] = data  # extended slices keep their length, as in bytearray
        else:
            self._replace(start, max(start, stop), src._ptr, src._len)

    def _replace(self, start: int, stop: int, data: Any, m: int) -> None:
        """Put ``m`` bytes from ``data`` where ``[start, stop)`` was, moving the tail in place."""
        old_len = self._len
        new_len = old_len - (stop - start) + m
        if new_len != old_len:
            self._check_resizable()
        self._ensure(new_len)
        ptr = self._ptr
        ffi.memmove(ptr + start + m, ptr + stop, old_len - stop)
        ffi.memmove(ptr + start, data, m)
        self._len = new_len
        if new_len < old_len:
            lib.bs_memory_cleanse(ptr + new_len, old_len - new_len)

    @_locked
    def __delitem__(self, key: SupportsIndex | slice) -> None:
        self._check()
        if not isinstance(key, slice):
            i = self._index(key)
            key = slice(i, i + 1)
        start, stop, step = key.indices(self._len)
        if step == 1:
            self._replace(start, max(start, stop), ffi.NULL, 0)
            return
        gone = set(range(start, stop, step))
        if gone:
            self._check_resizable()  # before any byte moves
        ptr = self._ptr
        kept = 0
        for i in range(self._len):
            if i not in gone:
                ptr[kept] = ptr[i]
                kept += 1
        self._truncate(kept)

    @_locked
    def append(self, byte: int) -> None:
        """Add one byte at the end."""
        self._check()
        byte = _check_byte(byte)
        self._check_resizable()
        self._ensure(self._len + 1)
        self._ptr[self._len] = byte
        self._len += 1

    def extend(self, data: Any) -> None:
        """Add bytes at the end: any bytes-like object, or an iterable of ints."""
        self._extend(data, "data")

    def _extend(self, data: Any, what: str) -> None:
        self._check()
        if isinstance(data, SerializeData):
            # Straight from its memory: going through bytes() would leave an unwiped copy.
            if data is self:
                with SerializeData(self) as copy:  # growth would free what is being read
                    self.extend(copy)
                return
        elif isinstance(data, Iterable) and not _is_buffer(data) and not isinstance(data, str):
            data = bytes(data)
        # A SerializeData's bytes come pinned (its _buffer()), taken before this buffer's lock.
        with _as_bytes_like(data, what) as src:
            n = src.nbytes
            if n:
                with ffi.from_buffer(src) as p:
                    self._append(p, n)

    def __iadd__(self, data: Any) -> SerializeData:
        self.extend(data)
        return self

    @_locked
    def clear(self) -> None:
        """Wipe every byte and set the length to 0 (capacity is kept)."""
        self._check()
        self._truncate(0)

    @_locked
    def resize(self, n: int) -> None:
        """Set the length to ``n``: new bytes are zero, dropped bytes are wiped."""
        self._check()
        n = nonnegative_int("n", n)
        if n < self._len:
            self._truncate(n)
        elif n > self._len:
            self._check_resizable()
            self._ensure(n)
            self._len = n  # free space in a block is always zero

    def view(self) -> AbstractContextManager[memoryview]:
        """A writable memoryview of the bytes, no copy; resizing raises BufferError meanwhile."""
        return self._view(readonly=False)

    def __reduce__(self) -> tuple[Any, ...]:
        return (SerializeData, (bytes(self),))


BODY_VIEWS[SerializeData] = SerializeData._buffer  # a reply body may be one (_args._body_arg)


def _check_byte(value: Any) -> int:
    """A byte value, with bytearray's exceptions: TypeError for a non-int, else ValueError."""
    if not isinstance(value, int):
        raise TypeError(f"a byte must be an int, not {type(value).__name__}")
    if not 0 <= value <= 255:
        raise ValueError("byte must be in range(0, 256)")
    return value


def _is_buffer(obj: object) -> bool:
    try:
        memoryview(obj).release()  # type: ignore[arg-type]
    except TypeError:
        return False
    return True
