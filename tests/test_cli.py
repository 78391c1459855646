"""The command lines as a user meets them: every bad input of the echo server (module and example)
is one clear line on stderr and a non-zero exit, never a traceback; ``python -m bitcoin_support``
says the version and what can be run. (The C host's are in test_c_host.py.)"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import bitcoin_support

ROOT = Path(__file__).resolve().parent.parent
MODULE = ([sys.executable, "-m", "bitcoin_support.echo"], "python -m bitcoin_support.echo")
EXAMPLE = ([sys.executable, str(ROOT / "examples" / "http_echo_server.py")], "http_echo_server.py")
PROGRAMS = pytest.mark.parametrize(("cmd", "prog"), [MODULE, EXAMPLE], ids=["module", "example"])


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT, check=False)


def one_line(out: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed command printed (nothing on stdout, no traceback)."""
    assert out.stdout == "", out.stdout
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


BAD_ARGS = {
    "port-too-big": (
        ["--port", "99999"],
        "argument --port: must be a whole number from 0 to 65535",
    ),
    "port-negative": (["--port", "-1"], "argument --port: must be a whole number from 0 to 65535"),
    "port-not-a-number": (["--port", "eighty"], "argument --port: must be a whole number"),
    "host-unknown": (["--host", "no-such-host.invalid"], "argument --host: cannot resolve"),
    "host-with-space": (["--host", "bad host"], "argument --host: cannot resolve 'bad host'"),
    "host-empty": (["--host", ""], "argument --host: must not be empty"),
    "host-nul": (["--host", "127.0.0.1\x01"], "argument --host: cannot resolve"),
    "host-label-too-long": (["--host", "a" * 300], "argument --host: cannot resolve"),
    "workers-zero": (["--workers", "0"], "argument --workers: must be a whole number from 1"),
    "workers-text": (["--workers", "many"], "argument --workers: must be a whole number from 1"),
    "workers-too-many": (["--workers", "100000"], "argument --workers: must be a whole number"),
    "max-body-negative": (["--max-body", "-1"], "argument --max-body: must be a whole number"),
    "max-body-huge": (["--max-body", "9" * 30], "argument --max-body: must be a whole number"),
    "unknown-option": (["--colour", "red"], "unrecognized arguments: --colour red"),
}


@PROGRAMS
@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_bad_argument_is_one_line_and_exit_2(cmd: list[str], prog: str, case: str) -> None:
    args, expected = BAD_ARGS[case]
    out = run([*cmd, *args])
    assert out.returncode == 2
    line = one_line(out)
    assert line.startswith(f"{prog}: error: {expected}"), line
    assert line.endswith("(see --help)")


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 another socket listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@PROGRAMS
@pytest.mark.parametrize("workers", ["1", "2"])
def test_address_in_use_names_the_address(
    cmd: list[str], prog: str, workers: str, taken_port: int
) -> None:
    out = run([*cmd, "--port", str(taken_port), "--workers", workers])
    assert out.returncode == 1
    line = one_line(out)
    assert line == f"{prog}: error: cannot listen on 127.0.0.1:{taken_port}: Address already in use"


@PROGRAMS
def test_address_of_another_machine_names_the_address(cmd: list[str], prog: str) -> None:
    # A documentation address (TEST-NET-1, RFC 5737): resolvable, never this machine's.
    out = run([*cmd, "--host", "192.0.2.1", "--port", "0"])
    assert out.returncode == 1
    assert one_line(out) == (
        f"{prog}: error: cannot listen on 192.0.2.1:0: Cannot assign requested address"
    )


@PROGRAMS
def test_help_lists_every_option(cmd: list[str], prog: str) -> None:
    out = run([*cmd, "--help"])
    assert out.returncode == 0
    for option in ("--host", "--port", "--workers", "--max-body"):
        assert option in out.stdout


def test_python_m_bitcoin_support_prints_version_and_what_runs() -> None:
    out = run([sys.executable, "-m", "bitcoin_support"])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"bitcoin_support {bitcoin_support.__version__} (libevent 2.1.")
    assert any("python -m bitcoin_support.echo" in line for line in lines)
    assert "bitcoin_support.aio" in out.stdout and "bitcoin_support.trio_guest" in out.stdout
    assert out.stderr == ""


def test_python_m_bitcoin_support_version_and_bad_option() -> None:
    out = run([sys.executable, "-m", "bitcoin_support", "--version"])
    assert (out.returncode, out.stdout) == (0, f"bitcoin_support {bitcoin_support.__version__}\n")
    out = run([sys.executable, "-m", "bitcoin_support", "--bogus"])
    assert out.returncode == 2
    assert one_line(out) == (
        "python -m bitcoin_support: error: unrecognized arguments: --bogus (see --help)"
    )


@pytest.mark.parametrize("after", [0.0, 0.5], ids=["at-once", "while-serving"])
def test_trio_example_stops_cleanly_on_ctrl_c(after: float) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "trio_guest.py"), "--seconds", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("listening on http://127.0.0.1:")
        time.sleep(after)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=15)
    assert (proc.returncode, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "stopped by Ctrl-C"
    counts = dict(line.split(": ") for line in lines[1:])
    assert set(counts) == {"trio ticks", "client round trips", "libevent ticks"}
    if after:
        assert all(int(v) > 0 for v in counts.values()), out


def test_python_m_bitcoin_support_into_a_closed_pipe_is_quiet() -> None:
    # The reader is gone before the package has even been imported (as `| head -1` can be).
    proc = subprocess.Popen(
        [sys.executable, "-m", "bitcoin_support"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=30)
    assert err == ""
    assert proc.returncode == 1  # as Python's own documentation advises on EPIPE


def test_trio_example_port_in_use_is_one_line(taken_port: int) -> None:
    out = run([sys.executable, str(ROOT / "examples" / "trio_guest.py"), "--port", str(taken_port)])
    assert out.returncode == 1
    assert one_line(out) == (
        f"trio_guest.py: error: cannot listen on 127.0.0.1:{taken_port}: Address already in use"
    )
