"""aio's C stream transport (``_aio_transport``), as uvloop tests its own: every scenario runs on
asyncio's own loop and on ``aio.EventLoop``, and the two results must be equal (and right)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aio_helpers import KINDS, new_loop, no_leaks  # noqa: F401 (no_leaks: autouse)

from bitcoin_support import (
    EVLOOP_NO_EXIT_ON_EMPTY,
    EVLOOP_ONCE,
    aio,
    obtain_event_base,
)
from bitcoin_support._aio_transport import StreamTransport

MiB = 1 << 20
Scenario = Callable[[], Awaitable[Any]]


# Transports the aio runs made, to check that the C transport served them.
made: list[str] = []


def run_on(kind: str, scenario: Scenario) -> tuple[Any, list[tuple[str, str]]]:
    """Run ``scenario()`` on a new loop of ``kind``; its result and the exception handler's
    calls as (exception type, message head)."""
    errors: list[tuple[str, str]] = []

    def handler(_loop: Any, ctx: dict[str, Any]) -> None:
        exc = ctx.get("exception")
        msg = str(ctx.get("message", ""))
        head = msg if msg.startswith(("Fatal", "protocol.")) else msg.split(" ", 2)[0]
        errors.append((type(exc).__name__, head))

    with asyncio.Runner(loop_factory=lambda: new_loop(kind)) as runner:
        runner.get_loop().set_exception_handler(handler)
        result = runner.run(asyncio.wait_for(scenario(), 60))
    gc.collect()  # an unclosed transport warns here, in the test that left it
    return result, errors


def same_on_both(scenario: Scenario) -> tuple[Any, list[tuple[str, str]]]:
    made.clear()
    ref = run_on("asyncio", scenario)
    assert not made
    got = run_on("aio", scenario)
    assert got == ref
    assert made and set(made) == {"StreamTransport"}
    return got


def note(transport: Any) -> None:
    if isinstance(asyncio.get_running_loop(), aio.EventLoop):
        inner = getattr(getattr(transport, "_ssl_protocol", None), "_transport", transport)
        made.append(type(inner).__name__)


async def serve(factory: Callable[[], asyncio.BaseProtocol], **kw: Any) -> tuple[Any, int]:
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0, **kw)
    return server, server.sockets[0].getsockname()[1]


class Recorder(asyncio.Protocol):
    """Records what the transport calls; ``done`` resolves at connection_lost."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.data = bytearray()
        self.transport: Any = None
        self.done = asyncio.get_running_loop().create_future()
        self.lost: BaseException | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        note(transport)
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool | None:
        self.events.append("eof")
        return None

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        self.lost = exc
        if not self.done.done():
            self.done.set_result(None)


def squash(events: list[str]) -> list[str]:
    """Runs of one event as one (how often pause/resume alternate depends on timing)."""
    out: list[str] = []
    for e in events:
        if not out or out[-1] != e:
            out.append(e)
    return out


# -- scenarios


async def large_writes_to_a_slow_reader() -> Any:
    chunk = os.urandom(64 * 1024)
    total = 256
    sizes: list[int] = []
    proto: Recorder | None = None

    def factory() -> Recorder:
        nonlocal proto
        proto = Recorder()
        return proto

    server, port = await serve(factory)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    note(writer.transport)
    while proto is None or proto.transport is None:
        await asyncio.sleep(0.001)
    proto.transport.set_write_buffer_limits(high=256 * 1024)
    for _ in range(total):
        proto.transport.write(chunk)
        sizes.append(proto.transport.get_write_buffer_size())
    digest = hashlib.sha256()
    got = 0
    while got < total * len(chunk):
        data = await reader.read(32 * 1024)
        assert data
        digest.update(data)
        got += len(data)
        await asyncio.sleep(0)  # a slow reader
    proto.transport.close()
    await proto.done
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    expected = hashlib.sha256(chunk * total).hexdigest()
    events = squash(proto.events)
    return got, digest.hexdigest() == expected, [*events[:3], events[-1]], max(sizes) > 256 * 1024


async def pause_and_resume_both_ways() -> Any:
    proto: Recorder | None = None

    def factory() -> Recorder:
        nonlocal proto
        proto = Recorder()
        return proto

    server, port = await serve(factory)
    client = Recorder()
    loop = asyncio.get_running_loop()
    ctr, _ = await loop.create_connection(lambda: client, "127.0.0.1", port)
    while proto is None or proto.transport is None:
        await asyncio.sleep(0.001)
    srv = proto.transport
    ctr.pause_reading()
    reading = [ctr.is_reading()]
    srv.set_write_buffer_limits(high=64 * 1024)
    while "pause" not in proto.events:  # the client reads nothing: the server must pause
        srv.write(b"p" * 65536)
        await asyncio.sleep(0.001)
    queued = srv.get_write_buffer_size()
    await asyncio.sleep(0.05)
    held = len(client.data)
    ctr.resume_reading()
    reading.append(ctr.is_reading())
    while "resume" not in proto.events:
        await asyncio.sleep(0.001)
    srv.close()
    await client.done
    ctr.close()
    await proto.done
    server.close()
    await server.wait_closed()
    return reading, held == 0, queued > 64 * 1024, squash(proto.events), squash(client.events)


async def close_with_pending_writes() -> Any:
    proto: Recorder | None = None
    size = 8 * MiB

    def factory() -> Recorder:
        nonlocal proto
        proto = Recorder()
        return proto

    server, port = await serve(factory)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while proto is None or proto.transport is None:
        await asyncio.sleep(0.001)
    proto.transport.write(b"c" * size)
    pending = proto.transport.get_write_buffer_size() > 0
    proto.transport.close()
    closing = proto.transport.is_closing()
    data = await reader.read()  # to EOF: every byte arrives before it
    await proto.done
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return len(data), pending, closing, proto.events, proto.lost


async def abort_drops_pending_writes() -> Any:
    proto: Recorder | None = None
    size = 32 * MiB

    def factory() -> Recorder:
        nonlocal proto
        proto = Recorder()
        return proto

    server, port = await serve(factory)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while proto is None or proto.transport is None:
        await asyncio.sleep(0.001)
    proto.transport.write(b"a" * size)
    proto.transport.abort()
    after = proto.transport.get_write_buffer_size()
    got = 0
    with contextlib.suppress(ConnectionResetError):
        while data := await reader.read(MiB):
            got += len(data)
    await proto.done
    writer.close()
    with contextlib.suppress(ConnectionResetError):
        await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return got < size, after, proto.events, proto.lost


async def write_eof_half_closes() -> Any:
    class Server(Recorder):
        def eof_received(self) -> bool:
            self.events.append("eof")
            self.transport.write(b"got %d" % len(self.data))
            self.transport.close()
            return True

    proto: Server | None = None

    def factory() -> Server:
        nonlocal proto
        proto = Server()
        return proto

    server, port = await serve(factory)
    client = Recorder()
    loop = asyncio.get_running_loop()
    ctr, _ = await loop.create_connection(lambda: client, "127.0.0.1", port)
    ctr.write(b"e" * 100_000)
    can = ctr.can_write_eof()
    ctr.write_eof()
    with contextlib.suppress(RuntimeError):
        ctr.write(b"late")  # asyncio: RuntimeError after write_eof()
    await client.done
    assert proto is not None
    await proto.done
    server.close()
    await server.wait_closed()
    return can, bytes(client.data), client.events, proto.events


async def peer_reset() -> Any:
    proto: Recorder | None = None

    def factory() -> Recorder:
        nonlocal proto
        proto = Recorder()
        return proto

    server, port = await serve(factory)
    sock = socket.create_connection(("127.0.0.1", port))
    while proto is None or proto.transport is None:
        await asyncio.sleep(0.001)
    sock.sendall(b"unread")
    await asyncio.sleep(0.05)
    # Closing with unread data and a zero linger sends RST.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    await proto.done
    proto.transport.write(b"after")  # ignored once the connection is lost
    server.close()
    await server.wait_closed()
    return bytes(proto.data), proto.events, type(proto.lost).__name__


async def ten_thousand_connections() -> Any:
    made_n = lost_n = 0
    server_lost: list[BaseException | None] = []

    class Count(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            nonlocal made_n
            made_n += 1
            note(transport)
            transport.write(b"hi")
            transport.close()

        def connection_lost(self, exc: BaseException | None) -> None:
            nonlocal lost_n
            lost_n += 1
            server_lost.append(exc)

    server, port = await serve(Count, backlog=1024)
    fds = len(os.listdir("/proc/self/fd"))

    async def one() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data = await reader.read()
        writer.close()
        await writer.wait_closed()
        return data

    t0 = time.monotonic()
    got = 0
    for _ in range(100):
        got += sum(r == b"hi" for r in await asyncio.gather(*(one() for _ in range(100))))
    while lost_n < made_n:
        await asyncio.sleep(0.01)
    elapsed = time.monotonic() - t0
    server.close()
    await server.wait_closed()
    leaked = len(os.listdir("/proc/self/fd")) - fds
    return got, made_n, lost_n, set(map(type, server_lost)), leaked <= 0, elapsed < 50


async def protocol_raising_everywhere() -> Any:
    """Every protocol callback raises; each goes to the exception handler as asyncio's do."""
    seen: list[str] = []

    class Bad(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            note(transport)
            transport.set_write_buffer_limits(high=1)
            seen.append("made")
            raise ValueError("made")

        def data_received(self, data: bytes) -> None:
            seen.append("data")
            self.transport.write(b"x" * (16 * MiB))  # more than the socket takes
            raise ValueError("data")

        def pause_writing(self) -> None:
            seen.append("pause")
            raise ValueError("pause")

        def connection_lost(self, exc: BaseException | None) -> None:
            seen.append("lost " + type(exc).__name__)
            raise ValueError("lost")

    class BadEof(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            note(transport)

        def eof_received(self) -> None:
            seen.append("eof")
            raise ValueError("eof")

    class BadBuffer(asyncio.BufferedProtocol):
        def connection_made(self, transport: Any) -> None:
            note(transport)

        def get_buffer(self, sizehint: int) -> bytearray:
            seen.append("get_buffer")
            raise ValueError("get_buffer")

        def buffer_updated(self, nbytes: int) -> None:
            pass

    class BadUpdated(BadBuffer):
        def get_buffer(self, sizehint: int) -> bytearray:
            return bytearray(100)

        def buffer_updated(self, nbytes: int) -> None:
            seen.append("buffer_updated")
            raise ValueError("buffer_updated")

    for factory in (Bad, BadEof, BadBuffer, BadUpdated):
        server, port = await serve(factory)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"go")
        writer.write_eof()
        with contextlib.suppress(ConnectionResetError):
            await reader.read()  # the server's side ends on each error
        writer.close()
        with contextlib.suppress(ConnectionResetError):
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.01)
    return seen


async def unix_echo(path: str) -> Any:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        note(writer.transport)
        writer.write(await reader.read())
        writer.close()

    server = await asyncio.start_unix_server(echo, path)
    reader, writer = await asyncio.open_unix_connection(path)
    note(writer.transport)
    payload = os.urandom(3 * MiB)
    writer.write(payload)
    writer.write_eof()
    back = await reader.read()
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return back == payload, writer.get_extra_info("peername") == path


async def tls_echo(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> Any:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        note(writer.transport)
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
    )
    note(writer.transport)
    payload = os.urandom(2 * MiB)
    writer.write(payload)
    back = await reader.readexactly(len(payload))
    # And STARTTLS-style upgrade of a plain connection made on the C transport.
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return back == payload, writer.get_extra_info("cipher") is not None


# -- tests


def test_large_writes_to_a_slow_reader() -> None:
    (got, intact, events, queued), errors = same_on_both(large_writes_to_a_slow_reader)
    assert (got, intact, events, queued) == (
        256 * 64 * 1024,
        True,
        ["made", "pause", "resume", "lost"],
        True,
    )
    assert errors == []


def test_pause_and_resume_both_ways() -> None:
    result, errors = same_on_both(pause_and_resume_both_ways)
    assert result == (
        [False, True],
        True,
        True,
        ["made", "pause", "resume", "lost"],
        ["made", "eof", "lost"],
    )
    assert errors == []


def test_close_with_pending_writes_sends_them_first() -> None:
    result, errors = same_on_both(close_with_pending_writes)
    assert result == (8 * MiB, True, True, ["made", "pause", "resume", "lost"], None)
    assert errors == []


def test_abort_drops_pending_writes() -> None:
    result, errors = same_on_both(abort_drops_pending_writes)
    assert result == (True, 0, ["made", "pause", "lost"], None)
    assert errors == []


def test_write_eof_half_closes() -> None:
    result, errors = same_on_both(write_eof_half_closes)
    assert result == (True, b"got 100000", ["made", "eof", "lost"], ["made", "eof", "lost"])
    assert errors == []


def test_peer_reset() -> None:
    result, errors = same_on_both(peer_reset)
    assert result == (b"unread", ["made", "lost"], "ConnectionResetError")
    assert errors == []


@pytest.mark.timeout(300)
def test_ten_thousand_connections_opened_and_closed() -> None:
    result, errors = same_on_both(ten_thousand_connections)
    assert result == (10_000, 10_000, 10_000, {type(None)}, True, True)
    assert errors == []


def test_protocol_raising_in_every_callback() -> None:
    seen, errors = same_on_both(protocol_raising_everywhere)
    assert seen == [
        "made",
        "data",
        "pause",
        "lost ValueError",
        "eof",
        "get_buffer",
        "buffer_updated",
    ]
    assert errors == [
        ("ValueError", "Exception"),  # connection_made, run by call_soon
        ("ValueError", "protocol.pause_writing() failed"),
        ("ValueError", "Fatal error: protocol.data_received() call failed."),
        ("ValueError", "Exception"),  # connection_lost, run by call_soon
        ("ValueError", "Fatal error: protocol.eof_received() call failed."),
        ("ValueError", "Fatal error: protocol.get_buffer() call failed."),
        ("ValueError", "Fatal error: protocol.buffer_updated() call failed."),
    ]


def test_unix_stream_sockets(tmp_path: Path) -> None:
    result, errors = same_on_both(lambda: unix_echo(str(tmp_path / "s")))
    assert result == (True, True)
    assert errors == []


@pytest.fixture(scope="module")
def tls_contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    return server_ctx, client_ctx


def test_tls_runs_on_the_c_transport(tls_contexts: tuple[Any, Any]) -> None:
    result, errors = same_on_both(lambda: tls_echo(*tls_contexts))
    assert result == (True, True)
    assert errors == []


def test_keyboard_interrupt_in_data_received_leaves_the_run() -> None:
    opened: list[Any] = []
    accepted: list[Any] = []

    class Stop(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            accepted.append(transport)

        def data_received(self, data: bytes) -> None:
            raise KeyboardInterrupt

    async def main() -> None:
        server, port = await serve(Stop)
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        opened.extend((server, writer))
        writer.write(b"x")
        await asyncio.sleep(10)

    async def cleanup() -> None:
        server, writer = opened
        writer.close()
        for transport in accepted:  # the server's side, which the interrupt left open
            transport.close()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.01)

    for kind in KINDS:
        opened.clear()
        accepted.clear()
        loop = new_loop(kind)
        try:
            with pytest.raises(KeyboardInterrupt):
                loop.run_until_complete(main())
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(cleanup())
        finally:
            loop.close()


def test_attached_loop_with_transports() -> None:
    """Transports of an attached loop progress in the base's dispatch, with the loop running."""
    base = obtain_event_base()
    loop = aio.attach(base)
    result: list[Any] = []

    async def main() -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            result.append(type(writer.transport).__name__)
            writer.write((await reader.read()).upper())
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"attached " * 100_000)
        writer.write_eof()
        result.append(await reader.read())
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    task = loop.create_task(main())
    try:
        deadline = time.monotonic() + 30
        while not task.done() and time.monotonic() < deadline:
            base.loop(EVLOOP_NO_EXIT_ON_EMPTY | EVLOOP_ONCE)  # one round at a time, as a host might
        assert task.done()
        task.result()
    finally:
        loop.close()
        base.close()
    assert result == ["StreamTransport", b"ATTACHED " * 100_000]


def test_c_streams_off_uses_asyncios_transports() -> None:
    loop = aio.new_event_loop()
    loop.c_streams = False

    async def main() -> str:
        accepted: list[Recorder] = []

        def factory() -> Recorder:
            accepted.append(Recorder())
            return accepted[-1]

        server, port = await serve(factory)
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        name = type(writer.transport).__name__
        writer.close()
        await writer.wait_closed()
        await accepted[0].done  # the server's side sees EOF and closes
        server.close()
        await server.wait_closed()
        return name

    try:
        assert loop.run_until_complete(main()) == "_SelectorSocketTransport"
    finally:
        loop.close()
    assert StreamTransport.__name__ == "StreamTransport"


def test_write_and_abort_after_a_drained_close() -> None:
    """After close() has sent the queue and ended the connection, write() is counted as a lost
    write and abort() does nothing: no second connection_lost, no error, no crash."""

    async def main() -> Any:
        proto: Recorder | None = None

        def factory() -> Recorder:
            nonlocal proto
            proto = Recorder()
            return proto

        server, port = await serve(factory)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while proto is None or proto.transport is None:
            await asyncio.sleep(0.001)
        tr = proto.transport
        tr.write(b"d" * (8 * MiB))
        tr.close()  # pending data: the connection ends once it is sent
        data = await reader.read()
        await proto.done
        tr.write(b"late")
        tr.abort()
        await asyncio.sleep(0.01)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return len(data), proto.events.count("lost"), tr.get_write_buffer_size()

    result, errors = run_on("aio", main)
    assert result == (8 * MiB, 1, 0)
    assert errors == []


async def accepted_socket_and_extra_info() -> Any:
    """connect_accepted_socket on one end of a TCP connection made by hand; extra info as
    asyncio gives it."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()
    listener.close()
    loop = asyncio.get_running_loop()
    proto = Recorder()
    tr, _ = await loop.connect_accepted_socket(lambda: proto, conn)
    client.sendall(b"ping")
    while not proto.data:
        await asyncio.sleep(0.001)
    sock = tr.get_extra_info("socket")
    info = (
        tr.get_extra_info("sockname") == conn.getsockname(),
        tr.get_extra_info("peername") == client.getsockname(),
        sock.fileno() == conn.fileno(),
        tr.get_extra_info("nothing", "default"),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0,
    )
    tr.close()
    await proto.done
    client.close()
    return bytes(proto.data), info, proto.events


async def resume_writing_raising() -> Any:
    class Resume(Recorder):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            transport.set_write_buffer_limits(high=64 * 1024)
            transport.write(b"r" * (16 * MiB))

        def resume_writing(self) -> None:
            self.events.append("resume")
            raise ValueError("resume")

    proto: Resume | None = None

    def factory() -> Resume:
        nonlocal proto
        proto = Resume()
        return proto

    server, port = await serve(factory)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = 0
    while got < 16 * MiB:
        got += len(await reader.read(MiB))
    assert proto is not None
    proto.transport.close()
    await proto.done
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return got, squash(proto.events)


def test_connect_accepted_socket_and_extra_info() -> None:
    result, errors = same_on_both(accepted_socket_and_extra_info)
    # No TCP_NODELAY: asyncio sets it only on a socket made with proto IPPROTO_TCP.
    assert result == (b"ping", (True, True, True, "default", False), ["made", "lost"])
    assert errors == []


def test_resume_writing_raising_goes_to_the_exception_handler() -> None:
    result, errors = same_on_both(resume_writing_raising)
    assert result == (16 * MiB, ["made", "pause", "resume", "lost"])
    assert errors == [("ValueError", "protocol.resume_writing() failed")]
