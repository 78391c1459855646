"""Python side of ``bs_python_attach()`` for C hosts (see ``cdefs/embed/attach.c``).

Runs inside the embeddable library's interpreter, on the host's thread, with the GIL held. The
host's ``struct event_base *`` stays owned by the host: it is wrapped with
``EventBase.from_address``, which never frees it.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from typing import Any


def attach(ffi: Any, base: Any, module: Any, function: Any) -> int:
    """Import ``module``, call ``module.function(EventBase.from_address(base))``; 0 or -1.

    Every exception (``SystemExit`` and ``KeyboardInterrupt`` included) is printed to stderr with
    its traceback and turned into -1: the host keeps running whatever the Python code does.
    """
    try:
        from ._event import EventBase

        module_name = ffi.string(module).decode()
        function_name = ffi.string(function).decode()
        target = getattr(importlib.import_module(module_name), function_name)
        target(EventBase.from_address(int(ffi.cast("uintptr_t", base))))
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        return -1
    return 0
