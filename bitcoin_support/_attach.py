"""Python side of ``bs_python_attach()`` for C hosts (see ``cdefs/embed/attach.c``).

Runs inside the embeddable library's interpreter, on the host's thread, with the GIL held. The
host's ``struct event_base *`` stays owned by the host: it is wrapped with
``EventBase.from_address``, which never frees it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from types import ModuleType
from typing import Any

# Modules loaded from a file path, by real path: a later attach (e.g. "teardown") finds the same
# module object, with the state its "setup" left behind.
_file_modules: dict[str, ModuleType] = {}


def load_module(name: str) -> ModuleType:
    """A dotted module name (imported as usual) or the path of a ``.py`` file (loaded once)."""
    if not name.endswith(".py"):
        return importlib.import_module(name)
    path = os.path.realpath(name)
    module = _file_modules.get(path)
    if module is not None:
        return module
    if not os.path.isfile(path):
        raise ModuleNotFoundError(f"bs_python_attach: no such file: {path!r}", path=path)
    stem = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"bs_python_attach: cannot load {path!r} as a module", path=path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _file_modules[path] = module
    return module


def attach(ffi: Any, base: Any, module: Any, function: Any) -> int:
    """Load ``module``, call ``module.function(EventBase.from_address(base))``; 0 or -1.

    Every exception (``SystemExit`` and ``KeyboardInterrupt`` included) is printed to stderr with
    its traceback and turned into -1: the host keeps running whatever the Python code does.
    """
    try:
        from ._event import EventBase

        module_name = os.fsdecode(ffi.string(module))
        function_name = ffi.string(function).decode()
        target = getattr(load_module(module_name), function_name)
        target(EventBase.from_address(int(ffi.cast("uintptr_t", base))))
    except BaseException:
        traceback.print_exc()
        return -1
    finally:
        # The host's stdio and Python's are separate buffers: flush so output keeps its order.
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    return 0
