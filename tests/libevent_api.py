"""libevent's own API through ctypes, for tests that play a C host: a base and an evhttp made,
bound, run and freed as a host makes them, outside the package."""

from __future__ import annotations

import ctypes
import os
import socket

core = ctypes.CDLL("libevent_core-2.1.so.7")
extra = ctypes.CDLL("libevent_extra-2.1.so.7")
core.event_base_new.restype = ctypes.c_void_p
core.event_base_free.argtypes = [ctypes.c_void_p]
core.event_base_loop.argtypes = [ctypes.c_void_p, ctypes.c_int]
extra.evhttp_new.restype = ctypes.c_void_p
extra.evhttp_new.argtypes = [ctypes.c_void_p]
extra.evhttp_free.argtypes = [ctypes.c_void_p]
extra.evhttp_bind_socket_with_handle.restype = ctypes.c_void_p
extra.evhttp_bind_socket_with_handle.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint16]
extra.evhttp_bound_socket_get_fd.argtypes = [ctypes.c_void_p]
REQUEST_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
extra.evhttp_set_cb.argtypes = [ctypes.c_void_p, ctypes.c_char_p, REQUEST_CB, ctypes.c_void_p]
extra.evhttp_send_reply.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p]
EVLOOP_NONBLOCK = 2


def bind_loopback(http: int) -> int:
    """Bind a host's evhttp to 127.0.0.1 on a free port (libevent's own call); the port."""
    bound = extra.evhttp_bind_socket_with_handle(http, b"127.0.0.1", 0)
    assert bound
    fd = extra.evhttp_bound_socket_get_fd(bound)
    s = socket.socket(fileno=os.dup(fd))  # a duplicate: the evhttp keeps its own descriptor
    try:
        return int(s.getsockname()[1])
    finally:
        s.close()
