"""Where the C stream transport's callbacks (cdefs/aio_stream.c) come into Python:
``bs_py_aio_stream_ready``, which runs the transport's part of what C reports (bytes read,
readable for a BufferedProtocol, end of file, the queue low or empty, an error).

Imported by ``_aio_transport``, which holds the transport itself.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Final

from ._native import ffi, lib

if TYPE_CHECKING:
    from ._aio_transport import StreamTransport

__all__ = ["bs_py_aio_stream_ready", "oserror"]

logger: Final = logging.getLogger("asyncio")
# What C reports (cdefs/aio_stream.h).
_DATA: Final = lib.BS_STREAM_DATA
_EOF: Final = lib.BS_STREAM_EOF
_READ_ERR: Final = lib.BS_STREAM_READ_ERR
_READABLE: Final = lib.BS_STREAM_READABLE
_WRITE_ERR: Final = lib.BS_STREAM_WRITE_ERR
_LOW: Final = lib.BS_STREAM_LOW
_EMPTY: Final = lib.BS_STREAM_EMPTY
_unpack: Final = ffi.unpack
_from_handle: Final = ffi.from_handle


def oserror(err: int) -> OSError:
    """The OSError of an errno that C reports."""
    return OSError(err, os.strerror(err))


def _stream_error(exc_type: type[BaseException], exc: BaseException, tb: object) -> None:
    """onerror of bs_py_aio_stream_ready: what escaped its own handlers (a bug) is logged."""
    logger.error("aio stream callback failed", exc_info=exc)


@ffi.def_extern(onerror=_stream_error)  # type: ignore[untyped-decorator]
def bs_py_aio_stream_ready(handle: Any, kind: int, n: int) -> None:
    """A stream's C callback reports (cdefs/aio_stream.h): run the protocol's part of it.

    Protocol errors are the transport's (``_fatal_error``); ``KeyboardInterrupt`` and
    ``SystemExit`` stop the base's round and leave the loop's run as from any callback. The
    data path (the loop running, bytes read) is inlined: it runs once per read.
    """
    tr: StreamTransport = _from_handle(handle)
    loop = tr._loop
    if kind == _DATA and loop._thread_id is not None:
        if tr._conn_lost:
            return
        try:
            tr._protocol.data_received(_unpack(tr._rbuf, n))
        except (SystemExit, KeyboardInterrupt) as exc:
            loop._bs_base._st.fail(exc)
        except BaseException as exc:
            try:
                tr._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
            except BaseException as again:  # KeyboardInterrupt in the exception handler
                loop._bs_base._st.fail(again)
        return
    entered = loop._thread_id is None and loop._bs_enter()
    try:
        if kind == _DATA:
            tr._on_data(_unpack(tr._rbuf, n))
        elif kind == _READABLE:
            tr._on_readable()
        elif kind == _LOW:
            tr._maybe_resume_protocol()
        elif kind == _EMPTY:
            tr._rec.notify_empty = 0
            tr._on_empty()
        elif kind == _EOF:
            tr._on_eof()
        elif kind == _READ_ERR:
            tr._fatal_error(oserror(n), "Fatal read error on socket transport")
        elif kind == _WRITE_ERR:
            tr._on_write_error(n)
    except BaseException as exc:  # KeyboardInterrupt, SystemExit, or a bug here
        loop._bs_base._st.fail(exc)
    finally:
        if entered:
            loop._bs_leave()
