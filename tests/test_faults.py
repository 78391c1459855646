"""Fault injection: the package under failing mmap and fork keeps its promises and its process."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from bitcoin_support import (
    EVLOOP_NONBLOCK,
    LibEvent,
    SecureAllocator,
    SecureString,
    live_counts,
    locked_pool_stats,
    obtain_event,
    obtain_event_base,
)


def run_child(code: str, *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter and return what it printed."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.skipif(
    os.environ.get("BITCOIN_SUPPORT_SANITIZED") == "1",
    reason="AddressSanitizer reserves terabytes of shadow memory and cannot run under RLIMIT_AS",
)
def test_mmap_failure_is_a_clear_memory_error_and_the_pool_lives_on() -> None:
    out = run_child(
        """
        import resource
        from bitcoin_support import SecureAllocator, ZeroAfterFreeAllocator, locked_pool_stats
        alloc = SecureAllocator()
        keep = alloc.allocate(64)
        with keep.view() as mv:
            mv[:] = b"k" * 64
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, hard))
        for allocator in (alloc, ZeroAfterFreeAllocator()):
            try:
                allocator.allocate(2 << 30)
            except MemoryError as exc:
                print("MemoryError", type(allocator).__name__, exc)
        # Exhaust the address space with arenas, then give it all back.
        blocks = []
        try:
            while True:
                blocks.append(alloc.allocate(200 * 1024))
        except MemoryError:
            print("arenas exhausted after", len(blocks))
        for b in blocks:
            b.free()
        with keep.view() as mv:
            print("kept intact", mv.tobytes() == b"k" * 64)
        small = alloc.allocate(32)
        print("still allocates", small.size)
        small.free()
        keep.free()
        print("used after", locked_pool_stats().used)
        """
    )
    assert out.returncode == 0, out.stderr
    assert "MemoryError SecureAllocator" in out.stdout
    assert "MemoryError ZeroAfterFreeAllocator" in out.stdout
    assert "arenas exhausted after" in out.stdout
    assert "kept intact True" in out.stdout
    assert "still allocates 32" in out.stdout
    assert "used after 0" in out.stdout


def test_fork_child_uses_the_pool_and_sees_copied_secrets() -> None:
    secret = SecureString("parent secret")
    block = SecureAllocator().allocate(48)
    with block.view() as mv:
        mv[:5] = b"abcde"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not crash on pool use; the parent's secrets are copies here
        try:
            os.close(r)
            copied = secret == "parent secret"
            with block.view() as mv:
                copied = copied and mv[:5].tobytes() == b"abcde"
            mine = SecureAllocator().allocate(1000)
            mine.free()
            secret.close()
            block.free()
            ok = copied and locked_pool_stats().chunks_used >= 0
            os.write(w, b"ok" if ok else b"bad")
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        answer = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer == b"ok"
    # The parent's copies are untouched by what the child freed.
    assert secret == "parent secret"
    with block.view() as mv:
        assert mv[:5].tobytes() == b"abcde"
    secret.close()
    block.free()


def test_fork_child_relocks_the_arenas() -> None:
    block = SecureAllocator().allocate(32)
    out = run_child(
        """
        import os
        from bitcoin_support import SecureAllocator, locked_pool_stats
        keep = SecureAllocator().allocate(32)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            s = locked_pool_stats()
            vmlck = [l for l in open("/proc/self/status") if l.startswith("VmLck")][0]
            os.write(w, f"{s.locked} {s.total} {vmlck.split()[1]}".encode())
            os._exit(0)
        os.waitpid(pid, 0)
        print(os.read(r, 100).decode())
        """
    )
    block.free()
    assert out.returncode == 0, out.stderr
    locked, total, vmlck_kib = map(int, out.stdout.split())
    assert total > 0
    if os.environ.get("BITCOIN_SUPPORT_SANITIZED") != "1":  # ASan turns mlock into a no-op
        assert locked == total
        assert vmlck_kib * 1024 >= locked


def test_exception_storm_every_error_accounted_for_and_no_handle_leaks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    n = 10_000
    before = live_counts()
    base = obtain_event_base()

    def boom(ev: LibEvent, i: int) -> None:
        raise ValueError(i)

    events = [obtain_event(base, -1, 0, boom, i) for i in range(n)]
    for ev in events:
        ev.active()
    reraised: list[int] = []
    with caplog.at_level(logging.ERROR, logger="bitcoin_support.events"):
        for _ in range(2 * n):
            try:
                base.loop(EVLOOP_NONBLOCK)
            except ValueError as exc:
                reraised.append(exc.args[0])
            if len(reraised) + len(caplog.records) >= n:
                break
    logged = [r.exc_info[1].args[0] for r in caplog.records if r.exc_info and r.exc_info[1]]
    assert len(reraised) + len(logged) == n
    assert sorted(reraised + logged) == list(range(n))  # each exactly once
    assert len(reraised) >= 1
    del events
    gc.collect()
    base.close()
    assert live_counts() == before
