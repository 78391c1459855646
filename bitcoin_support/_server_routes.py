"""An EvHttp's routes: the record each registered callback (a path's or the generic one) gives
the C trampoline, built from a Python callable or a C ``EvHttpRequestCallback``, and the key of
a path."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, final

from ._args import _c_callback, _text_arg
from ._args import type_name as _type_name
from ._native import ffi

if TYPE_CHECKING:
    from ._server import EvHttp

_REQUEST_CB: Final = ffi.typeof("EvHttpRequestCallback")


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
        else:  # C's way back (crec.py), kept in .handle while EvHttp._routes holds the route
            self.handle = crec.py = ffi.new_handle(self)


def _make_route(http: EvHttp, where: str, cb: Any, arg: Any, stream: object) -> _Route:
    """The route of a Python callable or an EvHttpRequestCallback, checked; with
    ``stream_body`` only for a Python callback."""
    ccb, carg, is_c = _callback_args(where, cb, arg)
    if not isinstance(stream, bool):
        raise TypeError(f"{where}: stream_body must be a bool, not {_type_name(stream)}")
    if is_c:
        if stream:
            raise ValueError(f"{where}: stream_body needs a Python callback")
        return _Route(http, cb, arg, ccb, carg)
    route = _Route(http, cb, arg)
    route.crec.stream = 1 if stream else 0
    return route


def _callback_args(where: str, cb: Any, arg: Any) -> tuple[Any, Any, bool]:
    """(C callback, its arg, is_c) for a Python callable or an EvHttpRequestCallback."""
    if isinstance(cb, ffi.CData):
        ccb, carg = _c_callback(where, cb, arg, _REQUEST_CB, "void (*)(EvHttpRequest *, void *)")
        return ccb, carg, True
    if not callable(cb):
        raise TypeError(f"{where}: cb must be callable, not {_type_name(cb)}")
    return None, arg, False


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
