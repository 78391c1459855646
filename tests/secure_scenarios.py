"""Scenarios of the secure-memory thread tests, run in a child interpreter (``python FILE NAME
ARGS...``) so that a crash is reported as a failed test instead of ending the test run.

cffi lets go of the GIL around every C call, so a thread may wipe, copy or validate memory
while another frees, grows, clears or closes its owner. Each scenario races the two and checks
that every call either finishes or raises ClosedError or BufferError (IndexError for an index
the other thread made stale, as with bytearray), and that nothing is written where it must not
be. Each prints ``OK`` on success and raises (exit status 1) on a wrong result.
"""

from __future__ import annotations

import copy
import pickle
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import bitcoin_support as bs
from bitcoin_support import (
    ClosedError,
    SecureAllocator,
    SecureString,
    SerializeData,
    ZeroAfterFreeAllocator,
    memory_cleanse,
)

ALLOCATORS = {"secure": SecureAllocator(), "heap": ZeroAfterFreeAllocator()}
DEFINED = (ClosedError, BufferError)


class Racer(threading.Thread):
    """Calls ``fn`` in a loop until stopped, keeping the first undefined outcome it meets."""

    def __init__(self, fn: Callable[[], object], allowed: tuple[type[BaseException], ...]):
        super().__init__(daemon=True)
        self.fn = fn
        self.allowed = allowed
        self.stop = threading.Event()
        self.calls = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.fn()
            except self.allowed:
                pass
            except BaseException as exc:
                self.error = exc
                return
            self.calls += 1

    def finish(self) -> None:
        self.stop.set()
        self.join(30)
        assert not self.is_alive(), "a racing thread hung"
        if self.error is not None:
            raise AssertionError(f"undefined outcome: {self.error!r}") from self.error


def free_retrying(close: Callable[[], None]) -> int:
    """Call ``close`` until it stops raising BufferError; returns how often it was refused."""
    refused = 0
    while True:
        try:
            close()
            return refused
        except BufferError:
            refused += 1
            time.sleep(0)


def cleanse_free(kind: str, size: str, seconds: str = "1.0") -> None:
    """memory_cleanse(block) on one thread while the main thread frees the block."""
    sys.setswitchinterval(1e-5)
    alloc = ALLOCATORS[kind]
    n = int(size)
    current: list[bs.Block] = [alloc.allocate(n)]
    # Two wiping threads and the freeing one share the cores: a wipe that started first may
    # still run when free() unmaps the block.
    racers = [Racer(lambda: memory_cleanse(current[0]), DEFINED) for _ in range(2)]
    for racer in racers:
        racer.start()
    rng = random.Random(7)
    deadline = time.monotonic() + float(seconds)
    rounds = 0
    while time.monotonic() < deadline or rounds < 3:
        block = current[0]
        # free()'s own wipe takes as long as the racer's: a random pause lands the unmap
        # inside the racer's wipe now and then.
        time.sleep(rng.uniform(0, 0.002 + n / 4e9))
        block.free()  # waits for a wipe in flight: never BufferError (no view is taken)
        current[0] = alloc.allocate(n)
        rounds += 1
    for racer in racers:
        racer.finish()
    current[0].free()
    assert sum(racer.calls for racer in racers) > 0


def block_methods(kind: str, seconds: str = "1.0", threads: str = "3") -> None:
    """Threads calling every method of a block in a loop while the main thread frees it (and
    allocates the next): each call works or raises ClosedError, or BufferError for free()
    while a view is open."""
    sys.setswitchinterval(1e-5)
    alloc = ALLOCATORS[kind]
    n = 1 << 20  # a mapping of its own: a write after the unmap would crash
    current: list[bs.Block] = [alloc.allocate(n)]

    def view() -> None:
        with current[0].view() as mv:
            mv[0] = 1
            mv[-1] = 2
            bytes(mv[:16])

    calls: list[Callable[[], object]] = [
        view,
        lambda: memory_cleanse(current[0]),
        lambda: memory_cleanse(current[0], 64),
        lambda: current[0].address,
        lambda: current[0].cdata,
        lambda: current[0].closed,
        lambda: repr(current[0]),
    ]
    racers = [
        Racer(lambda i=i: calls[(i + int(time.monotonic_ns() // 1000)) % len(calls)](), DEFINED)
        for i in range(int(threads))
    ]
    for racer in racers:
        racer.start()
    deadline = time.monotonic() + float(seconds)
    rounds = refused = 0
    while time.monotonic() < deadline or rounds < 3:
        block = current[0]
        time.sleep(0.0005)
        refused += free_retrying(block.free)  # refused only while a view is open
        assert block.closed
        current[0] = alloc.allocate(n)
        rounds += 1
    for racer in racers:
        racer.finish()
    current[0].free()
    assert sum(racer.calls for racer in racers) > 0


def cleanse_reuse(seconds: str = "1.0") -> None:
    """A pooled block freed while another thread wipes it: the chunk, handed out again at
    once, must keep what its new owner writes."""
    sys.setswitchinterval(1e-5)
    alloc = SecureAllocator()
    n = 192 * 1024  # inside one arena, long enough to wipe that the race is met
    target: list[bs.Block] = [alloc.allocate(n)]
    racer = Racer(lambda: memory_cleanse(target[0]), DEFINED)
    racer.start()
    deadline = time.monotonic() + float(seconds)
    rounds = damaged = 0
    while time.monotonic() < deadline or rounds < 3:
        block = target[0]
        time.sleep(0.0005)
        block.free()
        other = alloc.allocate(n)  # most often the chunk just freed
        with other.view() as mv:
            mv[:] = b"\xa5" * n
        seen = racer.calls
        while racer.calls < seen + 2 and racer.is_alive():  # the wipe in flight is over
            time.sleep(0)
        with other.view() as mv:
            damaged += mv.tobytes() != b"\xa5" * n
        target[0] = other
        rounds += 1
    racer.finish()
    target[0].free()
    assert damaged == 0, f"{damaged} of {rounds} blocks were zeroed after being handed out again"


def cleanse_resize(op: str, seconds: str = "1.0") -> None:
    """memory_cleanse(SerializeData) of 8 MiB on one thread while the main thread grows,
    clears, shrinks or closes it (glibc maps blocks this large: a freed one is unmapped)."""
    sys.setswitchinterval(1e-5)
    n = 8 << 20
    current: list[SerializeData] = [SerializeData(bytes(n))]
    racer = Racer(lambda: memory_cleanse(current[0]), DEFINED)
    racer.start()
    deadline = time.monotonic() + float(seconds)
    rounds = 0
    while time.monotonic() < deadline or rounds < 3:
        sd = current[0]
        time.sleep(0.001)
        # Each waits for a wipe in flight: never BufferError (no view is taken).
        if op == "grow":
            sd.reserve(sd.capacity + 1)
            sd.shrink_to_fit()
        elif op == "clear":
            sd.clear()
            sd.resize(n)
        elif op == "close":
            sd.close()
            current[0] = SerializeData(bytes(n))
        else:
            raise AssertionError(op)
        rounds += 1
    racer.finish()
    current[0].close()


def _serialize_calls(sd: SerializeData) -> list[Callable[[], object]]:
    def view() -> None:
        with sd.view() as mv:
            if len(mv):
                mv[0] = 7
                mv[-1] = 9

    def cleanse_first_byte() -> None:
        try:
            memory_cleanse(sd, 1)
        except ValueError as exc:  # it was empty at the time (another thread cleared it)
            if "larger than the buffer (0 bytes)" not in str(exc):
                raise

    def set_extended_slice() -> None:
        try:
            sd[0:8:2] = b"wxyz"
        except ValueError as exc:  # as bytearray: the slice was shorter (another thread cut it)
            if "different structures" not in str(exc):
                raise

    return [
        lambda: len(sd),
        lambda: sd[0],
        lambda: sd[-1],
        lambda: sd[1:100],
        lambda: sum(1 for _ in zip(sd, range(64), strict=False)),
        lambda: bytes(sd),
        sd.hex,
        lambda: sd == b"x",
        lambda: sd.__setitem__(0, 5),
        lambda: sd.__setitem__(slice(0, 4), b"abcd"),
        set_extended_slice,
        lambda: sd.__delitem__(0),
        lambda: sd.__delitem__(slice(0, 6, 3)),
        lambda: sd.append(1),
        lambda: sd.extend(b"0123456789" * 10),
        lambda: sd.extend(sd),
        lambda: sd.resize(max(0, len(sd) - 3)),
        lambda: sd.reserve(64),
        sd.shrink_to_fit,
        lambda: sd.capacity,
        lambda: memory_cleanse(sd),
        cleanse_first_byte,
        view,
        lambda: SerializeData(sd).close(),
        lambda: pickle.dumps(sd),
        lambda: repr(sd),
    ]


def _secure_string_calls(s: SecureString) -> list[Callable[[], object]]:
    def view() -> None:
        with s.view() as mv:
            bytes(mv[:4])

    return [
        lambda: len(s),
        lambda: s.push_str("héllo wörld"),
        lambda: s.push_str(b"bytes \xe2\x82\xac"),
        lambda: s.push("€"),
        s.pop,
        s.reveal,
        s.reveal_bytes,
        lambda: s == "x",
        lambda: s == s,
        lambda: copy.copy(s).close(),
        lambda: s.reserve(32),
        s.shrink_to_fit,
        lambda: s.capacity,
        lambda: memory_cleanse(s),
        view,
        lambda: repr(s),
    ]


def methods(kind: str, seconds: str = "1.5", threads: str = "3") -> None:
    """Threads calling every method of a SerializeData or a SecureString in a loop while the
    main thread grows, clears, shrinks and closes it (a new one every few milliseconds)."""
    sys.setswitchinterval(1e-5)
    make: Callable[[], Any] = SerializeData if kind == "serialize" else SecureString
    calls_of = _serialize_calls if kind == "serialize" else _secure_string_calls
    current: list[Any] = [make()]
    stop = threading.Event()
    errors: list[BaseException] = []
    counts = {"ok": 0, "refused": 0}

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        obj, calls = None, []
        while not stop.is_set():
            if current[0] is not obj:
                obj = current[0]
                calls = calls_of(obj)
            try:
                rng.choice(calls)()
            except (*DEFINED, IndexError):
                counts["refused"] += 1
            except BaseException as exc:
                errors.append(exc)
                return
            else:
                counts["ok"] += 1

    workers = [threading.Thread(target=hammer, args=(i,), daemon=True) for i in range(int(threads))]
    for w in workers:
        w.start()
    rng = random.Random(99)
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline and not errors:
        obj = current[0]
        for _ in range(20):
            step = rng.randrange(4)
            try:
                if step == 0:
                    if kind == "serialize":
                        obj.extend(bytes(rng.randrange(1, 5000)))
                    else:
                        obj.push_str("x" * rng.randrange(1, 5000))
                elif step == 1:
                    obj.clear()
                elif step == 2:
                    obj.shrink_to_fit()
                else:
                    obj.reserve(rng.randrange(1, 20000))
            except (*DEFINED, IndexError):
                pass
            time.sleep(0)
        free_retrying(obj.close)
        current[0] = make()
    stop.set()
    for w in workers:
        w.join(30)
        assert not w.is_alive(), "a thread hung"
    assert not errors, errors[:5]
    assert counts["ok"] > 0, counts
    current[0].close()


if __name__ == "__main__":
    name, *args = sys.argv[1:]
    globals()[name](*args)
    print("OK")
