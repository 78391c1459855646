"""Build script of the embeddable library ``bitcoin_support/_embed*.so`` (cffi embedding mode).

A C host links this library and calls the functions of ``bitcoin_support.h``:

- the secure-memory API (``bs_memory_cleanse``, ``bs_secure_allocate``, ``bs_secure_deallocate``),
  compiled in from ``cdefs/cleanse.c``, ``lockedpool.c``, ``zeroafterfree.c`` and ``utf8.c``,
  and usable without starting Python;
- the accessors of the ``LibEvent`` record (``cdefs/event_access.c``, also in ``_native``);
- ``bs_python_attach``, ``bs_python_attach_evhttp``, ``bs_python_detach`` and
  ``bs_python_pending`` (``cdefs/embed/attach.c``), which start Python when needed and then
  call the cffi embedding API functions declared in ``cdefs/embed/embed.h``, implemented in
  Python by ``bitcoin_support._attach``.

The library is linked against libpython with an rpath to its folder, so a host needs nothing but
this library. The python running the build is baked in (``BS_BUILD_EXECUTABLE``) as the fallback
way to find the environment when the library is not inside a ``site-packages`` folder (editable
installs). Compiler switches match ``build_ffi.py``.
"""

from __future__ import annotations

import runpy
import sys
import sysconfig
from pathlib import Path
from types import SimpleNamespace

from cffi import FFI

HERE = Path(__file__).resolve().parent
CDEFS = HERE / "cdefs"
EMBED = CDEFS / "embed"
# Secure memory, as Bitcoin Core's support/ splits it: the wipe, the locked pool, the wipe-on-free
# heap, and the UTF-8 check SecureString uses.
SECURE_SOURCES = tuple(
    CDEFS / name for name in ("cleanse.c", "lockedpool.c", "zeroafterfree.c", "utf8.c")
)
INCLUDE = HERE / "bitcoin_support" / "include"
MODULE = "bitcoin_support._embed"
FLAGS = HERE / "build_flags.py"

# Runs once, on the first bs_python_attach(), with the GIL held, after attach.c started Python.
INIT_CODE = """
from bitcoin_support._embed import ffi
from bitcoin_support._attach import attach, attach_evhttp, detach, pending, set_gate, set_strict


@ffi.def_extern()
def bs_py_embed_attach(base, module, function, result):
    result[0] = attach(ffi, base, module, function)


@ffi.def_extern()
def bs_py_embed_attach_evhttp(http, module, function, result):
    result[0] = attach_evhttp(ffi, http, module, function)


@ffi.def_extern()
def bs_py_embed_detach(base, result):
    result[0] = detach(ffi, base)


@ffi.def_extern()
def bs_py_embed_pending(base, result):
    result[0] = pending(ffi, base)


@ffi.def_extern()
def bs_py_embed_set_gate(http, gate, arg, result):
    result[0] = set_gate(ffi, http, gate, arg)


@ffi.def_extern()
def bs_py_embed_set_strict(http, on, result):
    result[0] = set_strict(ffi, http, on)
"""


def c_string(text: str) -> str:
    """``text`` as a C string literal (for a -D define)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def python_library() -> tuple[str, list[str]]:
    """libpython's name for ``-l`` and its folder. cffi adds these itself only in
    ``ffi.compile()``, not through setuptools, and the library must depend on libpython."""
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}{getattr(sys, 'abiflags', '')}"
    libdir = sysconfig.get_config_var("LIBDIR")
    return version, [libdir] if libdir else []


def link_args() -> list[str]:
    """rpath to libpython's folder, and an soname equal to the file name setuptools gives it."""
    args = [f"-Wl,-soname,_embed{sysconfig.get_config_var('EXT_SUFFIX')}"]
    libdir = sysconfig.get_config_var("LIBDIR")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir:
        args.append(f"-Wl,-rpath,{libdir}")
    return args


# build_flags.py beside this file, by path: setuptools does not put this folder on sys.path.
flags = SimpleNamespace(**runpy.run_path(str(FLAGS)))
pythonlib, pythonlib_dirs = python_library()

embedbuilder = FFI()
embedbuilder.embedding_api((EMBED / "embed.h").read_text())
embedbuilder.embedding_init_code(INIT_CODE)
embedbuilder.set_source(
    MODULE,
    '#include "bitcoin_support.h"\n',
    sources=[
        str(p.relative_to(HERE))
        for p in (*SECURE_SOURCES, CDEFS / "event_access.c", EMBED / "attach.c")
    ],
    include_dirs=[str(INCLUDE), str(CDEFS)],
    define_macros=[("BS_BUILD_EXECUTABLE", c_string(sys.executable))],
    # cffi's generated embedding support has an unused parameter; -Wextra stays on otherwise, and
    # attach.c turns the warning back into an error for itself (the secure-memory files are held
    # to the full set by build_ffi.py, which compiles them into _native).
    extra_compile_args=[
        "-pthread",
        *flags.libevent_cflags(),
        *flags.compile_args(),
        "-Wno-unused-parameter",
    ],
    extra_link_args=["-pthread", *link_args(), *flags.libevent_libs(), *flags.link_args()],
    libraries=[pythonlib, "dl"],
    library_dirs=pythonlib_dirs,
    # attach.c uses PyConfig, which the limited API lacks; the library is tied to this Python.
    py_limited_api=False,
)

if __name__ == "__main__":
    # Builds this library alone, in place (setup.py builds both modules).
    import os

    from setuptools import setup

    os.chdir(HERE)
    setup(
        script_args=["-q", "build_ext", "--inplace"],
        cffi_modules=["build_embed.py:embedbuilder"],
    )
