"""A tiny HTTP service with injectable faults: the thing ``vouch demo`` rolls out.

It uses the standard library only so that forty replicas start in a blink.
``GET /healthz`` always answers 200 (the replica is up); every other request
answers ``{"version": ..., "path": ...}``, except that a share ``error_ratio``
answers 500 and ``latency_ms`` is waited before answering. Faults come from
the command line or, per version, from a JSON file that is re-read whenever
it changes, so a running demo can make one version misbehave::

    {"2.0.0": {"error_ratio": 0.2, "latency_ms": 50, "startup_ms": 0}}

Example::

    python -m vouch.daemon.demo.service --port 8080 --version 1.0.0 --faults-file faults.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DRAIN_SECONDS = 2.0
"""After SIGTERM, how long requests already being answered may take to finish."""


@dataclass(frozen=True)
class Faults:
    """What this replica does wrong: a share of 500s, added latency, a slow start."""

    error_ratio: float = 0.0
    latency_ms: float = 0.0
    startup_ms: float = 0.0
    """How long the replica waits before it listens: a slow start, read once at start."""


class FaultBook:
    """The faults of one version: the command-line defaults, overridden by the faults file.

    The file is checked on every request (one ``stat``) and parsed again only
    when its modification time, size or inode changes. A file that cannot be read or
    parsed keeps the faults last read, so a half-written file does no harm.
    """

    def __init__(self, version: str, defaults: Faults, path: Path | None) -> None:
        self._version = version
        self._defaults = defaults
        self._path = path
        self._seen: tuple[int, int, int] | None = None
        self._current = defaults
        self._lock = threading.Lock()

    def current(self) -> Faults:
        if self._path is None:
            return self._defaults
        try:
            stat = self._path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except OSError:
            stamp = None
        with self._lock:
            if stamp != self._seen:
                self._seen = stamp
                self._current = self._read() if stamp is not None else self._defaults
            return self._current

    def _read(self) -> Faults:
        assert self._path is not None
        try:
            document = json.loads(self._path.read_text())
            entry = document.get(self._version, {}) if isinstance(document, dict) else {}
            return Faults(
                error_ratio=float(entry.get("error_ratio", self._defaults.error_ratio)),
                latency_ms=float(entry.get("latency_ms", self._defaults.latency_ms)),
                startup_ms=float(entry.get("startup_ms", self._defaults.startup_ms)),
            )
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            print(f"demo: ignoring faults file {self._path}: {exc}", file=sys.stderr, flush=True)
            return self._current


class DemoServer(ThreadingHTTPServer):
    """The HTTP server, counting requests in flight so SIGTERM can let them finish."""

    daemon_threads = True
    block_on_close = False  # idle keep-alive connections must not hold up exit; drain() waits for requests
    request_queue_size = 128  # the default 5 makes a burst of new connections wait a second for accept()

    def __init__(self, address: tuple[str, int], *, version: str, faults: FaultBook) -> None:
        super().__init__(address, DemoHandler)
        self.version = version
        self.faults = faults
        self.in_flight = 0
        self.idle = threading.Condition()

    def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.idle:
            while self.in_flight and (left := deadline - time.monotonic()) > 0:
                self.idle.wait(left)


class DemoHandler(BaseHTTPRequestHandler):
    """Answers every method on every path; ``/healthz`` never fails."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: Nagle would hold the body ~40 ms
    server: DemoServer

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: forty replicas logging every request would drown everything else."""

    def _answer(self) -> None:
        server = self.server
        with server.idle:
            server.in_flight += 1
        try:
            self._serve(server)
        finally:
            with server.idle:
                server.in_flight -= 1
                server.idle.notify_all()

    def _serve(self, server: DemoServer) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path
        if path.split("?", 1)[0] == "/healthz":
            self._send(200, {"status": "ok", "version": server.version})
            return
        faults = server.faults.current()
        if faults.latency_ms > 0:
            time.sleep(faults.latency_ms / 1000)
        if faults.error_ratio > 0 and random.random() < faults.error_ratio:
            self._send(500, {"version": server.version, "path": path, "error": "injected fault"})
            return
        self._send(200, {"version": server.version, "path": path})

    def _send(self, status: int, document: dict[str, object]) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer


STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def serve(server: DemoServer) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting and let requests in flight finish.

    The stop signals are blocked in every thread and taken synchronously with
    ``sigwait``: a handler that raised could land anywhere, even in a weakref
    callback or in socketserver's accept path, where the exception is swallowed.
    """
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 5.0}, daemon=True)
    serving.start()
    signal.sigwait(STOP_SIGNALS)
    stopper = threading.Thread(target=server.shutdown, daemon=True)
    stopper.start()
    while stopper.is_alive():  # serve_forever looks at its stop flag only when its select returns: wake it
        with contextlib.suppress(OSError):
            server.socket.shutdown(socket.SHUT_RDWR)
        stopper.join(0.01)
    server.server_close()
    server.drain(DRAIN_SECONDS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vouch.daemon.demo.service", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="port to listen on (0 picks one)")
    parser.add_argument("--version", required=True, help="the version this replica reports")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--faults-file", type=Path, help="JSON faults per version, re-read on change")
    parser.add_argument("--error-ratio", type=float, default=0.0, help="share of requests answering 500")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="latency added to each answer")
    parser.add_argument("--startup-ms", type=float, default=0.0, help="wait this long before listening")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT, then let requests in flight finish and exit 0."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # before any thread starts: all inherit it
    args = parse_args(argv)
    faults = FaultBook(args.version, Faults(args.error_ratio, args.latency_ms, args.startup_ms), args.faults_file)
    startup = faults.current().startup_ms / 1000
    if startup > 0 and signal.sigtimedwait(STOP_SIGNALS, startup) is not None:
        return 0  # asked to stop while still starting
    serve(DemoServer((args.host, args.port), version=args.version, faults=faults))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's teardown: it is most of the time a replica takes to exit, and a
    # rollback waits for every canary replica to exit, forty at once on a small machine.
    os._exit(code)
