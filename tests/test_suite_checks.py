"""The checks this suite runs around every test (``conftest.py``, ``pyproject.toml``): a test
that leaves handles open fails, unless marked ``keeps_handles`` with a reason, and a handle
dropped open fails the test that dropped it (its ResourceWarning is an error). Runs a small
suite in a child pytest with the same conftest and settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

SUITE = """
import pytest
import bitcoin_support as bs

KEPT = []


def test_leaves_a_base_open():
    KEPT.append(bs.obtain_event_base())


def test_closes_what_it_opens():
    with bs.obtain_event_base() as b:
        ev = bs.obtain_event(b, -1, 0, lambda ev, arg: None)
    assert ev.closed


@pytest.mark.keeps_handles(reason="kept for a later test")
def test_keeps_a_base_on_purpose():
    KEPT.append(bs.obtain_event_base())


@pytest.mark.keeps_handles
def test_keeps_without_a_reason():
    pass


def test_drops_a_base_open():
    b = bs.obtain_event_base()
    del b


def test_lets_a_fired_timer_go():
    with bs.obtain_event_base() as b:
        bs.obtain_event(b, -1, 0, lambda ev, arg: None).add(0)
        b.dispatch()


@pytest.mark.keeps_handles(reason="closes the bases kept above")
def test_closes_the_kept_bases():
    for b in KEPT:
        b.close()
"""


def test_the_suite_fails_leaks_and_drops_and_honours_the_marker(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    (tmp_path / "test_child.py").write_text(SUITE)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            "-p",
            "no:cacheprovider",
            "-rA",
            "test_child.py",
        ],
        cwd=tmp_path,
        env={**_env(), "PYTHONPATH": str(TESTS)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout
    outcome = {}
    for line in out.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED", "ERROR") and rest.startswith("test_child.py::"):
            name = rest.removeprefix("test_child.py::").split(" ")[0]
            outcome.setdefault(name, []).append((word, rest))
    assert {n: [w for w, _ in v] for n, v in outcome.items()} == {
        "test_leaves_a_base_open": ["PASSED", "ERROR"],  # the call passed, the check did not
        "test_closes_what_it_opens": ["PASSED"],
        "test_keeps_a_base_on_purpose": ["PASSED"],
        "test_keeps_without_a_reason": ["ERROR"],
        "test_drops_a_base_open": ["FAILED"],
        "test_lets_a_fired_timer_go": ["PASSED"],
        "test_closes_the_kept_bases": ["PASSED"],
    }, out
    assert "live handles changed during the test: {'EventBase': 1}" in out
    assert "keeps_handles needs a reason=" in out
    assert "ResourceWarning: unclosed <EventBase id=" in out


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
