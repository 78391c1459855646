"""Secure memory: the optimizer-proof wipe, the two allocators and the blocks they hand out.

Ownership: a ``Block`` owns its memory (``_raw``, a plain non-owning ``char *``) until ``free()``
or its finalizer gives it back to its allocator, which wipes it in C. Views are counted by the
buffer protocol itself, not by destructors: the first view makes the block's *exporter*, a
memoryview of the whole block, and every buffer handed out holds an export of it
(``ffi.from_buffer``). ``exporter.release()`` succeeds only once no such buffer is left, and
memoryview slices keep their buffer, so it answers "can a view still reach this memory?" exactly.
None of these objects has a finalizer, so a garbage collection cannot release them early.

``free()`` raises ``BufferError`` while a view is exported. A C call on a block's memory
(``memory_cleanse``; cffi lets go of the GIL around it) is counted while it runs (``_in_call``):
another thread's ``free()`` waits for it to end instead of unmapping the memory under it or
handing it out again, and a call that starts after ``free()`` began raises ``ClosedError``.
The finalizer of a block whose views are gone gives the memory back at once; otherwise (the
block and a view in one garbage cycle, or a block dropped while a view escaped) it wipes the
memory at once and puts it in *quarantine*, and the memory goes back to its allocator (wiped
again) only when its last view is gone: quarantine is checked after every garbage collection and
on every allocation and free.
``Block.cdata`` is a plain alias that owns nothing: like a C pointer, it must not be used after
``free()``.
"""

from __future__ import annotations

import errno
import gc
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, NoReturn, Protocol, final

from ._args import nonnegative_int
from ._errors import ClosedError
from ._log import secure_alloc_log
from ._native import ffi, lib

MAX_SIZE = sys.maxsize
MAX_ALIGN = 1 << 30
# Bound once: the hot paths below pay no attribute lookups on ffi and lib.
_from_buffer = ffi.from_buffer
_cleanse = lib.bs_memory_cleanse
_buffer = ffi.buffer
_new_object = object.__new__

# Memory of finalized blocks that a view could still reach: (exporter, raw, release), wiped,
# waiting for its last view to go. Appended to from finalizers (list.append is atomic), drained
# by _sweep() under a lock that is never waited for, so a collection that starts inside a sweep
# cannot deadlock on it.
_quarantine: list[tuple[memoryview, Any, Any]] = []
_sweep_lock = threading.Lock()
# Makes "is the exporter still exported? then drop it" one step, so that a view taken on another
# thread meanwhile never gets a released exporter. Reentrant: a collection may run a finalizer
# (which takes it) while this thread holds it for another block.
_export_lock = threading.RLock()
# The C calls running right now on a block's memory (memory_cleanse, which lets go of the GIL):
# a ticket for each, mapped to its block. A call files its ticket, then reads the block's
# pointer; free() clears the pointer, then waits until no ticket names the block. Whichever
# order the threads interleave in, a call either sees the pointer cleared (ClosedError) or is
# seen by free(). Each step is one dict operation, atomic under the GIL: no lock on the path.
_in_call: dict[int, Block] = {}
_next_ticket = itertools.count().__next__


def _fresh_locks_after_fork() -> None:
    # Another thread may have held either lock at fork(); in the child it never lets go. The
    # calls that thread was making do not go on in the child either.
    global _sweep_lock, _export_lock
    _sweep_lock = threading.Lock()
    _export_lock = threading.RLock()
    _in_call.clear()


os.register_at_fork(after_in_child=_fresh_locks_after_fork)


def _sweep() -> None:
    """Give back every quarantined block whose last view is gone."""
    if not _quarantine or not _sweep_lock.acquire(blocking=False):
        return
    try:
        waiting = []
        while _quarantine:
            entry = _quarantine.pop()
            try:
                entry[0].release()
            except BufferError:
                waiting.append(entry)
            else:
                entry[2](entry[1])
        _quarantine.extend(waiting)
    finally:
        _sweep_lock.release()


def _after_collection(phase: str, info: dict[str, int]) -> None:
    # A collection frees the views that sat in garbage cycles; their memory can go back now.
    if phase == "stop" and _quarantine:
        _sweep()


gc.callbacks.append(_after_collection)


class Cleansable(Protocol):
    """A package object that wipes its own bytes for memory_cleanse, holding them for the C
    call (cffi lets go of the GIL around it, and another thread could free or move them)."""

    def _wipe(self, size: int | None) -> None: ...


# The package's own types that memory_cleanse hands the wipe to (an explicit list, so that no
# outside object can hand the C wipe a pointer and a length of its choosing).
_cleansable_types: tuple[type[Cleansable], ...] = ()


def _register_cleansable(cls: type[Cleansable]) -> None:
    global _cleansable_types
    _cleansable_types = (*_cleansable_types, cls)


_CData = ffi.CData
_typeof = ffi.typeof
_sizeof = ffi.sizeof
# ffi.new() returns owning cdata of a type of their own; a pointer of that type points at the
# one item it owns. Only trusted when casts give a different type, so that a cffi without the
# distinction bounds nothing rather than too much.
_OWNING = type(ffi.new("char *"))
_OWNING_IS_DISTINCT = _OWNING is not type(ffi.cast("char *", 0))


def _cdata_target(buf: Any) -> tuple[Any, int | None]:
    """Pointer and length (None: unknown, the caller's size is trusted) of a cffi object."""
    ctype = _typeof(buf)
    kind = ctype.kind
    if kind == "array":  # ffi.new("char[16]"), ffi.from_buffer(...), slices: length known
        return buf, _sizeof(buf)
    if kind == "pointer":
        if _OWNING_IS_DISTINCT and type(buf) is _OWNING:  # ffi.new("T *"): owns one T
            return buf, _sizeof(ctype.item)
        return buf, None  # ffi.cast("char *", address): only the caller knows
    if kind in ("struct", "union"):
        return ffi.addressof(buf), _sizeof(buf)
    raise TypeError(f"buf must be a cffi pointer or array, not cdata {ctype.cname!r}")


def memory_cleanse(buf: Any, size: int | None = None) -> None:
    """Zero the first ``size`` bytes of ``buf`` (default: all of it) in C, past the optimizer.

    ``buf`` is a writable buffer, a cffi pointer or array (``size`` required; it may not exceed
    a length cffi knows), or a Block, SecureString or SerializeData of this package.
    """
    if type(buf) is bytearray and size is None:  # the common case, kept short
        _cleanse(_from_buffer(buf), len(buf))
        return
    limit: int | None
    if isinstance(buf, _CData):
        if size is None:
            raise TypeError("size is required when buf is a cffi pointer")
        ptr, limit = _cdata_target(buf)
    elif isinstance(buf, _cleansable_types):
        buf._wipe(None if size is None else _check_size(size))
        return
    else:
        if isinstance(buf, (bytes, str)):
            raise TypeError(f"buf must be a writable buffer, not {type(buf).__name__}")
        try:
            ptr = ffi.from_buffer(buf, require_writable=True)
        except (TypeError, BufferError) as exc:
            raise TypeError(f"buf must be a contiguous writable buffer: {exc}") from None
        limit = len(ptr)
    if size is not None:
        size = _check_size(size)
        if limit is None:
            if size > MAX_SIZE:
                raise ValueError(f"size {size} is larger than any buffer can be")
        else:
            size = _bounded(size, limit)
        limit = size
    if limit:
        lib.bs_memory_cleanse(ptr, limit)


def _check_size(size: int) -> int:
    return nonnegative_int("size", size)


def _bounded(size: int | None, limit: int) -> int:
    """The bytes a wipe of ``size`` (None: all) covers in a buffer of ``limit`` bytes."""
    if size is None:
        return limit
    if size > limit:
        raise ValueError(f"size {size} is larger than the buffer ({limit} bytes)")
    return size


def _check_alloc_args(size: int, align: int) -> None:
    _check_size(size)
    if not isinstance(align, int) or isinstance(align, bool):
        raise TypeError(f"align must be an int, not {type(align).__name__}")
    if align <= 0 or align & (align - 1):
        raise ValueError(f"align must be a power of two, got {align}")
    if size > MAX_SIZE:
        raise MemoryError(f"cannot allocate size {size}: larger than any allocation can be")
    if align > MAX_ALIGN:
        raise MemoryError(f"cannot satisfy align {align}: the largest supported is {MAX_ALIGN}")


@final
class Block:
    """Memory from an allocator: reads as zeros when new, wiped when freed or dropped.

    Only the allocators make blocks: calling ``Block`` raises TypeError.
    """

    __slots__ = ("__weakref__", "_allocator", "_export", "_raw", "size")

    _allocator: Allocator
    _export: memoryview | None  # made by the first view; each buffer handed out exports it
    _raw: Any
    size: int

    def __new__(cls, *args: object, **kwargs: object) -> Block:
        raise TypeError("Block cannot be created directly: use an allocator's allocate()")

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a Block cannot be copied or pickled: it alone owns its memory")

    @property
    def closed(self) -> bool:
        """True once the block has been freed."""
        return self._raw is None

    def _live(self) -> Any:
        raw = self._raw
        if raw is None:
            raise ClosedError("block is freed")
        return raw

    @property
    def cdata(self) -> Any:
        """A ``char *`` to the memory; like a C pointer it must not be used after ``free()``."""
        return ffi.cast("char *", self._live())

    @property
    def address(self) -> int:
        """The memory's address as an int."""
        return int(ffi.cast("uintptr_t", self._live()))

    def _pinned_buffer(self, n: int) -> Any:
        """A cffi buffer of the first ``n`` bytes; the block stays unfreeable while it exists."""
        with _export_lock:
            export = self._export
            if export is None:
                export = self._export = memoryview(_buffer(self._live(), self.size))
            held = _from_buffer(export)
        return _buffer(held, min(n, self.size))  # n read by a caller racing a resize: bounded

    def _exported(self) -> bool:
        """True while a buffer handed out (or a memoryview or slice of one) still exists.

        When none is left the exporter is dropped. The caller holds ``_export_lock``.
        """
        export = self._export
        if export is None:
            return False
        try:
            export.release()  # refused while any buffer holds an export of it
        except BufferError:
            return True
        self._export = None
        return False

    @contextmanager
    def view(self) -> Iterator[memoryview]:
        """A writable memoryview of exactly ``size`` bytes, released when the block ends."""
        mv = memoryview(self._pinned_buffer(self.size))
        try:
            yield mv
        finally:
            mv.release()

    def _check_unshared(self) -> None:
        """BufferError while a view of the memory is exported (it would point at freed memory)."""
        if self._export is not None:  # else no view was taken since the last check found none
            with _export_lock:
                if self._exported():
                    raise BufferError("a view of this memory is still exported")

    def free(self) -> None:
        """Wipe the memory and give it back; idempotent. BufferError while a view is exported;
        a memory_cleanse running on another thread is waited for."""
        with _export_lock:  # no view can be taken between the check and the release
            raw = self._raw
            if raw is None:
                return
            if self._export is not None and self._exported():
                raise BufferError("a view of this memory is still exported")
            self._raw = None  # calls that start from now on raise ClosedError
        while _in_call and self in list(_in_call.values()):  # a call still runs on it
            time.sleep(0.0002)
        self._allocator._release(raw)
        if _quarantine:
            _sweep()

    def __del__(self) -> None:
        raw = self._raw
        if raw is None:
            return
        self._raw = None
        with _export_lock:
            exported = self._exported()
        if exported:
            # A view still reaches the memory (both in one garbage cycle, or the view escaped):
            # wipe it now, and give it back only when the last view is gone.
            _cleanse(raw, self.size)
            assert self._export is not None
            _quarantine.append((self._export, raw, self._allocator._release))
            self._export = None
        else:
            self._allocator._release(raw)

    def _wipe(self, size: int | None) -> None:
        """memory_cleanse(block), counted as a call in flight: free() on another thread waits
        for it instead of unmapping the memory under it (or handing it out again)."""
        n = _bounded(size, self.size)
        ticket = _next_ticket()
        _in_call[ticket] = self
        try:
            raw = self._live()  # ClosedError once free() has begun
            if n:
                _cleanse(raw, n)
        finally:
            del _in_call[ticket]

    def __enter__(self) -> Block:
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()

    def __repr__(self) -> str:
        state = "freed" if self._raw is None else f"size={self.size}"
        return f"<Block {state} from {type(self._allocator).__name__}>"


_register_cleansable(Block)


class Allocator:
    """The protocol both allocators share: ``allocate(size, align)`` and ``deallocate(block)``."""

    __slots__ = ()
    _alloc: Callable[[int, int], Any]
    _release: Any

    def allocate(self, size: int, align: int = 16) -> Block:
        """A new zeroed block of ``size`` bytes aligned to ``align`` (a power of two)."""
        if type(size) is not int or type(align) is not int or align != 16 or size < 0:
            _check_alloc_args(size, align)  # the default alignment needs no further check
        elif size > MAX_SIZE:
            raise MemoryError(f"cannot allocate size {size}: larger than any allocation can be")
        if _quarantine:
            _sweep()  # memory whose last view is gone goes back first
        cls = type(self)
        raw = cls._alloc(size, align)
        if not raw:  # NULL
            err = ffi.errno
            if err == errno.EINVAL:
                raise ValueError(f"align {align} is not supported")
            raise MemoryError(f"cannot allocate size {size} (align {align}): {os.strerror(err)}")
        # The one way blocks are made: Block() itself raises TypeError.
        block: Block = _new_object(Block)
        block._allocator = self
        block._raw = raw
        block._export = None
        block.size = size
        return block

    def deallocate(self, block: Block) -> None:
        """Same as ``block.free()``; the block must come from an allocator of this kind."""
        if not isinstance(block, Block):
            raise TypeError(f"block must be a Block, not {type(block).__name__}")
        if type(block._allocator) is not type(self):
            raise ValueError("block was allocated by another kind of allocator")
        block.free()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@final
class SecureAllocator(Allocator):
    """Locked-pool memory: mlock'd, kept out of core dumps, wiped on free."""

    __slots__ = ()
    _alloc = staticmethod(lib.bs_pool_alloc)
    _release = lib.bs_pool_free


@final
class ZeroAfterFreeAllocator(Allocator):
    """Ordinary heap memory, wiped with memory_cleanse before it is freed."""

    __slots__ = ()
    _alloc = staticmethod(lib.bs_zaf_alloc)
    _release = lib.bs_zaf_free


class PoolStats(NamedTuple):
    """Occupancy of the locked pool, in bytes and chunks."""

    used: int
    free: int
    total: int
    locked: int
    chunks_used: int
    chunks_free: int


def locked_pool_stats() -> PoolStats:
    """A snapshot of the process-wide locked pool; ``locked`` counts only really locked bytes."""
    out = ffi.new("bs_pool_stats_t *")
    lib.bs_pool_get_stats(out)
    return PoolStats(out.used, out.free, out.total, out.locked, out.chunks_used, out.chunks_free)


@ffi.def_extern()  # type: ignore[untyped-decorator]
def bs_py_pool_mlock_warning(err: int, size: int) -> None:
    """The pool's first mlock failure: one WARNING per process (the C side calls this once)."""
    secure_alloc_log.warning(
        "mlock of %d bytes failed (%s); secure memory is not locked and may be swapped out: "
        "raise RLIMIT_MEMLOCK (ulimit -l) or grant CAP_IPC_LOCK",
        size,
        os.strerror(err),
    )


lib.bs_pool_set_warning_hook(lib.bs_py_pool_mlock_warning)
