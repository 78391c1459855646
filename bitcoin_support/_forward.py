"""Method wrappers written with the wrapped method's own parameter list.

A wrapper declared ``(self, /, *args, **kwargs)`` builds a tuple and a dict on every call and
unpacks them again into the method: about 200 ns a call on this package's per-request and
per-timer paths. ``forwarding`` writes the wrapper's source with the method's parameters and
passes each argument on as it came, as ``dataclasses`` writes the methods it adds.
"""

from __future__ import annotations

import functools
import inspect
import linecache
from collections.abc import Callable
from typing import Any

__all__ = ["forwarding"]

_Param = inspect.Parameter


def _parameters(method: Callable[..., Any], ns: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The parameter list of ``method`` (defaults named in ``ns``) and the arguments that pass
    each parameter on to it."""
    declared: list[str] = []
    passed: list[str] = []
    params = list(inspect.signature(method).parameters.values())
    starred = False
    for i, p in enumerate(params):
        name = p.name
        if name.startswith("_bs_"):
            raise TypeError(f"{method.__qualname__}: parameter {name!r} would hide the wrapper's")
        if p.kind is _Param.VAR_POSITIONAL:
            declared.append(f"*{name}")
            passed.append(f"*{name}")
            starred = True
            continue
        if p.kind is _Param.VAR_KEYWORD:
            declared.append(f"**{name}")
            passed.append(f"**{name}")
            continue
        if p.kind is _Param.KEYWORD_ONLY:
            if not starred:
                declared.append("*")
                starred = True
            passed.append(f"{name}={name}")
        else:
            passed.append(name)
        if p.default is not _Param.empty:
            ns[f"_bs_default_{i}"] = p.default
            name = f"{name}=_bs_default_{i}"
        declared.append(name)
        last_positional = i + 1 == len(params) or params[i + 1].kind is not _Param.POSITIONAL_ONLY
        if p.kind is _Param.POSITIONAL_ONLY and last_positional:
            declared.append("/")
    return declared, passed


def forwarding(
    method: Callable[..., Any], kind: str, body: str, names: dict[str, Any]
) -> Callable[..., Any]:
    """``method`` wrapped by ``body``: Python source indented by four spaces, in which ``$SELF``
    stands for the first parameter and ``$CALL`` for the call of ``method`` with every argument
    passed on (``$`` is in no Python name, so no parameter's name can take part in them).
    ``names`` are the other names the body uses, each starting with ``_bs_``, which no parameter
    may (TypeError). The wrapper has the method's name, docstring and ``__wrapped__``."""
    ns: dict[str, Any] = dict(names, _bs_method=method)
    declared, passed = _parameters(method, ns)
    if not passed or passed[0].startswith("*"):
        raise TypeError(f"{method.__qualname__}: a wrapped method needs its self parameter")
    call = f"_bs_method({', '.join(passed)})"
    source = body.replace("$SELF", passed[0]).replace("$CALL", call)
    source = f"def {kind}({', '.join(declared)}):\n{source}"
    filename = f"<{kind} {method.__qualname__}>"
    exec(compile(source, filename, "exec"), ns)
    # tracebacks through the wrapper show its lines, as attrs registers the methods it writes
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    wrapper: Callable[..., Any] = functools.wraps(method)(ns[kind])
    return wrapper
