"""Build script of ``bitcoin_support._native`` (cffi API mode, system libevent 2.1).

The C declarations come from ``cdefs/*.h`` (one header per C area, fed to ``ffi.cdef`` in sorted
order) and the shim itself from ``cdefs/*.c``, compiled with ``-Wall -Wextra -Werror``. Compiler and
linker flags for libevent come from ``pkg-config``.

Set ``BITCOIN_SUPPORT_SANITIZE=1`` to build the shim with AddressSanitizer and UBSan.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
CDEFS = HERE / "cdefs"
INCLUDE = HERE / "bitcoin_support" / "include"
PKG_MODULES = ("libevent_core", "libevent_extra", "libevent_pthreads")
MISSING = (
    "bitcoin_support: libevent 2.1 development files not found; "
    "install them with: apt-get install -y libevent-dev pkg-config"
)
WARNINGS = ["-Wall", "-Wextra", "-Werror"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]


def pkg_config(*args: str) -> list[str]:
    """Flags from pkg-config for libevent; exits with one clear line when they are missing."""
    if shutil.which("pkg-config") is None:
        sys.exit(MISSING)
    proc = subprocess.run(
        ["pkg-config", *args, *PKG_MODULES], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.exit(MISSING)
    return shlex.split(proc.stdout)


def cdef_text() -> str:
    """Every ``cdefs/*.h`` in sorted order: the declarations cffi exposes."""
    return "\n".join(p.read_text() for p in sorted(CDEFS.glob("*.h")))


def shim_sources() -> list[str]:
    """The shim's real C files, relative to this folder as setuptools wants them."""
    return [str(p.relative_to(HERE)) for p in sorted(CDEFS.glob("*.c"))]


def compile_args() -> list[str]:
    """Warnings are errors; the sanitizer switch adds ASan and UBSan."""
    args = [*WARNINGS, "-O2", "-std=gnu11", "-fvisibility=hidden"]
    if os.environ.get("BITCOIN_SUPPORT_SANITIZE") == "1":
        args += [*SANITIZE, "-DBS_SANITIZE"]  # no record caches: ASan sees every reuse
    return args


def link_args() -> list[str]:
    """Linker flags that match the compile switches."""
    return SANITIZE[:1] if os.environ.get("BITCOIN_SUPPORT_SANITIZE") == "1" else []


cflags = pkg_config("--cflags")
libs = pkg_config("--libs")

ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
ffibuilder.set_source(
    "bitcoin_support._native",
    '#include "bitcoin_support.h"\n#include "shim.h"\n',
    sources=shim_sources(),
    include_dirs=[str(INCLUDE), str(CDEFS / "private")],
    extra_compile_args=[*cflags, *compile_args()],
    extra_link_args=[*libs, *link_args()],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE), verbose=False)
