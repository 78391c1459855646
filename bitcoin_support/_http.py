"""evhttp as tracked handles: the server (EvHttp), its requests, and client connections.

Who owns a request or a connection, and when (libevent and Python share them), is told in the
README's "Lifetimes" chapter; the state machine of the C records is drawn in ``cdefs/http.c``.

The per-request server path is kept short on purpose: one ``extern "Python"`` call per request,
no allocation besides the request object, and one C call for a whole reply (status, headers,
body); the one-second ``Date`` header is cached in C.
"""

from __future__ import annotations

import errno
import os
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any, ClassVar, Final, final

from ._errors import ClosedError
from ._errors import type_name as _type_name
from ._event import EventBase, _get_ident, _guarded, _LoopState
from ._handles import Handle, _live_extra, _next_id
from ._log import TRACE, events_log, http_log
from ._native import ffi, lib
from ._serialize import SerializeData

__all__ = [
    "EvHttp",
    "EvHttpConnection",
    "EvHttpRequest",
    "obtain_evhttp",
    "obtain_evhttp_connection_base",
    "obtain_evhttp_request",
]

PyRequestCallback = Callable[["EvHttpRequest", Any], object]
"""A Python request callback: ``cb(req, arg)``; its return value is ignored."""

METHODS: Final[dict[str, int]] = {
    "GET": 1 << 0,
    "POST": 1 << 1,
    "HEAD": 1 << 2,
    "PUT": 1 << 3,
    "DELETE": 1 << 4,
    "OPTIONS": 1 << 5,
    "TRACE": 1 << 6,
    "CONNECT": 1 << 7,
    "PATCH": 1 << 8,
}
_METHOD_NAMES: Final[dict[int, str]] = {v: k for k, v in METHODS.items()}
_REQUEST_CB: Final = ffi.typeof("EvHttpRequestCallback")
_VOID_P: Final = ffi.typeof("void *")
_ERRORS: Final[dict[int, str]] = {
    1: "timeout",
    2: "connection closed",
    3: "invalid header",
    4: "connection reset",
    5: "cancelled",
    6: "data too long",
}
_ERRNO_ERRORS: Final[dict[int, str]] = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ETIMEDOUT: "timeout",
    errno.EPIPE: "connection reset",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
}
_KIND: Final = "EvHttpRequest"
# Request record states (cdefs/private/http_shim.h)
_NEW: Final[int] = lib.BS_REQ_NEW
_MADE: Final[int] = lib.BS_REQ_MADE
_RESPONDING: Final[int] = lib.BS_REQ_RESPONDING
_CANCELLED: Final[int] = lib.BS_REQ_CANCELLED
_STARTED: Final[int] = lib.BS_REQ_STARTED
_REPLYABLE: Final = frozenset((lib.BS_REQ_CALLBACK, lib.BS_REQ_DEFERRED))
_CANCEL_ERROR: Final = 5  # EVREQ_HTTP_REQUEST_CANCEL + 1

_from_handle = ffi.from_handle
_NULL = ffi.NULL
_trace_enabled = events_log.isEnabledFor


def _live_requests() -> int:
    """Requests not yet released: counted in C, where Python's hold on a record begins and ends."""
    return int(lib.bs_http_live_requests())


_live_extra[_KIND] = _live_requests


def _trace() -> bool:
    return _trace_enabled(TRACE)


def _other_thread(st: _LoopState | None, what: str) -> None:
    """The thread rule of ``_event._Guard`` for requests, kept to one comparison on the loop's
    own thread (the per-request path): from another thread while the base is dispatched,
    RuntimeError."""
    if st is not None:
        thread = st.guard.thread
        if thread is not None and thread != _get_ident():
            raise RuntimeError(
                f"EvHttpRequest.{what}: the base is being dispatched by another thread; "
                "from other threads, only call_soon_threadsafe() may be called while it runs"
            )


def _check_int(where: str, name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: {name} must be an int, not {_type_name(value)}")
    if not low <= value <= high:
        raise ValueError(f"{where}: {name} must be in [{low}, {high}], got {value}")
    return value


def _seconds(where: str, seconds: object) -> Any:
    """A ``struct timeval *`` for a positive number of seconds."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"{where}: seconds must be a number, not {_type_name(seconds)}")
    if not 0 < seconds < 2**31:
        raise ValueError(f"{where}: seconds must be > 0, got {seconds}")
    tv = ffi.new("struct timeval *")
    whole = int(seconds)
    tv.tv_sec = whole
    tv.tv_usec = round((seconds - whole) * 1_000_000)
    return tv


def _text_arg(where: str, name: str, value: object) -> bytes:
    """A str or bytes argument as bytes for C, without NUL, CR or LF (no injection)."""
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogateescape")
    elif isinstance(value, bytes):
        data = value
    else:
        raise TypeError(f"{where}: {name} must be str or bytes, not {_type_name(value)}")
    if b"\r" in data or b"\n" in data or b"\0" in data:
        raise ValueError(f"{where}: {name} must not contain CR, LF or NUL")
    return data


def _body_arg(where: str, data: object) -> tuple[Any, int]:
    """A C pointer (or bytes) and length for any bytes-like object or a SerializeData."""
    if type(data) is bytes:
        return data, len(data)
    if isinstance(data, str):
        raise TypeError(f"{where}: body must be bytes-like, not str")
    if isinstance(data, SerializeData):
        data = data._buffer()
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{where}: body must be bytes-like, not {_type_name(data)}") from None
    with view:
        n = view.nbytes
    if n == 0:
        return _NULL, 0
    return ffi.from_buffer("char[]", data, require_writable=False), n


def _decode(ptr: Any) -> str:
    text: str = ffi.string(ptr).decode("utf-8", "surrogateescape")
    return text


# ---------------------------------------------------------------------------------------------
# headers


class _Headers(Mapping[str, str]):
    """A case-insensitive, read-only view of a request's headers (in libevent's order)."""

    __slots__ = ("_out", "_req")

    def __init__(self, req: EvHttpRequest, out: bool) -> None:
        self._req = req
        self._out = out

    def _q(self) -> Any:
        r = self._req._live_req("headers")
        if self._out:
            return lib.evhttp_request_get_output_headers(r)
        return lib.evhttp_request_get_input_headers(r)

    def _entries(self) -> Iterator[tuple[str, str]]:
        kv = lib.bs_http_header_first(self._q())
        while kv != _NULL:
            yield ffi.string(kv.key).decode("latin-1"), ffi.string(kv.value).decode("latin-1")
            kv = lib.bs_http_header_next(kv)

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
        for k, _ in list(self._entries()):
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

    def add(self, name: str, value: str) -> None:
        """Append a header (a repeated name is sent as repeated lines)."""
        key = _header_bytes("name", name)
        val = _header_bytes("value", value)
        rc = lib.bs_http_header_add(self._q(), key, len(key), val, len(val))
        if rc == -1:
            raise ValueError(f"header name {name!r} is not a valid HTTP token")
        if rc == -2:
            raise ValueError(
                f"header value for {name!r} must not contain control characters (CR, LF, NUL...)"
            )
        if rc != 0:
            raise MemoryError("could not add the header")

    def set(self, name: str, value: str) -> None:
        """Replace every header called ``name`` (any case) with one line."""
        key = _header_bytes("name", name)
        val = _header_bytes("value", value)
        if lib.bs_http_header_check(key, len(key), val, len(val)) != 0:
            self.add(name, value)  # raises the precise ValueError
        self.remove(name)
        self.add(name, value)

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


# ---------------------------------------------------------------------------------------------
# requests


class EvHttpRequest:
    """An HTTP request: on the server, one to answer; on the client, one to send and its response.

    A handle like the other four types (``id``, live counter, TRACE log, ``close``), but kept light
    because a server makes one per request: a server request is closed by its reply or by its
    connection closing, never by a finalizer (its server holds it while it waits for a reply).
    """

    __slots__ = (
        "_arg",
        "_cb",
        "_conn",
        "_gone",
        "_handle",
        "_http",
        "_id",
        "_in",
        "_out",
        "_rec",
        "_st",
        "_started",
        "_traced",
    )

    _kind: ClassVar[str] = _KIND

    _rec: Any
    _id: int
    _traced: bool  # TRACE was on at creation: its release is logged too
    _st: _LoopState | None  # the loop state of its base (a client request: once made)
    _http: EvHttp | None
    _handle: Any
    _conn: EvHttpConnection | None
    _cb: PyRequestCallback | None
    _arg: Any
    _in: _Headers | None
    _out: _OutputHeaders | None
    _started: float

    def __init__(self) -> None:
        raise TypeError("EvHttpRequest: use obtain_evhttp_request() for a client request")

    # -- handle surface

    @property
    def id(self) -> int:
        """Positive integer, unique in the process across all five handle types."""
        return self._id

    @property
    def closed(self) -> bool:
        """True once the reply is complete, the connection closed, or ``close()`` was called."""
        return self._rec is None

    @property
    def dummy(self) -> bool:
        """Always False: requests exist only on real servers and connections."""
        return False

    @classmethod
    def live(cls) -> int:
        """Number of requests not yet released."""
        return _live_requests()

    def __enter__(self) -> EvHttpRequest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<EvHttpRequest id={self._id} {'closed' if self._rec is None else 'open'}>"

    def close(self) -> None:
        """Release the request; idempotent.

        A server request not yet answered is answered with 500 first (nobody could answer it
        afterwards). A client request not yet sent is freed; one in flight is cancelled (its
        callback does not run). Inside its own callback, only the wrapper is closed: libevent
        frees the request when the callback returns.
        """
        rec = self._rec
        if rec is None:
            return
        _other_thread(self._st, "close")
        if self._http is not None and rec.req != _NULL:
            if rec.state in _REPLYABLE:
                lib.bs_http_send_error(rec, 500, _NULL)  # ends Python's hold on the record
                self._released()
                return
            if rec.state == _STARTED:
                lib.bs_http_reply_end(rec)
                self._released()
                return
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

    def _on_gone(self, cb: Callable[[], object] | None) -> None:
        """Private hook (``trio_guest.serve_http``): ``cb()`` runs once if the connection of this
        deferred server request closes before the reply is complete (after the request closed)."""
        self._gone = cb

    def _released(self) -> None:
        """Python's ownership of the record ended in C (reply complete): close the wrapper."""
        self._rec = None
        self._after_close()

    def _after_close(self) -> None:
        http = self._http
        if self._handle is not None:
            self._handle = None
            if http is not None:
                http._pending.discard(self)
            else:
                _client_pending.pop(self._id, None)
                conn = self._conn
                if conn is not None and conn._pending is not None:
                    conn._pending.pop(self._id, None)
        if self._traced:
            events_log.log(TRACE, "release EvHttpRequest id=%d", self._id)

    def _live_req(self, what: str) -> Any:
        """libevent's request, or ClosedError (RuntimeError from a thread the rule forbids)."""
        rec = self._rec
        if rec is None or rec.req == _NULL:
            raise ClosedError(f"EvHttpRequest.{what}: the request is closed")
        _other_thread(self._st, what)
        return rec.req

    # -- what was received (server: the request; client: the response)

    @property
    def method(self) -> str:
        """The request method (``"GET"``, ``"POST"``...)."""
        r = self._live_req("method")
        return _METHOD_NAMES.get(lib.evhttp_request_get_command(r), "UNKNOWN")

    @property
    def uri(self) -> str:
        """The request target as received (undecoded)."""
        p = lib.evhttp_request_get_uri(self._live_req("uri"))
        return "" if p == _NULL else _decode(p)

    def _uri_part(self, what: str, getter: Callable[[Any], Any]) -> str | None:
        u = lib.evhttp_request_get_evhttp_uri(self._live_req(what))
        if u == _NULL:
            return None
        p = getter(u)
        return None if p == _NULL else _decode(p)

    @property
    def path(self) -> str:
        """The path of the target, undecoded (``/`` when it has none)."""
        return self._uri_part("path", lib.evhttp_uri_get_path) or "/"

    @property
    def query(self) -> str | None:
        """The query string after ``?`` (undecoded), or None."""
        return self._uri_part("query", lib.evhttp_uri_get_query)

    @property
    def query_params(self) -> dict[str, str]:
        """The decoded query parameters (the last value wins for a repeated name)."""
        q = self.query
        if not q:
            return {}
        return dict(urllib.parse.parse_qsl(q, keep_blank_values=True, errors="replace"))

    @property
    def host(self) -> str | None:
        """The host the request names (absolute URI, else the Host header), or None."""
        p = lib.evhttp_request_get_host(self._live_req("host"))
        if p == _NULL:
            return None
        return _decode(p) or None

    @property
    def peer(self) -> tuple[str, int]:
        """``(address, port)`` of the other end."""
        if self._conn is not None:
            return self._conn.peer
        r = self._live_req("peer")
        host = ffi.new("char[]", 64)
        port = ffi.new("int *")
        if lib.bs_http_peer(r, host, 64, port) != 0:
            raise ClosedError("EvHttpRequest.peer: the connection is gone")
        return ffi.string(host).decode("ascii"), int(port[0])

    @property
    def input_headers(self) -> _Headers:
        """Headers received: case-insensitive, read-only; ``get_all(name)`` for repeats."""
        self._live_req("input_headers")
        h = self._in
        if h is None:
            h = self._in = _Headers(self, False)
        return h

    @property
    def output_headers(self) -> _OutputHeaders:
        """Headers to send (``add``, ``set``, ``remove``); CR/LF are refused."""
        self._live_req("output_headers")
        h = self._out
        if h is None:
            h = self._out = _OutputHeaders(self, True)
        return h

    @property
    def body_length(self) -> int:
        """Bytes of body received."""
        r = self._live_req("body_length")
        return int(lib.evbuffer_get_length(lib.evhttp_request_get_input_buffer(r)))

    @property
    def body(self) -> bytes:
        """The body received, as bytes (a copy)."""
        r = self._live_req("body")
        n = ffi.new("size_t *")
        p = lib.bs_http_body(r, n)
        return b"" if p == _NULL else ffi.unpack(p, n[0])

    def read_body(self, into: Any) -> int:
        """Copy the body into a SerializeData (appended) or a writable buffer; returns the count.

        No intermediate ``bytes`` is made, so a secret body never lands in unwipeable memory.
        A writable buffer receives at most its own size.
        """
        r = self._live_req("read_body")
        n = int(lib.evbuffer_get_length(lib.evhttp_request_get_input_buffer(r)))
        if isinstance(into, SerializeData):
            into._check()
            into._check_resizable()
            into._ensure(into._len + n)
            got = int(lib.bs_http_copyout(r, ffi.cast("char *", into._ptr + into._len), n))
            into._len += got
            return got
        try:
            dst = ffi.from_buffer("char[]", into, require_writable=True)
        except (TypeError, BufferError):  # not a buffer, or a read-only one
            raise TypeError(
                "EvHttpRequest.read_body: into must be a SerializeData or a writable buffer, "
                f"not {_type_name(into)}"
            ) from None
        return int(lib.bs_http_copyout(r, dst, min(n, len(dst))))

    # -- server replies

    def _reply_rc(self, what: str, rc: int) -> None:
        if rc == 0:
            return
        if rc == -1:
            raise ClosedError(f"EvHttpRequest.{what}: the request is closed")
        if rc == -2:
            raise RuntimeError(f"EvHttpRequest.{what}: a reply was already sent or started")
        if rc == -3:
            raise ValueError(f"EvHttpRequest.{what}: content_type must not contain CR or LF")
        raise MemoryError(f"EvHttpRequest.{what}: out of memory")

    def _server_rec(self, what: str) -> Any:
        rec = self._rec
        if rec is None:
            raise ClosedError(f"EvHttpRequest.{what}: the request is closed")
        if self._http is None:
            raise RuntimeError(f"EvHttpRequest.{what}: only a server request can be answered")
        _other_thread(self._st, what)
        return rec

    def send_reply(
        self,
        code: int,
        reason: str | None = None,
        body: Any = b"",
        *,
        content_type: str | None = None,
    ) -> None:
        """Answer with ``code``, ``reason`` (default: the standard phrase) and ``body``.

        ``body`` is any bytes-like object or a SerializeData; ``content_type`` sets that header.
        The request is closed afterwards.
        """
        rec = self._rec
        if rec is None or self._http is None:
            rec = self._server_rec("send_reply")
        else:  # _server_rec's thread rule, inlined on the per-request path
            thread = self._st.guard.thread  # type: ignore[union-attr]
            if thread is not None and thread != _get_ident():
                _other_thread(self._st, "send_reply")
        if type(code) is not int or not 100 <= code <= 599:
            _check_int("EvHttpRequest.send_reply", "code", code, 100, 599)
        creason = _NULL if reason is None else _text_arg("send_reply", "reason", reason)
        if type(body) is bytes:
            data, n = body, len(body)
        else:
            data, n = _body_arg("EvHttpRequest.send_reply", body)
        if content_type is None:
            rc = lib.bs_http_send_reply(rec, code, creason, data, n, _NULL, 0)
        else:
            ct = _header_bytes("value", content_type)
            rc = lib.bs_http_send_reply(rec, code, creason, data, n, ct, len(ct))
        if rc:
            self._reply_rc("send_reply", rc)
        self._released()

    def send_echo(self, code: int = 200, *, default_content_type: str | bytes = b"") -> None:
        """Answer with the request's own body and ``Content-Type`` (or ``default_content_type``).

        The body moves from the input buffer to the output buffer inside libevent: no copy
        passes through Python. The request is closed afterwards.
        """
        rec = self._rec
        if rec is None or self._http is None:
            rec = self._server_rec("send_echo")
        else:  # _server_rec's thread rule, inlined on the per-request path
            thread = self._st.guard.thread  # type: ignore[union-attr]
            if thread is not None and thread != _get_ident():
                _other_thread(self._st, "send_echo")
        if type(code) is not int or not 100 <= code <= 599:
            _check_int("EvHttpRequest.send_echo", "code", code, 100, 599)
        if type(default_content_type) is bytes:
            ct = default_content_type
        else:
            ct = _header_bytes("value", default_content_type) if default_content_type else _NULL
        rc = lib.bs_http_send_echo(rec, code, ct)
        if rc:
            self._reply_rc("send_echo", rc)
        # self._released(), inlined: this is the echo server's per-request path
        self._rec = None
        if self._handle is not None or self._traced:
            self._after_close()

    def send_error(self, code: int, reason: str | None = None) -> None:
        """Answer with libevent's error page for ``code``; the request is closed afterwards."""
        rec = self._server_rec("send_error")
        _check_int("EvHttpRequest.send_error", "code", code, 100, 599)
        creason = _NULL if reason is None else _text_arg("send_error", "reason", reason)
        self._reply_rc("send_error", lib.bs_http_send_error(rec, code, creason))
        self._released()

    def send_reply_start(self, code: int, reason: str | None = None) -> None:
        """Start a chunked reply (``Transfer-Encoding: chunked`` for HTTP/1.1 clients)."""
        rec = self._server_rec("send_reply_start")
        _check_int("EvHttpRequest.send_reply_start", "code", code, 100, 599)
        creason = _NULL if reason is None else _text_arg("send_reply_start", "reason", reason)
        self._reply_rc("send_reply_start", lib.bs_http_reply_start(rec, code, creason))

    def send_reply_chunk(self, data: Any) -> None:
        """Send one chunk of a started reply (an empty chunk is skipped)."""
        rec = self._server_rec("send_reply_chunk")
        ptr, n = _body_arg("EvHttpRequest.send_reply_chunk", data)
        self._reply_rc("send_reply_chunk", lib.bs_http_reply_chunk(rec, ptr, n))

    def send_reply_end(self) -> None:
        """Finish a chunked reply; the request is closed afterwards."""
        rec = self._server_rec("send_reply_end")
        self._reply_rc("send_reply_end", lib.bs_http_reply_end(rec))
        self._released()

    # -- client side

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
        if self._http is not None:
            raise RuntimeError(f"EvHttpRequest.{what}: only a client request has a body to send")
        _other_thread(self._st, what)
        if rec.state != _NEW:
            raise RuntimeError(f"EvHttpRequest.{what}: the request was already made")
        return rec

    @property
    def response_code(self) -> int:
        """Status of the response (client), or 0 when the request failed (see ``error``)."""
        rec = self._rec
        if rec is None:
            raise ClosedError("EvHttpRequest.response_code: the request is closed")
        if rec.req == _NULL:
            return 0
        return int(lib.evhttp_request_get_response_code(rec.req))

    @property
    def response_reason(self) -> str | None:
        """Reason phrase of the response (client), or None."""
        rec = self._rec
        if rec is None:
            raise ClosedError("EvHttpRequest.response_reason: the request is closed")
        if rec.req == _NULL:
            return None
        p = lib.evhttp_request_get_response_code_line(rec.req)
        return None if p == _NULL else ffi.string(p).decode("latin-1")

    @property
    def error(self) -> str | None:
        """A short reason when a client request failed (``"connection refused"``...), else None."""
        rec = self._rec
        if rec is None:
            raise ClosedError("EvHttpRequest.error: the request is closed")
        if self._http is not None or rec.state in (_NEW, _MADE):
            return None
        if rec.req != _NULL and lib.evhttp_request_get_response_code(rec.req) != 0:
            return None
        err = int(rec.error)
        sys_errno = int(rec.sys_errno)
        if err in (2, 4) and sys_errno in (errno.ECONNRESET, errno.EPIPE):
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


class _ClientRequest(EvHttpRequest):
    """A client request: freed by its finalizer if dropped before it was sent."""

    __slots__ = ()

    def __del__(self) -> None:
        try:
            if self._rec is not None:
                self.close()
        except Exception:
            pass


_new_request = object.__new__
_client_pending: dict[int, EvHttpRequest] = {}


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
    req: EvHttpRequest = _new_request(_ClientRequest)
    req._rec = rec
    req._http = None
    req._st = None
    req._conn = None
    req._handle = None
    req._cb = cb
    req._arg = arg
    req._in = None
    req._out = None
    req._id = _next_id()
    req._traced = traced = _trace_enabled(TRACE)
    if traced:
        events_log.log(TRACE, "create EvHttpRequest id=%d", req._id)
    return req


# ---------------------------------------------------------------------------------------------
# the server


@final
class _Route:
    """A callback registered for a path (or the generic one): the C trampoline's arg.

    Python and C callbacks alike go through ``bs_http_server_cb``, so the server's record knows
    when one of its callbacks runs. The EvHttp holds its routes while libevent may call them.
    """

    __slots__ = ("arg", "cb", "crec", "handle", "http")

    def __init__(
        self, http: EvHttp, cb: Any, arg: Any, c_cb: Any = None, c_arg: Any = None
    ) -> None:
        self.http = http
        self.cb = cb
        self.arg = arg
        self.crec = crec = ffi.new("bs_http_route_t *")
        crec.h = http._rec
        if c_cb is not None:
            self.handle = None
            crec.c_cb = c_cb
            crec.c_arg = c_arg
        else:
            self.handle = crec.py = ffi.new_handle(self)


def _callback_args(where: str, cb: Any, arg: Any) -> tuple[Any, Any, bool]:
    """(libevent callback, its arg, is_c) for a Python callable or an EvHttpRequestCallback."""
    if isinstance(cb, ffi.CData):
        ctype = ffi.typeof(cb)
        if ctype != _REQUEST_CB and (
            ctype.kind != "pointer"
            or ctype.item.kind != "function"
            or len(ctype.item.args) != 2
            or ctype.item.result.cname != "void"
            or any(a.kind != "pointer" for a in ctype.item.args)
        ):
            raise TypeError(
                f"{where}: cb must be a Python callable or a C function pointer "
                f"void (*)(EvHttpRequest *, void *), not {ctype.cname}"
            )
        if cb == _NULL:
            raise ValueError(f"{where}: cb is a NULL function pointer")
        if arg is None:
            carg = _NULL
        elif isinstance(arg, ffi.CData) and ffi.typeof(arg).kind in ("pointer", "array"):
            carg = ffi.cast(_VOID_P, arg)
        elif isinstance(arg, int) and not isinstance(arg, bool) and 0 <= arg < 2**64:
            carg = ffi.cast(_VOID_P, arg)
        else:
            raise TypeError(
                f"{where}: arg of a C callback must be None, a cffi pointer or an int address, "
                f"not {_type_name(arg)}"
            )
        return ffi.cast(_REQUEST_CB, cb), carg, True
    if not callable(cb):
        raise TypeError(f"{where}: cb must be callable, not {_type_name(cb)}")
    return None, arg, False


@final
class EvHttp(Handle):
    """An evhttp server on an EventBase: bound sockets, request callbacks, limits.

    Request callbacks are ``cb(req, arg)`` in Python, or a C ``EvHttpRequestCallback`` that gets
    libevent's ``struct evhttp_request *`` (as ``EvHttpRequest *``) and answers it with libevent's
    own calls. A Python callback that raises is logged at ERROR on ``bitcoin_support.http`` and
    the client gets 500 if nothing was sent; the server keeps serving.
    """

    __slots__ = ("_base", "_bound", "_pending", "_routes", "_running", "_st")

    _kind = "EvHttp"

    _base: EventBase
    _st: _LoopState
    _bound: list[Any]
    _pending: set[EvHttpRequest]
    _routes: dict[str | None, _Route]
    _running: int

    def __init__(self, base: EventBase) -> None:
        if not isinstance(base, EventBase):
            raise TypeError(f"obtain_evhttp: base must be an EventBase, not {_type_name(base)}")
        brec = base._require_open("obtain_evhttp")
        rec = lib.bs_evhttp_new(brec)
        if rec == _NULL:
            raise OSError(ffi.errno, "obtain_evhttp: could not create the evhttp server")
        self._base = base
        self._st = base._st
        self._pending = set()
        self._routes = {}
        self._bound = []
        self._running = 0
        self._init_handle(rec, dummy=base.dummy, parent=base)

    def _http(self, what: str) -> Any:
        return self._require(f"{what}").http

    def _release_native(self, rec: Any) -> None:
        """Answer 503 to the requests still waiting for a reply, then free the server.

        Inside one of its own request callbacks libevent is still working on one of its
        connections, so C stops it accepting now and frees it on the next loop round.
        """
        later = self._running > 0
        if rec.http != _NULL:
            for req in list(self._pending):
                r = req._rec
                if r is not None and r.req != _NULL and r.state in _REPLYABLE:
                    lib.bs_http_send_error(r, 503, _NULL)
                    req._released()
            if later:  # libevent must not call routes that are about to go
                for path in self._routes:
                    if path is not None:
                        lib.evhttp_del_cb(rec.http, path.encode("utf-8", "surrogateescape"))
        lib.bs_evhttp_release(rec, 1 if later else 0)  # on_close() closes what is left

    def _after_release(self) -> None:
        for req in list(self._pending):  # only left when the base freed the server as an orphan
            if req._rec is not None:
                req._rec.py = _NULL
                req.close()
        self._pending.clear()
        self._routes.clear()
        self._bound.clear()

    # -- sockets

    @_guarded("EvHttp.bind")
    def bind(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0: any free port); returns the bound port. May be repeated."""
        http = self._http("bind")
        if not isinstance(host, str):
            raise TypeError(f"EvHttp.bind: host must be a str, not {_type_name(host)}")
        _check_int("EvHttp.bind", "port", port, 0, 65535)
        bound = lib.evhttp_bind_socket_with_handle(http, host.encode("idna"), port)
        if bound == _NULL:
            err = ffi.errno or errno.EADDRNOTAVAIL
            raise OSError(err, f"EvHttp.bind: cannot listen on {host}:{port}: {os.strerror(err)}")
        self._track(bound)
        return _sock_port(int(lib.evhttp_bound_socket_get_fd(bound)))

    @_guarded("EvHttp.accept_socket")
    def accept_socket(self, sock: socket.socket | int) -> int:
        """Serve on an already listening socket (a duplicate of its fd); returns its port.

        The caller keeps its own socket object; the duplicate is made non-blocking (which is
        shared with the original descriptor) and closed with the server.
        """
        where = "EvHttp.accept_socket"
        http = self._http("accept_socket")
        if isinstance(sock, bool):
            raise TypeError(f"{where}: sock must be a socket or an fd, not bool")
        fd = sock if isinstance(sock, int) else getattr(sock, "fileno", lambda: None)()
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"{where}: sock must be a socket or an fd, not {_type_name(sock)}")
        port = _listening_tcp_port(where, fd)
        dup = os.dup(fd)
        try:
            os.set_blocking(dup, False)
            bound = lib.evhttp_accept_socket_with_handle(http, dup)
            if bound == _NULL:
                raise OSError(ffi.errno, f"{where}: libevent refused the socket")
        except BaseException:
            os.close(dup)
            raise
        self._track(bound)
        return port

    def _track(self, bound: Any) -> None:
        """Keep a listening socket, guarded so that running out of descriptors pauses accepting
        for a moment instead of spinning the loop."""
        self._bound.append(bound)
        if lib.bs_evhttp_guard_accept(self._rec, bound) != 0:
            raise MemoryError("EvHttp: cannot guard the listening socket")

    @_guarded("EvHttp.stop_accepting")
    def stop_accepting(self) -> None:
        """Close every listening socket; connections already open keep being served."""
        self._http("stop_accepting")
        bound, self._bound = self._bound, []
        for b in bound:
            lib.bs_evhttp_del_accept(self._rec, b)

    # -- callbacks

    @_guarded("EvHttp.set_gencb")
    def set_gencb(self, cb: PyRequestCallback | Any, arg: Any = None) -> None:
        """The callback for requests that no ``set_cb`` path matches (default: 404)."""
        http = self._http("set_gencb")
        ccb, carg, is_c = _callback_args("EvHttp.set_gencb", cb, arg)
        route = _Route(self, cb, arg, ccb, carg) if is_c else _Route(self, cb, arg)
        lib.evhttp_set_gencb(http, lib.bs_http_server_cb, route.crec)
        self._routes[None] = route

    @_guarded("EvHttp.set_cb")
    def set_cb(self, path: str, cb: PyRequestCallback | Any, arg: Any = None) -> None:
        """The callback for requests whose path is exactly ``path`` (replaces an earlier one).

        ``path`` is a str; an ASCII ``bytes`` path names the same route as its str.
        """
        http = self._http("set_cb")
        key, cpath = _path_arg("EvHttp.set_cb", path)
        ccb, carg, is_c = _callback_args("EvHttp.set_cb", cb, arg)
        route = _Route(self, cb, arg, ccb, carg) if is_c else _Route(self, cb, arg)
        lib.evhttp_del_cb(http, cpath)
        rc = lib.evhttp_set_cb(http, cpath, lib.bs_http_server_cb, route.crec)
        if rc != 0:
            self._routes.pop(key, None)  # its old callback is gone from libevent too
            raise MemoryError("EvHttp.set_cb: libevent refused the callback")
        self._routes[key] = route

    @_guarded("EvHttp.del_cb")
    def del_cb(self, path: str) -> None:
        """Remove the callback of ``path``; ValueError when there is none."""
        http = self._http("del_cb")
        key, cpath = _path_arg("EvHttp.del_cb", path)
        if lib.evhttp_del_cb(http, cpath) != 0:
            raise ValueError(f"EvHttp.del_cb: no callback for path {path!r}")
        self._routes.pop(key, None)

    # -- limits

    @_guarded("EvHttp.set_max_body_size")
    def set_max_body_size(self, n: int) -> None:
        """Bodies larger than ``n`` bytes get 413 before any callback runs."""
        http = self._http("set_max_body_size")
        _check_int("EvHttp.set_max_body_size", "n", n, 0, 2**62)
        lib.evhttp_set_max_body_size(http, n)

    @_guarded("EvHttp.set_max_headers_size")
    def set_max_headers_size(self, n: int) -> None:
        """Request line and headers larger than ``n`` bytes are refused."""
        http = self._http("set_max_headers_size")
        _check_int("EvHttp.set_max_headers_size", "n", n, 0, 2**62)
        lib.evhttp_set_max_headers_size(http, n)

    @_guarded("EvHttp.set_timeout")
    def set_timeout(self, seconds: float) -> None:
        """Close connections idle (or stuck mid-request) for ``seconds``."""
        http = self._http("set_timeout")
        lib.evhttp_set_timeout_tv(http, _seconds("EvHttp.set_timeout", seconds))

    @_guarded("EvHttp.set_allowed_methods")
    def set_allowed_methods(self, *names: str) -> None:
        """The methods served (others get 501); libevent's default: GET POST HEAD PUT DELETE."""
        mask = 0
        for name in names:
            if not isinstance(name, str):
                raise TypeError(
                    f"EvHttp.set_allowed_methods: names must be str, not {_type_name(name)}"
                )
            bit = METHODS.get(name.upper())
            if bit is None:
                raise ValueError(
                    f"EvHttp.set_allowed_methods: unknown method {name!r} "
                    f"(known: {', '.join(METHODS)})"
                )
            mask |= bit
        lib.evhttp_set_allowed_methods(self._http("set_allowed_methods"), mask)


def _path_arg(where: str, path: object) -> tuple[str, bytes]:
    """A route's key (str) and its bytes for libevent: one route per path, whatever its type."""
    if isinstance(path, bytes):
        try:
            key = path.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"{where}: a bytes path must be ASCII, got {path!r}") from None
    elif isinstance(path, str):
        key = path
    else:
        raise TypeError(f"{where}: path must be str (or ASCII bytes), not {_type_name(path)}")
    return key, _text_arg(where, "path", key)


def _listening_tcp_port(where: str, fd: int) -> int:
    """The port of a bound, listening TCP socket; ValueError for anything else."""
    if fd < 0:
        raise ValueError(f"{where}: sock must be an open descriptor, got {fd}")
    try:
        s = socket.socket(fileno=os.dup(fd))
    except OSError as exc:
        raise ValueError(f"{where}: sock must be a listening TCP socket ({exc.strerror})") from None
    try:
        ok = (
            s.family in (socket.AF_INET, socket.AF_INET6)
            and s.type == socket.SOCK_STREAM
            and s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        )
        if not ok:
            raise ValueError(f"{where}: sock must be a bound, listening TCP socket")
        return int(s.getsockname()[1])
    except OSError as exc:
        raise ValueError(f"{where}: sock must be a listening TCP socket ({exc.strerror})") from None
    finally:
        s.close()


def _sock_port(fd: int) -> int:
    """The local port of a socket, without taking ownership of ``fd``."""
    s = socket.socket(fileno=os.dup(fd))
    try:
        return int(s.getsockname()[1])
    finally:
        s.close()


def obtain_evhttp(base: EventBase) -> EvHttp:
    """An evhttp server on ``base`` (a dummy on a dummy base)."""
    return EvHttp(base)


def _log_callback_error(req: EvHttpRequest, exc: BaseException) -> None:
    http_log.error("request callback raised (request id=%d)", req._id, exc_info=exc)


@ffi.def_extern(onerror=lambda *a: http_log.error("request dispatch failed", exc_info=a))  # type: ignore[untyped-decorator]
def _bs_http_on_request(rec: Any, handle: Any) -> int:
    """A request for a Python callback: wrap it, run the callback, keep it if not answered.

    Returns 1 when the callback raised; the C trampoline then answers 500 (or ends a started
    chunked reply) and drops Python's share of the record.
    """
    route: _Route = _from_handle(handle)
    http = route.http
    req: EvHttpRequest = _new_request(EvHttpRequest)
    req._rec = rec
    req._http = http
    req._st = http._st
    req._handle = None
    req._in = None
    req._out = None
    req._conn = None
    req._id = ident = _next_id()
    req._traced = traced = _trace_enabled(TRACE)
    if traced:
        events_log.log(TRACE, "create EvHttpRequest id=%d", ident)
    http._running += 1
    try:
        route.cb(req, route.arg)
    except BaseException as exc:
        http._running -= 1
        if req._rec is not None:
            req._rec = None
            req._after_close()
        _log_callback_error(req, exc)
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: stop the loop
            http._base._st.fail(exc)
        return 1
    http._running -= 1
    if req._rec is None:
        return 0
    if http._rec is None and rec.req != _NULL:
        # The callback closed its own server: nobody is left to answer later.
        if rec.state in _REPLYABLE:
            lib.bs_http_send_error(rec, 503, _NULL)
            req._released()
        else:
            req.close()
        return 0
    # Not answered: the server holds the request until it is answered or its connection
    # closes; the C record gets a handle to tell us about the latter.
    h = ffi.new_handle(req)
    if lib.bs_http_defer(rec, h) != 0:  # its connection is gone: the trampoline finishes it
        req._rec = None
        req._after_close()
        return 0
    req._handle = h
    http._pending.add(req)
    return 0


@ffi.def_extern(onerror=lambda *a: http_log.error("request close failed", exc_info=a))  # type: ignore[untyped-decorator]
def _bs_http_on_gone(handle: Any) -> None:
    """The connection of a deferred request closed: close the wrapper (late replies fail)."""
    req: EvHttpRequest = _from_handle(handle)
    rec = req._rec
    if rec is not None:
        req._rec = None
        rec.py = _NULL
        lib.bs_http_req_release(rec)
        req._after_close()
    gone = getattr(req, "_gone", None)  # set only through _on_gone()
    if gone is not None:
        req._gone = None
        gone()


# ---------------------------------------------------------------------------------------------
# the client


@final
class EvHttpConnection(Handle):
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
    _pending: dict[int, EvHttpRequest] | None
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
            raise OSError(ffi.errno, f"{where}: could not create the connection")
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
        evcon = self._require("set_timeout").evcon
        lib.evhttp_connection_set_timeout_tv(
            evcon, _seconds("EvHttpConnection.set_timeout", seconds)
        )
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
        if not isinstance(req, EvHttpRequest):
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
def _bs_http_on_response(handle: Any) -> None:
    """A client request completed or failed: run its callback, then close the wrapper.

    libevent frees the request when this returns, so nothing here frees it.
    """
    req: EvHttpRequest = _from_handle(handle)
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
