"""CPython's asyncio conformance mixins against ``aio.EventLoop``, one subprocess per mixin.

Each mixin runs in ``tests/aio_conformance.py`` under a time limit (and each of its tests under
an alarm), so a hung or crashing test fails its mixin here instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
RUNNER = HERE / "aio_conformance.py"

# Tests of a mixin that may fail on this loop, with the reason (docs/asyncio.md lists them too).
# Only tests that inspect a private attribute of asyncio's own selector loop may be listed.
EXPECTED_NOT_PASSED: dict[str, dict[str, str]] = {
    "events": {},
    "sock_lowlevel": {},
    "server": {},
    "buffered_proto": {},
    "sendfile": {},
    "subprocess": {},
    "subprocess_pidfd": {},
    "streams": {},
}

# How many tests each mixin has on the Pythons the test command runs (3.11 here, 3.13 in
# scripts/py313.sh); other versions ship other test lists and are only checked for failures.
EXPECTED_RUN = {
    (3, 11): {
        "events": 73,
        "sock_lowlevel": 13,
        "server": 1,
        "buffered_proto": 1,
        "sendfile": 20,
        "subprocess": 29,
        "subprocess_pidfd": 29,
        "streams": 67,
    },
    (3, 13): {
        "events": 75,
        "sock_lowlevel": 13,
        "server": 1,
        "buffered_proto": 1,
        "sendfile": 20,
        "subprocess": 35,
        "subprocess_pidfd": 35,
        "streams": 74,
    },
}

try:
    import test.test_asyncio.utils  # noqa: F401

    HAVE_TESTS = True
except ImportError:
    HAVE_TESTS = False


@pytest.mark.skipif(
    not HAVE_TESTS,
    reason="this Python has no test.test_asyncio (Debian: apt-get install "
    f"libpython{sys.version_info[0]}.{sys.version_info[1]}-testsuite)",
)
@pytest.mark.timeout(660)
@pytest.mark.parametrize("mixin", sorted(EXPECTED_NOT_PASSED))
def test_cpython_conformance(mixin: str) -> None:
    env = dict(os.environ, PYTHONASYNCIODEBUG="", PYTHONWARNINGS="")
    try:
        proc = subprocess.run(
            [sys.executable, str(RUNNER), mixin],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            cwd=HERE.parent,
        )
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-4000:]
        pytest.fail(f"{mixin}: the conformance run hung (600 s); stderr tail:\n{tail!r}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"{mixin}: no result (exit {proc.returncode}); stderr:\n{proc.stderr[-6000:]}"
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["loops"] == ["bitcoin_support._aio_loop.EventLoop"], result["loops"]
    expected = EXPECTED_NOT_PASSED[mixin]
    unexpected = sorted(set(result["not_passed"]) - set(expected))
    assert not unexpected, f"{mixin}: failed {unexpected}; stderr:\n{proc.stderr[-6000:]}"
    counts = EXPECTED_RUN.get(sys.version_info[:2])
    if counts is not None:
        assert result["run"] == counts[mixin]
        assert result["passed"] == result["run"] - len(expected) - result["skipped"]
    print(f"{mixin}: {result['passed']} of {result['run']} passed")
