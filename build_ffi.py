"""Build script of ``bitcoin_support._native`` (cffi API mode, system libevent 2.1).

The C declarations come from one header per C area (``HEADERS``, read in that order), the same
files the C code includes; ``for_cffi`` keeps what Python calls, as gevent's libev build does. The
shim itself is ``cdefs/*.c``, compiled with ``-Wall -Wextra -Werror``. Compiler and linker flags
for libevent come from ``pkg-config`` (``build_flags.py``, shared with ``build_embed.py``).

Set ``BITCOIN_SUPPORT_SANITIZE=1`` to build the shim with AddressSanitizer and UBSan.
"""

from __future__ import annotations

import re
import runpy
from pathlib import Path
from types import SimpleNamespace

from cffi import FFI

# build_flags.py beside this file, by path: setuptools does not put this folder on sys.path.
flags = SimpleNamespace(**runpy.run_path(str(Path(__file__).resolve().parent / "build_flags.py")))
HERE = flags.HERE
CDEFS = flags.CDEFS
INCLUDE = flags.INCLUDE

# The C areas in the order cffi must read them (each uses the types of the ones before it).
HEADERS = (
    INCLUDE / "bitcoin_support.h",
    CDEFS / "secure.h",
    CDEFS / "event.h",
    CDEFS / "http.h",
    CDEFS / "aio.h",
    CDEFS / "aio_stream.h",
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


ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
ffibuilder.set_source(
    "bitcoin_support._native",
    "".join(f'#include "{h.name}"\n' for h in HEADERS),
    sources=shim_sources(),
    include_dirs=[str(INCLUDE), str(CDEFS)],
    extra_compile_args=[*flags.libevent_cflags(), *flags.compile_args()],
    extra_link_args=[*flags.libevent_libs(), *flags.link_args()],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE), verbose=False)
