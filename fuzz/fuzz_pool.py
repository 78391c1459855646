"""Fuzz the locked pool with sequences of allocations and frees of every size and alignment.

Each live block carries its own fill byte; before it is freed the fill is checked (no overlap, no
stray write), and the pool's statistics must agree with the blocks alive at every step.
Run: python fuzz/fuzz_pool.py -runs=100000
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from bitcoin_support import Block, SecureAllocator, ffi, lib, locked_pool_stats

ALLOC = SecureAllocator()
ARENA = lib.bs_pool_arena_size()


def check(block: Block, fill: int) -> None:
    with block.view() as mv:
        assert mv.tobytes() == bytes([fill]) * block.size


@atheris.instrument_func
def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    base = locked_pool_stats()
    live: list[tuple[Block, int]] = []
    for step in range(fdp.ConsumeIntInRange(0, 64)):
        if live and fdp.ConsumeIntInRange(0, 2) == 0:
            block, fill = live.pop(fdp.ConsumeIntInRange(0, len(live) - 1))
            check(block, fill)
            address = block.address
            block.free()
            assert lib.bs_pool_free(ffi.cast("void *", address)) == -1  # a second free is refused
            continue
        big = fdp.ConsumeIntInRange(0, 20) == 0
        size = fdp.ConsumeIntInRange(0, 2 * ARENA if big else 600)
        align = 1 << fdp.ConsumeIntInRange(0, 13)
        block = ALLOC.allocate(size, align)
        assert block.address % max(align, 16) == 0
        with block.view() as mv:
            assert mv.tobytes() == bytes(size)  # new memory reads as zeros
            fill = (step % 255) + 1
            mv[:] = bytes([fill]) * size
        live.append((block, fill))
        stats = locked_pool_stats()
        assert stats.chunks_used == base.chunks_used + len(live)
        assert stats.used >= base.used + sum(b.size for b, _ in live)
    for block, fill in live:
        check(block, fill)
        block.free()
    after = locked_pool_stats()
    assert after.used == base.used and after.chunks_used == base.chunks_used


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
