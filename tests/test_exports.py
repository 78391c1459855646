"""The public surface (SPEC sections 1, 3 and 6): every name at top level, typed, and the build's
one clear line when libevent's headers are missing."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bitcoin_support as bs

ROOT = Path(__file__).resolve().parent.parent
PKG = Path(bs.__file__).parent  # the package under test: the checkout's, or an installed copy

SPEC_NAMES = {
    # 1. build
    "ffi",
    "lib",
    # 2. secure memory
    "memory_cleanse",
    "SecureAllocator",
    "ZeroAfterFreeAllocator",
    "Block",
    "locked_pool_stats",
    "SecureString",
    "SerializeData",
    # 3. handles
    "EventBase",
    "LibEvent",
    "EvHttp",
    "EvHttpRequest",
    "EvHttpConnection",
    "live_counts",
    "obtain_event_base",
    "obtain_event",
    "EvutilSocket",
    "EV_TIMEOUT",
    "EV_READ",
    "EV_WRITE",
    "EV_SIGNAL",
    "EV_PERSIST",
    "EV_ET",
    "EV_CLOSED",
    "EVLOOP_ONCE",
    "EVLOOP_NONBLOCK",
    "EVLOOP_NO_EXIT_ON_EMPTY",
    # 4. evhttp
    "obtain_evhttp",
    "obtain_evhttp_request",
    "obtain_evhttp_connection_base",
    # 5. interop
    "get_include",
    "embed_library_path",
    # 6. utilities and diagnostics
    "align_up",
    "get_unique_path",
    "ClosedError",
    "DummyHandleError",
}

# libevent 2.1's own values (event2/event.h).
LIBEVENT_FLAGS = {
    "EV_TIMEOUT": 0x01,
    "EV_READ": 0x02,
    "EV_WRITE": 0x04,
    "EV_SIGNAL": 0x08,
    "EV_PERSIST": 0x10,
    "EV_ET": 0x20,
    "EV_CLOSED": 0x80,
    "EVLOOP_ONCE": 0x01,
    "EVLOOP_NONBLOCK": 0x02,
    "EVLOOP_NO_EXIT_ON_EMPTY": 0x04,
}


def test_every_spec_name_is_exported_at_top_level() -> None:
    missing = sorted(n for n in SPEC_NAMES if not hasattr(bs, n))
    assert missing == []
    assert SPEC_NAMES <= set(bs.__all__)


def test_all_names_resolve_and_none_is_private() -> None:
    for name in bs.__all__:
        assert hasattr(bs, name), name
        assert not name.startswith("_"), name


def test_flag_constants_carry_libevents_values() -> None:
    assert {name: getattr(bs, name) for name in LIBEVENT_FLAGS} == LIBEVENT_FLAGS


def test_evutil_socket_is_int_and_exceptions_subclass_the_builtins() -> None:
    assert bs.EvutilSocket is int
    assert issubclass(bs.ClosedError, ValueError)
    assert issubclass(bs.DummyHandleError, RuntimeError)


def test_package_errors_share_one_base() -> None:
    for exc in (bs.ClosedError, bs.DummyHandleError):
        assert issubclass(exc, bs.BitcoinSupportError)
    block = bs.ZeroAfterFreeAllocator().allocate(8)
    block.free()
    with pytest.raises(bs.BitcoinSupportError), block.view():
        pass
    with bs.obtain_event_base(dummy=True) as base, pytest.raises(bs.BitcoinSupportError):
        base.dispatch()


def _package_imports(module: str) -> set[str]:
    """The package modules ``bitcoin_support/<module>.py`` imports (relative imports)."""
    tree = ast.parse((PKG / f"{module}.py").read_text())
    return {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 1
    }


def test_exceptions_and_argument_checks_sit_below_every_other_module() -> None:
    # _errors.py is the exception classes alone, _args.py the checks over the C binding only:
    # every module may import both, and no import cycle runs through them.
    errors = ast.parse((PKG / "_errors.py").read_text())
    defined = [n for n in errors.body if not isinstance(n, ast.Expr | ast.ImportFrom)]
    assert defined and all(isinstance(n, ast.ClassDef) for n in defined)
    assert _package_imports("_errors") == set()
    assert _package_imports("_args") == {"_native"}
    assert "_args" in _package_imports("_serialize")  # the checks it uses come from there


def test_trio_guest_is_a_public_submodule() -> None:
    from bitcoin_support import trio_guest

    assert {"run", "start", "wait_event", "serve_http"} <= set(trio_guest.__all__)


def test_package_ships_py_typed_and_the_c_header() -> None:
    pkg = Path(bs.__file__).parent
    assert (pkg / "py.typed").exists()
    assert (Path(bs.get_include()) / "bitcoin_support.h").exists()


def test_c_types_are_usable_from_ffi() -> None:
    assert bs.ffi.typeof("EventCallback").kind == "function"
    assert bs.ffi.typeof("EvHttpRequestCallback").kind == "function"


def _build_without_libevent(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "build_ffi.py")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def test_build_without_libevent_headers_stops_with_one_clear_line() -> None:
    env = {**os.environ, "PKG_CONFIG_LIBDIR": "/nonexistent", "PKG_CONFIG_PATH": ""}
    out = _build_without_libevent(env)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "libevent-dev" in lines[0] and "pkg-config" in lines[0]


def test_build_without_pkg_config_stops_with_the_same_line(tmp_path: Path) -> None:
    # A PATH that has python's folder but no pkg-config.
    (tmp_path / "python").symlink_to(sys.executable)
    assert shutil.which("pkg-config", path=str(tmp_path)) is None
    out = _build_without_libevent({**os.environ, "PATH": str(tmp_path)})
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "libevent-dev" in lines[0]


def test_version_is_the_installed_distributions() -> None:
    from importlib.metadata import version

    assert re.fullmatch(r"\d+\.\d+\.\d+", bs.__version__)
    assert version("bitcoin_support") == bs.__version__


def test_trio_guest_without_trio_names_the_extra_to_install() -> None:
    # trio and outcome made unimportable, as in an environment without the [trio] extra; the
    # rest of the package does not need them.
    code = (
        "import sys\n"
        "sys.modules['trio'] = sys.modules['outcome'] = None\n"
        "import bitcoin_support, bitcoin_support.aio\n"
        "try:\n"
        "    from bitcoin_support import trio_guest\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc.name, exc, sep='|')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    kind, name, message = out.stdout.strip().split("|")
    assert (kind, name) == ("ImportError", "outcome")
    assert "pip install 'bitcoin_support[trio]'" in message
