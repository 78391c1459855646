"""Bounded fuzz runs in CI: each target replays its regressions, then runs a fixed count."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
RUNS = {
    "fuzz_containers": 20000,
    "fuzz_pool": 8000,
    "fuzz_http": 1500,
    "fuzz_framing": 20000,
    "fuzz_framing_h11": 5000,
}


def targets() -> list[str]:
    return sorted(p.stem for p in FUZZ.glob("fuzz_*.py"))


@pytest.mark.parametrize("target", targets())
def test_fuzz_target_bounded_run(target: str) -> None:
    regressions = sorted((FUZZ / "regressions" / target.removeprefix("fuzz_")).glob("*"))
    args = [sys.executable, str(FUZZ / f"{target}.py"), "-seed=1", "-max_total_time=60"]
    dictionary = FUZZ / f"{target.removeprefix('fuzz_')}.dict"
    if dictionary.exists():
        args.append(f"-dict={dictionary}")
    if regressions:
        replay = subprocess.run(
            [*args, *map(str, regressions)], capture_output=True, text=True, timeout=120
        )
        assert replay.returncode == 0, replay.stderr[-3000:]
    run = subprocess.run(
        [*args, f"-runs={RUNS.get(target, 5000)}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/tmp",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "DONE" in run.stderr or "Done" in run.stderr
