"""The registry room: by address, the wrappers of a C host's event bases and evhttp servers
(``from_address``), the ones Python made, and the hosts' choices for their servers (a request
gate, strict framing), under one lock. ``_attach``'s detach goes through the functions here.

A wrapper is held strongly while open: the host's loop may call what Python made on it with no
Python reference left (docs/design/lifetimes.md, "from_address wrappers"). What Python made is
held weakly, so that it is never wrapped as if a host owned it, and a base's wrapper shares its
owner's thread guard.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, final

from ._native import ffi, lib

if TYPE_CHECKING:
    from ._event_base import EventBase
    from ._server import EvHttp

lock: Final = threading.RLock()

_T = TypeVar("_T")


@final
class _Room(Generic[_T]):
    """Wrappers of a host's objects by address (strong while open, until their release takes
    them out) and the objects Python made by address (weak)."""

    __slots__ = ("owned", "wrappers")

    def __init__(self) -> None:
        self.wrappers: dict[int, _T] = {}
        self.owned: weakref.WeakValueDictionary[int, _T] = weakref.WeakValueDictionary()

    def wrapper(self, address: int) -> _T | None:
        with lock:
            return self.wrappers.get(address)

    def own(self, address: int, obj: _T) -> None:
        with lock:
            self.owned[address] = obj

    def disown(self, address: int, obj: _T) -> None:
        """Forget what Python made at ``address``, if it is still ``obj``."""
        with lock:
            if self.owned.get(address) is obj:
                del self.owned[address]

    def unwrap(self, address: int, obj: _T) -> None:
        """Let go of the wrapper at ``address``, if it is still ``obj`` (it was released)."""
        with lock:
            if self.wrappers.get(address) is obj:
                del self.wrappers[address]


bases: Final = _Room["EventBase"]()
servers: Final = _Room["EvHttp"]()

# A host's BsRequestGate (bs_python_set_request_gate) by evhttp address: (gate, arg, base
# address or 0), applied to every wrapper made for that address; kept until bs_python_detach,
# so Python code that closes its wrapper and wraps the evhttp again is still behind the gate.
_gates: dict[int, tuple[int, int, int]] = {}
# A host's choice of strict framing (bs_python_set_strict_framing) by evhttp address: (on, base
# address or 0), applied to every wrapper made for that address, until bs_python_detach (which
# closes the wrappers, and a closed wrapper takes the framer off the host's evhttp).
_stricts: dict[int, tuple[bool, int]] = {}
# By the address of a host's event_base: how many request records of Python's on the host's
# evhttp servers there are still alive (C counts them down as it frees them; a host's shutdown
# waits for the replies to be written: bs_python_pending). Never freed: records may point here.
_live_counts: dict[int, Any] = {}


def base_address(base: EventBase) -> int:
    """The event_base address of an EventBase (0 once closed)."""
    rec = base._rec
    return 0 if rec is None else int(ffi.cast("uintptr_t", rec.base))


def servers_on(address: int) -> list[EvHttp]:
    """The wrappers of a host's evhttp servers on the event_base at ``address``."""
    with lock:
        return [h for h in servers.wrappers.values() if base_address(h._base) == address]


def live_count(address: int) -> Any:
    """The ``int *`` that counts Python's request records on the host's servers of a base."""
    with lock:
        live = _live_counts.get(address)
        if live is None:
            live = _live_counts[address] = ffi.new("int *")
        return live


def live_requests(address: int) -> int:
    """Python's request records still alive on the host's evhttp servers of a base."""
    live = _live_counts.get(address)
    return 0 if live is None else int(live[0])


def _base_of(http_address: int) -> int:
    """The base of a host's evhttp, found through its listeners (0: none bound yet)."""
    found = lib.bs_evhttp_find_base(ffi.cast("struct evhttp *", http_address))
    return int(ffi.cast("uintptr_t", found))


def _apply_gate(rec: Any, gate: int, arg: int) -> None:
    lib.bs_evhttp_set_gate(
        rec, ffi.cast("BsRequestGate", gate) if gate else ffi.NULL, ffi.cast("void *", arg)
    )


def set_gate(address: int, gate: int, arg: int) -> None:
    """Set (or with gate 0 remove) a host's gate for the evhttp at ``address``."""
    with lock:
        if gate:
            _gates[address] = (gate, arg, _base_of(address))
        else:
            _gates.pop(address, None)
        wrapper = servers.wrappers.get(address)
        if wrapper is not None and wrapper._rec is not None:
            _apply_gate(wrapper._rec, gate, arg)


def set_strict(address: int, on: bool) -> bool:
    """Frame the connections of the host's evhttp at ``address`` strictly, or not. The framer
    is installed through a wrapper: True when there is none yet and ``on``, for the caller to
    make one (``EvHttp.from_address`` applies the choice; the evhttp's base must be findable,
    through a listening socket, or wrapped already)."""
    with lock:
        _stricts[address] = (on, _base_of(address))
        wrapper = servers.wrappers.get(address)
    if wrapper is not None and wrapper._rec is not None:
        lib.bs_evhttp_strict(wrapper._rec, 1 if on else 0)
        return False
    return on


def apply_host_choices(address: int, rec: Any) -> None:
    """Give a new wrapper's record the gate and framing its host chose for ``address``."""
    with lock:
        gate = _gates.get(address)
        if gate is not None:
            _apply_gate(rec, gate[0], gate[1])
        strict = _stricts.get(address)
        if strict is not None:
            lib.bs_evhttp_strict(rec, 1 if strict[0] else 0)


def forget_host_choices(address: int) -> None:
    """The host's gates and strict-framing choices of its evhttp servers on the base at
    ``address`` end with its detach (the servers' records keep theirs until they are closed)."""
    with lock:
        on_base = {h._address for h in servers_on(address)}
        for http_address, (_, _, at) in list(_gates.items()):
            if http_address in on_base or at == address:
                del _gates[http_address]
        for http_address, (_, at) in list(_stricts.items()):
            if http_address in on_base or at == address:
                del _stricts[http_address]
