"""Event callbacks that close or delete what they run on: every callback kind (Python, and a C
``EventCallback`` made with ffi.callback), persistent and not, against every owner in turn (its
own event, the base's other events, the base itself). Each case runs in a child interpreter
(``event_scenarios.py``) so that a crash fails the test instead of ending the run, and finishes
with fresh events proving nothing is shared or reused: each fires once, ids are new, and the
live counts are back to where they started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from event_scenarios import ACTIONS

SCENARIOS = Path(__file__).with_name("event_scenarios.py")


def run_scenario(*args: str, timeout: float = 60) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCENARIOS), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), (
        f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    )


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("persist", ["once", "persist"])
@pytest.mark.parametrize("kind", ["py", "c"])
def test_callback_changing_its_owners(kind: str, persist: str, action: str) -> None:
    run_scenario("reentrancy", kind, persist, action)
