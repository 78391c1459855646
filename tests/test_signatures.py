"""What ``help()``, ``inspect.signature`` and IDEs show for the public API: the parameters written
in the source, through every decorator (the thread-rule wrapper among them)."""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

import bitcoin_support as bs
from bitcoin_support import aio, trio_guest

Def = ast.FunctionDef | ast.AsyncFunctionDef


def public_modules() -> list[ModuleType]:
    return [bs, aio, trio_guest]


def written_parameters(node: Def) -> list[str]:
    """The parameter names of a ``def`` as written, in order (``*args``/``**kw`` included)."""
    a = node.args
    names = [p.arg for p in (*a.posonlyargs, *a.args)]
    if a.vararg:
        names.append("*" + a.vararg.arg)
    names += [p.arg for p in a.kwonlyargs]
    if a.kwarg:
        names.append("**" + a.kwarg.arg)
    return names


def shown_parameters(fn: Callable[..., Any]) -> list[str]:
    """The parameter names ``inspect.signature`` shows, with the same star marks."""
    out = []
    for p in inspect.signature(fn).parameters.values():
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        out.append(prefix + p.name)
    return out


def callable_of(owner: Any, name: str) -> Callable[..., Any] | None:
    """The function behind a class or module attribute (property getter, classmethod...)."""
    attr = inspect.getattr_static(owner, name)
    if isinstance(attr, property):
        return attr.fget
    if isinstance(attr, (classmethod, staticmethod)):
        return attr.__func__  # type: ignore[no-any-return]
    return attr if callable(attr) else None


def public_defs() -> Iterator[tuple[str, Callable[..., Any], Def]]:
    """Every public function and method of the public modules, with its ``def`` in the source."""
    seen: set[int] = set()
    for module in public_modules():
        for export in module.__all__:
            obj = getattr(module, export)
            if id(obj) in seen or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            seen.add(id(obj))
            if not getattr(obj, "__module__", "").startswith("bitcoin_support"):
                continue
            tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
            node = tree.body[0]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{module.__name__}.{export}", obj, node
                continue
            assert isinstance(node, ast.ClassDef)
            for item in node.body:
                if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                if item.name.startswith("_") and item.name != "__init__":
                    continue
                fn = callable_of(obj, item.name)
                if fn is not None and any(
                    isinstance(d, ast.Attribute) and d.attr == "setter" for d in item.decorator_list
                ):
                    continue  # a property's setter: the getter is checked under the same name
                if fn is not None:
                    yield f"{module.__name__}.{export}.{item.name}", fn, item


DEFS = list(public_defs())


def test_the_walk_finds_the_thread_rule_wrapped_methods() -> None:
    names = {name for name, _, _ in DEFS}
    assert {
        "bitcoin_support.EvHttp.bind",
        "bitcoin_support.EvHttp.set_cb",
        "bitcoin_support.EventBase.loopbreak",
        "bitcoin_support.EventBase.loopexit",
        "bitcoin_support.EvHttpConnection.make_request",
        "bitcoin_support.LibEvent.add",
    } <= names
    assert len(DEFS) > 100


@pytest.mark.parametrize(("name", "fn", "node"), DEFS, ids=[d[0] for d in DEFS])
def test_signature_shows_the_parameters_written_in_the_source(
    name: str, fn: Callable[..., Any], node: Def
) -> None:
    assert shown_parameters(fn) == written_parameters(node)
    assert fn.__name__ == node.name
    doc = None if fn.__doc__ is None else inspect.cleandoc(fn.__doc__)
    assert doc == ast.get_docstring(node)


def test_guarded_method_keeps_its_annotations_and_docstring() -> None:
    sig = inspect.signature(bs.EvHttp.bind)
    assert str(sig) == "(self, host: 'str' = '127.0.0.1', port: 'int' = 0) -> 'int'"
    assert bs.EvHttp.bind.__doc__ and "returns the bound port" in bs.EvHttp.bind.__doc__
    assert bs.EvHttp.bind.__qualname__ == "EvHttp.bind"
