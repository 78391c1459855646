"""Utilities (spec section 6): align_up and get_unique_path."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bitcoin_support import align_up, get_unique_path


@pytest.mark.parametrize(
    ("x", "align", "expected"),
    [(0, 1, 0), (0, 16, 0), (1, 16, 16), (15, 16, 16), (16, 16, 16), (17, 16, 32),
     (4095, 4096, 4096), (4097, 4096, 8192), (7, 1, 7), (2**64 + 1, 2**32, 2**64 + 2**32)],
)  # fmt: skip
def test_align_up_examples(x: int, align: int, expected: int) -> None:
    assert align_up(x, align) == expected


@given(st.integers(0, 2**70), st.integers(0, 70).map(lambda k: 1 << k))
def test_align_up_is_the_smallest_multiple_not_below_x(x: int, align: int) -> None:
    y = align_up(x, align)
    assert y % align == 0 and x <= y < x + align


@pytest.mark.parametrize(("x", "align"), [(-1, 16), (0, 0), (5, -16), (5, 3), (5, 24), (5, 48)])
def test_align_up_value_errors(x: int, align: int) -> None:
    with pytest.raises(ValueError, match=r"^(align|x) "):
        align_up(x, align)


@pytest.mark.parametrize(("x", "align"), [(1.0, 16), (1, 16.0), ("1", 16), (1, None), (True, 16)])
def test_align_up_type_errors(x: object, align: object) -> None:
    with pytest.raises(TypeError):
        align_up(x, align)  # type: ignore[arg-type]


def test_unique_path_format_and_no_file_touched(tmp_path: Path) -> None:
    for base in (tmp_path, str(tmp_path)):
        p = get_unique_path(base)
        assert isinstance(p, Path) and p.parent == tmp_path
        assert re.fullmatch(r"[0-9a-f]{8}", p.name)
        assert not p.exists()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError):
        get_unique_path(5)  # type: ignore[arg-type]


def test_unique_path_does_not_repeat_in_100000_calls() -> None:
    names = {get_unique_path("/base").name for _ in range(100_000)}
    assert len(names) == 100_000


def test_unique_paths_of_two_processes_diverge() -> None:
    code = (
        "from bitcoin_support import get_unique_path\n"
        "print(' '.join(get_unique_path('/b').name for _ in range(1000)))\n"
    )
    runs = [
        set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, timeout=60).stdout.split())
        for _ in range(2)
    ]  # fmt: skip
    assert len(runs[0]) == len(runs[1]) == 1000
    assert len(runs[0] & runs[1]) < 5  # unrelated 32-bit sequences: a clash is ~1 in 4000


def test_unique_paths_of_a_forked_child_do_not_replay_the_parents() -> None:
    # Before, a child made by os.fork() inherited the counter and the per-process mix and
    # produced exactly the names its parent produced next.
    get_unique_path("/b")  # the sequence is under way before the fork
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            names = " ".join(get_unique_path("/b").name for _ in range(1000))
            os.write(write_end, names.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        child = set(f.read().decode().split())
    os.waitpid(pid, 0)
    parent = {get_unique_path("/b").name for _ in range(1000)}
    assert len(child) == len(parent) == 1000
    assert len(child & parent) < 5  # unrelated 32-bit sequences: a clash is ~1 in 4000
