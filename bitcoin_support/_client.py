"""The evhttp client room: EvHttpConnection and the requests made on it.

A client request is Python's until ``make_request``; from then on libevent owns it and the
request sits in ``_client_pending`` (so that neither it nor its connection can be collected)
until its callback has run. Who owns what and when is told in docs/design/lifetimes.md.
"""

from __future__ import annotations

import errno
import time
from typing import Any, Final, final

from ._args import _body_arg, _check_int, _oserror, _seconds, _text_arg
from ._args import type_name as _type_name
from ._errors import ClosedError
from ._event_base import EventBase, _LoopState
from ._guard import _guarded, _on_turn
from ._handles import Finalized, dropped_message, warn_dropped
from ._log import http_log
from ._native import ffi, lib
from ._request import (
    _CANCELLED,
    _MADE,
    _NEW,
    METHODS,
    EvHttpRequest,
    PyRequestCallback,
    _other_thread,
)

__all__ = ["EvHttpConnection", "obtain_evhttp_connection_base", "obtain_evhttp_request"]

# A failed request's error, as the record keeps it: libevent's enum evhttp_request_error + 1
_ERRORS: Final[dict[int, str]] = {
    lib.EVREQ_HTTP_TIMEOUT + 1: "timeout",
    lib.EVREQ_HTTP_EOF + 1: "connection closed",
    lib.EVREQ_HTTP_INVALID_HEADER + 1: "invalid header",
    lib.EVREQ_HTTP_BUFFER_ERROR + 1: "connection reset",
    lib.EVREQ_HTTP_REQUEST_CANCEL + 1: "cancelled",
    lib.EVREQ_HTTP_DATA_TOO_LONG + 1: "data too long",
}
_CLOSED_ERRORS: Final = frozenset((lib.EVREQ_HTTP_EOF + 1, lib.EVREQ_HTTP_BUFFER_ERROR + 1))

_ERRNO_ERRORS: Final[dict[int, str]] = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ETIMEDOUT: "timeout",
    errno.EPIPE: "connection reset",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
}

_NULL = ffi.NULL
_from_handle = ffi.from_handle
_new_request = object.__new__


class _ClientRequest(EvHttpRequest):
    """A client request: freed by its finalizer if dropped before it was sent."""

    __slots__ = ("_arg", "_cb", "_conn", "_handle", "_started")

    _conn: EvHttpConnection | None
    _handle: Any
    _cb: PyRequestCallback | None
    _arg: Any
    _started: float

    def __del__(self) -> None:
        try:
            if self._rec is None:
                return
            message = dropped_message(self)
            self._release()  # no guard: nothing else reaches a request being finalized
        except Exception:  # half made, or interpreter exit: nowhere to report
            return
        warn_dropped(message, self)

    @property
    def peer(self) -> tuple[str, int]:
        """``(host, port)`` of the server (once made), else of the other end."""
        if self._conn is not None:
            return self._conn.peer
        return super().peer

    @_on_turn("close")
    def close(self) -> None:
        """Release the request; idempotent.

        A request not yet sent is freed; one in flight is cancelled (its callback does not run).
        Inside its own callback, only the wrapper is closed: libevent frees the request when the
        callback returns.
        """
        self._release()

    def _release(self) -> None:
        rec = self._rec
        if rec is None:
            return
        _other_thread(self._st, "close")
        self._rec = None
        try:
            lib.bs_http_req_release(rec)
        finally:
            self._after_close()

    def _finish_cancelled(self, base: EventBase, *, run_callback: bool) -> None:
        """A client request its connection cancelled: run its callback once, then close."""
        cb = self._cb
        try:
            if run_callback and cb is not None:
                cb(self, self._arg)
        except BaseException as exc:
            base._st.fail(exc)
        finally:
            rec = self._rec
            if rec is not None:
                self._rec = None
                lib.bs_http_req_release(rec)
                self._after_close()

    def _after_close(self) -> None:
        # The header views point at the request: dropping them breaks that cycle, so the wrapper
        # and its views go with their last reference, not with the cyclic GC (as the server's).
        self._in = self._out = None
        if self._handle is not None:
            self._handle = None
            _client_pending.pop(self._id, None)
            conn = self._conn
            if conn is not None and conn._pending is not None:
                conn._pending.pop(self._id, None)
        if self._traced:
            self._trace_release()

    @_on_turn("set_body")
    def set_body(self, data: Any) -> None:
        """The body to send (any bytes-like object or a SerializeData); before make_request."""
        rec = self._client_rec("set_body")
        ptr, n = _body_arg("EvHttpRequest.set_body", data)
        buf = lib.evhttp_request_get_output_buffer(rec.req)
        lib.evbuffer_drain(buf, lib.evbuffer_get_length(buf))
        if n and lib.evbuffer_add(buf, ptr, n) != 0:
            raise MemoryError("EvHttpRequest.set_body: out of memory")

    def _client_rec(self, what: str) -> Any:
        rec = self._rec
        if rec is None or rec.req == _NULL:
            raise ClosedError(f"EvHttpRequest.{what}: the request is closed")
        _other_thread(self._st, what)
        if rec.state != _NEW:
            raise RuntimeError(f"EvHttpRequest.{what}: the request was already made")
        return rec

    @property
    def error(self) -> str | None:
        """A short reason when a client request failed (``"connection refused"``...), else None."""
        rec = self._rec
        if rec is None:
            raise ClosedError("EvHttpRequest.error: the request is closed")
        if rec.state in (_NEW, _MADE):
            return None
        if rec.req != _NULL and lib.evhttp_request_get_response_code(rec.req) != 0:
            return None
        err = int(rec.error)
        sys_errno = int(rec.sys_errno)
        if err in _CLOSED_ERRORS and sys_errno in (errno.ECONNRESET, errno.EPIPE):
            return "connection reset"
        if err:
            return _ERRORS.get(err, "failed")
        if rec.req != _NULL:
            # libevent's connect-failure path: the request comes back with code 0 and no error
            # code, and errno is gone. Taking the connection timeout's full time means it timed
            # out; failing earlier means the peer refused.
            conn = self._conn
            limit = conn._timeout if conn is not None else None
            if limit is not None and time.monotonic() - self._started >= 0.9 * limit:
                return "timeout"
            return "connection refused"
        return _ERRNO_ERRORS.get(sys_errno, "connection failed")


_client_pending: dict[int, _ClientRequest] = {}


def obtain_evhttp_request(cb: PyRequestCallback, arg: Any = None) -> EvHttpRequest:
    """A client request whose ``cb(req, arg)`` runs once the response is complete or failed.

    Set ``output_headers`` and ``set_body()`` before ``EvHttpConnection.make_request``. In the
    callback, read ``response_code`` (0 on failure, with ``error`` set), ``response_reason``,
    ``input_headers`` and ``body``; the request is closed when the callback returns.
    """
    if not callable(cb):
        raise TypeError(f"obtain_evhttp_request: cb must be callable, not {_type_name(cb)}")
    rec = lib.bs_http_client_new(_NULL)
    if rec == _NULL:
        raise MemoryError("obtain_evhttp_request: could not create the request")
    req: _ClientRequest = _new_request(_ClientRequest)
    req._init_request(rec, None)
    req._conn = None
    req._handle = None
    req._cb = cb
    req._arg = arg
    return req


@final
class EvHttpConnection(Finalized):
    """A client connection to ``host:port`` on an EventBase, for ``make_request``."""

    __slots__ = (
        "_base",
        "_finalizing",
        "_host",
        "_pending",
        "_port",
        "_running",
        "_st",
        "_timeout",
    )

    _kind = "EvHttpConnection"

    _base: EventBase
    _st: _LoopState
    _finalizing: bool
    _host: str
    _port: int
    _pending: dict[int, _ClientRequest] | None
    _running: int
    _timeout: float | None

    def __init__(self, base: EventBase, host: str, port: int) -> None:
        where = "obtain_evhttp_connection_base"
        if not isinstance(base, EventBase):
            raise TypeError(f"{where}: base must be an EventBase, not {_type_name(base)}")
        if not isinstance(host, str):
            raise TypeError(f"{where}: host must be a str, not {_type_name(host)}")
        _check_int(where, "port", port, 1, 65535)
        brec = base._require_open(where)
        rec = lib.bs_evconn_new(brec, _text_arg(where, "host", host), port)
        if rec == _NULL:
            raise _oserror(f"{where}: could not create the connection")
        self._base = base
        self._st = base._st
        self._host = host
        self._port = port
        self._pending = {}
        self._running = 0
        self._timeout = None
        self._finalizing = False
        self._init_handle(rec, dummy=base.dummy, parent=base)

    def _close(self, *, finalizing: bool) -> None:
        self._finalizing = finalizing
        super()._close(finalizing=finalizing)

    def _release_native(self, rec: Any) -> None:
        """Free the connection (next round if inside its own callback); finish its requests.

        C cancels every request still queued; each one's callback then runs once, with
        ``response_code == 0`` and ``error == "cancelled"`` (not from a finalizer: nobody is
        left to tell). A request whose callback runs now finishes as usual.
        """
        pending = self._pending
        self._pending = None
        lib.bs_evconn_release(rec, 1 if self._running else 0)
        if pending:
            for req in list(pending.values()):
                r = req._rec
                if r is not None and r.state == _CANCELLED:
                    req._finish_cancelled(self._base, run_callback=not self._finalizing)

    @property
    def peer(self) -> tuple[str, int]:
        """``(host, port)`` this connection talks to."""
        self._require_open("peer")
        return self._host, self._port

    @_guarded("EvHttpConnection.set_timeout")
    def set_timeout(self, seconds: float) -> None:
        """Time allowed for connecting and for each read or write of a request."""
        rec = self._require("set_timeout")
        value = _seconds("EvHttpConnection.set_timeout", "seconds", seconds, zero=False)
        lib.bs_evconn_set_timeout(rec, value)
        self._timeout = float(seconds)

    @_guarded("EvHttpConnection.set_retries")
    def set_retries(self, n: int) -> None:
        """Connection attempts retried after the first one fails (-1: forever)."""
        evcon = self._require("set_retries").evcon
        _check_int("EvHttpConnection.set_retries", "n", n, -1, 2**31 - 1)
        lib.evhttp_connection_set_retries(evcon, n)

    @_guarded("EvHttpConnection.make_request")
    def make_request(self, req: EvHttpRequest, method: str, uri: str) -> None:
        """Send ``req`` (from ``obtain_evhttp_request``); its callback runs on completion."""
        where = "EvHttpConnection.make_request"
        rec = self._require("make_request")
        if not isinstance(req, _ClientRequest):
            if isinstance(req, EvHttpRequest):
                raise RuntimeError(f"{where}: only a client request can be made")
            raise TypeError(f"{where}: req must be an EvHttpRequest, not {_type_name(req)}")
        rrec = req._client_rec("make_request")
        if not isinstance(method, str):
            raise TypeError(f"{where}: method must be a str, not {_type_name(method)}")
        cmd = METHODS.get(method.upper())
        if cmd is None:
            raise ValueError(f"{where}: unknown method {method!r}")
        curi = _text_arg(where, "uri", uri)
        if not curi:
            raise ValueError(f"{where}: uri must not be empty")
        req._conn = self
        req._st = self._st
        req._started = time.monotonic()
        req._handle = h = ffi.new_handle(req)
        rrec.py = h
        _client_pending[req._id] = req
        assert self._pending is not None
        self._pending[req._id] = req
        if lib.bs_http_make_request(rrec, rec, cmd, curi) != 0:
            req.close()  # cancelled in C, or already finished by its callback
            raise OSError(errno.ECONNABORTED, f"{where}: libevent refused the request")


@ffi.def_extern(onerror=lambda *a: http_log.error("response dispatch failed", exc_info=a))  # type: ignore[untyped-decorator]
def bs_py_http_response(handle: Any) -> None:
    """A client request completed or failed: run its callback, then close the wrapper.

    libevent frees the request when this returns, so nothing here frees it.
    """
    req: _ClientRequest = _from_handle(handle)
    conn = req._conn
    cb = req._cb
    if conn is not None:
        conn._running += 1
    try:
        if cb is not None:
            cb(req, req._arg)
    except BaseException as exc:
        if conn is not None:
            conn._base._st.fail(exc)
        else:
            http_log.error("response callback raised", exc_info=exc)
    finally:
        if conn is not None:
            conn._running -= 1
        rec = req._rec
        if rec is not None:
            req._rec = None
            lib.bs_http_req_release(rec)
            req._after_close()


def obtain_evhttp_connection_base(base: EventBase, host: str, port: int) -> EvHttpConnection:
    """A client connection to ``host:port`` on ``base`` (a dummy on a dummy base)."""
    return EvHttpConnection(base, host, port)
