"""The evhttp server room: EvHttp, its callbacks, sockets and limits. Its routes are built in
``_server_routes.py``, its listening sockets checked in ``_server_sockets.py``; the requests it
is given live in ``_server_request.py``, their streaming (on_sent, on_body) in
``_server_stream.py``.

The per-request path is kept short on purpose: one ``extern "Python"`` call per request, no
allocation besides the request object, and one C call for a whole reply (status, headers, body);
the one-second ``Date`` header is cached in C (``cdefs/http_server.c``). Who owns a request and
when is told in docs/design/lifetimes.md.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, Final, final

from . import _registry
from ._args import _address_arg, _check_int, _oserror, _seconds
from ._args import type_name as _type_name
from ._event_base import EventBase, _LoopState
from ._guard import _guarded
from ._handles import Finalized
from ._log import http_log
from ._native import ffi, lib
from ._request import METHODS, PyRequestCallback
from ._server_request import _ServerRequest
from ._server_routes import _make_route, _path_arg, _Route
from ._server_sockets import _listening_fd, _sock_port

__all__ = ["EvHttp", "obtain_evhttp"]

_NULL = ffi.NULL
_REFUSE_ONLY: Final[int] = lib.BS_SETTLE_REFUSE_ONLY
_FLUSH: Final[int] = lib.BS_SETTLE_FLUSH
_SETTLE_NONE: Final[int] = lib.BS_SETTLE_NONE


@final
class EvHttp(Finalized):
    """An evhttp server on an EventBase: bound sockets, request callbacks, limits.

    Request callbacks are ``cb(req, arg)`` in Python, or a C ``EvHttpRequestCallback`` that gets
    libevent's ``struct evhttp_request *`` (as ``EvHttpRequest *``) and answers it with libevent's
    own calls. A Python callback that raises is logged at ERROR on ``bitcoin_support.http`` and
    the client gets 500 if nothing was sent; the server keeps serving.
    """

    __slots__ = ("_address", "_base", "_bound", "_live", "_pending", "_routes", "_running", "_st")

    _kind = "EvHttp"

    _base: EventBase
    _st: _LoopState
    _bound: list[Any]
    _pending: set[_ServerRequest]
    _routes: dict[str | None, _Route]
    _running: int
    _live: Any  # for a from_address wrapper: its base's count of live records; else None
    # For a from_address wrapper: the host's evhttp address (in _registry.servers); None when
    # Python owns the server.
    _address: int | None

    def __init__(self, base: EventBase) -> None:
        if not isinstance(base, EventBase):
            raise TypeError(f"obtain_evhttp: base must be an EventBase, not {_type_name(base)}")
        brec = base._require_open("obtain_evhttp")
        rec = lib.bs_evhttp_new(brec)
        if rec == _NULL:
            raise _oserror("obtain_evhttp: could not create the evhttp server")
        self._setup(rec, base, None, None)
        if rec.http != _NULL:
            _registry.servers.own(int(ffi.cast("uintptr_t", rec.http)), self)

    @classmethod
    def from_address(cls, ptr: int | Any, *, base: EventBase | int | Any = None) -> EvHttp:
        """Wrap a ``struct evhttp *`` owned by a C host; closing the wrapper never frees it.

        ``ptr`` is an address (int) or a cffi pointer. Python may ``set_cb``, ``set_gencb`` and
        ``del_cb`` on it; closing the wrapper (or ``bs_python_detach``) removes exactly the
        callbacks Python registered and answers 503 to the requests Python still holds. The
        wrapper is held until it is closed, and the same address gives the same wrapper.

        ``base`` is the evhttp's event base (an EventBase, an address or a cffi pointer). It may
        be left out once the evhttp listens on a socket: libevent 2.1 has no getter for an
        evhttp's base, but every listener of an evhttp is made on its base, and the listeners
        are public (``evhttp_foreach_bound_socket``, ``evconnlistener_get_base``).
        """
        where = "EvHttp.from_address"
        address = _address_arg(where, ptr)
        http = ffi.cast("struct evhttp *", address)
        found = lib.bs_evhttp_find_base(http)
        found_at = int(ffi.cast("uintptr_t", found)) if found != _NULL else None
        if base is None:
            if found_at is None:
                raise ValueError(
                    f"{where}: the evhttp has no listening socket, so its base cannot be found "
                    "(libevent 2.1 has no getter for it): pass base="
                )
            owner = EventBase.from_address(found_at)
        elif isinstance(base, EventBase):
            owner = base
        else:
            owner = EventBase.from_address(base)
        if found_at is not None and owner.address != found_at:
            raise ValueError(f"{where}: the evhttp's listeners are on another event base")
        guard = owner._st.guard
        if not guard.lock.acquire(False):
            guard.wait(where)
        room = _registry.servers
        try:
            with _registry.lock:
                wrapper = room.wrappers.get(address)
                if wrapper is not None and wrapper._rec is not None:
                    if wrapper._base is not owner and wrapper._base.address != owner.address:
                        raise ValueError(f"{where}: the evhttp is wrapped on another base")
                    return wrapper
                if address in room.owned:
                    raise ValueError(f"{where}: this evhttp was made by Python (obtain_evhttp)")
                rec = lib.bs_evhttp_wrap(owner._require_open(where), http)
                if rec == _NULL:
                    raise _oserror(f"{where}: could not wrap the evhttp")
                self = cls.__new__(cls)
                self._setup(rec, owner, address, _registry.live_count(owner.address))
                room.wrappers[address] = self  # held until its release (_after_release)
                _registry.apply_host_choices(address, rec)
        finally:
            guard.lock.release()
        return self

    def _setup(self, rec: Any, base: EventBase, address: int | None, live: Any) -> None:
        self._base = base
        self._st = base._st
        self._pending = set()
        self._routes = {}
        self._bound = []
        self._running = 0
        self._address = address
        self._live = live
        self._init_handle(rec, dummy=base.dummy, parent=base)

    @property
    @_guarded("EvHttp.address")
    def address(self) -> int:
        """Address of the ``struct evhttp``, for C code that registers its own callbacks."""
        return int(ffi.cast("uintptr_t", self._http("address")))

    @property
    def base(self) -> EventBase:
        """The base the server runs on (for a host's evhttp, the wrapper of the host's base)."""
        self._require_open("base")
        return self._base

    def _host_owned(self, what: str) -> None:
        if self._address is not None:
            raise RuntimeError(
                f"EvHttp.{what}: the host owns this evhttp (EvHttp.from_address) and its sockets"
            )

    def _http(self, what: str) -> Any:
        return self._require(f"{what}").http

    def _release_native(self, rec: Any) -> None:
        """Answer 503 to the requests still waiting for a reply, cancel the handlers of every
        request it holds (``serve_http``), then free the server.

        A server Python owns closes its connections when it is freed: the 503s are written to
        their sockets first, so that they reach the clients. Inside one of its own request
        callbacks libevent is still working on one of its connections, so C stops it accepting
        now and frees it on the next loop round.
        """
        later = self._running > 0
        wrapped = self._address is not None
        # 503 to the requests still replyable, written at once when the server is freed next;
        # the rest are settled when their connection closes, or by _after_release.
        how = _REFUSE_ONLY if wrapped else _REFUSE_ONLY | _FLUSH
        if rec.http != _NULL:
            if not wrapped:
                _registry.servers.disown(int(ffi.cast("uintptr_t", rec.http)), self)
            for req in list(self._pending):
                r = req._rec
                if r is not None and lib.bs_http_settle(r, 503, how) != _SETTLE_NONE:
                    req._released()  # answered: Python's hold ended in C
                gone = getattr(req, "_gone", None)  # set only through _on_gone()
                if gone is not None:
                    req._gone = None
                    try:
                        gone()  # its handler's task is cancelled (it finds the request closed)
                    except Exception as exc:
                        http_log.error("cancelling a handler failed", exc_info=exc)
            if later or wrapped:  # libevent must not call routes that are about to go
                for path in self._routes:
                    if path is not None:
                        lib.evhttp_del_cb(rec.http, path.encode("utf-8", "surrogateescape"))
            if wrapped and None in self._routes:  # no getter for the host's: libevent's 404
                lib.evhttp_set_gencb(rec.http, _NULL, _NULL)
        lib.bs_evhttp_release(rec, 1 if later else 0)  # on_close() closes what is left

    def _after_release(self) -> None:
        for req in list(self._pending):  # only left when the base freed the server as an orphan
            if req._rec is not None:
                req._rec.py = _NULL
                req.close()
        self._pending.clear()
        self._routes.clear()
        self._bound.clear()
        if self._address is not None:
            _registry.servers.unwrap(self._address, self)  # held since from_address

    # -- sockets

    @_guarded("EvHttp.bind")
    def bind(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0: any free port); returns the bound port. May be repeated."""
        self._host_owned("bind")
        http = self._http("bind")
        if not isinstance(host, str):
            raise TypeError(f"EvHttp.bind: host must be a str, not {_type_name(host)}")
        if "\0" in host:  # C would read the name only up to it, and bind somewhere else
            raise ValueError(f"EvHttp.bind: host must not contain NUL, got {host!r}")
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
        self._host_owned("accept_socket")
        http = self._http("accept_socket")
        fd, port = _listening_fd(where, sock)
        dup = os.dup(fd)
        try:
            os.set_blocking(dup, False)
            bound = lib.evhttp_accept_socket_with_handle(http, dup)
            if bound == _NULL:
                raise _oserror(f"{where}: libevent refused the socket")
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
        self._host_owned("stop_accepting")
        self._http("stop_accepting")
        bound, self._bound = self._bound, []
        for b in bound:
            lib.bs_evhttp_del_accept(self._rec, b)

    # -- callbacks

    @_guarded("EvHttp.set_gencb")
    def set_gencb(
        self, cb: PyRequestCallback | Any, arg: Any = None, *, stream_body: bool = False
    ) -> None:
        """The callback for requests that no ``set_cb`` path matches (default: 404).

        ``stream_body=True``: the callback runs once the headers are in; see ``on_body``.
        """
        http = self._http("set_gencb")
        route = _make_route(self, "EvHttp.set_gencb", cb, arg, stream_body)
        lib.evhttp_set_gencb(http, lib.bs_http_server_cb, route.crec)
        self._routes[None] = route
        lib.bs_evhttp_gen_stream(self._rec, 1 if stream_body else 0)

    @_guarded("EvHttp.set_cb")
    def set_cb(
        self, path: str, cb: PyRequestCallback | Any, arg: Any = None, *, stream_body: bool = False
    ) -> None:
        """The callback for requests whose path is exactly ``path`` (replaces an earlier one).

        ``path`` is a str; an ASCII ``bytes`` path names the same route as its str.
        ``stream_body=True``: the callback runs once the headers are in; see ``on_body``.
        """
        http = self._http("set_cb")
        key, cpath = _path_arg("EvHttp.set_cb", path)
        route = _make_route(self, "EvHttp.set_cb", cb, arg, stream_body)
        if lib.bs_evhttp_route_stream(self._rec, cpath, 1 if stream_body else 0) != 0:
            raise MemoryError("EvHttp.set_cb: out of memory")
        if self._address is None or key in self._routes:  # never a host's callback
            lib.evhttp_del_cb(http, cpath)
        rc = lib.evhttp_set_cb(http, cpath, lib.bs_http_server_cb, route.crec)
        if rc != 0:
            if self._address is not None and key not in self._routes:
                raise ValueError(f"EvHttp.set_cb: the host has a callback for path {path!r}")
            self._routes.pop(key, None)  # its old callback is gone from libevent too
            raise MemoryError("EvHttp.set_cb: libevent refused the callback")
        self._routes[key] = route

    @_guarded("EvHttp.del_cb")
    def del_cb(self, path: str) -> None:
        """Remove the callback of ``path``; ValueError when there is none."""
        http = self._http("del_cb")
        key, cpath = _path_arg("EvHttp.del_cb", path)
        if self._address is not None and key not in self._routes:
            raise ValueError(f"EvHttp.del_cb: Python registered no callback for path {path!r}")
        if lib.evhttp_del_cb(http, cpath) != 0:
            raise ValueError(f"EvHttp.del_cb: no callback for path {path!r}")
        self._routes.pop(key, None)
        lib.bs_evhttp_route_stream(self._rec, cpath, -1)

    # -- limits

    @_guarded("EvHttp.set_max_body_size")
    def set_max_body_size(self, n: int) -> None:
        """Bodies larger than ``n`` bytes get 413 before any callback runs."""
        http = self._http("set_max_body_size")
        _check_int("EvHttp.set_max_body_size", "n", n, 0, 2**62)
        lib.evhttp_set_max_body_size(http, n)
        lib.bs_evhttp_set_max_body(self._rec, n)  # streamed bodies are counted in C

    @_guarded("EvHttp.set_max_headers_size")
    def set_max_headers_size(self, n: int) -> None:
        """A request head (request line to the empty line, line ends included) larger than
        ``n`` bytes gets 431 and a closed connection."""
        http = self._http("set_max_headers_size")
        _check_int("EvHttp.set_max_headers_size", "n", n, 0, 2**62)
        lib.evhttp_set_max_headers_size(http, n)
        lib.bs_evhttp_set_max_headers(self._rec, n)  # the framer counts as received

    @_guarded("EvHttp.set_strict_framing")
    def set_strict_framing(self, on: bool = True) -> None:
        """Whether new connections are framed by the package (RFC 9112, strictly) before
        libevent reads them: on by default for the servers the package makes, off for a
        host's evhttp (``EvHttp.from_address``) until its host turns it on. Off is an explicit
        opt-out: libevent 2.1's own reader then takes chunk sizes, NULs in header values and
        bare-LF line ends that a proxy in front may read another way (only the smuggling check
        on the parsed headers stays). ``stream_body`` routes frame their connections anyway."""
        self._http("set_strict_framing")
        if not isinstance(on, bool):
            raise TypeError(f"EvHttp.set_strict_framing: on must be a bool, not {_type_name(on)}")
        lib.bs_evhttp_strict(self._rec, 1 if on else 0)

    @_guarded("EvHttp.set_timeout")
    def set_timeout(self, seconds: float) -> None:
        """Close connections idle (or stuck mid-request) for ``seconds``."""
        self._http("set_timeout")
        value = _seconds("EvHttp.set_timeout", "seconds", seconds, zero=False)
        lib.bs_evhttp_set_timeout(self._rec, value)

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


def obtain_evhttp(base: EventBase) -> EvHttp:
    """An evhttp server on ``base`` (a dummy on a dummy base)."""
    return EvHttp(base)
