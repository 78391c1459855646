"""Python side of ``bs_python_attach()``, ``bs_python_attach_evhttp()`` and
``bs_python_detach()`` for C hosts (see ``cdefs/embed/attach.c``).

Runs inside the embeddable library's interpreter, on the host's thread, with the GIL held. The
host's ``struct event_base *`` and ``struct evhttp *`` stay owned by the host: they are wrapped
with ``EventBase.from_address`` and ``EvHttp.from_address``, which never free them. The
wrappers hold everything Python makes on them until ``bs_python_detach`` closes them.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
import traceback
from collections.abc import Callable
from types import ModuleType
from typing import Any

# Modules loaded from a file path, by real path: a later attach (e.g. "teardown") finds the same
# module object, with the state its "setup" left behind.
_file_modules: dict[str, ModuleType] = {}
# What bs_python_detach runs first, by base address, before it closes the wrappers: work that
# needs the base to finish cleanly (a trio guest run). See at_detach().
_hooks_lock = threading.Lock()
_detach_hooks: dict[int, list[Callable[[], object]]] = {}


def at_detach(base_address: int, hook: Callable[[], object]) -> Callable[[], None]:
    """Run ``hook()`` when a C host calls ``bs_python_detach`` on this base, before Python's
    wrappers of it are closed (so the hook may still use the base). Returns a function that
    forgets the hook (once its work is done some other way)."""
    with _hooks_lock:
        _detach_hooks.setdefault(base_address, []).append(hook)

    def forget() -> None:
        with _hooks_lock:
            hooks = _detach_hooks.get(base_address)
            if hooks is not None and hook in hooks:
                hooks.remove(hook)
                if not hooks:
                    del _detach_hooks[base_address]

    return forget


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


def _flush() -> None:
    # The host's stdio and Python's are separate buffers: flush so output keeps its order.
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()


def _call(ffi: Any, module: Any, function: Any, wrap: Callable[[], object]) -> int:
    """Load ``module``, call ``module.function(wrap())``; 0 or -1.

    Every exception (``SystemExit`` and ``KeyboardInterrupt`` included) is printed to stderr with
    its traceback and turned into -1: the host keeps running whatever the Python code does.
    """
    try:
        module_name = os.fsdecode(ffi.string(module))
        function_name = ffi.string(function).decode()
        target = getattr(load_module(module_name), function_name)
        target(wrap())
    except BaseException:
        traceback.print_exc()
        return -1
    finally:
        _flush()
    return 0


def attach(ffi: Any, base: Any, module: Any, function: Any) -> int:
    """``bs_python_attach``: ``module.function(EventBase.from_address(base))``; 0 or -1."""
    from ._event_base import EventBase

    return _call(ffi, module, function, lambda: EventBase.from_address(_address(ffi, base)))


def attach_evhttp(ffi: Any, http: Any, module: Any, function: Any) -> int:
    """``bs_python_attach_evhttp``: ``module.function(EvHttp.from_address(http))``; 0 or -1."""
    from ._server import EvHttp

    return _call(ffi, module, function, lambda: EvHttp.from_address(_address(ffi, http)))


def detach(ffi: Any, base: Any) -> None:
    """``bs_python_detach``: release everything Python made on the host's base.

    Runs the ``at_detach`` hooks of the base, then closes the wrappers of the host's evhttp
    servers on it (their routes go, their pending requests get 503) and the wrapper of the base
    (every event, server and connection made on it). Errors are printed to stderr; a wrapper
    that cannot be closed now (detach called from inside one of Python's callbacks) says so.
    """
    from . import _event_base, _server

    address = _address(ffi, base)
    try:
        with _hooks_lock:
            hooks = _detach_hooks.pop(address, [])
        for hook in hooks:
            try:
                hook()
            except BaseException:
                traceback.print_exc()
        with _event_base._registry_lock:
            https = [h for h in _server._wrappers.values() if _base_address(h._base) == address]
            wrapper = _event_base._wrappers.get(address)
            closing = {h._address for h in https}
            for http_address, (_, _, base_address) in list(_server._gates.items()):
                if http_address in closing or base_address == address:
                    del _server._gates[http_address]
            for http_address, (_, base_address) in list(_server._stricts.items()):
                if http_address in closing or base_address == address:
                    del _server._stricts[http_address]
        for item in [*https, wrapper]:
            if item is None:
                continue
            try:
                item.close()
            except BaseException:
                traceback.print_exc()
    finally:
        _flush()


def set_gate(ffi: Any, http: Any, gate: Any, arg: Any) -> int:
    """``bs_python_set_request_gate``: the host's C check before Python's routes; 0 or -1."""
    try:
        from ._server import _set_gate

        _set_gate(_address(ffi, http), _address(ffi, gate), _address(ffi, arg))
    except BaseException:
        traceback.print_exc()
        return -1
    finally:
        _flush()
    return 0


def set_strict(ffi: Any, http: Any, on: int) -> int:
    """``bs_python_set_strict_framing``: the host's evhttp framed strictly (or not); 0 or -1."""
    try:
        from ._server import _set_strict

        _set_strict(_address(ffi, http), bool(on))
    except BaseException:
        traceback.print_exc()
        return -1
    finally:
        _flush()
    return 0


def _address(ffi: Any, ptr: Any) -> int:
    return int(ffi.cast("uintptr_t", ptr))


def _base_address(base: Any) -> int:
    """The event_base address of an EventBase (0 once closed)."""
    from ._native import ffi

    rec = base._rec
    return 0 if rec is None else int(ffi.cast("uintptr_t", rec.base))
