"""Secure memory under threads (spec section 2): cffi lets go of the GIL around every C call,
so a wipe may run while another thread frees, grows, clears or closes what it wipes. Each race
runs in a child interpreter (``secure_scenarios.py``) so that a crash fails the test instead of
ending the run; every call must finish or raise ClosedError or BufferError."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCENARIOS = Path(__file__).with_name("secure_scenarios.py")


def run_scenario(*args: str, timeout: float = 120) -> None:
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


@pytest.mark.parametrize(
    ("kind", "size", "seconds"),
    [
        pytest.param("secure", "4096", "0.5", id="pooled"),
        pytest.param("secure", str(1 << 20), "1.0", id="dedicated-1MiB"),
        pytest.param("secure", str(64 << 20), "2.0", id="dedicated-64MiB"),
        pytest.param("heap", "4096", "0.5", id="heap"),
        pytest.param("heap", str(1 << 20), "1.0", id="heap-1MiB"),
    ],
)
def test_memory_cleanse_of_a_block_while_another_thread_frees_it(
    kind: str, size: str, seconds: str
) -> None:
    run_scenario("cleanse_free", kind, size, seconds)


@pytest.mark.parametrize("kind", ["secure", "heap"])
def test_every_block_method_while_another_thread_frees_it(kind: str) -> None:
    run_scenario("block_methods", kind, "1.0", "3")


def test_a_wipe_in_flight_never_reaches_the_chunk_handed_out_next() -> None:
    run_scenario("cleanse_reuse", "1.0")


@pytest.mark.parametrize("op", ["grow", "clear", "close"])
def test_memory_cleanse_of_serialize_data_while_another_thread_resizes_it(op: str) -> None:
    run_scenario("cleanse_resize", op, "1.0")


@pytest.mark.parametrize("kind", ["serialize", "securestring"])
def test_every_container_method_while_another_thread_resizes_and_closes(kind: str) -> None:
    run_scenario("methods", kind, "1.5", "3")


FORK_DURING_A_WIPE_CHILD = r"""
import os, signal, time
import bitcoin_support._secure as secure
from bitcoin_support import SecureAllocator

block = SecureAllocator().allocate(1 << 20)
secure._in_call[-1] = block  # as a wipe running on another thread at the moment of fork()
pid = os.fork()
if pid == 0:
    try:
        block.free()  # that thread does not exist here: free() must not wait for it
    finally:
        os._exit(0)
for _ in range(200):  # up to 10 s, then the child is taken as hung and killed
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print(os.waitstatus_to_exitcode(status))
        break
    time.sleep(0.05)
else:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    print("hung")
del secure._in_call[-1]
block.free()
"""


def test_a_child_forked_during_a_wipe_on_another_thread_can_free_the_block() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", FORK_DURING_A_WIPE_CHILD],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0", proc.stdout
