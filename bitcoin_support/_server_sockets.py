"""The listening sockets of an EvHttp: what ``accept_socket`` takes (a bound, listening TCP
socket, or its fd) and the port a socket is bound to, without owning the caller's descriptor."""

from __future__ import annotations

import os
import socket

from ._args import type_name as _type_name


def _listening_fd(where: str, sock: object) -> tuple[int, int]:
    """The fd of ``sock`` (a socket or an fd) and its port; TypeError or ValueError unless it
    is a bound, listening TCP socket."""
    if isinstance(sock, bool):
        raise TypeError(f"{where}: sock must be a socket or an fd, not bool")
    fd = sock if isinstance(sock, int) else getattr(sock, "fileno", lambda: None)()
    if isinstance(fd, bool) or not isinstance(fd, int):
        raise TypeError(f"{where}: sock must be a socket or an fd, not {_type_name(sock)}")
    return fd, _listening_tcp_port(where, fd)


def _listening_tcp_port(where: str, fd: int) -> int:
    """The port of a bound, listening TCP socket; ValueError for anything else."""
    if fd < 0:
        raise ValueError(f"{where}: sock must be an open descriptor, got {fd}")
    try:
        dup = os.dup(fd)
    except OSError as exc:
        raise ValueError(f"{where}: sock must be an open descriptor ({exc.strerror})") from None
    try:
        s = socket.socket(fileno=dup)  # refuses what is not a socket: a pipe, a file
    except OSError as exc:
        os.close(dup)  # not adopted by a socket object: ours to close
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
