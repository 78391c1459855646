"""The selector of ``aio.EventLoop``: registrations are libevent events on an EventBase.

asyncio's selector loop asks a selector three things: register/modify/unregister a descriptor
for reading and/or writing, and ``select(timeout)`` for what became ready. Here each direction of
a registered descriptor is one persistent libevent event (``EV_READ|EV_PERSIST`` or
``EV_WRITE|EV_PERSIST``), added while the direction is wanted and deleted otherwise; after
``unregister`` they are kept, deleted, for the descriptor's next registration (``SPARE_MAX``). Its
callback is C (``bs_aio_ready_cb``, cdefs/aio.c), which appends the descriptor and direction to
a queue that ``select()`` takes in one call. ``select()`` runs one round of the base
(``EVLOOP_ONCE``, with ``EVLOOP_NONBLOCK`` for a zero timeout and a one-shot libevent timer for a
positive one), so every other user of the base (``LibEvent`` callbacks, evhttp servers, a trio
guest) runs in the same round, and returns what was recorded. While callbacks are ready, a zero
timeout polls the base at most every ``POLL_INTERVAL``. When the loop is attached to a base
someone else dispatches, the readiness arrives outside ``select()``: the events then have Python
callbacks that record it and wake the loop (``wake``), and ``select()`` called from the loop's
own tick only hands over what was recorded.
"""

from __future__ import annotations

import selectors
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from ._errors import ClosedError
from ._event import EV_PERSIST, EV_READ, EV_WRITE, LibEvent, obtain_event
from ._event_base import EVLOOP_NONBLOCK, EVLOOP_ONCE, EventBase
from ._native import ffi, lib

__all__ = ["LibeventSelector"]

_READ: Final = selectors.EVENT_READ
_WRITE: Final = selectors.EVENT_WRITE
_ONCE: Final = EVLOOP_ONCE
_POLL: Final = EVLOOP_ONCE | EVLOOP_NONBLOCK
# While callbacks are ready, the base is polled for I/O at most this often (seconds): a chain of
# callbacks runs without a system call per callback, and I/O waits no longer than this for it.
POLL_INTERVAL: Final = 50e-6
# Descriptors whose events are kept, deleted, after unregister, for the next registration of the
# same descriptor (asyncio's sock_* calls register and unregister a reader or writer per call):
# at most this many, the oldest closed first.
SPARE_MAX: Final = 64
_monotonic: Final = time.monotonic
_READY_CB: Final = ffi.addressof(lib, "bs_aio_ready_cb")
_take_ready: Final = lib.bs_aio_ready_take
_unpack: Final = ffi.unpack
_BATCH: Final = 4096


def _fileobj_to_fd(fileobj: Any) -> int:
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


class _Map(Mapping[Any, selectors.SelectorKey]):
    __slots__ = ("_sel",)

    def __init__(self, sel: LibeventSelector) -> None:
        self._sel = sel

    def __len__(self) -> int:
        return len(self._sel._keys)

    def __getitem__(self, fileobj: Any) -> selectors.SelectorKey:
        return self._sel._keys[self._sel._lookup(fileobj)]

    def __iter__(self) -> Any:
        return iter(self._sel._keys)

    def get(self, fileobj: Any, default: Any = None) -> Any:
        """What asyncio's selector loop asks from Python 3.13 on (``get_map().get(fd)``, where
        3.11 and 3.12 catch ``get_key``'s KeyError): one dict lookup for a descriptor."""
        if type(fileobj) is int and fileobj >= 0:
            return self._sel._keys.get(fileobj, default)
        try:
            return self[fileobj]
        except KeyError:
            return default


class LibeventSelector(selectors.BaseSelector):
    """A ``selectors.BaseSelector`` whose readiness comes from libevent events on ``base``."""

    def __init__(self, base: EventBase) -> None:
        self._base = base
        # The C readiness queue (cdefs/aio.c) the I/O events append to, or None once the loop
        # is attached (then Python callbacks record readiness and wake the loop).
        self._ring: Any = ffi.gc(lib.bs_aio_ready_new(), lib.bs_aio_ready_free)
        if self._ring == ffi.NULL:
            raise MemoryError("aio: could not allocate the readiness queue")
        self._buf: Any = ffi.new("int[]", _BATCH)
        self._lost: Any = ffi.new("int *")
        self._keys: dict[int, selectors.SelectorKey] = {}
        # fd -> [read event or None, write event or None]
        self._evs: dict[int, list[LibEvent | None]] = {}
        self._spare: dict[int, list[LibEvent | None]] = {}  # deleted events, see SPARE_MAX
        self._fired: dict[int, int] = {}
        self._timer: LibEvent | None = obtain_event(base, -1, 0, _noop)
        # Set by the loop: True while select() must not run the base (the loop's own tick, in
        # attached mode), and the callable that wakes an idle attached loop.
        self.collect_only = False
        self.wake: Callable[[], object] | None = None
        # The loop's run_forever sets this to its EventBase session's round(); None: loop().
        self.round: Callable[[int], int] | None = None
        self.last_poll = float("-inf")
        self._map = _Map(self)

    # -- registrations

    def _lookup(self, fileobj: Any) -> int:
        try:
            return _fileobj_to_fd(fileobj)
        except ValueError:
            for key in self._keys.values():  # a closed file object: find it by identity
                if key.fileobj is fileobj:
                    return key.fd
            raise

    def _event(self, fd: int, index: int) -> LibEvent:
        evs = self._evs[fd]
        ev = evs[index]
        if ev is None:
            flags = (EV_READ if index == 0 else EV_WRITE) | EV_PERSIST
            if self._ring is not None:
                ev = obtain_event(self._base, fd, flags, _READY_CB, self._ring)
            else:
                flag = _READ if index == 0 else _WRITE
                ev = obtain_event(self._base, fd, flags, self._on_ready, (fd, flag))
            evs[index] = ev
        return ev

    def attach(self, wake: Callable[[], object]) -> None:
        """From now on, readiness wakes the loop through ``wake`` (attached mode)."""
        if self._ring is None:
            self.wake = wake
            return
        pending = self._take([])
        self._close_spares()  # they carry the C queue's callback
        self._ring = None
        self.wake = wake
        for fd, evs in self._evs.items():
            for index, ev in enumerate(evs):
                if ev is not None:
                    was_added = ev.pending()
                    ev.close()
                    evs[index] = None
                    if was_added:
                        self._event(fd, index).add()
        for key, mask in pending:
            self._fired[key.fd] = self._fired.get(key.fd, 0) | mask

    def _on_ready(self, _ev: LibEvent, arg: tuple[int, int]) -> None:
        fd, flag = arg
        fired = self._fired
        fired[fd] = fired.get(fd, 0) | flag
        wake = self.wake
        if wake is not None:
            wake()

    def _apply(self, fd: int, old: int, new: int) -> None:
        for index, flag in ((0, _READ), (1, _WRITE)):
            if new & flag and not old & flag:
                self._event(fd, index).add()
            elif old & flag and not new & flag:
                ev = self._evs[fd][index]
                if ev is not None:
                    ev.delete()

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if not events or events & ~(_READ | _WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        fd = self._lookup(fileobj)
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        if self._timer is None:
            raise RuntimeError("the selector is closed")
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        self._evs[fd] = self._spare.pop(fd, [None, None])
        try:
            self._apply(fd, 0, events)
        except BaseException:
            self._drop(fd)
            raise
        return key

    def _drop(self, fd: int, *, keep: bool = False) -> None:
        del self._keys[fd]
        self._fired.pop(fd, None)
        evs = self._evs.pop(fd)
        if keep and self._ring is not None:
            try:
                for ev in evs:
                    if ev is not None:
                        ev.delete()
            except ClosedError:
                pass
            else:
                self._spare[fd] = evs
                if len(self._spare) > SPARE_MAX:
                    oldest = next(iter(self._spare))
                    _close_all(self._spare.pop(oldest))
                return
        _close_all(evs)

    def _close_spares(self) -> None:
        spare, self._spare = self._spare, {}
        for evs in spare.values():
            _close_all(evs)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = self._lookup(fileobj)
        try:
            key = self._keys[fd]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        self._drop(fd, keep=True)
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if not events or events & ~(_READ | _WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        fd = self._lookup(fileobj)
        try:
            key = self._keys[fd]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        if events != key.events:
            self._apply(fd, key.events, events)
            fired = self._fired.get(fd)
            if fired is not None:
                self._fired[fd] = fired & events
        if events != key.events or data is not key.data:
            key = key._replace(events=events, data=data)
            self._keys[fd] = key
        return key

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._map[fileobj]

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._map

    # -- waiting

    def _take(self, ready: list[tuple[selectors.SelectorKey, int]]) -> list[Any]:
        """Append what became ready since the last call (C queue, then Python records)."""
        keys = self._keys
        ring = self._ring
        if ring is not None:
            buf = self._buf
            while True:
                n = _take_ready(ring, buf, _BATCH, self._lost)
                if self._lost[0]:  # the queue ran out of memory: everything may be ready
                    ready.extend((key, key.events) for key in keys.values())
                for code in _unpack(buf, n):
                    key = keys.get(code >> 2)
                    if key is not None:
                        mask = code & key.events
                        if mask:
                            ready.append((key, mask))
                if n < _BATCH:
                    break
        fired = self._fired
        if fired:
            for fd, mask in fired.items():
                key = keys.get(fd)
                if key is not None:
                    mask &= key.events
                    if mask:
                        ready.append((key, mask))
            fired.clear()
        return ready

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._take([])  # readiness from rounds that others ran since the last call
        if self.collect_only:
            return ready
        run = self.round or self._base.loop
        if ready or (timeout is not None and timeout <= 0):
            if not ready:
                now = _monotonic()
                if now - self.last_poll < POLL_INTERVAL:
                    return ready
                self.last_poll = now
            run(_POLL)
        elif timeout is None:
            run(_ONCE)
            self.last_poll = _monotonic()
        else:
            timer = self._timer
            assert timer is not None
            timer.add(timeout)
            try:
                run(_ONCE)
            finally:
                if not timer.closed:
                    timer.delete()
            self.last_poll = _monotonic()
        return self._take(ready)

    def close(self) -> None:
        for fd in list(self._keys):
            self._drop(fd)
        self._close_spares()
        self._fired.clear()
        self.wake = None
        timer, self._timer = self._timer, None
        if timer is not None:
            try:
                timer.close()
            except ClosedError:
                pass


def _noop(_ev: LibEvent, _arg: object) -> None:
    pass


def _close_all(evs: list[LibEvent | None]) -> None:
    for ev in evs:
        if ev is not None:
            try:
                ev.close()
            except ClosedError:
                pass
