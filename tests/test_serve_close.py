"""Closing a server while ``serve_http`` handlers run: every handler it held is cancelled (plain
ones too, not only those in ``iter_body`` or ``send_chunk``) and each client reads the 503 the
server queued, before its connection goes.

Three ways to close: ``EvHttp.close()`` on a server Python owns (it frees its connections at
once), closing an ``EvHttp.from_address`` wrapper of a host's evhttp (the host keeps the
connections), and closing an ``EventBase.from_address`` wrapper with the server made on it.
Trio and asyncio alike; clients are raw sockets on 127.0.0.1 reading until EOF.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import time
from collections.abc import Callable, Iterator

import pytest
import trio

from bitcoin_support import (
    EventBase,
    EvHttp,
    EvHttpRequest,
    aio,
    obtain_event_base,
    obtain_evhttp,
    trio_guest,
)

N = 3  # handlers held when the server closes
REQUEST = b"GET /held HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"

core = ctypes.CDLL("libevent_core-2.1.so.7")
extra = ctypes.CDLL("libevent_extra-2.1.so.7")
core.event_base_new.restype = ctypes.c_void_p
core.event_base_free.argtypes = [ctypes.c_void_p]
extra.evhttp_new.restype = ctypes.c_void_p
extra.evhttp_new.argtypes = [ctypes.c_void_p]
extra.evhttp_free.argtypes = [ctypes.c_void_p]
extra.evhttp_bind_socket_with_handle.restype = ctypes.c_void_p
extra.evhttp_bind_socket_with_handle.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint16]
extra.evhttp_bound_socket_get_fd.argtypes = [ctypes.c_void_p]


class Setup:
    """A base to run trio or asyncio on, a server on it, and how to close that server."""

    def __init__(self, how: str) -> None:
        self.host_base: int | None = None
        self.host_http: int | None = None
        if how == "wrapper":  # a host's evhttp (libevent's own API), wrapped
            self.host_base = core.event_base_new()
            self.host_http = extra.evhttp_new(self.host_base)
            bound = extra.evhttp_bind_socket_with_handle(self.host_http, b"127.0.0.1", 0)
            assert bound
            self.port = _sock_port(extra.evhttp_bound_socket_get_fd(bound))
            self.base = EventBase.from_address(self.host_base)
            self.http = EvHttp.from_address(self.host_http)
            self.close: Callable[[], None] = self.http.close
            return
        self.base = obtain_event_base()
        if how == "server":
            self.http = obtain_evhttp(self.base)
            self.close = self.http.close
        else:  # the server is made on a wrapper of the base, and the wrapper is closed
            wrapper = EventBase.from_address(self.base.address)
            self.http = obtain_evhttp(wrapper)
            self.close = wrapper.close
        self.port = self.http.bind("127.0.0.1", 0)

    def free(self) -> None:
        if not self.base.closed:
            self.base.close()
        if self.host_http is not None:
            extra.evhttp_free(self.host_http)
            core.event_base_free(self.host_base)


def _sock_port(fd: int) -> int:
    s = socket.socket(fileno=os.dup(fd))
    try:
        return int(s.getsockname()[1])
    finally:
        s.close()


@pytest.fixture(params=["server", "wrapper", "base"])
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    s = Setup(request.param)
    yield s
    s.free()


def check(responses: list[bytes], cancelled: list[str], elapsed: float) -> None:
    assert len(responses) == N
    for data in responses:
        assert data.startswith(b"HTTP/1.1 503 "), data  # not EOF: the reply came first
    assert cancelled == ["cancelled"] * N
    assert elapsed < 10
    assert EvHttpRequest.live() == 0


def test_trio_close_cancels_every_handler_and_the_clients_get_503(setup: Setup) -> None:
    started: list[EvHttpRequest] = []
    cancelled: list[str] = []

    async def handler(req: EvHttpRequest) -> bytes:
        started.append(req)
        try:
            await trio.sleep(30)
        except trio.Cancelled:
            cancelled.append("cancelled")
            raise
        return b"too late"

    async def exchange(out: list[bytes]) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", setup.port)
        async with stream:
            await stream.send_all(REQUEST)
            data = b""
            with trio.fail_after(10):
                while chunk := await stream.receive_some():
                    data += chunk
        out.append(data)

    async def main() -> tuple[list[bytes], float]:
        responses: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio_guest.serve_http, setup.http, handler)
            async with trio.open_nursery() as clients:
                for _ in range(N):
                    clients.start_soon(exchange, responses)
                with trio.fail_after(10):
                    while len(started) < N:
                        await trio.sleep(0.005)
                t0 = time.monotonic()
                setup.close()
                with trio.fail_after(10):
                    while len(cancelled) < N:
                        await trio.sleep(0.005)
            nursery.cancel_scope.cancel()
        return responses, time.monotonic() - t0

    responses, elapsed = trio_guest.run(setup.base, main)
    check(responses, cancelled, elapsed)


def test_asyncio_close_cancels_every_handler_and_the_clients_get_503(setup: Setup) -> None:
    started: list[EvHttpRequest] = []
    cancelled: list[str] = []

    async def handler(req: EvHttpRequest) -> bytes:
        started.append(req)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append("cancelled")
            raise
        return b"too late"

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", setup.port)
        writer.write(REQUEST)
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return data

    async def main() -> tuple[list[bytes], float]:
        serving = asyncio.ensure_future(aio.serve_http(setup.http, handler))
        clients = [asyncio.ensure_future(exchange()) for _ in range(N)]
        deadline = time.monotonic() + 10
        while len(started) < N:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        t0 = time.monotonic()
        setup.close()
        responses = list(await asyncio.gather(*clients))
        while len(cancelled) < N:
            assert time.monotonic() < deadline + 10
            await asyncio.sleep(0.005)
        elapsed = time.monotonic() - t0
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        return responses, elapsed

    loop = aio.new_event_loop(setup.base)
    try:
        responses, elapsed = loop.run_until_complete(main())
    finally:
        loop.close()
    check(responses, cancelled, elapsed)
