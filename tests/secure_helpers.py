"""Helpers shared by the secure-memory tests: child processes, /proc readers, raw reads."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from bitcoin_support import ffi, lib

ARENA_SIZE = int(lib.bs_pool_arena_size())
PAGE = os.sysconf("SC_PAGESIZE")
CAP_IPC_LOCK = 14
# scripts/sanitize.sh runs the suite with ASan preloaded; ASan would report a test's deliberate
# read of a freed heap block, so those tests step aside there.
SANITIZED = os.environ.get("BITCOIN_SUPPORT_SANITIZED") == "1"


def has_cap_ipc_lock() -> bool:
    """True when this process may lock memory beyond RLIMIT_MEMLOCK (root usually may)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_IPC_LOCK & 1)
    return False


def vmlck() -> int:
    """Bytes of this process's memory that the kernel holds locked."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmLck:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmLck in /proc/self/status")


def mapping_of(addr: int) -> dict[str, str] | None:
    """The /proc/self/smaps entry (its fields, plus 'range') of the mapping holding ``addr``."""
    current: dict[str, str] | None = None
    found: dict[str, str] | None = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):
                if found is not None:
                    break
                lo, hi = (int(x, 16) for x in head.split("-"))
                current = {"range": head} if lo <= addr < hi else None
                found = current
            elif current is not None:
                key, _, value = line.partition(":")
                current[key] = value.strip()
    return found


def read_at(addr: int, n: int) -> bytes:
    """Copy ``n`` bytes at a raw address; the caller makes sure they are still mapped."""
    return bytes(ffi.buffer(ffi.cast("char *", addr), n))


@contextmanager
def no_gc() -> Iterator[None]:
    """No collection meanwhile, so no finalizer frees pool memory behind the test's back."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def run_python(
    code: str,
    *,
    memlock_kib: int | None = None,
    drop_ipc_lock: bool = False,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter, optionally with a RLIMIT_MEMLOCK and without
    CAP_IPC_LOCK (which would let root ignore the limit)."""
    argv = [sys.executable, "-c", code]
    if drop_ipc_lock and os.geteuid() == 0:
        argv = ["setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock", "--", *argv]
    if memlock_kib is not None:
        argv = ["sh", "-c", f'ulimit -l {memlock_kib} && exec "$@"', "sh", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr}"
    return proc


CHILD_PRELUDE = r"""
import json, logging
from bitcoin_support import SecureAllocator, ffi, locked_pool_stats

def vmlck():
    for line in open("/proc/self/status"):
        if line.startswith("VmLck:"):
            return int(line.split()[1]) * 1024

def cap_ipc_lock():
    for line in open("/proc/self/status"):
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 14 & 1)

records = []

class Keep(logging.Handler):
    def emit(self, record):
        records.append([record.levelname, record.getMessage()])

logging.getLogger("bitcoin_support.secure_alloc").addHandler(Keep())
"""
