"""Interop with C: the public header, the embeddable library, and C hosts that attach Python.

Every C program here is compiled with gcc against the header and library the installed package
reports (``get_include()``, ``embed_library_path()``), run as a child process of the test,
talked to over 127.0.0.1 only, and stopped by its PID.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import bitcoin_support

ROOT = Path(__file__).resolve().parent.parent
C_HOST = ROOT / "examples" / "c_host"
WARNINGS = ["-Wall", "-Wextra", "-Werror"]
SANITIZED = os.environ.get("BITCOIN_SUPPORT_SANITIZED") == "1"

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


def host_env(**extra: str) -> dict[str, str]:
    """The environment of a C host: no PYTHONPATH or PYTHONHOME, so the library must find the
    package's environment by itself."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(extra)
    return env


def gcc(*args: str | Path, cxx: bool = False) -> None:
    cmd = ["g++" if cxx else "gcc", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"


def link_args() -> list[str]:
    lib = Path(bitcoin_support.embed_library_path())
    return [str(lib), f"-Wl,-rpath,{lib.parent}"]


def event_flags(what: str) -> list[str]:
    out = subprocess.run(
        ["pkg-config", what, "libevent_core", "libevent_extra", "libevent_pthreads"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


# -- the header


HEADER_USER = """
#include <bitcoin_support.h>
static void on_event(LibEvent *ev, void *arg) { (void)ev; (void)arg; }
static void on_request(EvHttpRequest *req, void *arg) { (void)req; (void)arg; }
int main(void)
{
    EventCallback ecb = on_event;
    EvHttpRequestCallback rcb = on_request;
    EvutilSocket fd = -1;
    int (*attach)(struct event_base *, const char *, const char *) = bs_python_attach;
    void *(*alloc)(size_t) = bs_secure_allocate;
    void (*dealloc)(void *) = bs_secure_deallocate;
    void (*cleanse)(void *, size_t) = bs_memory_cleanse;
    return (ecb && rcb && attach && alloc && dealloc && cleanse && fd == -1) ? 0 : 1;
}
"""


@pytest.mark.parametrize(
    ("suffix", "std", "cxx"),
    [(".c", "-std=c99", False), (".c", "-std=c11", False), (".cpp", "-std=c++11", True)],
)
def test_header_compiles_cleanly(tmp_path: Path, suffix: str, std: str, cxx: bool) -> None:
    src = tmp_path / f"user{suffix}"
    src.write_text(HEADER_USER)
    include = bitcoin_support.get_include()
    assert (Path(include) / "bitcoin_support.h").is_file()
    gcc(std, "-pedantic", *WARNINGS, "-I", include, "-c", src, "-o", tmp_path / "user.o", cxx=cxx)


def test_library_path_and_exports() -> None:
    lib = Path(bitcoin_support.embed_library_path())
    assert lib.is_file() and lib.parent == Path(bitcoin_support.__file__).parent
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True
    ).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    for name in ("bs_memory_cleanse", "bs_secure_allocate", "bs_secure_deallocate"):
        assert name in exported
    assert "bs_python_attach" in exported


# -- secure memory from C, without Python

SECURE_FROM_C = r"""
#define _GNU_SOURCE
#include <bitcoin_support.h>
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

int main(void)
{
    unsigned char *p[64];
    for (int i = 0; i < 64; i++) {
        p[i] = bs_secure_allocate((size_t)(i + 1) * 24);
        if (p[i] == NULL || ((uintptr_t)p[i] & 15) != 0)
            return 2;
        for (int j = 0; j < (i + 1) * 24; j++)
            if (p[i][j] != 0)
                return 3; /* new memory reads as zeros */
        memset(p[i], 0xA5, (size_t)(i + 1) * 24);
    }
    bs_memory_cleanse(p[0], 16);
    for (int j = 0; j < 16; j++)
        if (p[0][j] != 0)
            return 4;
    if (p[0][16] != 0xA5)
        return 5; /* only the bytes asked for */
    unsigned char *big = bs_secure_allocate(1 << 20); /* larger than an arena */
    if (big == NULL || big[0] != 0 || big[(1 << 20) - 1] != 0)
        return 6;
    big[12345] = 7;
    bs_secure_deallocate(big);
    for (int i = 63; i >= 0; i--)
        bs_secure_deallocate(p[i]);
    unsigned char *again = bs_secure_allocate(24); /* a wiped chunk, reused */
    for (int j = 0; j < 24; j++)
        if (again == NULL || again[j] != 0)
            return 7;
    bs_secure_deallocate(again);
    bs_secure_deallocate(NULL);
    bs_memory_cleanse(NULL, 0);
    int (*started)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "Py_IsInitialized");
    printf("python started: %d\n", started ? started() : -1);
    return 0;
}
"""


@pytest.fixture(scope="module")
def secure_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("secure")
    src = tmp / "secure.c"
    src.write_text(SECURE_FROM_C)
    exe = tmp / "secure"
    gcc("-std=c99", *WARNINGS, "-I", bitcoin_support.get_include(), src, "-o", exe, *link_args())
    return exe


def test_secure_memory_from_c_without_python(secure_program: Path) -> None:
    proc = subprocess.run(
        [str(secure_program)], capture_output=True, text=True, timeout=30, env=host_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "python started: 0\n"


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
@pytest.mark.skipif(SANITIZED, reason="valgrind cannot run an ASan build")
def test_secure_memory_from_c_under_valgrind(secure_program: Path) -> None:
    proc = subprocess.run(
        ["valgrind", "-q", "--error-exitcode=1", str(secure_program)],
        capture_output=True,
        text=True,
        timeout=60,
        env=host_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "python started: 0\n"


# -- the C host of examples/c_host


@pytest.fixture(scope="module")
def host_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/c_host built with its own Makefile, in a scratch folder, by this python."""
    folder = tmp_path_factory.mktemp("c_host")
    for name in ("host.c", "Makefile", "c_host_app.py"):
        shutil.copy(C_HOST / name, folder / name)
    proc = subprocess.run(
        ["make", "-s", f"PYTHON={sys.executable}"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return folder / "host"


class Host:
    """A running host process: its port, HTTP requests to it, and a SIGTERM stop."""

    def __init__(self, argv: list[str], startup: float = 30.0, **env: str) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=host_env(**env),
        )
        self.lines: list[str] = []
        self.port = self._wait_listening(startup)

    def _wait_listening(self, startup: float) -> int:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + startup
        buf = b""
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                match = re.search(rb"listening on http://127\.0\.0\.1:(\d+)/\n", buf)
                if match:
                    self.lines = buf[: match.start()].decode().splitlines()
                    return int(match.group(1))
        self.kill()
        _, err = self.proc.communicate(timeout=10)
        raise AssertionError(f"host did not start: {buf.decode()!r}\n{err.decode()}")

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def stop(self, timeout: float = 30.0) -> tuple[int, str, str]:
        """SIGTERM, then the exit status and the rest of stdout and stderr."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"host ignored SIGTERM:\n{err.decode()}") from None
        return self.proc.returncode, out.decode(), err.decode()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # our own child, by its PID


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    """Hosts started by a test; any still running at the end are killed."""
    started: list[Host] = []
    yield started
    for h in started:
        h.kill()
        h.proc.communicate(timeout=10)


def check_echo(h: Host, sizes: tuple[int, ...] = (0, 11, 70_000)) -> None:
    for size in sizes:
        body = os.urandom(size)
        status, headers, got = h.request("POST", "/echo", body, {"Content-Type": "x-test/bytes"})
        assert (status, got) == (200, body)
        assert headers["content-type"] == "x-test/bytes"
    status, headers, got = h.request("PUT", "/other?x=1", b"no type")
    assert (status, got, headers["content-type"]) == (200, b"no type", "application/octet-stream")


def wait_stats(h: Host) -> dict[str, int]:
    """/stats once the Python timer on the host's base has fired a few times."""
    import json

    deadline = time.monotonic() + 60
    while True:
        status, _, body = h.request("GET", "/stats")
        assert status == 200
        stats: dict[str, int] = json.loads(body)
        if stats["ticks"] >= 3 or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def check_stopped(h: Host) -> str:
    rc, out, err = h.stop()
    assert rc == 0, err
    assert "teardown" in out and "-> 0" in out.split("teardown", 1)[1], out
    assert out.rstrip().endswith("host: stopped"), out
    return err


def test_c_host_serves_python_echo(host_exe: Path, hosts: list[Host]) -> None:
    h = Host([str(host_exe), "0"])
    hosts.append(h)
    assert h.lines == [f"attach {host_exe.parent / 'c_host_app.py'}:setup -> 0"]
    check_echo(h)
    stats = wait_stats(h)
    assert stats["ticks"] >= 3  # the Python timer runs on the host's loop
    # The host's secret (bs_secure_allocate from C) is in the pool Python reports: one pool.
    assert stats["pool_used"] >= 32
    check_stopped(h)


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
@pytest.mark.skipif(SANITIZED, reason="valgrind cannot run an ASan build")
def test_c_host_under_valgrind(host_exe: Path, hosts: list[Host]) -> None:
    supp = Path(__file__).with_name("valgrind-python.supp")
    argv = ["valgrind", "-q", "--error-exitcode=1", f"--suppressions={supp}", str(host_exe), "0"]
    h = Host(argv, startup=100.0, PYTHONMALLOC="malloc")
    hosts.append(h)
    check_echo(h, sizes=(0, 5000))
    assert wait_stats(h)["ticks"] >= 1
    err = check_stopped(h)
    assert "==" not in err, err  # no memcheck report at all


RAISES = """
def setup(base):
    raise RuntimeError("setup failed on purpose")
"""

EXITS = """
import sys
def setup(base):
    sys.exit(3)
"""


def test_attach_errors_leave_the_host_running(
    host_exe: Path, hosts: list[Host], tmp_path: Path
) -> None:
    (tmp_path / "raises.py").write_text(RAISES)
    (tmp_path / "exits.py").write_text(EXITS)
    app = host_exe.parent / "c_host_app.py"
    targets = [
        "no_such_module_xyz:setup",
        f"{tmp_path / 'raises.py'}:setup",
        f"{tmp_path / 'exits.py'}:setup",
        f"{app}:no_such_function",
        f"{tmp_path / 'missing.py'}:setup",
        f"{app}:setup",
    ]
    h = Host([str(host_exe), "0", *targets])
    hosts.append(h)
    assert h.lines == [f"attach {t} -> -1" for t in targets[:-1]] + [f"attach {targets[-1]} -> 0"]
    check_echo(h, sizes=(3,))  # the host kept going, and a later attach still works
    err = check_stopped(h)
    assert "ModuleNotFoundError: No module named 'no_such_module_xyz'" in err
    assert 'raises.py", line 3, in setup' in err
    assert "RuntimeError: setup failed on purpose" in err
    assert "SystemExit: 3" in err
    assert "AttributeError" in err and "no_such_function" in err
    assert "missing.py" in err
    assert err.count("Traceback (most recent call last):") == 5


TRIO_APP = """
import os

import trio

from bitcoin_support import EVLOOP_NO_EXIT_ON_EMPTY, obtain_evhttp, trio_guest

state = {}


def setup(base):
    http = obtain_evhttp(base)
    http.accept_socket(int(os.environ["BS_HOST_LISTEN_FD"]))

    async def handler(req):
        await trio.sleep(0.01)
        return b"trio:" + req.body

    async def main():
        with trio.CancelScope() as scope:
            state["scope"] = scope
            await trio_guest.serve_http(http, handler)
        return "finished"

    def done(result):
        state["outcome"] = result
        if state.get("stopping"):
            base.loopbreak()  # only the loop teardown() runs, never the host's own

    trio_guest.start(base, main, done=done)
    state["base"] = base


def teardown(base):
    # The host stopped its loop; trio must finish on it before the base goes away.
    wrapper = state["base"]
    state["stopping"] = True
    state["scope"].cancel()
    if "outcome" not in state:
        wrapper.loop(EVLOOP_NO_EXIT_ON_EMPTY)
    assert state["outcome"].unwrap() == "finished"
    wrapper.close()
    print("trio finished", flush=True)
"""


def test_trio_start_in_c_host(host_exe: Path, hosts: list[Host], tmp_path: Path) -> None:
    (tmp_path / "trio_app.py").write_text(TRIO_APP)
    h = Host([str(host_exe), "0", f"{tmp_path / 'trio_app.py'}:setup"])
    hosts.append(h)
    for i in range(5):
        status, _, got = h.request("POST", "/", f"req{i}".encode())
        assert (status, got) == (200, f"trio:req{i}".encode())
    rc, out, err = h.stop()
    assert rc == 0, err
    assert "trio finished" in out and out.rstrip().endswith("host: stopped"), out + err
