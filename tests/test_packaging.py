"""The package as a new user gets it: the sdist built by ``python -m build``, installed alone
into a clean venv (pip's cache, no source tree on the path), its metadata and license, and the
installed echo server answering a request. Slow (a build and a compile): marked ``slow``, run by
the test command's first pass."""

from __future__ import annotations

import email
import os
import re
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from http_helpers import request

import bitcoin_support

ROOT = Path(__file__).resolve().parent.parent
NAME = f"bitcoin_support-{bitcoin_support.__version__}"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def clean_env() -> dict[str, str]:
    """The environment without anything that would point Python at the source tree."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def run(cmd: list[str], cwd: Path, timeout: float) -> None:
    """Run ``cmd``; on failure the assertion shows its output."""
    out = subprocess.run(
        cmd, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, (cmd, out.stdout[-4000:], out.stderr[-4000:])


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist, built from this checkout the way a release is built."""
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(ROOT)], out, 300)
    (found,) = out.glob("*.tar.gz")
    return found


@pytest.fixture(scope="module")
def venv(sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the sdist's install and its dependencies, and nothing else."""
    where = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", str(where)], where, 120)
    run([str(where / "bin" / "python"), "-m", "pip", "install", "-q", str(sdist)], where, 600)
    return where


def test_sdist_holds_every_file_the_build_reads(sdist: Path) -> None:
    with tarfile.open(sdist) as tar:
        names = {n.removeprefix(f"{NAME}/") for n in tar.getnames()}
    needed = {"build_ffi.py", "build_embed.py", "build_flags.py", "setup.py", "pyproject.toml"}
    needed |= {"LICENSE", "CHANGELOG.md", "README.md", "MANIFEST.in"}
    needed |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "cdefs").rglob("*.[ch]")}
    needed |= {"cdefs/embed/embed.h", "bitcoin_support/include/bitcoin_support.h"}
    needed |= {"bitcoin_support/py.typed", "bitcoin_support/_version.py"}
    assert needed - names == set()
    assert not [n for n in names if n.endswith((".so", ".o", ".pyc"))]


def test_installed_metadata_license_and_version(venv: Path) -> None:
    (site,) = venv.glob("lib/python3.*/site-packages")
    info = site / f"{NAME}.dist-info"
    assert (info / "licenses" / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    meta = email.message_from_string((info / "METADATA").read_text())
    assert meta["Version"] == bitcoin_support.__version__
    assert meta["License-Expression"] == "MIT"
    assert meta["Description-Content-Type"] == "text/markdown"
    classifiers = meta.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers
    versions = {c.rsplit(" ", 1)[1] for c in classifiers if re.fullmatch(r".*:: 3\.\d+", c)}
    assert versions and f"{sys.version_info.major}.{sys.version_info.minor}" in versions
    # The installed package is the one in the venv, not this checkout.
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import bitcoin_support as b; print(b.__file__)"],
        cwd=venv,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip().startswith(str(site)), out


def test_trio_guest_without_the_extra_names_it(venv: Path) -> None:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "from bitcoin_support import trio_guest"],
        cwd=venv,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: bitcoin_support.trio_guest needs trio"), out.stderr
    assert last.endswith("pip install 'bitcoin_support[trio]'")


def test_installed_echo_server_answers_a_request(venv: Path) -> None:
    proc = subprocess.Popen(
        [str(venv / "bin" / "python"), "-m", "bitcoin_support.echo", "--port", "0"],
        cwd=venv,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.fullmatch(r"listening on http://127\.0\.0\.1:(\d+)/\n", line)
        assert m, line
        status, _, body = request(int(m.group(1)), "POST", "/", b"from the sdist")
        assert (status, body) == (200, b"from the sdist")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=15)


USER_CODE = """\
import bitcoin_support as bs

base = bs.obtain_event_base()
http = bs.obtain_evhttp(base)
port: int = http.bind("127.0.0.1", 0)
http.set_timeout(5.0)
conn = bs.obtain_evhttp_connection_base(base, "127.0.0.1", port)
conn.set_timeout(2.5)
base.loopexit(0.1)
http.bind(123, "not a port")  # wrong
base.loopexit("soon")  # wrong
conn.make_request("GET", "/")  # wrong
name: str = http.bind()  # wrong
"""


def test_mypy_strict_checks_user_code_against_the_installed_package(
    venv: Path, tmp_path: Path
) -> None:
    # The mypy of the test environment, reading packages from the clean venv (PEP 561: the
    # package's py.typed), from a folder that holds nothing of this checkout.
    (tmp_path / "user.py").write_text(USER_CODE)
    cmd = [sys.executable, "-m", "mypy", "--strict", "--no-incremental"]
    cmd += ["--python-executable", str(venv / "bin" / "python"), "user.py"]
    env = {k: v for k, v in clean_env().items() if k != "MYPYPATH"}
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    flagged = {int(n) for n in re.findall(r"^user\.py:(\d+): error", out.stdout, re.M)}
    wrong = {i for i, line in enumerate(USER_CODE.splitlines(), 1) if line.endswith("# wrong")}
    assert flagged == wrong, out.stdout
    assert out.returncode == 1
