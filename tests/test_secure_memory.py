"""Secure memory (spec section 2): memory_cleanse, allocators, blocks and the locked pool."""

from __future__ import annotations

import array
import ctypes
import gc
import itertools
import json
import mmap
import random
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)
from secure_helpers import (
    ARENA_SIZE,
    CHILD_PRELUDE,
    PAGE,
    SANITIZED,
    has_cap_ipc_lock,
    mapping_of,
    no_gc,
    read_at,
    run_python,
    vmlck,
)

from bitcoin_support import (
    Block,
    ClosedError,
    SecureAllocator,
    SecureString,
    SerializeData,
    ZeroAfterFreeAllocator,
    _native,
    ffi,
    lib,
    locked_pool_stats,
    memory_cleanse,
)

ROOT = Path(__file__).resolve().parent.parent
ALLOCATORS = [SecureAllocator(), ZeroAfterFreeAllocator()]
ALLOCATOR_IDS = ["secure", "zero_after_free"]
needs_ipc_lock = pytest.mark.skipif(
    not has_cap_ipc_lock() or SANITIZED,
    reason="cannot lock beyond RLIMIT_MEMLOCK, or ASan (which makes mlock a no-op)",
)
real_mlock = pytest.mark.skipif(SANITIZED, reason="ASan makes mlock a no-op that succeeds")


# ---------------------------------------------------------------- memory_cleanse


def _mmap_buffer(data: bytes) -> mmap.mmap:
    m = mmap.mmap(-1, len(data))
    m.write(data)
    return m


BUFFER_KINDS = {
    "bytearray": lambda d: bytearray(d),
    "memoryview": lambda d: memoryview(bytearray(d)),
    "array": lambda d: array.array("B", d),
    "array_of_ints": lambda d: array.array("i", d),
    "mmap": _mmap_buffer,
    "ctypes": lambda d: (ctypes.c_char * len(d)).from_buffer_copy(d),
}


@pytest.mark.parametrize("kind", sorted(BUFFER_KINDS))
def test_memory_cleanse_wipes_every_writable_buffer(kind: str) -> None:
    buf = BUFFER_KINDS[kind](b"\xa5" * 64)
    memory_cleanse(buf)
    assert bytes(memoryview(buf).cast("B")) == bytes(memoryview(buf).nbytes)


@pytest.mark.parametrize("kind", sorted(BUFFER_KINDS))
def test_memory_cleanse_wipes_only_the_first_size_bytes(kind: str) -> None:
    buf = BUFFER_KINDS[kind](b"\xa5" * 64)
    memory_cleanse(buf, 20)
    assert bytes(memoryview(buf).cast("B")) == bytes(20) + b"\xa5" * 44


def test_memory_cleanse_cffi_pointer_needs_a_size() -> None:
    raw = ffi.new("char[32]", b"\xa5" * 31)
    with pytest.raises(TypeError, match="size"):
        memory_cleanse(raw)
    memory_cleanse(ffi.cast("char *", raw) + 8, 16)
    assert ffi.buffer(raw)[:] == b"\xa5" * 8 + bytes(16) + b"\xa5" * 7 + b"\x00"


def test_memory_cleanse_package_objects() -> None:
    with SecureAllocator().allocate(48) as block:
        with block.view() as mv:
            mv[:] = b"\xa5" * 48
        memory_cleanse(block, 16)
        with block.view() as mv:
            assert bytes(mv) == bytes(16) + b"\xa5" * 32
        memory_cleanse(block)
        with block.view() as mv:
            assert bytes(mv) == bytes(48)
    with SecureString("correct horse") as s:
        memory_cleanse(s)
        assert s.reveal_bytes() == bytes(13)
    with SerializeData(b"battery staple") as sd:
        memory_cleanse(sd, 7)
        assert bytes(sd) == bytes(7) + b" staple"


@pytest.mark.parametrize("readonly", [b"secret", "secret", memoryview(b"secret")])
def test_memory_cleanse_read_only_buffers_are_type_errors(readonly: object) -> None:
    with pytest.raises(TypeError):
        memory_cleanse(readonly)


def test_memory_cleanse_rejects_non_buffers_and_bad_sizes() -> None:
    with pytest.raises(TypeError):
        memory_cleanse(12345)
    buf = bytearray(b"\xa5" * 8)
    with pytest.raises(ValueError, match="larger"):
        memory_cleanse(buf, 9)
    with pytest.raises(ValueError):
        memory_cleanse(buf, -1)
    with pytest.raises(TypeError):
        memory_cleanse(buf, 2.0)  # type: ignore[arg-type]
    with SecureAllocator().allocate(8) as block, pytest.raises(ValueError):
        memory_cleanse(block, 9)
    assert buf == b"\xa5" * 8


def test_memory_cleanse_size_zero_is_a_no_op() -> None:
    buf = bytearray(b"\xa5" * 8)
    memory_cleanse(buf, 0)
    memory_cleanse(bytearray())
    memory_cleanse(ffi.NULL, 0)
    assert buf == b"\xa5" * 8


def test_memory_cleanse_of_a_closed_block_is_closed_error() -> None:
    block = SecureAllocator().allocate(8)
    block.free()
    with pytest.raises(ClosedError):
        memory_cleanse(block)


def _disassembly(function: str) -> str:
    so = _native.__file__  # the module this run imported
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", so], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(rf"^[0-9a-f]+ <{function}>:\n(.*?)(?:\n\n|\Z)", out, re.S | re.M)
    assert match, f"{function} not found in {so}"
    return match.group(1)


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
def test_compiled_memory_cleanse_still_stores() -> None:
    """The optimizer kept the wipe: the shim calls memset (or stores with rep stos)."""
    body = _disassembly("bs_memory_cleanse")
    assert re.search(r"(call|jmp)\s+[0-9a-f]+ <(__asan_)?memset(@plt)?>|rep stos", body), body


# ---------------------------------------------------------------- allocators and blocks


@pytest.mark.parametrize("allocator", ALLOCATORS, ids=ALLOCATOR_IDS)
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4096, 100_000, ARENA_SIZE + 1])
def test_new_blocks_read_as_zeros_and_view_is_exactly_size(allocator, size: int) -> None:
    with allocator.allocate(size) as block:
        assert isinstance(block, Block)
        assert block.size == size and not block.closed
        assert int(ffi.cast("uintptr_t", block.cdata)) == block.address
        with block.view() as mv:
            assert len(mv) == size and not mv.readonly
            assert bytes(mv) == bytes(size)
            mv[:] = b"\xa5" * size
        with block.view() as mv:
            assert bytes(mv) == b"\xa5" * size
    assert block.closed


@pytest.mark.parametrize("allocator", ALLOCATORS, ids=ALLOCATOR_IDS)
def test_freed_memory_comes_back_as_zeros(allocator) -> None:
    for _ in range(50):
        with allocator.allocate(64) as block, block.view() as mv:
            assert bytes(mv) == bytes(64)
            mv[:] = b"\xa5" * 64


@pytest.mark.parametrize("allocator", ALLOCATORS, ids=ALLOCATOR_IDS)
def test_free_is_idempotent_and_use_after_free_is_closed_error(allocator) -> None:
    block = allocator.allocate(32)
    block.free()
    block.free()
    allocator.deallocate(block)
    assert block.closed
    for use in (
        lambda: block.address,
        lambda: block.cdata,
        lambda: block.view().__enter__(),
    ):
        with pytest.raises(ClosedError):
            use()
    assert "freed" in repr(block)


@pytest.mark.parametrize("allocator", ALLOCATORS, ids=ALLOCATOR_IDS)
def test_deallocate_frees(allocator) -> None:
    block = allocator.allocate(32)
    allocator.deallocate(block)
    assert block.closed


def test_deallocate_with_the_wrong_allocator_is_refused() -> None:
    with SecureAllocator().allocate(32) as block:
        with pytest.raises(ValueError, match="another"):
            ZeroAfterFreeAllocator().deallocate(block)
        assert not block.closed
    with pytest.raises(TypeError):
        SecureAllocator().deallocate(bytearray(4))  # type: ignore[arg-type]


@pytest.mark.parametrize("allocator", ALLOCATORS, ids=ALLOCATOR_IDS)
def test_bad_arguments(allocator) -> None:
    with pytest.raises(ValueError):
        allocator.allocate(-1)
    for align in (0, -16, 3, 24, 48):
        with pytest.raises(ValueError, match="power of two"):
            allocator.allocate(16, align)
    with pytest.raises(TypeError):
        allocator.allocate(1.5)
    with pytest.raises(TypeError):
        allocator.allocate(16, "16")


@pytest.mark.parametrize("allocator", ALLOCATORS, ids=ALLOCATOR_IDS)
@pytest.mark.parametrize("size", [2**62, sys.maxsize, 2**64])
def test_huge_sizes_are_memory_errors(allocator, size: int) -> None:
    before = locked_pool_stats()
    with pytest.raises(MemoryError):
        allocator.allocate(size)
    assert locked_pool_stats() == before


@pytest.mark.parametrize("allocator", ALLOCATORS, ids=ALLOCATOR_IDS)
@pytest.mark.parametrize("align", [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 65536])
def test_alignment_is_honoured(allocator, align: int) -> None:
    blocks = [allocator.allocate(size, align) for size in (1, 40, 5000)]
    try:
        for block in blocks:
            assert block.address % max(align, 16) == 0
    finally:
        for block in blocks:
            block.free()


@pytest.mark.parametrize("allocator", ALLOCATORS, ids=ALLOCATOR_IDS)
def test_free_while_a_view_is_exported_is_buffer_error(allocator) -> None:
    block = allocator.allocate(32)
    with block.view() as mv:
        with pytest.raises(BufferError):
            block.free()
        mv[0] = 1  # still valid memory
    assert not block.closed
    block.free()
    assert block.closed


def test_a_view_that_escapes_its_with_block_is_released() -> None:
    with SecureAllocator().allocate(16) as block:
        with block.view() as mv:
            pass
        with pytest.raises(ValueError):
            mv[0]


def test_finalizer_wipes_a_dropped_secure_block() -> None:
    allocator = SecureAllocator()
    with no_gc():
        # The pool only unmaps an arena when it is empty (beyond one spare) and stats.total
        # would then drop; the pin keeps this arena in use, and with gc off no other finalizer
        # runs meanwhile, so the dropped block's address stays mapped and readable after free.
        block = allocator.allocate(64)
        pin = allocator.allocate(64)
        with block.view() as mv:
            mv[:] = b"\xa5" * 64
        addr = block.address
        before = locked_pool_stats()
        del block  # last reference: the cffi finalizer gives the chunk back, wiped
        after = locked_pool_stats()
        assert after.chunks_used == before.chunks_used - 1
        assert after.total == before.total
        assert read_at(addr, 64) == bytes(64)
        pin.free()


@pytest.mark.skipif(SANITIZED, reason="reads a freed heap block, which ASan reports")
def test_finalizer_wipes_a_dropped_heap_block() -> None:
    with no_gc():
        # A small malloc'd block stays in the heap (glibc unmaps only huge ones); the allocator
        # may write its free-list links into the first bytes, and another allocation may take
        # the chunk, but the pattern itself must be gone.
        block = ZeroAfterFreeAllocator().allocate(512)
        with block.view() as mv:
            mv[:] = b"\xa5" * 512
        addr = block.address
        del block
        assert b"\xa5" * 16 not in read_at(addr, 512)


def test_allocators_compare_by_kind() -> None:
    assert SecureAllocator() == SecureAllocator()
    assert SecureAllocator() != ZeroAfterFreeAllocator()
    assert len({SecureAllocator(), SecureAllocator()}) == 1


# ---------------------------------------------------------------- the locked pool


def _expected_used(size: int, align: int) -> tuple[int, bool]:
    """Bytes the pool books for a request, and whether it gets a dedicated mapping."""
    units = max(1, -(-size // 16))
    align_units = max(align, 16) // 16
    if size > ARENA_SIZE or units + align_units - 1 > ARENA_SIZE // 16:
        return max(1, -(-size // PAGE)) * PAGE, True  # the alignment slack is not kept
    return units * 16, False


VMLCK_CHILD = (
    CHILD_PRELUDE
    + r"""
steps = [[vmlck(), locked_pool_stats().locked]]
keep = []
for n in (32, 100_000, 200_000, 200_000, 1 << 20):
    keep.append(SecureAllocator().allocate(n))
    steps.append([vmlck(), locked_pool_stats().locked])
keep.pop().free()
steps.append([vmlck(), locked_pool_stats().locked])
print(json.dumps(steps))
"""
)


@needs_ipc_lock
def test_vmlck_rises_with_locked_allocations_and_matches_stats() -> None:
    steps = json.loads(run_python(VMLCK_CHILD).stdout)
    assert steps[0] == [0, 0]
    for vm, locked in steps:
        assert vm == locked
    locked = [s[1] for s in steps]
    # 32 B opens an arena; 100 kB fits in it; each 200 kB needs a new arena; 1 MiB is dedicated.
    assert locked[1:6] == [
        ARENA_SIZE,
        ARENA_SIZE,
        2 * ARENA_SIZE,
        3 * ARENA_SIZE,
        3 * ARENA_SIZE + (1 << 20),
    ]
    assert locked[6] == 3 * ARENA_SIZE


@needs_ipc_lock
def test_arena_mapping_is_locked_and_kept_out_of_core_dumps() -> None:
    with SecureAllocator().allocate(32) as block:
        smaps = mapping_of(block.address)
        assert smaps is not None
        flags = smaps["VmFlags"].split()
        assert "lo" in flags and "dd" in flags, smaps["VmFlags"]
        assert int(smaps["Locked"].split()[0]) * 1024 >= ARENA_SIZE


@needs_ipc_lock
def test_a_request_larger_than_an_arena_gets_its_own_locked_mapping() -> None:
    size = 3 * ARENA_SIZE + 5
    mapped = -(-size // PAGE) * PAGE
    with no_gc():
        before = locked_pool_stats()
        vm_before = vmlck()
        block = SecureAllocator().allocate(size)
        during = locked_pool_stats()
        assert during.total - before.total == mapped
        assert during.used - before.used == mapped
        assert during.locked - before.locked == mapped
        assert during.free == before.free
        assert during.chunks_used == before.chunks_used + 1
        assert vmlck() - vm_before == mapped
        smaps = mapping_of(block.address)
        assert smaps is not None and {"lo", "dd"} <= set(smaps["VmFlags"].split())
        with block.view() as mv:
            mv[-1] = 0xA5
        addr = block.address
        block.free()
        assert locked_pool_stats() == before
        assert vmlck() == vm_before
        gone = mapping_of(addr)
        assert gone is None or "lo" not in gone["VmFlags"].split()


def test_double_free_and_foreign_pointers_are_refused_without_damage() -> None:
    pin = lib.bs_pool_alloc(64, 16)
    victim = lib.bs_pool_alloc(64, 16)
    big = lib.bs_pool_alloc(ARENA_SIZE * 2, 16)
    assert pin != ffi.NULL and victim != ffi.NULL and big != ffi.NULL
    ffi.memmove(pin, b"\xa5" * 64, 64)
    assert lib.bs_pool_free(victim) == 0
    before = locked_pool_stats()
    heap = ffi.new("char[64]")
    for bad in (victim, pin + 16, pin + 1, pin + 63, big + 16, heap, ffi.NULL):
        assert lib.bs_pool_free(bad) == -1
    assert locked_pool_stats() == before
    assert ffi.buffer(pin, 64)[:] == b"\xa5" * 64
    again = lib.bs_pool_alloc(64, 16)  # the books still work
    assert ffi.buffer(again, 64)[:] == bytes(64)
    for p in (again, pin, big):
        assert lib.bs_pool_free(p) == 0
    assert lib.bs_pool_free(big) == -1


def test_empty_arenas_are_released_beyond_one_spare() -> None:
    allocator = SecureAllocator()
    with no_gc():
        before = locked_pool_stats()
        whole = [allocator.allocate(ARENA_SIZE) for _ in range(3)]  # one arena each
        full = locked_pool_stats()
        assert full.used - before.used == 3 * ARENA_SIZE
        for block in whole:
            block.free()
        after = locked_pool_stats()
        assert full.total - after.total == 2 * ARENA_SIZE  # two released, one spare kept
        assert after.used == before.used
        with allocator.allocate(ARENA_SIZE):
            assert locked_pool_stats().total == after.total  # the spare is reused


def test_freed_chunk_in_a_live_arena_reads_back_as_zeros() -> None:
    with no_gc():
        # The pin keeps the arena in use, so the freed chunk stays mapped (total unchanged).
        victim = lib.bs_pool_alloc(256, 16)
        pin = lib.bs_pool_alloc(16, 16)
        ffi.memmove(victim, b"\xa5" * 256, 256)
        addr = int(ffi.cast("uintptr_t", victim))
        total = locked_pool_stats().total
        assert lib.bs_pool_free(victim) == 0
        assert locked_pool_stats().total == total
        assert read_at(addr, 256) == bytes(256)
        assert lib.bs_pool_free(pin) == 0


SECRETS_CHILD = (
    CHILD_PRELUDE
    + r"""
allocator = SecureAllocator()
secrets = [allocator.allocate(32) for _ in range(100_000)]
s = locked_pool_stats()
print(json.dumps(dict(stats=s._asdict(), vmlck=vmlck(), records=records, cap=cap_ipc_lock(),
                      distinct=len({b.address for b in secrets}))))
"""
)


@real_mlock
def test_100000_secrets_fit_and_are_all_locked_without_cap_ipc_lock() -> None:
    out = json.loads(run_python(SECRETS_CHILD, memlock_kib=8192, drop_ipc_lock=True).stdout)
    assert out["cap"] is False
    stats = out["stats"]
    assert out["distinct"] == 100_000
    assert stats["used"] == 100_000 * 32 and stats["chunks_used"] == 100_000
    assert stats["total"] <= 8 * 1024 * 1024
    assert stats["locked"] == stats["total"] == out["vmlck"]
    assert out["records"] == []


LOW_LIMIT_CHILD = (
    CHILD_PRELUDE
    + r"""
allocator = SecureAllocator()
keep = [allocator.allocate(200_000) for _ in range(3)]  # three arenas
keep.append(allocator.allocate(300_000))  # a dedicated mapping
victim = allocator.allocate(64)
pin = allocator.allocate(64)  # same arena as victim: it stays mapped
with victim.view() as mv:
    mv[:] = b"\xa5" * 64
addr = victim.address
victim.free()
wiped = bytes(ffi.buffer(ffi.cast("char *", addr), 64)) == bytes(64)
print(json.dumps(dict(stats=locked_pool_stats()._asdict(), vmlck=vmlck(), records=records,
                      cap=cap_ipc_lock(), wiped=wiped)))
"""
)


@real_mlock
@pytest.mark.parametrize(("limit_kib", "lockable_arenas"), [(0, 0), (64, 0), (300, 1)])
def test_mlock_failure_still_allocates_warns_once_and_wipes(
    limit_kib: int, lockable_arenas: int
) -> None:
    proc = run_python(LOW_LIMIT_CHILD, memlock_kib=limit_kib, drop_ipc_lock=True)
    out = json.loads(proc.stdout)
    assert out["cap"] is False
    stats = out["stats"]
    assert stats["chunks_used"] == 5
    assert stats["total"] == 3 * ARENA_SIZE + -(-300_000 // PAGE) * PAGE
    assert stats["locked"] == lockable_arenas * ARENA_SIZE == out["vmlck"]
    assert len(out["records"]) == 1, out["records"]
    level, message = out["records"][0]
    assert level == "WARNING" and "RLIMIT_MEMLOCK" in message
    assert out["wiped"] is True
    assert "mlock" not in proc.stderr  # no second report through the C fallback


FORK_CHILD = (
    CHILD_PRELUDE
    + r"""
import os, traceback
allocator = SecureAllocator()
secret = allocator.allocate(32)
with secret.view() as mv:
    mv[:] = bytes(range(32))
pid = os.fork()
if pid == 0:
    try:
        with secret.view() as mv:
            assert bytes(mv) == bytes(range(32)), "the child has a copy of the parent's secret"
        for _ in range(100):
            blocks = [allocator.allocate(n) for n in (16, 1000, 70_000, 300_000)]
            for b in blocks:
                with b.view() as mv:
                    assert not any(mv)
                b.free()
        s = locked_pool_stats()
        assert s.used == 32 and s.chunks_used == 1, s
        if os.environ.get("BITCOIN_SUPPORT_SANITIZED") != "1":  # ASan fakes mlock
            assert vmlck() == s.locked, (vmlck(), s)
        secret.free()
        assert locked_pool_stats().used == 0
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)
_, status = os.waitpid(pid, 0)
with secret.view() as mv:
    intact = bytes(mv) == bytes(range(32))
print(json.dumps(dict(child=os.waitstatus_to_exitcode(status), intact=intact,
                      used=locked_pool_stats().used)))
"""
)


def test_fork_child_uses_the_pool_and_sees_copies_of_the_parents_secrets() -> None:
    proc = run_python(FORK_CHILD)
    out = json.loads(proc.stdout)
    assert out == {"child": 0, "intact": True, "used": 32}, proc.stderr


# ---------------------------------------------------------------- model-based test of the pool


def _pattern(tag: int, size: int) -> bytes:
    seed = tag.to_bytes(8, "little")
    return (seed * (size // 8 + 1))[:size]


SIZES = st.one_of(
    st.integers(0, 64),
    st.integers(65, 4096),
    st.integers(4097, ARENA_SIZE),
    st.integers(ARENA_SIZE + 1, ARENA_SIZE + 3 * PAGE),
)
ALIGNS = st.sampled_from([1, 16, 32, 64, 256, 4096, 8192, 65536])


class LockedPoolMachine(RuleBasedStateMachine):
    """The pool against a model: what is live, what it should book, what each block holds."""

    blocks = Bundle("blocks")

    def __init__(self) -> None:
        super().__init__()
        gc.collect()
        self.allocator = SecureAllocator()
        self.base = locked_pool_stats()
        self.live: dict[int, tuple[Block, bytes, int]] = {}
        self.tags = 0

    @rule(target=blocks, size=SIZES, align=ALIGNS)
    def allocate(self, size: int, align: int) -> int:
        block = self.allocator.allocate(size, align)
        assert block.address % max(align, 16) == 0
        self.tags += 1
        pattern = _pattern(self.tags, size)
        with block.view() as mv:
            assert len(mv) == size and not any(mv)
            mv[:] = pattern
        self.live[self.tags] = (block, pattern, _expected_used(size, align)[0])
        return self.tags

    @rule(tag=consumes(blocks))
    def free(self, tag: int) -> None:
        block, pattern, _ = self.live.pop(tag)
        with block.view() as mv:
            assert bytes(mv) == pattern
        block.free()
        block.free()

    @invariant()
    def stats_match_the_model(self) -> None:
        s = locked_pool_stats()
        assert s.used - self.base.used == sum(used for _, _, used in self.live.values())
        assert s.chunks_used - self.base.chunks_used == len(self.live)
        assert s.total == s.used + s.free
        if has_cap_ipc_lock() and not SANITIZED:
            assert s.locked == s.total

    @invariant()
    def blocks_do_not_overlap(self) -> None:
        spans = sorted((b.address, b.address + max(b.size, 1)) for b, _, _ in self.live.values())
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start

    def teardown(self) -> None:
        for block, pattern, _ in self.live.values():
            with block.view() as mv:
                assert bytes(mv) == pattern
            block.free()
        s = locked_pool_stats()
        assert (s.used, s.chunks_used) == (self.base.used, self.base.chunks_used)


LockedPoolMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_locked_pool_model = LockedPoolMachine.TestCase


def test_locked_pool_four_thread_stress() -> None:
    gc.collect()
    base = locked_pool_stats()
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        allocator = SecureAllocator()
        live: list[tuple[Block, bytes]] = []
        try:
            for step in range(2500):
                if live and (len(live) > 60 or rng.random() < 0.45):
                    block, pattern = live.pop(rng.randrange(len(live)))
                    with block.view() as mv:
                        assert bytes(mv) == pattern
                    block.free()
                else:
                    size = rng.choice((rng.randrange(1, 64), rng.randrange(64, 3000)))
                    block = allocator.allocate(size, rng.choice((16, 64, 1024)))
                    pattern = _pattern(seed << 32 | step, size)
                    with block.view() as mv:
                        assert not any(mv)
                        mv[:] = pattern
                    live.append((block, pattern))
            for block, pattern in live:
                with block.view() as mv:
                    assert bytes(mv) == pattern
                block.free()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    s = locked_pool_stats()
    assert (s.used, s.chunks_used) == (base.used, base.chunks_used)
    assert s.total == s.used + s.free
    assert s.total - base.total <= ARENA_SIZE  # at most the kept spare beyond the start


def test_locked_pool_stats_is_a_named_tuple() -> None:
    s = locked_pool_stats()
    assert s._fields == ("used", "free", "total", "locked", "chunks_used", "chunks_free")
    assert all(isinstance(v, int) and v >= 0 for v in s)


def test_bare_c_entry_points_agree_with_the_pool() -> None:
    p = lib.bs_secure_allocate(40)
    assert p != ffi.NULL and int(ffi.cast("uintptr_t", p)) % 16 == 0
    assert ffi.buffer(ffi.cast("char *", p), 40)[:] == bytes(40)
    before = locked_pool_stats()
    lib.bs_secure_deallocate(p)
    lib.bs_secure_deallocate(ffi.NULL)
    assert locked_pool_stats().chunks_used == before.chunks_used - 1


def test_views_from_many_threads_leave_no_pin_behind() -> None:
    block = SecureAllocator().allocate(64)
    errors: list[BaseException] = []

    def viewer() -> None:
        try:
            for _ in range(5000):
                with block.view() as mv:
                    mv[0] = 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=viewer) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []
    block._check_unshared()  # no view is left
    block.free()  # no view is left, so this must not raise BufferError
    assert block.closed


# ---------------------------------------------------------------- views in garbage cycles

CYCLE_CHILD = r"""
import gc, json, sys
from bitcoin_support import SecureAllocator, ZeroAfterFreeAllocator, locked_pool_stats

kind, size = sys.argv[1], int(sys.argv[2])
alloc = SecureAllocator() if kind == "secure" else ZeroAfterFreeAllocator()


class Holder:  # holds the block and a slice of its view, in a cycle with itself
    pass


class Toucher:  # a finalizer in the same garbage that reads and writes the stale slice
    def __del__(self):
        h = self.holder
        seen["block_finalized_first"] = h.block.closed
        seen["read"] = bytes(h.slice).hex()
        # Memory handed out meanwhile must not be what the slice reaches.
        fresh = alloc.allocate(size)
        h.slice[:] = b"\xa5" * len(h.slice)
        with fresh.view() as mv:
            seen["fresh_zero"] = not any(mv)
        fresh.free()


def build(toucher_first):
    if toucher_first:
        t = Toucher()
    block = alloc.allocate(size)
    with block.view() as mv:
        mv[:] = b"\x11" * size
        h = Holder()
        h.slice = mv[1:]
    h.block, h.me = block, h
    if not toucher_first:
        t = Toucher()
    t.holder, h.toucher = h, t


out = []
gc.collect()
gc.disable()
before = locked_pool_stats()
for toucher_first in (True, False):
    seen = {}
    build(toucher_first)
    gc.collect()
    after = alloc.allocate(size)  # the next block of this size: the stale slice wrote 0xa5
    with after.view() as mv:
        seen["next_zero"] = not any(mv)
    after.free()
    now = locked_pool_stats()
    seen["pool_back"] = (now.used, now.chunks_used) == (before.used, before.chunks_used)
    out.append(seen)
print(json.dumps(out))
"""


@pytest.mark.parametrize(
    ("kind", "size"),
    [("secure", 64), ("secure", 3 * ARENA_SIZE + 5), ("zero_after_free", 64),
     ("zero_after_free", 1 << 20)],
    ids=["pool_chunk", "dedicated_mapping", "heap_small", "heap_large"],
)  # fmt: skip
def test_block_and_view_slice_in_one_garbage_cycle(kind: str, size: int) -> None:
    # Before the fix the block's finalizer freed the memory while the slice still existed:
    # SIGSEGV for a dedicated mapping, a dirty chunk handed out again for the pool. Each run
    # is a child process, so a crash fails the test instead of the suite.
    runs = json.loads(run_python(CYCLE_CHILD.replace("sys.argv[1], int(sys.argv[2])",
                                                     f"{kind!r}, {size}")).stdout)  # fmt: skip
    # Both finalizer orders happened: the toucher before and after the block's finalizer.
    assert {run["block_finalized_first"] for run in runs} == {True, False}
    for run in runs:
        assert run["fresh_zero"] and run["next_zero"] and run["pool_back"], run
        expected = bytes(size - 1) if run["block_finalized_first"] else b"\x11" * (size - 1)
        assert run["read"] == expected.hex()  # wiped at once by the block's finalizer


@pytest.mark.parametrize("allocator", ALLOCATORS, ids=ALLOCATOR_IDS)
def test_dropped_block_with_an_escaped_slice_is_wiped_and_held_until_the_slice_goes(
    allocator,
) -> None:
    with no_gc():
        before = locked_pool_stats()
        block = allocator.allocate(64)
        with block.view() as mv:
            mv[:] = b"\x11" * 64
            stale = mv[8:]
        addr = block.address
        del block, mv
        assert bytes(stale) == bytes(56)  # wiped at once
        stale[:] = b"\xa5" * 56
        others = [allocator.allocate(64) for _ in range(8)]
        for other in others:  # the held memory is not handed out again meanwhile
            assert other.address != addr
            with other.view() as view:
                assert not any(view)
            other.free()
        del stale
        with allocator.allocate(64) as again, again.view() as view:
            assert not any(view)
        now = locked_pool_stats()  # given back once the slice was gone
        assert (now.used, now.chunks_used) == (before.used, before.chunks_used)


def test_serialize_data_and_its_view_slice_in_one_garbage_cycle() -> None:
    code = r"""
import gc
from bitcoin_support import SecureAllocator, SerializeData

class Holder:
    def __del__(self):
        self.slice[:] = b"\xa5" * len(self.slice)  # may run after the block's finalizer

gc.disable()
for i in range(6):
    sd = SerializeData.new_in(SecureAllocator())
    if i % 2:
        sd.extend(b"\x11" * 3_000_000)  # grows into a dedicated mapping
    h = Holder()  # made after or before the block, so its finalizer runs after or before
    if not i % 2:
        sd.extend(b"\x11" * 3_000_000)
    h.sd = sd
    with h.sd.view() as mv:
        h.slice = mv[1:]
    h.me = h
    del h, sd
    gc.collect()
print("ok")
"""
    assert run_python(code).stdout.strip() == "ok"


# ---------------------------------------------------------------- only allocators make blocks


BLOCK_FORGERY_CHILD = r"""
import copy, pickle
from bitcoin_support import Block, SecureAllocator, ZeroAfterFreeAllocator, ffi

results = []
for allocator in (ZeroAfterFreeAllocator(), SecureAllocator()):
    junk = ffi.new("char[64]")
    for make in (
        lambda: Block(allocator, ffi.cast("char *", junk) + 32, 16),
        lambda: Block(allocator, ffi.NULL, 0),
        lambda: Block(),
        lambda: Block.__new__(Block),
    ):
        try:
            block = make()
        except TypeError as exc:
            results.append("Block" in str(exc))
        else:
            results.append(False)
            try:
                block.free()  # aborted in bs_zaf_free before: the heap never gave that pointer
            except Exception:
                pass
    real = allocator.allocate(32)
    for dup in (copy.copy, copy.deepcopy, lambda b: pickle.loads(pickle.dumps(b))):
        try:
            dup(real)
        except TypeError:
            results.append(True)
        else:  # a second block on the same memory: a double free
            results.append(False)
    real.free()
print(all(results), results)
"""


def test_only_the_allocators_make_blocks() -> None:
    # Before, Block(allocator, pointer, size) made a block from any pointer: freeing it aborted
    # the interpreter in bs_zaf_free (ZeroAfterFree); copy.copy(block) made a second owner of
    # the same memory. The child process keeps an abort from killing the suite.
    out = run_python(BLOCK_FORGERY_CHILD).stdout.split(None, 1)
    assert out[0] == "True", out[1]
    assert isinstance(SecureAllocator().allocate(1), Block)  # still the annotation and the type


# ---------------------------------------------------------------- memory_cleanse of cffi objects


KNOWN_LENGTH_CDATA = r"""
from bitcoin_support import ffi
backing = bytearray(b"\xa5" * 24)
array16 = ffi.new("char[16]", b"\xa5" * 16)  # slices and items do not keep their owner alive
stats = ffi.new("bs_pool_stats_t *", [1, 2, 3, 4, 5, 6])
known = [
    (ffi.new("char[16]", b"\xa5" * 16), 16),
    (ffi.new("int[3]", [-1, -1, -1]), 12),
    (ffi.new("int *", -1), 4),
    (ffi.new("bs_pool_stats_t *", [1, 2, 3, 4, 5, 6]), ffi.sizeof("bs_pool_stats_t")),
    (ffi.from_buffer(backing), 24),
    (array16[4:12], 8),
    (stats[0], ffi.sizeof("bs_pool_stats_t")),
]
"""


def test_memory_cleanse_is_bounded_by_a_length_cffi_knows() -> None:
    # Before, memory_cleanse(ffi.new("char[16]"), 1 << 24) wiped 16 MiB from a 16-byte array:
    # SIGSEGV. Every oversized call runs in a child process so that it cannot take the suite.
    code = KNOWN_LENGTH_CDATA + (
        "from bitcoin_support import memory_cleanse\n"
        "out = []\n"
        "for cdata, length in known:\n"
        "    for size in (length + 1, 1 << 24):\n"
        "        try:\n"
        "            memory_cleanse(cdata, size)\n"
        "        except ValueError as exc:\n"
        "            out.append('size' in str(exc))\n"
        "        else:\n"
        "            out.append(False)\n"
        "print(all(out), out)\n"
    )
    assert run_python(code).stdout.split(None, 1)[0] == "True"


def test_memory_cleanse_cffi_objects_with_a_known_length_wipes_them_whole() -> None:
    scope: dict[str, object] = {}
    exec(KNOWN_LENGTH_CDATA, scope)
    for cdata, length in scope["known"]:  # type: ignore[attr-defined]
        address = ffi.addressof(cdata) if ffi.typeof(cdata).kind == "struct" else cdata
        assert ffi.buffer(address, length)[:] != bytes(length)
        memory_cleanse(cdata, length)
        assert ffi.buffer(address, length)[:] == bytes(length)


def test_memory_cleanse_cffi_struct_and_plain_pointers() -> None:
    stats = ffi.new("bs_pool_stats_t *", [1, 2, 3, 4, 5, 6])
    with pytest.raises(ValueError, match="size"):
        memory_cleanse(stats[0], ffi.sizeof("bs_pool_stats_t") + 1)
    memory_cleanse(stats[0], ffi.sizeof("bs_pool_stats_t"))  # a struct by value: its own bytes
    assert (stats.used, stats.chunks_free) == (0, 0)
    raw = ffi.new("char[32]", b"\xa5" * 31)
    memory_cleanse(ffi.cast("char *", raw), 32)  # a cast pointer: cffi knows no length
    assert ffi.buffer(raw)[:] == bytes(32)


@pytest.mark.parametrize(
    ("buf", "size", "exc"),
    [
        (lambda: ffi.cast("int", 3), 4, TypeError),  # not a pointer or array
        (lambda: ffi.cast("void(*)(void)", 0), 1, TypeError),
        (lambda: ffi.new("char[4]"), None, TypeError),  # size required for cffi objects
        (lambda: ffi.new("char[4]"), True, TypeError),
        (lambda: ffi.new("char[4]"), float("nan"), TypeError),
        (lambda: ffi.new("char[4]"), 4.0, TypeError),
        (lambda: ffi.new("char[4]"), -1, ValueError),
        (lambda: ffi.cast("char *", 0), 2**64, ValueError),  # would overflow size_t
        (lambda: ffi.cast("char *", 0), -5, ValueError),
        (lambda: bytearray(4), 2**100, ValueError),
        (lambda: memoryview(bytearray(8))[::2], None, TypeError),  # not contiguous
        (lambda: None, None, TypeError),
        (lambda: 1.5, None, TypeError),
        (lambda: [0, 0], None, TypeError),
    ],
)  # fmt: skip
def test_memory_cleanse_bad_input_raises(buf, size, exc) -> None:
    with pytest.raises(exc, match=r"\b(buf|size)\b"):
        memory_cleanse(buf(), size)


def test_memory_cleanse_trusts_only_package_objects() -> None:
    # Any object with a _cleanse_target method was trusted before: this one crashed the
    # interpreter with SIGSEGV (hence the child process). The package's objects now wipe
    # themselves (_wipe): an outside one with that name is no more trusted.
    code = (
        "from bitcoin_support import ffi, lib, memory_cleanse\n"
        "class Impostor:\n"
        "    def _cleanse_target(self):\n"
        "        return ffi.cast('char *', 8), 1 << 20\n"
        "    def _wipe(self, size):\n"
        "        lib.bs_memory_cleanse(ffi.cast('char *', 8), 1 << 20)\n"
        "try:\n"
        "    memory_cleanse(Impostor())\n"
        "except TypeError as exc:\n"
        "    print('TypeError', 'buf' in str(exc))\n"
    )
    assert run_python(code).stdout.split() == ["TypeError", "True"]


# ---------------------------------------------------------------- alignment: address space only


ALIGN_CHILD = (
    CHILD_PRELUDE
    + r"""
import sys
sys.path.insert(0, TESTS)
from secure_helpers import PAGE, mapping_of
out = []
for size, align in ((1, 1 << 30), (5000, 1 << 24), (3 * 262144 + 5, 1 << 21), (0, 1 << 20)):
    before = vmlck()
    block = SecureAllocator().allocate(size, align)
    smaps = mapping_of(block.address)
    kib = lambda field: int(smaps[field].split()[0]) * 1024
    out.append(dict(size=size, align=align, aligned=block.address % align == 0,
                    vmlck=vmlck() - before, mapped=kib("Size"), locked=kib("Locked"),
                    pool=locked_pool_stats().locked, lo="lo" in smaps["VmFlags"].split()))
    block.free()
print(json.dumps(out))
"""
)


@real_mlock
def test_alignment_is_paid_in_address_space_not_locked_memory() -> None:
    # Before, allocate(1, 2**30) kept 1 GiB (+ a page) mapped and locked for one byte.
    proc = run_python(f"TESTS = {str(ROOT / 'tests')!r}\n" + ALIGN_CHILD)
    for r in json.loads(proc.stdout):
        limit = max(1, -(-r["size"] // PAGE)) * PAGE + PAGE  # whole pages plus one page
        assert r["aligned"] and r["lo"], r
        assert r["vmlck"] <= limit and r["pool"] <= limit, r
        # The mapping holding the block: at most that, unless the kernel merged it with a
        # neighbour of the same kind (then it is still far below the alignment).
        assert r["locked"] <= limit and r["mapped"] < r["align"], r


MAX_ALIGN = 1 << 30  # the largest alignment the allocators take (README)


@pytest.mark.parametrize("allocator", ALLOCATORS, ids=ALLOCATOR_IDS)
def test_alignment_bounds(allocator) -> None:
    for align in (MAX_ALIGN * 2, 2**64, 2**200):
        with pytest.raises(MemoryError, match="align"):
            allocator.allocate(16, align)
    with allocator.allocate(16, MAX_ALIGN) as block:
        assert block.address % MAX_ALIGN == 0
    for align in (0, -(2**40), 3, 2**40 + 1, 6):
        with pytest.raises(ValueError, match="align"):
            allocator.allocate(16, align)
    for align in (True, 16.0, float("nan"), "16", None):
        with pytest.raises(TypeError, match="align"):
            allocator.allocate(16, align)
    for size in (True, False, 1.0, float("nan"), "1", None, b"1"):
        with pytest.raises(TypeError, match="size"):
            allocator.allocate(size)
    for size in (-1, -(2**70)):
        with pytest.raises(ValueError, match="size"):
            allocator.allocate(size)
    for size in (2**63, 2**64, 2**200):
        with pytest.raises(MemoryError, match="size"):
            allocator.allocate(size, 4096)


# ---------------------------------------------------------------- bad input everywhere

BAD_INPUT_CHILD = r"""
import copy, pickle
from bitcoin_support import *

values = [True, False, -1, 0, 1, 2**47, 2**63, 2**64, 2**200, -2**70, 1.5, float("nan"),
          float("inf"), "x", b"x", None, [], [300], object(), bytearray(b"ab"),
          memoryview(b"ro"), memoryview(bytearray(8))[::2], ffi.NULL, ffi.cast("char *", 0),
          ffi.new("char[4]"), ffi.cast("int", 7)]
allowed = (TypeError, ValueError, MemoryError, IndexError, BufferError)
wrong = []

def attempt(what, fn):
    try:
        fn()
    except allowed:
        pass
    except BaseException as exc:
        wrong.append(f"{what}: {exc!r}")

for allocator in (SecureAllocator(), ZeroAfterFreeAllocator()):
    for v in values:
        attempt(f"allocate({v!r})", lambda: allocator.allocate(v).free())
        attempt(f"allocate(16, {v!r})", lambda: allocator.allocate(16, v).free())
        attempt(f"deallocate({v!r})", lambda: allocator.deallocate(v))
for v in values:
    attempt(f"memory_cleanse({v!r})", lambda: memory_cleanse(v))
    for w in values:
        attempt(f"memory_cleanse({v!r}, {w!r})", lambda: memory_cleanse(v, w))
    attempt(f"Block({v!r})", lambda: Block(SecureAllocator(), v, 16))
    attempt(f"SecureString({v!r})", lambda: SecureString(v))
    attempt(f"SecureString.take({v!r})", lambda: SecureString.take(v))
    s = SecureString("h\u00e9llo")
    for name in ("push_str", "push", "reserve", "__eq__"):
        attempt(f"SecureString.{name}({v!r})", lambda: getattr(s, name)(v))
    attempt(f"SerializeData({v!r})", lambda: SerializeData(v))
    attempt(f"SerializeData.new_in({v!r})", lambda: SerializeData.new_in(v))
    sd = SerializeData(b"abcdef")
    for name in ("append", "extend", "resize", "reserve", "__getitem__", "__delitem__",
                 "__eq__", "__iadd__", "hex"):
        attempt(f"SerializeData.{name}({v!r})", lambda: getattr(sd, name)(v))
    attempt(f"sd[{v!r}] = 1", lambda: sd.__setitem__(v, 1))
    attempt(f"sd[0] = {v!r}", lambda: sd.__setitem__(0, v))
    attempt(f"sd[0:2] = {v!r}", lambda: sd.__setitem__(slice(0, 2), v))
block = SecureAllocator().allocate(8)
for dup in (copy.copy, copy.deepcopy, pickle.dumps):
    attempt(f"{dup.__name__}(block)", lambda: dup(block))
print(len(wrong))
print("\n".join(wrong[:20]))
"""


def test_bad_input_to_the_secure_memory_entry_points_never_crashes() -> None:
    # A child process, so that a crash fails this test rather than the suite.
    out = run_python(BAD_INPUT_CHILD, timeout=120).stdout
    assert out.split("\n", 1)[0] == "0", out


def test_views_and_resizes_on_two_threads() -> None:
    # A resize asks whether a view is exported (and drops the exporter when none is) while
    # another thread takes views: the view must never get a released exporter.
    sd = SerializeData(b"\xa5" * 64)
    errors: list[BaseException] = []
    done = threading.Event()

    def viewer() -> None:
        try:
            for _ in range(3000):
                with sd.view() as mv:
                    mv[0] = 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            done.set()

    def resizer() -> None:
        while not done.is_set():
            try:
                sd.append(1)
                sd.resize(64)
            except BufferError:
                pass
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                return

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=viewer), threading.Thread(target=resizer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []
    sd.close()


FORK_WHILE_LOCKED_CHILD = r"""
import os, signal, threading, time
import bitcoin_support._secure as secure
from bitcoin_support import SecureAllocator

block = SecureAllocator().allocate(32)
held, release = threading.Event(), threading.Event()

def holder():
    with secure._export_lock:  # as a thread taking a view at the moment of fork() would
        held.set()
        release.wait()

t = threading.Thread(target=holder)
t.start()
held.wait()
pid = os.fork()
if pid == 0:
    try:
        with block.view() as mv:  # hung before: the lock's owner does not exist here
            mv[0] = 1
        block.free()
    finally:
        os._exit(0)
release.set()
t.join()
for _ in range(200):  # up to 10 s, then the child is taken as hung and killed
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print(os.waitstatus_to_exitcode(status))
        break
    time.sleep(0.05)
else:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    print("hung")
"""


def test_a_child_forked_while_another_thread_takes_a_view_can_take_views() -> None:
    # Before, the child hung on the lock held by a thread that does not exist after fork().
    assert run_python(FORK_WHILE_LOCKED_CHILD, timeout=30).stdout.strip() == "0"
