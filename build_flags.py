"""Compiler and linker flags shared by the two build scripts (``build_ffi.py``, ``build_embed.py``).

Functions only: importing this runs nothing. libevent's flags come from ``pkg-config``; missing
development files stop the build with one clear line naming the Debian packages.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

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


def sanitized() -> bool:
    """``BITCOIN_SUPPORT_SANITIZE=1``: build with AddressSanitizer and UBSan."""
    return os.environ.get("BITCOIN_SUPPORT_SANITIZE") == "1"


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


def libevent_cflags() -> list[str]:
    return pkg_config("--cflags")


def libevent_libs() -> list[str]:
    return pkg_config("--libs")


def compile_args() -> list[str]:
    """Warnings are errors; the sanitizer switch adds ASan and UBSan."""
    args = [*WARNINGS, "-O2", "-std=gnu11", "-fvisibility=hidden"]
    if sanitized():
        args += [*SANITIZE, "-DBS_SANITIZE"]  # no record caches: ASan sees every reuse
    return args


def link_args() -> list[str]:
    """Linker flags that match the compile switches."""
    return SANITIZE[:1] if sanitized() else []
