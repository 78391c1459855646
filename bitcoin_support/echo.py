"""The HTTP echo server: ``python -m bitcoin_support.echo [--host --port --workers --max-body]``.

Every request gets 200 with its own body and ``Content-Type`` (default
``application/octet-stream``); a body over ``--max-body`` gets 413. The request handling is a
Python callback on evhttp. ``--workers N`` runs N worker processes, each with its own event base
and its own ``SO_REUSEPORT`` socket on the same port (the kernel spreads connections across
them); the parent only supervises them (restarts one that dies, stops them all on SIGINT or
SIGTERM). A worker stops gracefully: it stops accepting, answers what it already read, exits 0.
On SIGUSR1 a worker prints its live handle counts to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from ._cli import OneLineParser
from ._event_base import obtain_event_base
from ._handles import live_counts
from ._request import EvHttpRequest
from ._server import EvHttp, obtain_evhttp

__all__ = ["listen_error", "main", "parse_args", "serve"]

DEFAULT_CONTENT_TYPE: Final = b"application/octet-stream"
GRACE_SECONDS: Final = 0.25  # time left to flush replies after a stop signal


def _echo(req: EvHttpRequest, arg: Any) -> None:
    """Answer with the request's body and Content-Type (moved inside libevent, no copy)."""
    req.send_echo(200, default_content_type=DEFAULT_CONTENT_TYPE)


def _listen(host: str, port: int, reuseport: bool) -> socket.socket:
    """A listening TCP socket on ``host:port``, shared across processes with SO_REUSEPORT."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


def _run_worker(sock: socket.socket, max_body: int, ready: Callable[[], object]) -> int:
    """Serve on ``sock`` until SIGINT or SIGTERM; 0 after a graceful stop.

    ``ready()`` runs once the stop handlers are in place, so that whoever it tells may signal.
    """
    base = obtain_event_base(epoll_changelist=True)
    http: EvHttp = obtain_evhttp(base)
    http.set_max_body_size(max_body)
    http.set_gencb(_echo)
    http.accept_socket(sock)
    sock.close()  # the server holds its own duplicate of the descriptor

    def stop(signum: int, frame: object) -> None:
        # Runs on the loop's thread (the base wakes up for Python signal handlers): stop taking
        # connections, give the replies already queued a moment to flush, then leave the loop.
        http.stop_accepting()
        base.loopexit(GRACE_SECONDS)

    def report(signum: int, frame: object) -> None:
        # SIGUSR1: the live handle counts, for soak runs that check nothing is left behind.
        line = f"echo worker {os.getpid()}: live {json.dumps(live_counts())}\n"
        os.write(2, line.encode())  # one write: lines from several workers do not interleave

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGUSR1, report)
    ready()
    try:
        base.dispatch()
    finally:
        http.close()
        base.close()
    return 0


def serve(
    host: str = "127.0.0.1", port: int = 8080, workers: int = 1, max_body: int = 1048576
) -> int:
    """Run the echo server until SIGINT or SIGTERM; returns the exit status (0 when stopped)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if max_body < 0:
        raise ValueError(f"max_body must be >= 0, got {max_body}")
    if workers == 1:
        sock = _listen(host, port, reuseport=False)
        url = f"http://{_url_host(host)}:{sock.getsockname()[1]}/"
        return _run_worker(sock, max_body, lambda: print(f"listening on {url}", flush=True))
    return _supervise(host, port, workers, max_body)


def _tell(fd: int) -> None:
    """A worker tells the supervisor it is ready: one byte on its pipe, then the pipe closes."""
    os.write(fd, b"r")
    os.close(fd)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


_STOP_SIGNALS: Final = frozenset({signal.SIGINT, signal.SIGTERM})


class _Stop(Exception):
    """Raised by the supervisor's signal handler to leave its wait."""


def _spawn(host: str, port: int, max_body: int) -> tuple[int, int]:
    """Fork one worker with its own SO_REUSEPORT socket; returns (pid, fd readable once ready)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: never returns into the parent's code
        status = 1
        try:
            os.close(r)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked by the parent
            status = _run_worker(_listen(host, port, reuseport=True), max_body, lambda: _tell(w))
        except BaseException as exc:  # report and leave without running the parent's cleanup
            print(f"echo worker {os.getpid()}: {exc!r}", file=sys.stderr, flush=True)
        finally:
            sys.stdout.flush()
            os._exit(status)
    os.close(w)
    return pid, r


def _supervise(host: str, port: int, workers: int, max_body: int) -> int:
    """Start the workers, print the address, restart dead workers, stop them all on a signal."""
    # The parent holds the port (bound, not listening) so that --port 0 names one real port
    # that every worker binds with SO_REUSEPORT; it never accepts a connection itself.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host, port))
    port = holder.getsockname()[1]

    def stop(signum: int, frame: object) -> None:
        raise _Stop  # waitpid() would otherwise be retried after the signal (PEP 475)

    children: dict[int, float] = {}

    def start_worker() -> None:
        # The stop signals wait while a worker is forked and recorded, so that a stop never
        # leaves one behind; then wait until it listens (b"" if it died first).
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid, ready = _spawn(host, port, max_body)
            children[pid] = time.monotonic()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        try:
            os.read(ready, 1)
        finally:
            os.close(ready)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for _ in range(workers):
            start_worker()
        print(f"listening on http://{_url_host(host)}:{port}/", flush=True)
        while children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            started = children.pop(pid, None)
            if started is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            print(f"echo: worker {pid} exited with {code}; restarting", file=sys.stderr, flush=True)
            if time.monotonic() - started < 1.0:
                time.sleep(1.0)  # a worker that dies at once must not spin the supervisor
            start_worker()
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        failed = 0
        deadline = time.monotonic() + 10.0
        for pid in list(children):
            while True:
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if done:
                    failed |= os.waitstatus_to_exitcode(status) not in (0, -signal.SIGTERM)
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                time.sleep(0.01)
        holder.close()
    return 1 if failed else 0


MAX_WORKERS: Final = 1024
MAX_BODY: Final = 2**62  # EvHttp.set_max_body_size's bound


def _int_in(low: int, high: int, note: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be a whole number from {low} to {high}{note}, got {text!r}"
            )
        return value

    return parse


def _host(text: str) -> str:
    """An argparse type: an address or a name this machine resolves."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty (0.0.0.0 or :: listens everywhere)")
    try:
        socket.getaddrinfo(text, None, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:  # gaierror; NUL bytes and over-long labels
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise argparse.ArgumentTypeError(f"cannot resolve {text!r}: {reason}") from None
    return text


def parse_args(
    argv: Sequence[str] | None = None,
    prog: str = "python -m bitcoin_support.echo",
    description: str = "HTTP echo server on libevent's evhttp with Python request callbacks.",
) -> argparse.Namespace:
    """The echo server's options, checked: ``host``, ``port``, ``workers``, ``max_body``.

    A bad value ends the program with one line on stderr and exit status 2.
    """
    parser = OneLineParser(prog=prog, description=description)
    parser.add_argument("--host", type=_host, default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=_int_in(0, 65535, " (0: any free port)"), default=8080, help="port"
    )
    parser.add_argument(
        "--workers",
        type=_int_in(1, MAX_WORKERS),
        default=1,
        help="worker processes sharing the port (SO_REUSEPORT)",
    )
    parser.add_argument(
        "--max-body",
        type=_int_in(0, MAX_BODY),
        default=1048576,
        help="largest body accepted, in bytes (413 above)",
    )
    return parser.parse_args(argv)


def listen_error(prog: str, host: str, port: int, exc: OSError) -> str:
    """The one line that says why the server could not start, naming the address."""
    if isinstance(exc, socket.gaierror) or not exc.errno:  # gaierror's errno is an EAI_ code
        reason = exc.strerror or str(exc)
    else:  # the plain reason: EvHttp.bind's own message already names the address
        reason = os.strerror(exc.errno)
    return f"{prog}: error: cannot listen on {_url_host(host)}:{port}: {reason}"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    prog = "python -m bitcoin_support.echo"
    args = parse_args(argv, prog)
    try:
        return serve(args.host, args.port, args.workers, args.max_body)
    except OSError as exc:
        print(listen_error(prog, args.host, args.port, exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the stop handlers were in place: nothing to answer
        return 0


if __name__ == "__main__":
    sys.exit(main())
