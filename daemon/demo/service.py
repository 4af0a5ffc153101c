"""A tiny HTTP service with injectable faults: the thing ``vouch demo`` rolls out.

It uses the standard library only so that forty replicas start in a blink.
``GET /healthz`` always answers 200 (the replica is up); every other request
answers ``{"version": ..., "path": ...}``, except that a share ``error_ratio``
answers 500 and ``latency_ms`` is waited before answering. Faults come from
the command line or, per version, from a JSON file that is re-read whenever
it changes, so a running demo can make one version misbehave::

    {"2.0.0": {"error_ratio": 0.2, "latency_ms": 50, "startup_ms": 0, "max_in_flight": 4}}

``max_in_flight`` caps the requests one replica works on at once, like a
fixed pool of workers: with ``latency_ms`` it sets the replica's capacity to
``max_in_flight / latency`` requests per second (4 at 50 ms: 80 rps). A
request over the cap *waits* for a slot, first come first served, and its
wait counts in its latency; it is never shed. Below the capacity nothing
waits (when arrivals are spread out); above it the achieved rate stays at
the capacity and every answer slows down, so a scale test finds a clear,
repeatable knee at the capacity. (Shedding with 503 would fail requests of
every random burst well below the capacity: the knee would be wherever the
error budget ran out, not where the cap is.) ``/healthz`` is never capped.

``POST /checkout`` calls two backends, so a preview has something to mock:
``$PAYMENTS_URL/charge`` (POST ``{"amount": N, "order": ID}``), then
``$INVENTORY_URL/reserve/SKU`` (POST ``{"order": ID}``). The body
``{"order": ID, "amount": N, "sku": SKU}`` may leave any field out (a fresh
order id, an amount of 1, the sku ``demo``). Both backends answering 2xx gives
200 ``{"order": ID, "charged": true}``; the first that fails gives 502 naming it
(``"backend": "payments"``), and the other is not called; with either variable
unset the answer is 503 "no backends configured". The faults above apply to it
as to any other request.

Example::

    python -m vouch.daemon.demo.service --port 8080 --version 1.0.0 --faults-file faults.json
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import os
import random
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DRAIN_SECONDS = 2.0
"""After SIGTERM, how long requests already being answered may take to finish."""


@dataclass(frozen=True)
class Faults:
    """What this replica does wrong: a share of 500s, added latency, a slow start."""

    error_ratio: float = 0.0
    latency_ms: float = 0.0
    startup_ms: float = 0.0
    """How long the replica waits before it listens: a slow start, read once at start."""
    max_in_flight: int = 0
    """At most this many requests are worked on at once; the others wait their turn (0: no cap)."""


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
                max_in_flight=int(entry.get("max_in_flight", self._defaults.max_in_flight)),
            )
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            print(f"demo: ignoring faults file {self._path}: {exc}", file=sys.stderr, flush=True)
            return self._current


class Slots:
    """The replica's workers: at most ``limit`` holders at once, the others wait in arrival order.

    The limit is passed on every request (the faults file may change it while requests wait); a
    limit of 0 or less never waits.
    """

    def __init__(self) -> None:
        self._busy = 0
        self._waiting: collections.deque[object] = collections.deque()
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def held(self, limit: int) -> Iterator[None]:
        if limit <= 0:
            yield
            return
        ticket = object()
        with self._changed:
            self._waiting.append(ticket)
            try:
                while self._waiting[0] is not ticket or self._busy >= limit:
                    self._changed.wait()
            finally:
                self._waiting.remove(ticket)
                self._changed.notify_all()  # the next in line may fit too (a raised limit)
            self._busy += 1
        try:
            yield
        finally:
            with self._changed:
                self._busy -= 1
                self._changed.notify_all()


BACKEND_TIMEOUT = 5.0
"""How long ``/checkout`` waits for each backend's answer."""

BACKENDS = {"payments": "PAYMENTS_URL", "inventory": "INVENTORY_URL"}
"""The backends ``/checkout`` calls, and the environment variable holding each one's base URL."""


def checkout(body: bytes, environ: Mapping[str, str]) -> tuple[int, dict[str, object]]:
    """Answer ``POST /checkout`` (see the module docstring): the status and the JSON document."""
    missing = [variable for variable in BACKENDS.values() if not environ.get(variable)]
    if missing:
        return 503, {"error": f"no backends configured: {', '.join(missing)} unset"}
    try:
        order, amount, sku = _order(body)
    except ValueError as exc:
        return 400, {"error": str(exc)}
    calls = (
        ("payments", "/charge", {"amount": amount, "order": order}),
        ("inventory", "/reserve/" + urllib.parse.quote(sku, safe=""), {"order": order}),
    )
    for backend, path, document in calls:
        failure = _post(environ[BACKENDS[backend]].rstrip("/") + path, document)
        if failure is not None:
            return 502, {"error": f"backend {backend} failed: {failure}", "backend": backend, "order": order}
    return 200, {"order": order, "charged": True}


def _order(body: bytes) -> tuple[object, object, str]:
    """(order id, amount, sku) of a checkout request; ValueError saying what is wrong."""
    try:
        document = json.loads(body) if body.strip() else {}
    except ValueError as exc:
        raise ValueError(f"the body is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError("the body must be a JSON object")
    order = document.get("order", f"order-{uuid.uuid4().hex[:12]}")
    amount = document.get("amount", 1)
    sku = document.get("sku", "demo")
    if isinstance(order, bool) or not isinstance(order, (str, int)) or order == "":
        raise ValueError("order must be a non-empty string or an integer")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
        raise ValueError("amount must be a number, 0 or more")
    if not isinstance(sku, str) or not sku:
        raise ValueError("sku must be a non-empty string")
    return order, amount, sku


def _post(url: str, document: dict[str, object]) -> str | None:
    """POST ``document`` as JSON to ``url``: None when answered 2xx, else what went wrong."""
    request = urllib.request.Request(
        url, data=json.dumps(document).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # backends are called directly
    try:
        with opener.open(request, timeout=BACKEND_TIMEOUT) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return f"answered {exc.code}"
    except (OSError, http.client.HTTPException, ValueError) as exc:  # refused, dropped, timed out, bad URL
        return f"no answer ({type(exc).__name__}: {exc})"
    return None


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
        self.slots = Slots()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone while its request waited for a slot (a load run that ended) is no error: stay quiet."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

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
        body = self.rfile.read(length) if length else b""
        path = self.path
        if path.split("?", 1)[0] == "/healthz":
            self._send(200, {"status": "ok", "version": server.version})
            return
        faults = server.faults.current()
        with server.slots.held(faults.max_in_flight):
            if faults.latency_ms > 0:
                time.sleep(faults.latency_ms / 1000)
            if faults.error_ratio > 0 and random.random() < faults.error_ratio:
                self._send(500, {"version": server.version, "path": path, "error": "injected fault"})
                return
            if self.command == "POST" and path.split("?", 1)[0] == "/checkout":
                self._send(*checkout(body, os.environ))
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
    parser.add_argument(
        "--max-in-flight", type=int, default=0, help="requests worked on at once; the others wait (0: no cap)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT, then let requests in flight finish and exit 0."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # before any thread starts: all inherit it
    args = parse_args(argv)
    defaults = Faults(args.error_ratio, args.latency_ms, args.startup_ms, args.max_in_flight)
    faults = FaultBook(args.version, defaults, args.faults_file)
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
