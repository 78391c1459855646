"""Interop with C: the public header and the embeddable library (C hosts: test_c_host.py).

Every C program here is compiled with gcc against the header and library the installed package
reports (``get_include()``, ``embed_library_path()``) and run as a child process of the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
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
#include <event2/http.h>
static void on_event(LibEvent *ev, void *arg)
{
    EvutilSocket fd = bs_event_fd(ev);
    short fired = bs_event_fired(ev);
    struct event *e = bs_event_get(ev);
    struct event_base *b = bs_event_get_base(ev);
    (void)fd; (void)fired; (void)e; (void)b; (void)arg;
}
static void on_request(EvHttpRequest *req, void *arg)
{
    struct evhttp_request *r = req; /* libevent's own request, no cast */
    (void)evhttp_request_get_uri(r);
    (void)arg;
}
static int gate(EvHttpRequest *req, void *arg) { (void)req; (void)arg; return 0; }
int main(void)
{
    EventCallback ecb = on_event;
    EvHttpRequestCallback rcb = on_request;
    BsRequestGate g = gate;
    EvutilSocket fd = -1;
    int (*attach)(struct event_base *, const char *, const char *) = bs_python_attach;
    int (*attach_http)(struct evhttp *, const char *, const char *) = bs_python_attach_evhttp;
    int (*detach)(struct event_base *) = bs_python_detach;
    int (*pending)(struct event_base *) = bs_python_pending;
    int (*set_gate)(struct evhttp *, BsRequestGate, void *) = bs_python_set_request_gate;
    void *(*alloc)(size_t) = bs_secure_allocate;
    void (*dealloc)(void *) = bs_secure_deallocate;
    void (*cleanse)(void *, size_t) = bs_memory_cleanse;
    return (ecb && rcb && g && attach && attach_http && detach && pending && set_gate && alloc
            && dealloc && cleanse && fd == -1) ? 0 : 1;
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
    cflags = event_flags("--cflags")
    gcc(
        std,
        "-pedantic",
        *WARNINGS,
        "-I",
        include,
        *cflags,
        "-c",
        src,
        "-o",
        tmp_path / "o",
        cxx=cxx,
    )


def test_header_alone_compiles(tmp_path: Path) -> None:
    """Without libevent's headers too: the header declares what it uses."""
    src = tmp_path / "alone.c"
    src.write_text("#include <bitcoin_support.h>\nint main(void) { return 0; }\n")
    for std in ("-std=c99", "-std=c11"):
        gcc(
            std,
            "-pedantic",
            *WARNINGS,
            "-I",
            bitcoin_support.get_include(),
            "-c",
            src,
            "-o",
            tmp_path / "alone.o",
        )


def test_library_path_and_exports() -> None:
    lib = Path(bitcoin_support.embed_library_path())
    assert lib.is_file() and lib.parent == Path(bitcoin_support.__file__).parent
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True
    ).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    for name in ("bs_memory_cleanse", "bs_secure_allocate", "bs_secure_deallocate"):
        assert name in exported
    for name in (
        "bs_python_attach",
        "bs_python_attach_evhttp",
        "bs_python_detach",
        "bs_python_set_request_gate",
        "bs_event_fd",
        "bs_event_fired",
        "bs_event_get",
        "bs_event_get_base",
    ):
        assert name in exported


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
