"""Header mappings of an evhttp request: case-insensitive, read-only input, checked output."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from ._args import type_name as _type_name
from ._guard import _on_turn
from ._native import ffi, lib

if TYPE_CHECKING:
    from ._event_base import _LoopState
    from ._request import EvHttpRequest

_NULL = ffi.NULL


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

    @_on_turn("headers")
    def __getitem__(self, name: str) -> str:
        if not isinstance(name, str):
            raise KeyError(name)
        try:
            key = name.encode("latin-1")
        except UnicodeEncodeError:
            raise KeyError(name) from None
        if b"\0" in key:
            raise KeyError(name)
        value = lib.evhttp_find_header(self._q(), key)
        if value == _NULL:
            raise KeyError(name)
        return str(ffi.string(value).decode("latin-1"))

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
        try:
            self[name]  # type: ignore[index]
        except KeyError:
            return False
        return True

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
        if rc == lib.BS_HEADER_BAD_NAME:
            raise ValueError(f"header name {name!r} is not a valid HTTP token")
        if rc == lib.BS_HEADER_BAD_VALUE:
            raise ValueError(
                f"header value for {name!r} must not contain control characters (CR, LF, NUL...)"
            )
        if rc != 0:
            raise MemoryError("could not add the header")

    @_on_turn("headers")
    def set(self, name: str, value: str) -> None:
        """Replace every header called ``name`` (any case) with one line."""
        key = _header_bytes("name", name)
        val = _header_bytes("value", value)
        if lib.bs_http_header_check(key, len(key), val, len(val)) != 0:
            self.add(name, value)  # raises the precise ValueError
        self.remove(name)
        self.add(name, value)

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

    def __setitem__(self, name: str, value: str) -> None:
        self.set(name, value)

    def __delitem__(self, name: str) -> None:
        if not self.remove(name):
            raise KeyError(name)


def _header_bytes(what: str, value: object) -> bytes:
    if isinstance(value, str):
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"header {what} {value!r} is not latin-1 text") from None
    if isinstance(value, bytes):
        return value
    raise TypeError(f"header {what} must be str or bytes, not {_type_name(value)}")
