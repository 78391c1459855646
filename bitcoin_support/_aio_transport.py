"""The stream transport of ``aio.EventLoop``: TCP and Unix sockets read and written in C.

asyncio's ``_SelectorSocketTransport`` with its two hot paths moved into C (cdefs/aio_stream.c):
the read event's C callback reads once and calls ``bs_py_aio_stream_ready`` (``_aio_transport_cb``)
with the bytes for ``data_received``; ``write()`` sends in C at once and queues the rest in an
evbuffer that the write event's C callback drains, calling Python back only to resume a paused
protocol or when asked to hear of the queue emptying (close with pending data, ``write_eof``,
sendfile). Everything else is asyncio's contract, step for step: the order of ``connection_made``
and the first read, flow control through ``_FlowControlMixin``, ``close`` / ``abort`` /
``write_eof``, protocol errors to the loop's exception handler through ``_fatal_error``,
``KeyboardInterrupt`` and ``SystemExit`` out of the loop's run, the server's count of
connections, sendfile's empty waiter, and ``get_extra_info`` (``socket``, ``sockname``,
``peername``).

A protocol callback runs inside the base's round. On an attached loop that round is its owner's,
so the loop is made the running one around the callback (as its own tick does).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
import warnings
from asyncio import constants, futures, protocols, transports, trsock
from typing import TYPE_CHECKING, Any, Final

from ._aio_transport_cb import oserror as _oserror  # and registers the C callbacks' Python end
from ._errors import ClosedError
from ._event import EV_PERSIST, EV_READ, EV_WRITE, LibEvent, obtain_event
from ._guard import refusal
from ._native import ffi, lib

if TYPE_CHECKING:
    from .aio import EventLoop

__all__ = ["StreamTransport", "usable"]

logger: Final = logging.getLogger("asyncio")
_READ_CB: Final = ffi.addressof(lib, "bs_aio_stream_read_cb")
_WRITE_CB: Final = ffi.addressof(lib, "bs_aio_stream_write_cb")
_write: Final = lib.bs_aio_stream_write
_buffered: Final = lib.bs_aio_stream_buffered
_from_buffer: Final = ffi.from_buffer
_get_ident: Final = threading.get_ident
# asyncio 3.13 counts a server's transports by identity (Server._attach(transport)).
_SERVER_TAKES_TRANSPORT: Final = sys.version_info >= (3, 13)
_READ_MAX: Final = 256 * 1024
_FAMILIES: Final = {socket.AF_INET, socket.AF_INET6, getattr(socket, "AF_UNIX", -1)}


def usable(sock: socket.socket) -> bool:
    """Whether the C transport serves ``sock``: a stream socket of TCP/IPv4, IPv6 or Unix."""
    return sock.type == socket.SOCK_STREAM and sock.family in _FAMILIES


def read_buffer() -> Any:
    """A loop's read buffer for its C stream transports (one read's most: asyncio's max_size)."""
    return ffi.new("char[]", _READ_MAX)


class StreamTransport(transports._FlowControlMixin, transports.Transport):
    """A connected stream socket's transport with its read and write paths in C."""

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    _rec: Any
    # asyncio's own (BaseTransport, _FlowControlMixin), which typeshed does not declare.
    _extra: dict[str, Any]
    _high_water: int
    _low_water: int
    _protocol_paused: bool

    def __init__(
        self,
        loop: EventLoop,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[Any] | None = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
    ) -> None:
        self._rec = None  # for __del__ and _release if the constructor fails
        self._sock: socket.socket | None = None
        super().__init__(extra, loop)
        self._loop: EventLoop = loop
        self._extra["socket"] = trsock.TransportSocket(sock)
        try:
            self._extra["sockname"] = sock.getsockname()
        except OSError:
            self._extra["sockname"] = None
        if "peername" not in self._extra:
            try:
                self._extra["peername"] = sock.getpeername()
            except OSError:
                self._extra["peername"] = None
        if sock.family != getattr(socket, "AF_UNIX", -1) and sock.proto == socket.IPPROTO_TCP:
            # asyncio's _set_nodelay: only for a socket made as IPPROTO_TCP.
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self._sock_fd = sock.fileno()
        self._protocol_connected = False
        self._closing = False
        self._paused = False  # reading paused
        self._eof = False
        self._conn_lost = 0
        self._empty_waiter: asyncio.Future[None] | None = None
        # Hand-over: the C record holds this handle (rec->py) until bs_aio_stream_free() in
        # _release(), which clears rec->py before this reference is dropped there.
        self._handle = ffi.new_handle(self)
        self._rbuf = loop._bs_rbuf  # the loop's read buffer, kept while the record may use it
        rec = lib.bs_aio_stream_new(self._sock_fd, self._handle, self._rbuf, len(self._rbuf))
        if rec == ffi.NULL:
            raise MemoryError("aio: could not allocate a stream record")
        self._rec = rec  # owned here; freed by bs_aio_stream_free() in _release()
        base = loop._bs_base
        try:
            # C callbacks with the record as their argument (the LibEvents keep the record's
            # cdata as their arg); _release() clears rec->rev/wev before it closes them.
            self._rev: LibEvent | None = obtain_event(
                base, self._sock_fd, EV_READ | EV_PERSIST, _READ_CB, rec
            )
            self._wev: LibEvent | None = obtain_event(
                base, self._sock_fd, EV_WRITE | EV_PERSIST, _WRITE_CB, rec
            )
        except BaseException:
            self._rev = self._wev = None
            self._release()
            raise
        # Hand-over: the record borrows the two event records, until
        # bs_aio_stream_set_events(rec, NULL, NULL) in _release().
        lib.bs_aio_stream_set_events(rec, self._rev._rec, self._wev._rec)
        self._sock = sock
        self._server = server
        if server is not None:
            if _SERVER_TAKES_TRANSPORT:
                server._attach(self)
            else:
                server._attach()
        self._protocol: Any = None
        self.set_protocol(protocol)
        loop._transports[self._sock_fd] = self
        # Held while open, as asyncio's selector holds its transports' callbacks; discarded in
        # _release().
        loop._bs_streams.add(self)
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        info = [type(self).__name__]
        if self._sock is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if self._rec is not None:
            info.append("read=" + ("polling" if self.is_reading() else "idle"))
            info.append(f"write=<bufsize={self.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    # -- the protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._protocol_connected = True
        if self._rec is not None:
            self._rec.buffered_proto = int(isinstance(protocol, protocols.BufferedProtocol))

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[no-any-return]

    def _start_reading(self) -> None:
        if self.is_reading() and self._rev is not None:
            self._rev.add()

    def _stop_reading(self) -> None:
        ev = self._rev
        if ev is not None:
            try:
                ev.delete()
            except ClosedError:  # the base was closed first: the event went with it
                pass

    # -- reading

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return not self._closing and not self._paused

    def _check_thread(self, what: str) -> None:
        """The thread rule (``_guard.py``): the C half of a transport is the loop thread's while
        the loop runs; from another thread only ``call_soon_threadsafe`` may reach it."""
        thread = self._loop._thread_id
        if thread is not None and thread != _get_ident():
            raise refusal(what, thread)

    def pause_reading(self) -> None:
        self._check_thread("StreamTransport.pause_reading")
        if not self.is_reading():
            return
        self._paused = True
        self._stop_reading()
        if self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self) -> None:
        self._check_thread("StreamTransport.resume_reading")
        if self._closing or not self._paused:
            return
        self._paused = False
        if self._rev is not None:
            self._rev.add()
        if self._loop.get_debug():
            logger.debug("%r resumes reading", self)

    def _on_data(self, data: bytes) -> None:
        if self._conn_lost:
            return
        try:
            self._protocol.data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")

    def _on_readable(self) -> None:
        """A BufferedProtocol's read: into its get_buffer(), then buffer_updated()."""
        if self._conn_lost or self._sock is None:
            return
        try:
            buf = self._protocol.get_buffer(-1)
            if not len(buf):
                raise RuntimeError("get_buffer() returned an empty buffer")
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
            return
        try:
            nbytes = self._sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on socket transport")
            return
        if not nbytes:
            self._on_eof()
            return
        try:
            self._protocol.buffer_updated(nbytes)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")

    def _on_eof(self) -> None:
        if self._conn_lost:
            return
        if self._loop.get_debug():
            logger.debug("%r received EOF", self)
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if keep_open:
            # The protocol may still write, but nothing more can be read.
            self._stop_reading()
        else:
            self.close()

    # -- writing

    def write(self, data: Any) -> None:
        thread = self._loop._thread_id  # the thread rule (_guard.py): C state, C's thread
        if thread is not None and thread != _get_ident():
            raise refusal("StreamTransport.write", thread)
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(
                    f"data argument must be a bytes-like object, not {type(data).__name__!r}"
                )
            data = _from_buffer(data)
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._empty_waiter is not None:
            raise RuntimeError("unable to write; sendfile is in progress")
        if not data:
            return
        rec = self._rec
        if self._conn_lost or rec is None:  # None: lost after a close that drained the queue
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        n = _write(rec, data, len(data))
        if n > 0:
            if n > self._high_water and not self._protocol_paused:
                self._maybe_pause_protocol()
        elif n < 0:
            self._fatal_error(_oserror(-n), "Fatal write error on socket transport")

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def _maybe_pause_protocol(self) -> None:
        super()._maybe_pause_protocol()  # type: ignore[misc]
        if self._rec is not None:
            self._rec.paused = int(self._protocol_paused)

    def _maybe_resume_protocol(self) -> None:
        super()._maybe_resume_protocol()  # type: ignore[misc]
        if self._rec is not None:
            self._rec.paused = int(self._protocol_paused)

    def _set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._check_thread("StreamTransport.set_write_buffer_limits")
        super()._set_write_buffer_limits(high, low)  # type: ignore[misc]
        if self._rec is not None:
            self._rec.low_water = self._low_water

    def get_write_buffer_size(self) -> int:
        rec = self._rec
        return 0 if rec is None else int(_buffered(rec))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._check_thread("StreamTransport.write_eof")
        if self._closing or self._eof:
            return
        self._eof = True
        if not self.get_write_buffer_size():
            self._shutdown_write()
        else:
            self._rec.notify_empty = 1

    def _shutdown_write(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                self._fatal_error(exc, "Fatal error on shutdown")

    def _on_write_error(self, err: int) -> None:
        exc = _oserror(err)
        self._fatal_error(exc, "Fatal write error on socket transport")
        if self._empty_waiter is not None and not self._empty_waiter.done():
            self._empty_waiter.set_exception(exc)

    def _on_empty(self) -> None:
        """The queue emptied (the write event is deleted already)."""
        waiter = self._empty_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._closing:
            self._call_connection_lost(None)
        elif self._eof:
            self._shutdown_write()

    # sendfile (asyncio's selector loop calls these around sock_sendfile and its fallback)

    def _make_empty_waiter(self) -> asyncio.Future[None]:
        if self._empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        self._empty_waiter = self._loop.create_future()
        if not self.get_write_buffer_size():
            self._empty_waiter.set_result(None)
        else:
            self._rec.notify_empty = 1
        return self._empty_waiter

    def _reset_empty_waiter(self) -> None:
        self._empty_waiter = None

    # -- closing

    def close(self) -> None:
        self._check_thread("StreamTransport.close")
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if not self.get_write_buffer_size():
            self._conn_lost += 1
            self._loop.call_soon(self._call_connection_lost, None)
        else:
            self._rec.notify_empty = 1  # _on_empty ends the connection

    def abort(self) -> None:
        self._check_thread("StreamTransport.abort")
        self._force_close(None)

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler(
                {
                    "message": message,
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._conn_lost:
            return
        if self._rec is not None and _buffered(self._rec):
            lib.bs_aio_stream_clear(self._rec)
        if not self._closing:
            self._closing = True
            self._stop_reading()
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        if self._rec is None and self._sock is None:
            return  # lost already (an abort() after a close that drained the queue)
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            sock = self._sock
            self._release()
            if sock is not None:
                sock.close()
            self._sock = None
            self._protocol = None
            server = self._server
            if server is not None:
                if _SERVER_TAKES_TRANSPORT:
                    server._detach(self)
                else:
                    server._detach()
                self._server = None

    def _release(self) -> None:
        """Close the events and free the record (the C side first forgets the events)."""
        rec, self._rec = self._rec, None
        loop = self._loop
        loop._bs_streams.discard(self)
        if loop._transports.get(self._sock_fd) is self:
            del loop._transports[self._sock_fd]
        if rec is not None:
            lib.bs_aio_stream_set_events(rec, ffi.NULL, ffi.NULL)  # borrowed since __init__
        for ev in (self._rev, self._wev):
            if ev is not None:
                try:
                    ev.close()
                except Exception:  # the base was closed first: the event went with it
                    pass
        self._rev = self._wev = None
        if rec is not None:
            # Made in __init__; clears rec->py, and is deferred to the C callback running now
            # if one is (its busy count), which never touches the record afterwards.
            lib.bs_aio_stream_free(rec)
        # Still referenced by a C callback running now? It holds the handle's object on its
        # own stack (from_handle), so dropping ours here is safe.
        self._handle = None

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._sock.close()
            self._sock = None
        if self._rec is not None:
            self._release()
