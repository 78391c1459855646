"""The README's commands on a checkout that is already set up: ``scripts/serve.sh`` starts the
server without installing anything again. Runs in the checkout's own ``.venv`` only (the test
command's first pass); the copies the other passes run from have no ``.venv`` of their own."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from http_helpers import request

ROOT = Path(__file__).resolve().parent.parent
STAMP = ROOT / ".venv" / ".setup-stamp"

pytestmark = pytest.mark.skipif(
    not STAMP.exists(), reason="needs a checkout set up by scripts/setup.sh"
)


def test_serve_sh_on_a_set_up_checkout_reinstalls_nothing() -> None:
    # Whatever changed since the last set-up is built now, so the run below starts from a
    # current .venv (as after the test command's own set-up).
    subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, check=True, timeout=600)
    before = STAMP.stat().st_mtime_ns
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen(
        ["bash", "scripts/serve.sh", "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        m = re.fullmatch(r"listening on http://127\.0\.0\.1:(\d+)/\n", proc.stdout.readline())
        assert m
        status, _, body = request(int(m.group(1)), "POST", "/", b"served")
        assert (status, body) == (200, b"served")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=15)
    assert "setup:" not in err, err  # no set-up notice: nothing was installed
    assert STAMP.stat().st_mtime_ns == before
