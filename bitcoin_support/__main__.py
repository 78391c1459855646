"""``python -m bitcoin_support``: the version, what it runs on, and what can be run."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from importlib.util import find_spec

import cffi

from ._cli import OneLineParser
from ._native import ffi, lib
from ._version import __version__

PROG = "python -m bitcoin_support"


def about() -> str:
    """The lines ``python -m bitcoin_support`` prints."""
    libevent = ffi.string(lib.event_get_version()).decode()
    trio = (
        "installed" if find_spec("trio") else "not installed: pip install 'bitcoin_support[trio]'"
    )
    return "\n".join(
        [
            f"bitcoin_support {__version__} (libevent {libevent}, cffi {cffi.__version__}, "
            f"Python {platform.python_version()})",
            "",
            "Run:",
            "  python -m bitcoin_support.echo [--host 127.0.0.1] [--port 8080] [--workers 1]"
            " [--max-body 1048576]",
            "      the HTTP echo server (--help for details)",
            "",
            "Use from Python: import bitcoin_support (secure memory, libevent handles, evhttp),",
            "  bitcoin_support.aio (asyncio on libevent),",
            f"  bitcoin_support.trio_guest (trio on libevent; trio {trio}).",
            "From C: headers in bitcoin_support.get_include(), the embeddable library at",
            "  bitcoin_support.embed_library_path().",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Print the version (``--version``: only that) and what the package offers."""
    parser = OneLineParser(
        prog=PROG, description="The version of bitcoin_support and what it runs."
    )
    parser.add_argument("--version", action="version", version=f"bitcoin_support {__version__}")
    parser.parse_args(argv)
    try:
        print(about(), flush=True)
    except BrokenPipeError:  # e.g. piped into `head -1`: the reader has what it wanted
        # Point stdout at /dev/null so that the flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
