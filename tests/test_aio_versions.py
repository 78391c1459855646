"""``aio`` where asyncio differs between Python versions (docs/design/asyncio-internals.md).

Each test runs on every Python and takes the branch of the Python it runs on; the test command
runs 3.11 and 3.13 (scripts/py313.sh). The 3.14 branches are marked ``PY314``: no pass of the
test command runs them (``BITCOIN_SUPPORT_DEBIAN=sid bash scripts/py313.sh`` does, by hand).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bitcoin_support import EV_PERSIST, EVLOOP_NO_EXIT_ON_EMPTY, EventBase, aio, obtain_event

# 3.14 deprecates asyncio's policy functions and classes (removal planned for 3.16).
PY314 = sys.version_info >= (3, 14)
ROOT = Path(__file__).resolve().parent.parent


def test_importing_aio_and_its_policy_warns_nothing() -> None:
    """3.14: ``asyncio.DefaultEventLoopPolicy`` warns when read; aio's policy is defined on the
    class it names, so importing aio (and using the policy) warns on no version."""
    code = textwrap.dedent(
        """
        import asyncio.unix_events
        from bitcoin_support import aio
        policy = aio.EventLoopPolicy()
        assert isinstance(policy, asyncio.unix_events._UnixDefaultEventLoopPolicy)
        loop = policy.new_event_loop()
        assert type(loop) is aio.EventLoop
        loop.close()
        print("ok")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=dict(os.environ, PYTHONWARNINGS="error"),
    )
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr


@contextlib.contextmanager
def policy_set(policy: asyncio.AbstractEventLoopPolicy) -> Iterator[None]:
    """``asyncio.set_event_loop_policy`` for the block; on 3.14 (PY314) it must warn."""
    deprecated = pytest.deprecated_call if PY314 else contextlib.nullcontext
    with deprecated():
        old = asyncio.get_event_loop_policy()
    with deprecated():
        asyncio.set_event_loop_policy(policy)
    try:
        yield
    finally:
        with deprecated():
            asyncio.set_event_loop_policy(old)


def test_policy_makes_aio_loops() -> None:
    async def main() -> Any:
        await asyncio.sleep(0)
        return asyncio.get_running_loop()

    with policy_set(aio.EventLoopPolicy()):
        loop = asyncio.new_event_loop()
        assert isinstance(loop, aio.EventLoop)
        loop.close()
        assert isinstance(asyncio.run(main()), aio.EventLoop)


def test_selector_map_get_as_313_asks_and_get_key_as_311_asks() -> None:
    """3.13+ ask ``get_map().get(fd)``, 3.11 and 3.12 ``get_key(fd)``: both give the same."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sel = loop._selector  # type: ignore[attr-defined]
        a, b = socket.socketpair()
        try:
            assert sel.get_map().get(b.fileno()) is None
            assert sel.get_map().get(b) is None
            with pytest.raises(KeyError):
                sel.get_key(b.fileno())
            loop.add_reader(b.fileno(), lambda: None)
            key = sel.get_key(b.fileno())
            assert sel.get_map().get(b.fileno()) is key
            assert sel.get_map().get(b) is key  # a file object: by its descriptor
            assert key.events == 1
            loop.add_writer(b.fileno(), lambda: None)  # modifies the key found by get
            assert sel.get_map().get(b.fileno()).events == 3
            with pytest.raises(ValueError):
                sel.get_map().get(-1)  # as the selectors module: an invalid descriptor raises
            loop.remove_reader(b.fileno())
            loop.remove_writer(b.fileno())
            assert sel.get_map().get(b.fileno(), "none") == "none"
        finally:
            a.close()
            b.close()

    aio.run(main())


def _child_exit_code(loop: aio.EventLoop) -> Any:
    async def child() -> tuple[int, bytes]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "print('hi'); raise SystemExit(3)", stdout=subprocess.PIPE
        )
        out, _ = await proc.communicate()
        return await proc.wait(), out

    return loop.create_task(child())


def test_subprocess_on_an_attached_loop(base: EventBase) -> None:
    """The child watcher is per version: 3.11 a thread through the policy's watcher, 3.12 and
    3.13 the (deprecated) policy watcher, pidfd where the kernel has it, 3.14 the loop's own.
    Each wakes an attached loop, which runs only inside someone else's dispatch."""
    loop = aio.attach(base)
    try:
        task = _child_exit_code(loop)
        deadline = time.monotonic() + 30

        def check(_ev: Any, _arg: object) -> None:
            if task.done() or time.monotonic() > deadline:
                base.loopbreak()

        with obtain_event(base, -1, EV_PERSIST, check) as ev:
            ev.add(0.005)
            base.loop(EVLOOP_NO_EXIT_ON_EMPTY)
        assert task.result() == (3, b"hi\n")
    finally:
        loop.close()


def test_subprocess_on_an_own_loop() -> None:
    loop = aio.new_event_loop()
    try:
        assert loop.run_until_complete(asyncio.wait_for(_child_exit_code(loop), 30)) == (
            3,
            b"hi\n",
        )
    finally:
        loop.close()


@pytest.mark.skipif(not PY314, reason="PY314: 3.14's per-loop watcher (run by hand on sid)")
def test_314_loop_has_its_own_child_watcher() -> None:
    """3.14 removed the watcher classes: each loop chooses pidfd or a waiting thread."""
    from asyncio import unix_events

    loop = aio.new_event_loop()
    try:
        watcher = loop._watcher  # type: ignore[attr-defined]
        expected = "_PidfdChildWatcher" if unix_events.can_use_pidfd() else "_ThreadedChildWatcher"
        assert type(watcher).__name__ == expected
    finally:
        loop.close()
