"""The security team's webhook receiver in ``vouch demo``: it trusts a notice only if its signature holds.

vouch's ``webhook`` notifier signs every POST (see :mod:`vouch.daemon.notify.webhook`)::

    X-Vouch-Timestamp: 1700000000
    X-Vouch-Signature: sha256=HEX(HMAC-SHA256(secret, timestamp + "." + body))

This receiver checks that signature the way any receiver would, from the
documented format alone, and refuses (401) a notice whose signature does not
match or whose timestamp is too far from its own clock (a replay). What it
accepts is kept in order, so the demo can tell what security heard.

Example::

    with security_receiver("s3cret") as receiver:
        ...  # configure a webhook notifier with url=receiver.url
        receiver.wait_for(["override.used"], timeout=10)
        print([d.kind for d in receiver.received()])
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_SKEW = 300.0
"""Seconds a notice's timestamp may differ from the receiver's clock; older ones are replays."""
MAX_BODY = 1024 * 1024


@dataclass(frozen=True)
class Delivery:
    """One notice the receiver accepted: what it is about, as vouch sent it."""

    kind: str
    severity: str
    message: str
    actor: str
    service: str | None
    environment: str | None
    version: str | None


def expected_signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=`` and the hex HMAC-SHA256 of ``timestamp + "." + body`` under ``secret``.

    >>> expected_signature("k", "1700000000", b"{}")
    'sha256=c6ef4734033cee2367414a0939385eca0397754aa7a59716da7463a9298b5146'
    """
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def check_signature(
    secret: str, *, timestamp: str | None, signature: str | None, body: bytes, now: float
) -> str | None:
    """Why a delivery must be refused, or ``None`` when it is genuine and fresh.

    >>> body = b'{"kind":"override.used"}'
    >>> check_signature("k", timestamp="100", signature=expected_signature("k", "100", body), body=body, now=101)
    >>> check_signature("k", timestamp="100", signature=expected_signature("x", "100", body), body=body, now=101)
    'the signature does not match'
    """
    if not timestamp or not signature:
        return "unsigned"
    try:
        sent = int(timestamp)
    except ValueError:
        return "the timestamp is not a number"
    if abs(now - sent) > MAX_SKEW:
        return f"the timestamp is {now - sent:.0f}s off: a replay, or a clock far off"
    if not hmac.compare_digest(expected_signature(secret, timestamp, body), signature):
        return "the signature does not match"
    return None


class SecurityReceiver(ThreadingHTTPServer):
    """A webhook endpoint on 127.0.0.1 that keeps every genuine notice and counts the refused ones."""

    daemon_threads = True

    def __init__(self, secret: str, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.secret = secret
        self.clock = clock
        self.refusals: Counter[str] = Counter()
        self._received: list[Delivery] = []
        self._changed = threading.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/vouch"

    def received(self) -> tuple[Delivery, ...]:
        with self._changed:
            return tuple(self._received)

    def refused(self) -> int:
        with self._changed:
            return sum(self.refusals.values())

    def wait_for(self, kinds: Iterable[str], *, timeout: float) -> bool:
        """Wait until every kind in ``kinds`` has arrived (as often as it is listed); ``False`` at the deadline."""
        wanted = Counter(kinds)
        with self._changed:
            return self._changed.wait_for(lambda: not wanted - Counter(d.kind for d in self._received), timeout)

    def accept(self, document: dict[str, Any]) -> None:
        delivery = Delivery(
            kind=str(document.get("kind")),
            severity=str(document.get("severity")),
            message=str(document.get("message")),
            actor=str(document.get("actor")),
            service=document.get("service"),
            environment=document.get("environment"),
            version=document.get("version"),
        )
        with self._changed:
            self._received.append(delivery)
            self._changed.notify_all()

    def refuse(self, why: str) -> None:
        with self._changed:
            self.refusals[why] += 1
            self._changed.notify_all()


class _Handler(BaseHTTPRequestHandler):
    server: SecurityReceiver

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the demo tells what arrived."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._answer(413, "too large")
            return
        body = self.rfile.read(length)
        why = check_signature(
            self.server.secret,
            timestamp=self.headers.get("X-Vouch-Timestamp"),
            signature=self.headers.get("X-Vouch-Signature"),
            body=body,
            now=self.server.clock(),
        )
        if why is not None:
            self.server.refuse(why)
            self._answer(401, why)
            return
        document = _object(body)
        if document is None:
            self.server.refuse("the body is not a JSON object")
            self._answer(400, "the body is not a JSON object")
            return
        self.server.accept(document)
        self._answer(204, "")

    def _answer(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 204:
            self.wfile.write(body)


def _object(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


@contextlib.contextmanager
def security_receiver(secret: str, *, clock: Callable[[], float] = time.time) -> Iterator[SecurityReceiver]:
    """Serve a :class:`SecurityReceiver` from a thread while the block runs; always stop it."""
    server = SecurityReceiver(secret, clock=clock)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="demo-security")
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
