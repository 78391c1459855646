"""The thread-rule and lock wrappers are written with the wrapped method's own parameters
(``_forward.forwarding``): every kind of argument reaches the method as it was passed, the
defaults are the method's, and no ``*args``/``**kwargs`` are packed on the way."""

from __future__ import annotations

import inspect
import traceback
from typing import Any

import pytest

from bitcoin_support import EventBase, EvHttp, EvHttpRequest, LibEvent, SecureString, SerializeData
from bitcoin_support._forward import forwarding

BODY = "    calls.append($SELF)\n    return $CALL\n"


class Owner:
    def plain(self, a: int, b: int = 2) -> tuple[int, int]:
        return a, b

    def kinds(
        self,
        a: int,
        /,
        b: int,
        c: list[int] | None = None,
        *rest: int,
        d: int,
        e: int = 5,
        **f: Any,
    ) -> tuple[Any, ...]:
        return a, b, c, rest, d, e, f

    def none(self) -> str:
        return "none"


def wrap(method: Any, calls: list[object]) -> Any:
    return forwarding(method, "wrapped", BODY, {"calls": calls})


def test_every_kind_of_argument_reaches_the_method() -> None:
    calls: list[object] = []
    owner = Owner()
    kinds = wrap(Owner.kinds, calls)
    assert kinds(owner, 1, 2, d=4) == (1, 2, None, (), 4, 5, {})
    assert kinds(owner, 1, b=2, c=[3], d=4, e=6, g=7) == (1, 2, [3], (), 4, 6, {"g": 7})
    assert kinds(owner, 1, 2, [3], 8, 9, d=4) == (1, 2, [3], (8, 9), 4, 5, {})
    plain = wrap(Owner.plain, calls)
    assert plain(owner, 1) == (1, 2) and plain(owner, a=3, b=4) == (3, 4)
    assert wrap(Owner.none, calls)(owner) == "none"
    assert calls == [owner] * 6


def test_bad_calls_fail_as_the_methods_own_would() -> None:
    kinds = wrap(Owner.kinds, [])
    owner = Owner()
    for bad in (
        lambda: kinds(owner, a=1, b=2, d=4),  # a is positional-only
        lambda: kinds(owner, 1, 2),  # d is keyword-only and required
        lambda: wrap(Owner.plain, [])(owner, 1, 2, 3),
    ):
        with pytest.raises(TypeError):
            bad()


def test_the_wrapper_keeps_the_methods_face_and_packs_nothing() -> None:
    kinds = wrap(Owner.kinds, [])
    assert kinds.__wrapped__ is Owner.kinds and kinds.__name__ == "kinds"
    assert inspect.signature(kinds) == inspect.signature(Owner.kinds)
    plain = wrap(Owner.plain, [])
    code = plain.__code__
    assert code.co_varnames[: code.co_argcount] == ("self", "a", "b")
    assert not code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS)
    assert plain.__defaults__ == (2,)


def test_parameter_names_take_no_part_in_the_body() -> None:
    def odd(CALLER: object, SELF: int = 1, CALL: int = 2) -> tuple[object, int, int]:
        return CALLER, SELF, CALL

    calls: list[object] = []
    assert wrap(odd, calls)("me", 3) == ("me", 3, 2)
    assert calls == ["me"]

    def hiding(self: object, _bs_method: int = 2) -> int:
        return _bs_method

    with pytest.raises(TypeError, match="_bs_method"):
        wrap(hiding, calls)


def test_a_traceback_through_the_wrapper_shows_its_lines() -> None:
    def fails(self: object) -> None:
        raise LookupError("inside")

    try:
        wrap(fails, [])(object())
    except LookupError:
        text = traceback.format_exc()
    assert "<wrapped " in text and "return _bs_method(self)" in text


def test_a_method_without_self_is_refused() -> None:
    with pytest.raises(TypeError, match="self parameter"):
        wrap(lambda *args: args, [])


@pytest.mark.parametrize(
    "method",
    [
        EventBase.loopexit,
        LibEvent.delete,
        EvHttp.bind,
        EvHttpRequest.read_body,
        EvHttpRequest.method.fget,  # type: ignore[attr-defined]
        SerializeData.__getitem__,
        SecureString.pop,
    ],
    ids=lambda m: m.__qualname__,
)
def test_the_packages_thread_rule_and_lock_wrappers_pack_nothing(method: Any) -> None:
    assert method.__wrapped__ is not None
    assert not method.__code__.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS)
