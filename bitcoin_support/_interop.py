"""Where C hosts find the package: the folder of ``bitcoin_support.h``, the embeddable library."""

from __future__ import annotations

import importlib.machinery
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def get_include() -> str:
    """The folder that holds ``bitcoin_support.h``, for a C compiler's ``-I``."""
    return str(_PACKAGE / "include")


def embed_library_path() -> str:
    """The path of the embeddable shared library a C host links (cffi embedding mode).

    It exports the C API of ``bitcoin_support.h``: the secure-memory functions, usable without
    starting Python, and ``bs_python_attach``. Raises ``FileNotFoundError`` when the package was
    installed without it.
    """
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = _PACKAGE / f"_embed{suffix}"
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"bitcoin_support: the embeddable library _embed*.so is missing from {_PACKAGE}; "
        "reinstall the package (pip install .) to build it"
    )
