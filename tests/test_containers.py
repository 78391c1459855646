"""SecureString and SerializeData (spec section 2): bytearray/str behaviour, wiping, no residue."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import pty
import secrets
import select
import socket
import string
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from secure_helpers import SANITIZED, mapping_of, no_gc, read_at

import bitcoin_support._secure_string as secure_string_module
from bitcoin_support import (
    ClosedError,
    SecureAllocator,
    SecureString,
    SerializeData,
    ZeroAfterFreeAllocator,
    ffi,
    locked_pool_stats,
)


def address_of(view: memoryview) -> int:
    """Where a container's bytes live (read-only views too), without copying them."""
    return int(ffi.cast("uintptr_t", ffi.from_buffer(view)))


# ---------------------------------------------------------------- SecureString


def test_secure_string_construction() -> None:
    assert len(SecureString()) == 0
    for initial in ("pässwörd", "pässwörd".encode(), bytearray("pässwörd".encode())):
        with SecureString(initial) as s:
            assert s.reveal() == "pässwörd" and len(s) == 10  # bytes of UTF-8
    with SecureString(memoryview(b"abc")) as s:
        assert s.reveal_bytes() == b"abc"
    with pytest.raises(TypeError):
        SecureString(123)  # type: ignore[arg-type]


def test_push_str_push_pop() -> None:
    with SecureString() as s:
        s.push_str("ab")
        s.push_str(b"c")
        s.push("é")
        s.push("€")
        s.push("𝄞")
        assert s.reveal() == "abcé€𝄞" and len(s) == 3 + 2 + 3 + 4
        assert [s.pop() for _ in range(6)] == ["𝄞", "€", "é", "c", "b", "a"]
        with pytest.raises(IndexError):
            s.pop()
        for bad in ("ab", "", b"a", 7):
            with pytest.raises(TypeError):
                s.push(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            s.push_str(5)  # type: ignore[arg-type]


def test_pop_wipes_the_removed_bytes() -> None:
    with SecureString("secret€") as s:
        with s.view() as v:
            addr = address_of(v)
        assert s.pop() == "€"
        assert read_at(addr, 9) == b"secret" + bytes(3)


def test_clear_wipes_and_keeps_capacity() -> None:
    with SecureString("correct horse battery") as s:
        cap = s.capacity
        with s.view() as v:
            addr = address_of(v)
        s.clear()
        assert len(s) == 0 and s.capacity == cap and s.reveal() == ""
        assert read_at(addr, cap) == bytes(cap)  # the block is still s's own


def test_capacity_and_reserve() -> None:
    with SecureString("abc") as s:
        assert s.capacity >= 3
        s.reserve(100)
        assert s.capacity >= 103 and s.reveal() == "abc"
        s.reserve(0)
        assert s.capacity >= 103
        with pytest.raises(ValueError):
            s.reserve(-1)
        with pytest.raises(TypeError):
            s.reserve(1.0)  # type: ignore[arg-type]


def test_view_is_read_only_and_copies_nothing() -> None:
    with SecureString("hunter2") as s:
        with s.view() as v:
            assert v.readonly and bytes(v) == b"hunter2"
            with pytest.raises(TypeError):
                v[0] = 0
            with pytest.raises(BufferError):
                s.push_str("x" * 64)  # would move the bytes under the view
        with pytest.raises(ValueError):
            v[0]  # released on exit
        with s.view() as v1, s.view() as v2:
            assert address_of(v1) == address_of(v2)


def test_repr_and_str_hide_the_content() -> None:
    with SecureString("hunter2 is 12") as s:
        for text in (repr(s), str(s), f"{s}", f"{s!r}", f"{[s]}"):
            assert "hunter" not in text
        assert repr(s) == str(s) == "SecureString(len=13)"
    assert "closed" in repr(s)


def test_equality_with_secure_string_str_and_bytes() -> None:
    with SecureString("pässwörd") as s, SecureString("pässwörd") as same, SecureString("x") as x:
        assert s == same and s == "pässwörd" and s == "pässwörd".encode()
        assert s == bytearray("pässwörd".encode()) and s == memoryview("pässwörd".encode())
        assert s != x and s != "passwörd" and s != b"" and s != "pässwörd!"
        assert s != 5 and s != None  # noqa: E711


def test_equality_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = secure_string_module.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((bytes(a), bytes(b)))
        return real(a, b)

    monkeypatch.setattr(secure_string_module.hmac, "compare_digest", spy)
    with SecureString("abc") as s, SecureString("abd") as t:
        assert s != t and s == "abc" and s != b"xbc"
    assert calls == [(b"abc", b"abd"), (b"abc", b"abc"), (b"abc", b"xbc")]


def test_unhashable_unpicklable_copyable() -> None:
    with SecureString("seed words") as s:
        with pytest.raises(TypeError):
            hash(s)
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            with pytest.raises(TypeError):
                pickle.dumps(s, protocol)
        for dup in (copy.copy(s), copy.deepcopy(s)):
            with dup:
                assert dup is not s and dup == s
                with s.view() as a, dup.view() as b:
                    assert address_of(a) != address_of(b)
                dup.push("!")
                assert s.reveal() == "seed words"


def test_close_is_idempotent_and_everything_after_it_is_closed_error() -> None:
    s = SecureString("abc")
    s.close()
    s.close()
    assert s.closed
    uses: list[Callable[[], object]] = [
        lambda: len(s),
        lambda: s.capacity,
        lambda: s.push_str("x"),
        lambda: s.push("x"),
        s.pop,
        s.clear,
        lambda: s.reserve(1),
        s.reveal,
        s.reveal_bytes,
        lambda: s.view().__enter__(),
        lambda: s == "abc",
        lambda: copy.copy(s),
    ]
    for use in uses:
        with pytest.raises(ClosedError):
            use()
    with SecureString("x") as t:
        pass
    assert t.closed


def test_take_copies_in_and_wipes_the_source() -> None:
    src = bytearray(b"mnemonic words")
    with SecureString.take(src) as s:
        assert s == "mnemonic words"
    assert src == bytes(14)
    block = SecureAllocator().allocate(4)
    with block.view() as v:
        v[:] = b"abcd"
        with SecureString.take(v) as s:
            assert s == "abcd"
        assert bytes(v) == bytes(4)
    block.free()
    with pytest.raises(TypeError):
        SecureString.take(b"read-only")
    bad = bytearray(b"ok\xff")
    with pytest.raises(ValueError):
        SecureString.take(bad)
    assert bad == bytes(3)  # wiped even when refused


@pytest.mark.parametrize(
    "bad",
    [b"\xff", b"abc\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80"],
)
def test_invalid_utf8_is_value_error(bad: bytes) -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        SecureString(bad)
    with SecureString("ok") as s:
        with pytest.raises(ValueError):
            s.push_str(bad)
        assert s == "ok"


@given(st.binary(max_size=12) | st.text(max_size=6).map(str.encode))
@settings(max_examples=200, deadline=None)
def test_utf8_check_agrees_with_python(data: bytes) -> None:
    try:
        expected: str | None = data.decode("utf-8")
    except UnicodeDecodeError:
        expected = None
    if expected is None:
        with pytest.raises(ValueError):
            SecureString(data)
    else:
        with SecureString(data) as s:
            assert s.reveal() == expected


def test_growth_wipes_the_old_block() -> None:
    with no_gc(), SecureString("0123456789") as s:
        with s.view() as v:
            old = address_of(v)
        old_capacity = s.capacity
        pin = SecureAllocator().allocate(16)  # keeps the old block's arena in use
        total = locked_pool_stats().total
        s.push_str("abcdefghijklmnopqrstuvwxyz")
        with s.view() as v:
            assert address_of(v) != old
        # The pool unmaps only whole arenas and total would then drop; unchanged total (and no
        # gc meanwhile) means the old block's arena is still mapped, so reading it is safe.
        assert locked_pool_stats().total == total
        assert read_at(old, old_capacity) == bytes(old_capacity)
        assert s == "0123456789abcdefghijklmnopqrstuvwxyz"
        pin.free()


def test_secure_string_lives_in_locked_memory() -> None:
    with SecureString("locked") as s, s.view() as v:
        smaps = mapping_of(address_of(v))
        assert smaps is not None and "dd" in smaps["VmFlags"].split()


GETPASS_CHILD = r"""
from bitcoin_support import SecureString
s = SecureString.getpass("Secret please: ")
print("RESULT", len(s), s == "hunter2 ünïcode", flush=True)
"""


def _read_until(fd: int, needle: bytes, deadline: float) -> bytes:
    out = b""
    while needle not in out:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {needle!r}; got {out!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            if not chunk:
                break
            out += chunk
    return out


def test_getpass_reads_with_echo_off_from_the_terminal() -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal (/dev/tty)
        os.execv(sys.executable, [sys.executable, "-c", GETPASS_CHILD])
    try:
        deadline = time.monotonic() + 30
        seen = _read_until(fd, b"Secret please: ", deadline)
        os.write(fd, "hunter2 ünïcode\n".encode())
        seen += _read_until(fd, b"RESULT", deadline)
        seen += _read_until(fd, b"\n", deadline)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    assert b"RESULT 17 True" in seen
    assert b"hunter2" not in seen  # echo was off


def test_getpass_without_a_terminal_reads_standard_input() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", GETPASS_CHILD.replace("Secret please: ", "Prompt> ")],
        input="hunter2 ünïcode\nrest\n".encode(),
        capture_output=True,
        start_new_session=True,  # no controlling terminal: /dev/tty cannot be opened
        timeout=30,
        check=True,
    )
    assert proc.stdout.strip() == b"RESULT 17 True"
    assert b"Prompt> " in proc.stderr
    assert b"GetPassWarning" in proc.stderr and b"echo cannot be turned off" in proc.stderr


# ---------------------------------------------------------------- SerializeData against bytearray


def _outcome(f: Callable[[Any], Any], target: Any) -> tuple[str, Any]:
    try:
        result = f(target)
    except Exception as exc:
        return "raised", type(exc)
    if isinstance(result, (bytes, bytearray)):
        result = bytes(result)
    return "returned", result


INDICES = st.integers(-20, 20)
SLICES = st.builds(
    slice,
    st.none() | INDICES,
    st.none() | INDICES,
    st.none() | st.sampled_from([1, 2, 3, -1, -2]),
)
DATA = st.binary(max_size=24)


class SerializeDataMachine(RuleBasedStateMachine):
    """Every operation on SerializeData does what it does on bytearray."""

    def __init__(self) -> None:
        super().__init__()
        self.model = bytearray()
        self.sd = SerializeData()

    def same(self, f: Callable[[Any], Any]) -> None:
        expected = _outcome(f, self.model)
        got = _outcome(f, self.sd)
        assert got == expected

    @rule(byte=st.integers(0, 255))
    def append(self, byte: int) -> None:
        self.same(lambda x: x.append(byte))

    @rule(data=DATA, as_list=st.booleans())
    def extend(self, data: bytes, as_list: bool) -> None:
        self.same(lambda x: x.extend(list(data) if as_list else data))

    @rule(data=DATA)
    def iadd(self, data: bytes) -> None:
        self.same(lambda x: x.__iadd__(data) and None)

    @rule(i=INDICES, byte=st.integers(0, 255))
    def set_item(self, i: int, byte: int) -> None:
        self.same(lambda x: x.__setitem__(i, byte))

    @rule(key=SLICES, data=DATA)
    def set_slice(self, key: slice, data: bytes) -> None:
        self.same(lambda x: x.__setitem__(key, data))

    @rule(key=INDICES | SLICES)
    def del_item(self, key: int | slice) -> None:
        self.same(lambda x: x.__delitem__(key))

    @rule()
    def clear(self) -> None:
        self.same(lambda x: x.clear())

    @rule(n=st.integers(0, 80))
    def resize(self, n: int) -> None:
        if n < len(self.model):
            del self.model[n:]
        else:
            self.model.extend(bytes(n - len(self.model)))
        self.sd.resize(n)

    @rule(n=st.integers(0, 100))
    def reserve(self, n: int) -> None:
        self.sd.reserve(n)
        assert self.sd.capacity >= len(self.model) + n

    @rule(key=INDICES | SLICES)
    def get_item(self, key: int | slice) -> None:
        self.same(lambda x: x[key])

    @rule(other=DATA)
    def compare(self, other: bytes) -> None:
        self.same(lambda x: x == other)
        self.same(lambda x: x == bytearray(other))

    @rule(i=st.integers(0, 100), byte=st.integers(0, 255))
    def write_through_view(self, i: int, byte: int) -> None:
        if self.model:
            i %= len(self.model)
            self.model[i] = byte
            with self.sd.view() as v:
                v[i] = byte
                assert v == self.model

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data())
    def resize_under_a_view_is_buffer_error(self, data: st.DataObject) -> None:
        change = data.draw(
            st.sampled_from(
                [
                    lambda x: x.append(1),
                    lambda x: x.extend(b"ab"),
                    lambda x: x.__iadd__(b"ab"),
                    lambda x: x.__delitem__(0),
                    lambda x: x.__delitem__(slice(None, None, 2)),
                    lambda x: x.__setitem__(slice(0, 1), b"xyz"),
                    lambda x: x.clear(),
                ]
            )
        )
        with memoryview(self.model) as mv:
            assert _outcome(change, self.model) == ("raised", BufferError)
            assert mv == self.model
        with self.sd.view() as v:
            assert _outcome(change, self.sd) == ("raised", BufferError)
            for resize in (lambda: self.sd.resize(len(v) + 1), lambda: self.sd.resize(0)):
                with pytest.raises(BufferError):
                    resize()
            assert v == self.model

    @invariant()
    def same_bytes(self) -> None:
        sd, model = self.sd, self.model
        assert len(sd) == len(model) and bytes(sd) == bytes(model) and sd == model
        assert sd.capacity >= len(model)
        assert list(sd) == list(model) and sd.hex() == model.hex() and sd[:] == model[:]

    def teardown(self) -> None:
        self.sd.close()
        assert self.sd.closed


SerializeDataMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=40, deadline=None
)
test_serialize_data_model = SerializeDataMachine.TestCase


def test_serialize_data_basics() -> None:
    with SerializeData(b"abc") as sd:
        assert sd == b"abc" and sd == bytearray(b"abc") and sd == memoryview(b"abc")
        assert sd != "abc" and sd != b"abd"
        assert sd.hex() == "616263" and sd.hex(":") == "61:62:63"
        with pytest.raises(TypeError):
            hash(sd)
        with SerializeData(sd) as dup, SerializeData(range(3)) as nums:
            assert dup == b"abc" and nums == b"\x00\x01\x02"
        sd.extend(sd)
        assert sd == b"abcabc"
        with pytest.raises(TypeError):
            sd.extend("text")
        with pytest.raises(TypeError):
            sd["a"]  # type: ignore[call-overload]
        with pytest.raises(TypeError):
            sd[0] = b"a"
        with pytest.raises(ValueError):
            sd.append(256)
        with pytest.raises(ValueError):
            sd.resize(-1)
        assert pickle.loads(pickle.dumps(sd)) == b"abcabc"


def test_growth_is_geometric() -> None:
    with SerializeData() as sd:
        capacities = set()
        for _ in range(100_000):
            sd.append(7)
            capacities.add(sd.capacity)
        assert len(capacities) <= 20  # about log2(100000) moves, not one per append


def test_view_works_with_sockets_struct_and_hashlib() -> None:
    a, b = socket.socketpair()
    with a, b, SerializeData() as sd:
        a.sendall(b"\x01\x02\x03\x04\x05")
        sd.resize(8)
        with sd.view() as v:
            assert not v.readonly and len(v) == 8
            assert b.recv_into(v, 5) == 5
            struct.pack_into("<H", v, 5, 0xBEEF)
            digest = hashlib.sha256(v).hexdigest()
        assert sd == b"\x01\x02\x03\x04\x05\xef\xbe\x00"
        assert digest == hashlib.sha256(bytes(sd)).hexdigest()


@pytest.mark.parametrize("allocator", [SecureAllocator(), ZeroAfterFreeAllocator()])
def test_new_in_uses_the_given_allocator(allocator: Any) -> None:
    with SerializeData.new_in(allocator) as sd:
        assert len(sd) == 0
        sd.extend(b"x" * 100)
        with sd.view() as v:
            smaps = mapping_of(address_of(v))
        assert smaps is not None
        is_pool = "dd" in smaps["VmFlags"].split()
        assert is_pool == isinstance(allocator, SecureAllocator)
    with pytest.raises(TypeError):
        SerializeData.new_in(bytearray())  # type: ignore[arg-type]


def test_growth_shrink_and_clear_wipe_what_they_leave() -> None:
    with no_gc(), SerializeData.new_in(SecureAllocator()) as sd:
        pin = SecureAllocator().allocate(16)  # keeps the arena in use (see the SecureString test)
        sd.extend(b"\xa5" * 16)
        with sd.view() as v:
            first = address_of(v)
        total = locked_pool_stats().total
        sd.extend(b"\x5a" * 100)  # growth: moves to a new block
        with sd.view() as v:
            second = address_of(v)
        assert second != first and locked_pool_stats().total == total
        assert read_at(first, 16) == bytes(16)
        cap = sd.capacity
        sd.resize(10)  # shrinking in place wipes the tail
        assert read_at(second, cap) == b"\xa5" * 10 + bytes(cap - 10)
        sd.shrink_to_fit()  # moves to a block of exactly 10 bytes
        with sd.view() as v:
            third = address_of(v)
        assert sd.capacity == 10 and locked_pool_stats().total == total
        assert read_at(second, cap) == bytes(cap)
        sd.clear()
        assert read_at(third, 10) == bytes(10)
        pin.free()


@pytest.mark.skipif(SANITIZED, reason="reads a freed heap block, which ASan reports")
def test_growth_wipes_the_old_heap_block() -> None:
    with no_gc(), SerializeData(b"\xa5" * 200) as sd:
        with sd.view() as v:
            old = address_of(v)
        sd.extend(b"x" * 1000)
        # Freed small heap blocks stay mapped; malloc may reuse them, never leave the pattern.
        assert b"\xa5" * 16 not in read_at(old, 200)


def test_every_method_after_close_is_closed_error() -> None:
    sd = SerializeData(b"abc")
    sd.close()
    sd.close()
    assert sd.closed and "closed" in repr(sd)
    uses: list[Callable[[], object]] = [
        lambda: len(sd),
        lambda: sd.capacity,
        lambda: sd[0],
        lambda: sd[0:1],
        lambda: sd.__setitem__(0, 1),
        lambda: sd.__setitem__(slice(0, 1), b"x"),
        lambda: sd.__delitem__(0),
        lambda: sd.append(1),
        lambda: sd.extend(b"x"),
        lambda: sd.__iadd__(b"x"),
        sd.clear,
        lambda: sd.resize(4),
        lambda: sd.reserve(4),
        sd.shrink_to_fit,
        lambda: list(sd),
        lambda: bytes(sd),
        sd.hex,
        lambda: sd == b"abc",
        lambda: sd.view().__enter__(),
        lambda: SerializeData(b"x").extend(sd),
    ]
    for use in uses:
        with pytest.raises(ClosedError):
            use()


def test_close_under_a_view_is_buffer_error() -> None:
    with SerializeData(b"abc") as sd:
        with sd.view():
            with pytest.raises(BufferError):
                sd.close()
        assert sd == b"abc"


# ---------------------------------------------------------------- no residue


RESIDUE_CHILD = r"""
import copy, json, os, sys
from bitcoin_support import SecureAllocator, SecureString, SerializeData, memory_cleanse

fd = int(sys.argv[1])
half_a, half_b = bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3])
# The marker is half_a + half_b; this process never builds it, so only the containers hold it.


def scan():
    # Reads every rw mapping through /proc/self/mem into one reused buffer: no copy survives.
    buf = bytearray(1 << 20)
    mv = memoryview(buf)
    regions = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            # Beyond 1 GiB is a sanitizer's shadow reservation, not where a secret could be.
            if fields[1].startswith("rw") and hi - lo <= 1 << 30:
                regions.append((lo, hi))
    hits = 0
    mem = os.open("/proc/self/mem", os.O_RDONLY)
    for lo, hi in regions:
        off = lo
        while off < hi:
            try:
                got = os.preadv(mem, [mv[: min(len(buf), hi - off)]], off)
            except OSError:
                break
            if got <= 0:
                break
            i = buf.find(half_a, 0, got)
            while i != -1:
                if i + 32 <= got and mv[i + 16 : i + 32] == half_b:
                    hits += 1
                i = buf.find(half_a, i + 1, got)
            off += got if off + got >= hi or got < 64 else got - 31
    os.close(mem)
    memory_cleanse(buf)
    mv.release()
    return hits


with SecureAllocator().allocate(32) as landing:
    with landing.view() as v:
        assert os.readv(fd, [v]) == 32  # the kernel writes the marker into locked memory
        s = SecureString.take(v)  # copies it and wipes the landing block
sd = SerializeData()
sd.resize(32)
with sd.view() as v:
    assert os.readv(fd, [v]) == 32
    assert s == v
s.push_str("x" * 100)  # growth moves the marker and wipes the old block
sd.extend(b"y" * 5000)
c = copy.copy(s)
assert c == s
c.close()
while_open = scan()
s.close()
sd.close()
print(json.dumps([while_open, scan()]))
"""


def test_no_copy_of_a_secret_remains_after_close() -> None:
    alphabet = string.ascii_letters + string.digits + string.punctuation
    marker = "".join(secrets.choice(alphabet) for _ in range(32)).encode()
    r, w = os.pipe()
    try:
        os.write(w, marker * 2)
        os.close(w)
        argv = [sys.executable, "-c", RESIDUE_CHILD, str(r), marker[:16].hex(), marker[16:].hex()]
        proc = subprocess.run(
            argv, pass_fds=(r,), capture_output=True, text=True, timeout=60, check=False
        )
    finally:
        os.close(r)
    assert proc.returncode == 0, proc.stderr
    while_open, after_close = json.loads(proc.stdout)
    assert while_open >= 2  # the scan sees the SecureString's and the SerializeData's copies
    assert after_close == 0
