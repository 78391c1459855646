"""CPython's own asyncio conformance mixins, run against ``bitcoin_support.aio``'s loop.

Run as ``python tests/aio_conformance.py NAME [--loop aio|asyncio|uvloop]``: builds the test
class for the mixin NAME the way CPython's own files build their ``SelectEventLoopTests``, runs
it with unittest (each test under an alarm, so a hung test fails instead of stalling the run) and
prints one JSON line with the counts and the names of the tests that did not pass.
``tests/test_aio_conformance.py`` runs each NAME in its own subprocess from pytest. With
``--loop asyncio`` all pass here too; ``--loop uvloop`` errors in nearly every tearDown,
because ``test_asyncio.utils.close_loop`` reads ``loop._default_executor``, which uvloop lacks.

The subprocess tests are CPython's own concrete classes (``SubprocessThreadedWatcherTests``,
``SubprocessPidfdWatcherTests``), whose set-up follows each version's child-watcher API: 3.11
installs a watcher object on the policy, 3.12 and 3.13 do the same through deprecated calls
(``_get_watcher``), 3.14 has no watchers to install (each loop picks pidfd or a thread itself).
They make their loop with the policy, which here makes this loop.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import unittest
from typing import Any

PER_TEST_TIMEOUT = 30.0

NAMES = (
    "events",
    "sock_lowlevel",
    "server",
    "buffered_proto",
    "sendfile",
    "subprocess",
    "subprocess_pidfd",
    "streams",
)

# Python 3.14 deprecates asyncio's policy functions and classes (removal planned for 3.16): the
# public names warn, the private ones they forward to do not.
POLICY_DEPRECATED = sys.version_info >= (3, 14)


def _set_policy(policy: Any) -> None:
    if POLICY_DEPRECATED:
        asyncio.events._set_event_loop_policy(policy)  # type: ignore[attr-defined]
    else:
        asyncio.set_event_loop_policy(policy)


def _default_policy() -> Any:
    if POLICY_DEPRECATED:
        from asyncio import unix_events

        return unix_events._DefaultEventLoopPolicy  # type: ignore[attr-defined]
    return asyncio.DefaultEventLoopPolicy


def _loop_factory(kind: str) -> Any:
    if kind == "aio":
        from bitcoin_support import aio

        return aio.new_event_loop, aio.EventLoopPolicy
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop, uvloop.EventLoopPolicy
    return asyncio.SelectorEventLoop, _default_policy()


_created: list[type] = []


def build(name: str, kind: str) -> type[unittest.TestCase]:
    from test.test_asyncio import utils as test_utils

    make, policy_cls = _loop_factory(kind)

    def factory() -> Any:
        loop = make()
        _created.append(type(loop))
        return loop

    class Policy(policy_cls):  # type: ignore[misc, valid-type]
        def new_event_loop(self) -> Any:
            return factory()

    _set_policy(Policy())

    if name == "events":
        from test.test_asyncio import test_events

        # As CPython's SelectEventLoopTests: the event loop tests (up to 3.13 through the Unix
        # mixin that installs a child watcher; 3.14 has no watchers, and no such mixin) and the
        # subprocess ones.
        if sys.version_info >= (3, 14):
            events_mixin = test_events.EventLoopTestsMixin
        else:
            events_mixin = test_events.UnixEventLoopTestsMixin
        mixins = (events_mixin, test_events.SubprocessTestsMixin)

        class Tests(*mixins, test_utils.TestCase):  # type: ignore[misc, name-defined]
            def create_event_loop(self) -> Any:
                return factory()

    elif name == "sock_lowlevel":
        from test.test_asyncio import test_sock_lowlevel

        class Tests(test_sock_lowlevel.BaseSockTestsMixin, test_utils.TestCase):  # type: ignore[no-redef]
            def create_event_loop(self) -> Any:
                return factory()

    elif name == "server":
        from test.test_asyncio import test_server

        class Tests(test_server.BaseStartServer, unittest.TestCase):  # type: ignore[no-redef]
            def new_loop(self) -> Any:
                return factory()

    elif name == "buffered_proto":
        from test.test_asyncio import test_buffered_proto

        class Tests(test_buffered_proto.BaseTestBufferedProtocol, unittest.TestCase):  # type: ignore[no-redef]
            def new_loop(self) -> Any:
                return factory()

    elif name == "sendfile":
        from test.test_asyncio import test_sendfile

        class Tests(test_sendfile.SendfileTestsBase, test_utils.TestCase):  # type: ignore[no-redef]
            def create_event_loop(self) -> Any:
                return factory()

    elif name in ("subprocess", "subprocess_pidfd"):
        from test.test_asyncio import test_subprocess

        # CPython's own classes: their setUp and tearDown are written for this version's
        # child-watcher API, and the pidfd one skips itself where the kernel has no pidfds.
        if name == "subprocess":
            cpython_cls = test_subprocess.SubprocessThreadedWatcherTests
        else:
            cpython_cls = test_subprocess.SubprocessPidfdWatcherTests

        class Tests(cpython_cls):  # type: ignore[no-redef]
            pass

    elif name == "streams":
        from test.test_asyncio import test_streams

        class Tests(test_streams.StreamTests):  # type: ignore[no-redef]
            pass

    else:
        raise SystemExit(f"unknown mixin {name!r}; one of {', '.join(NAMES)}")
    Tests.__name__ = Tests.__qualname__ = f"{kind}_{name}"
    return Tests


class _Result(unittest.TextTestResult):
    def startTest(self, test: unittest.TestCase) -> None:
        def timeout(_signum: int, _frame: object) -> None:
            raise TimeoutError(f"test ran longer than {PER_TEST_TIMEOUT} s")

        signal.signal(signal.SIGALRM, timeout)
        signal.setitimer(signal.ITIMER_REAL, PER_TEST_TIMEOUT)
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        super().stopTest(test)


def main() -> None:
    name = sys.argv[1]
    kind = sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "--loop" else "aio"
    only = sys.argv[4:] if len(sys.argv) > 4 else None
    cls = build(name, kind)
    loader = unittest.TestLoader()
    if only:
        suite = unittest.TestSuite(cls(n) for n in only)
    else:
        suite = loader.loadTestsFromTestCase(cls)
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=1, resultclass=_Result)
    result = runner.run(suite)
    _set_policy(None)

    def short(test: Any) -> str:
        return str(test.id()).rsplit(".", 1)[-1]

    not_passed = sorted(
        {short(t) for t, _ in result.failures + result.errors + result.unexpectedSuccesses}
    )
    skipped = sorted(short(t) for t, _ in result.skipped)
    out = {
        "mixin": name,
        "loop": kind,
        "run": result.testsRun,
        "skipped": len(skipped),
        "passed": result.testsRun - len(not_passed) - len(skipped) - len(result.expectedFailures),
        "not_passed": not_passed,
        "skipped_names": skipped,
        "loops": sorted({f"{c.__module__}.{c.__qualname__}" for c in _created}),
        "loops_created": len(_created),
    }
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
