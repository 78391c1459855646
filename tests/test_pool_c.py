"""The locked pool from C (tests/c/test_pool.c): under ASan and UBSan, then under valgrind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [
    ROOT / "tests" / "c" / "test_pool.c",
    *(ROOT / "cdefs" / name for name in ("cleanse.c", "lockedpool.c", "zeroafterfree.c", "utf8.c")),
]
INCLUDES = ["-I", str(ROOT / "bitcoin_support" / "include"), "-I", str(ROOT / "cdefs")]
WARNINGS = ["-Wall", "-Wextra", "-Werror", "-std=gnu11"]

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
# The tools run without the sanitizer runtime scripts/sanitize.sh preloads into Python.
CLEAN_ENV = {
    k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")
}


def build(out: Path, *flags: str) -> Path:
    cmd = ["gcc", *WARNINGS, "-O1", "-g", *flags, *INCLUDES, *map(str, SOURCES), "-lpthread"]
    subprocess.run([*cmd, "-o", str(out)], check=True, timeout=120, env=CLEAN_ENV)
    return out


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=100, check=False, env=CLEAN_ENV
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed" in proc.stdout
    return proc


def test_pool_c_under_address_and_undefined_sanitizers(tmp_path: Path) -> None:
    exe = build(
        tmp_path / "test_pool_asan",
        "-fsanitize=address,undefined",
        "-fno-omit-frame-pointer",
        "-fno-sanitize-recover=all",
    )
    proc = run([str(exe)])
    assert "runtime error" not in proc.stderr


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind not installed")
def test_pool_c_under_valgrind(tmp_path: Path) -> None:
    exe = build(tmp_path / "test_pool")
    run(["valgrind", "-q", "--error-exitcode=1", "--leak-check=full", str(exe)])


# ---------------------------------------------------------------- one pool per process

# The embeddable library and the extension each hold a copy of the pool's code; in one process
# they must use one pool, whichever is loaded first, however each was linked or loaded (ctypes
# loads with RTLD_LOCAL: nothing can interpose on the other's symbols).
ONE_POOL_CHILD = r"""
import ctypes, importlib.machinery, importlib.util, pathlib, sys

order = sys.argv[1]
folder = pathlib.Path(importlib.util.find_spec("bitcoin_support").submodule_search_locations[0])
path = next(
    str(folder / f"_embed{s}")
    for s in importlib.machinery.EXTENSION_SUFFIXES
    if (folder / f"_embed{s}").is_file()
)
if order == "embed-first":
    embed = ctypes.CDLL(path)
from bitcoin_support import SecureAllocator, ffi, lib, locked_pool_stats
if order == "python-first":
    embed = ctypes.CDLL(path)
embed.bs_secure_allocate.restype = ctypes.c_void_p
embed.bs_secure_deallocate.argtypes = [ctypes.c_void_p]

python_block = SecureAllocator().allocate(4096)
before = locked_pool_stats().used
ptr = embed.bs_secure_allocate(256)
after = locked_pool_stats().used
assert ptr, "bs_secure_allocate failed"
# The host's chunk is one Python's pool knows: freed through the extension, it is taken back.
freed_by_python = lib.bs_pool_free(ffi.cast("void *", ptr)) == 0
back = locked_pool_stats().used
python_block.free()
print(after - before, freed_by_python, before - back)
"""


@pytest.mark.parametrize("order", ["python-first", "embed-first"])
def test_the_embeddable_library_and_python_share_one_pool(order: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", ONE_POOL_CHILD, order],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["256", "True", "0"], proc.stdout
