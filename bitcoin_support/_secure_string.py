"""SecureString: UTF-8 text kept in locked memory, wiped when it moves or closes."""

from __future__ import annotations

import getpass
import hmac
import os
import sys
import termios
import warnings
from contextlib import AbstractContextManager
from typing import Any, NoReturn, final

from ._buffer import WipingBuffer, _locked
from ._native import ffi, lib
from ._secure import SecureAllocator, memory_cleanse

_NEWLINE = (10, 13)


def _bytes_view(data: Any, what: str) -> memoryview:
    try:
        return memoryview(data).cast("B")
    except TypeError:
        raise TypeError(
            f"{what} must be str, bytes, bytearray or memoryview, not {type(data).__name__}"
        ) from None


@final
class SecureString(WipingBuffer):
    """A text secret (``Box<String, SecureAllocator>``): the UTF-8 bytes live in the locked pool.

    Nothing here turns the text into a Python object unless asked: ``reveal()`` and
    ``reveal_bytes()`` make ordinary copies that cannot be wiped; ``view()`` does not copy.
    """

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, initial: str | bytes | bytearray | memoryview | None = None) -> None:
        super().__init__(SecureAllocator())
        if isinstance(initial, str):
            self.push_str(initial)
        elif initial is not None:
            with _bytes_view(initial, "initial") as src:
                self._push_utf8(src)

    @classmethod
    def take(cls, buf: Any) -> SecureString:
        """Copy a writable buffer in, then wipe the source."""
        src = _bytes_view(buf, "buf")
        if src.readonly:
            raise TypeError("buf must be writable, so that it can be wiped")
        with src:
            s = cls()
            try:
                s._push_utf8(src)
            finally:
                memory_cleanse(src)
        return s

    def _push_utf8(self, src: memoryview) -> None:
        """Append UTF-8 bytes after checking them in C (they never become a str)."""
        n = src.nbytes
        if not n:
            return
        with ffi.from_buffer(src) as p:  # released even when an exception keeps this frame
            bad = lib.bs_utf8_valid_prefix(p, n)
            if bad == n:
                self._append(p, n)
        if bad != n:
            raise ValueError(f"invalid UTF-8 at byte {bad}")

    def push_str(self, s: str | bytes | bytearray | memoryview) -> None:
        """Append text (a str, or UTF-8 bytes)."""
        self._check()
        if isinstance(s, str):
            data = s.encode("utf-8")
            self._append(data, len(data))
        else:
            with _bytes_view(s, "s") as src:
                self._push_utf8(src)

    def push(self, ch: str) -> None:
        """Append one character."""
        if not isinstance(ch, str) or len(ch) != 1:
            raise TypeError("ch must be a str of one character")
        self.push_str(ch)

    @_locked
    def pop(self) -> str:
        """Remove and return the last character; IndexError when empty."""
        self._check()
        if not self._len:
            raise IndexError("pop from an empty SecureString")
        start = self._len - 1
        while start > 0 and (self._ptr[start] & 0xC0) == 0x80:
            start -= 1
        ch = bytes(ffi.buffer(self._ptr + start, self._len - start)).decode("utf-8")
        self._truncate(start)
        return ch

    @_locked
    def clear(self) -> None:
        """Wipe the text; the capacity is kept."""
        self._check()
        self._truncate(0)

    def reveal(self) -> str:
        """The text as an ordinary str: a copy Python may keep and never wipes."""
        return self.reveal_bytes().decode("utf-8")

    def reveal_bytes(self) -> bytes:
        """The UTF-8 bytes as ordinary bytes: a copy Python may keep and never wipes."""
        return bytes(self._buffer())

    def view(self) -> AbstractContextManager[memoryview]:
        """A read-only memoryview of the UTF-8 bytes, no copy, released on exit."""
        return self._view(readonly=True)

    def __eq__(self, other: object) -> bool:
        """Constant-time comparison (for equal lengths) with SecureString, str or bytes."""
        self._check()
        if isinstance(other, SecureString):
            other._check()
            with self.view() as mine, other.view() as theirs:
                return hmac.compare_digest(mine, theirs)
        if isinstance(other, str):
            other = other.encode("utf-8")
        if isinstance(other, (bytes, bytearray, memoryview)):
            with self.view() as mine:
                return hmac.compare_digest(mine, other)
        return NotImplemented

    @_locked
    def __copy__(self) -> SecureString:
        self._check()
        new = SecureString()
        if self._len:
            new._append(self._ptr, self._len)
        return new

    def __deepcopy__(self, memo: dict[int, Any]) -> SecureString:
        return self.__copy__()

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("SecureString cannot be pickled: that would copy the secret out")

    @classmethod
    def getpass(cls, prompt: str = "Passphrase: ") -> SecureString:
        """Read a line from the terminal, echo off, straight into locked memory.

        Each byte is read by the kernel into the locked block itself; no str or bytes of the
        secret is made. Without a terminal, standard input is read, with a
        ``getpass.GetPassWarning`` (as ``getpass.getpass`` gives): echo cannot be turned off.
        """
        try:
            fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
            own_fd = True
        except OSError:
            fd, own_fd = sys.stdin.fileno(), False
        try:
            return cls._read_line(fd, prompt)
        finally:
            if own_fd:
                os.close(fd)

    @classmethod
    def _read_line(cls, fd: int, prompt: str) -> SecureString:
        tty = os.isatty(fd)
        if not tty:
            warnings.warn(
                "SecureString.getpass: not a terminal, so echo cannot be turned off",
                getpass.GetPassWarning,
                stacklevel=3,
            )
        old = termios.tcgetattr(fd) if tty else None
        if old is not None:
            new = list(old)
            new[3] &= ~termios.ECHO
            termios.tcsetattr(fd, termios.TCSAFLUSH, new)
        s = cls()
        try:
            if tty:
                os.write(fd, prompt.encode())
            else:
                sys.stderr.write(prompt)
            while True:
                s._ensure(s._len + 1)
                assert s._block is not None
                with s._block.view() as mv:
                    got = os.readv(fd, [mv[s._len : s._len + 1]])
                if got == 0 or s._ptr[s._len] in _NEWLINE:
                    lib.bs_memory_cleanse(s._ptr + s._len, 1)
                    break
                s._len += 1
            bad = lib.bs_utf8_valid_prefix(ffi.cast("unsigned char *", s._ptr), s._len)
            if bad != s._len:
                raise ValueError(f"the passphrase is not valid UTF-8 (byte {bad})")
        except BaseException:
            s.close()
            raise
        finally:
            if old is not None:
                termios.tcsetattr(fd, termios.TCSAFLUSH, old)
                os.write(fd, b"\n")
        return s
