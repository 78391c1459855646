"""Build script of ``bitcoin_support._native`` (cffi API mode, system libevent 2.1).

The C declarations come from one header per C area (``HEADERS``, read in that order), the same
files the C code includes; ``for_cffi`` keeps what Python calls, as gevent's libev build does. The
shim itself is ``cdefs/*.c``, compiled with ``-Wall -Wextra -Werror``. Compiler and linker flags
for libevent come from ``pkg-config``.

Set ``BITCOIN_SUPPORT_SANITIZE=1`` to build the shim with AddressSanitizer and UBSan.
"""

from __future__ import annotations

import os
import re
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


# The C areas in the order cffi must read them (each uses the types of the ones before it).
HEADERS = (
    INCLUDE / "bitcoin_support.h",
    CDEFS / "secure.h",
    CDEFS / "event.h",
    CDEFS / "http.h",
    CDEFS / "callbacks.h",
)
_CONDITIONAL = re.compile(r"#\s*(ifdef|ifndef|if|else|endif)\b\s*(\w*)")


def for_cffi(text: str) -> str:
    """A header as cffi reads it: "#ifdef BS_CDEF" blocks kept, "#ifndef BS_CDEF" ones and
    ``__cplusplus`` ones dropped, include guards and other preprocessor lines removed, except
    cffi's own ``#define NAME ...`` constants."""
    out: list[str] = []
    keep: list[bool] = []  # one entry per open conditional: whether its lines are kept
    for line in text.splitlines():
        m = _CONDITIONAL.match(line.strip())
        if m:
            kind, name = m.groups()
            if kind == "endif":
                keep.pop()
            elif kind == "else":
                keep[-1] = not keep[-1]
            elif kind == "ifdef":
                keep.append(name == "BS_CDEF")
            elif kind == "ifndef":
                keep.append(name not in ("BS_CDEF", "__cplusplus"))
            else:
                raise ValueError(f"build_ffi: '#if' is not for cdef headers: {line!r}")
            continue
        if not all(keep):
            continue
        stripped = line.strip()
        if stripped.startswith("#") and not stripped.endswith("..."):
            continue  # #include, #define GUARD
        out.append(line)
    if keep:
        raise ValueError("build_ffi: unbalanced conditionals in a cdef header")
    return "\n".join(out)


def cdef_text() -> str:
    """The declarations cffi exposes: what Python calls, from the one copy C reads too."""
    return "\n".join(for_cffi(p.read_text()) for p in HEADERS)


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
    "".join(f'#include "{h.name}"\n' for h in HEADERS),
    sources=shim_sources(),
    include_dirs=[str(INCLUDE), str(CDEFS)],
    extra_compile_args=[*cflags, *compile_args()],
    extra_link_args=[*libs, *link_args()],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE), verbose=False)
