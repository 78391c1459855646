"""The locked pool from C (tests/c/test_pool.c): under ASan and UBSan, then under valgrind."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "tests" / "c" / "test_pool.c", ROOT / "cdefs" / "secure.c"]
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
