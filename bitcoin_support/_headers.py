"""Header mappings of an evhttp request: case-insensitive, read-only input, checked output."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._args import type_name as _type_name
from ._guard import _on_turn
from ._native import ffi, lib

if TYPE_CHECKING:
    from ._event_base import _LoopState
    from ._request import EvHttpRequest

_NULL = ffi.NULL
_T = TypeVar("_T")
_get_ident = threading.get_ident
_find = lib.bs_http_find_header
_set = lib.bs_http_header_set
_string = ffi.string


class _Headers(Mapping[str, str]):
    """A case-insensitive, read-only view of a request's headers (in libevent's order)."""

    __slots__ = ("_out", "_req")

    def __init__(self, req: EvHttpRequest, out: bool) -> None:
        self._req = req
        self._out = out

    @property
    def _st(self) -> _LoopState | None:
        """The loop state of the request's base: the headers live in the request (_on_turn)."""
        return self._req._st

    def _q(self) -> Any:
        r = self._req._live_req("headers")
        if self._out:
            return lib.evhttp_request_get_output_headers(r)
        return lib.evhttp_request_get_input_headers(r)

    @_on_turn("headers")
    def _entries(self) -> list[tuple[str, str]]:
        """Every (name, value), read in one turn: no pointer into the list outlives it."""
        out = []
        kv = lib.bs_http_header_first(self._q())
        while kv != _NULL:
            out.append(
                (ffi.string(kv.key).decode("latin-1"), ffi.string(kv.value).decode("latin-1"))
            )
            kv = lib.bs_http_header_next(kv)
        return out

    def _lookup(self, name: object) -> str | None:
        """The value of the first header called ``name`` (any case), or None; ClosedError once
        the request is released.

        On the thread dispatching the base (or before a client request has one) the thread rule
        is ``_on_turn``'s one comparison, made here; any other thread takes ``_on_turn``'s path.
        The lookup is one C call (``bs_http_find_header``) and a miss raises nothing.
        """
        req = self._req
        rec = req._rec
        st = req._st
        if rec is None or (st is not None and st.guard.thread != _get_ident()):
            return self._lookup_on_turn(name)
        if not isinstance(name, str):  # _find_in(), inlined on the per-request path
            return None
        try:
            key = name.encode("latin-1")
        except UnicodeEncodeError:
            return None
        value = _find(rec, self._out, key, len(key))
        if value:
            text: str = _string(value).decode("latin-1")
            return text
        if rec.req == _NULL:  # libevent's request is gone: not a miss
            req._live_req("headers")
        return None

    @_on_turn("headers")
    def _lookup_on_turn(self, name: object) -> str | None:
        self._req._live_req("headers")  # ClosedError, or RuntimeError from a forbidden thread
        return self._find_in(self._req._rec, name)

    def _find_in(self, rec: Any, name: object) -> str | None:
        if not isinstance(name, str):
            return None
        try:
            key = name.encode("latin-1")
        except UnicodeEncodeError:
            return None
        value = _find(rec, self._out, key, len(key))
        if value:
            text: str = _string(value).decode("latin-1")
            return text
        if rec.req == _NULL:  # libevent's request is gone: not a miss
            self._req._live_req("headers")
        return None

    def __getitem__(self, name: str) -> str:
        value = self._lookup(name)
        if value is None:
            raise KeyError(name)
        return value

    @overload
    def get(self, name: str, /) -> str | None: ...
    @overload
    def get(self, name: str, /, default: str | _T) -> str | _T: ...
    def get(self, name: str, /, default: object = None) -> object:
        """The value of ``name`` (any case), or ``default``: a miss raises nothing inside."""
        value = self._lookup(name)
        return default if value is None else value

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` (any case), in the order received."""
        folded = name.lower()
        return [v for k, v in self._entries() if k.lower() == folded]

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for k, _ in self._entries():
            low = k.lower()
            if low not in seen:
                seen.add(low)
                yield k

    def __len__(self) -> int:
        return len({k.lower() for k, _ in self._entries()})

    def __contains__(self, name: object) -> bool:
        return self._lookup(name) is not None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self._entries())!r})"


class _OutputHeaders(_Headers, MutableMapping[str, str]):
    """The headers to send: ``add`` appends, ``set`` (or ``[]=``) replaces, ``remove`` deletes.

    Names must be HTTP tokens and values must not hold CR, LF or NUL (``ValueError``): no header
    injection.
    """

    __slots__ = ()

    @_on_turn("headers")
    def add(self, name: str, value: str) -> None:
        """Append a header (a repeated name is sent as repeated lines)."""
        key = _header_bytes("name", name)
        val = _header_bytes("value", value)
        rc = lib.bs_http_header_add(self._q(), key, len(key), val, len(val))
        if rc != 0:
            _raise_for(rc, name)

    def set(self, name: str, value: str) -> None:
        """Replace every header called ``name`` (any case) with one line."""
        if type(name) is str and type(value) is str:  # _header_bytes(), inlined
            try:
                key = name.encode("latin-1")
                val = value.encode("latin-1")
            except UnicodeEncodeError:
                key = _header_bytes("name", name)  # raises the precise ValueError
                val = _header_bytes("value", value)
        else:
            key = _header_bytes("name", name)
            val = _header_bytes("value", value)
        req = self._req
        rec = req._rec
        st = req._st
        if rec is None or (st is not None and st.guard.thread != _get_ident()):
            self._set_on_turn(name, key, val)  # the thread rule and the closed check, as _lookup
            return
        rc = _set(rec, key, len(key), val, len(val))
        if rc != 0:
            self._set_failed(rc, name)

    @_on_turn("headers")
    def _set_on_turn(self, name: str, key: bytes, val: bytes) -> None:
        self._req._live_req("headers")
        rc = _set(self._req._rec, key, len(key), val, len(val))
        if rc != 0:
            self._set_failed(rc, name)

    def _set_failed(self, rc: int, name: str) -> None:
        if rc == lib.BS_HEADER_GONE:
            self._req._live_req("headers")  # raises ClosedError
        _raise_for(rc, name)

    @_on_turn("headers")
    def remove(self, name: str) -> int:
        """Remove every header called ``name`` (any case); returns how many were removed."""
        key = _header_bytes("name", name)
        if lib.bs_http_header_check(key, len(key), b"", 0) != 0:
            raise ValueError(f"header name {name!r} is not a valid HTTP token")
        q = self._q()
        n = 0
        while lib.evhttp_remove_header(q, key) == 0:
            n += 1
        return n

    @_on_turn("headers")
    def clear(self) -> None:
        lib.evhttp_clear_headers(self._q())

    __setitem__ = set  # ``h[name] = value`` is ``set``, without a frame of its own

    def __delitem__(self, name: str) -> None:
        if not self.remove(name):
            raise KeyError(name)


def _raise_for(rc: int, name: str) -> None:
    """The error of a nonzero ``bs_http_header_add``/``bs_http_header_set`` result."""
    if rc == lib.BS_HEADER_BAD_NAME:
        raise ValueError(f"header name {name!r} is not a valid HTTP token")
    if rc == lib.BS_HEADER_BAD_VALUE:
        raise ValueError(
            f"header value for {name!r} must not contain control characters (CR, LF, NUL...)"
        )
    raise MemoryError("could not add the header")


def _header_bytes(what: str, value: object) -> bytes:
    if isinstance(value, str):
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"header {what} {value!r} is not latin-1 text") from None
    if isinstance(value, bytes):
        return value
    raise TypeError(f"header {what} must be str or bytes, not {_type_name(value)}")
