"""Certificates made with trustme, and small HTTP(S) and raw TCP servers for probe tests.

Every server runs on its own event loop in a thread, so it works the same in
sync and async tests and in fixtures of any scope; it binds 127.0.0.1 on a
free port and stops (connections dropped, thread joined) when its context exits.

    certs = make_certs(tmp_path)
    with serve_app(probe_app(), ssl_context=server_context(certs.expired)) as base_url:
        result = await HttpProbe(spec(tls=TlsClientSpec(ca_file=str(certs.ca_file)))).run(f"{base_url}/ok")
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trustme
from aiohttp import web

HOST = "127.0.0.1"
STOP_TIMEOUT = 10.0

OK_DOCUMENT = {
    "status": "ok",
    "version": "1.2.3",
    "items": [{"sku": "A-1", "count": 3, "price": 9.5}, {"sku": "B-2", "count": 0, "price": 4.0}],
    "owner": None,
}
"""What ``GET /ok`` answers (as JSON)."""
WELCOME = "welcome to the shop"
"""What ``GET /text`` answers."""
BIG_BODY_BYTES = 2 << 20
"""Size of ``GET /big``: more than a probe keeps."""


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Certs:
    """A trusted CA (``ca_file``) and leaf certificates for every way a certificate can be wrong.

    ``valid``, ``expired``, ``expiring`` (in 5 days) and ``client`` are issued
    by the trusted CA for ``localhost``, ``127.0.0.1`` and ``::1``;
    ``wrong_host`` names only ``wrong.example``; ``untrusted`` comes from
    another CA. ``client_file`` holds the client certificate and its key (PEM).
    """

    ca: trustme.CA
    ca_file: Path
    valid: trustme.LeafCert
    expired: trustme.LeafCert
    expiring: trustme.LeafCert
    wrong_host: trustme.LeafCert
    untrusted: trustme.LeafCert
    client: trustme.LeafCert
    client_file: Path


LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


def make_certs(directory: Path) -> Certs:
    """Issue the test certificates and write the CA bundle and the client's PEM under ``directory``."""
    ca, stranger = trustme.CA(), trustme.CA()
    now = datetime.now(UTC)
    certs = Certs(
        ca=ca,
        ca_file=directory / "ca.pem",
        valid=ca.issue_cert(*LOCAL_NAMES),
        expired=ca.issue_cert(*LOCAL_NAMES, not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)),
        expiring=ca.issue_cert(*LOCAL_NAMES, not_before=now - timedelta(days=1), not_after=now + timedelta(days=5)),
        wrong_host=ca.issue_cert("wrong.example"),
        untrusted=stranger.issue_cert(*LOCAL_NAMES),
        client=ca.issue_cert("probe.client.test"),
        client_file=directory / "client.pem",
    )
    ca.cert_pem.write_to_path(str(certs.ca_file))
    certs.client.private_key_and_cert_chain_pem.write_to_path(str(certs.client_file))
    return certs


def server_context(
    leaf: trustme.LeafCert, *, client_ca: trustme.CA | None = None, max_version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    """A server context presenting ``leaf``; with ``client_ca``, clients must present a certificate it issued.

    ``max_version=ssl.TLSVersion.TLSv1_2`` makes a rejected client certificate
    fail the handshake itself (TLS 1.3 reports it only after the handshake).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if max_version is not None:
        context.maximum_version = max_version
    leaf.configure_cert(context)
    if client_ca is not None:
        client_ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


# --------------------------------------------------------------------------- the test application


def probe_app() -> web.Application:
    """Routes for probe tests.

    ``/ok`` JSON (:data:`OK_DOCUMENT`, header ``x-served-by: vouch-test``);
    ``/text`` plain text; ``/status/{code}``; ``/redirect/{n}`` redirects n
    times, then to ``/ok``; ``/goto?to=URL`` redirects to URL; ``/echo`` answers
    the request's method, headers (names in lower case) and body as JSON (also after ``POST
    /see-other``, a 303 to it); ``/big`` is :data:`BIG_BODY_BYTES` long;
    ``/flaky/{key}?fail=N`` answers 503 to the first N requests per key, then 200.
    """
    app = web.Application()
    app.router.add_get("/ok", _ok)
    app.router.add_get("/text", _text)
    app.router.add_route("*", "/status/{code}", _status)
    app.router.add_get("/redirect/{count}", _redirect)
    app.router.add_get("/goto", _goto)
    app.router.add_route("*", "/echo", _echo)
    app.router.add_post("/see-other", _see_other)
    app.router.add_get("/big", _big)
    app.router.add_get("/flaky/{key}", _flaky)
    app[FAILURES] = {}
    return app


FAILURES = web.AppKey("failures", dict[str, int])


async def _flaky(request: web.Request) -> web.Response:
    """503 for the first ``fail`` requests of each ``key``, then 200."""
    key, fail = request.match_info["key"], int(request.query.get("fail", "1"))
    seen = request.app[FAILURES].get(key, 0)
    request.app[FAILURES][key] = seen + 1
    return web.Response(status=503 if seen < fail else 200, text=f"request {seen + 1}")


async def _text(_: web.Request) -> web.Response:
    return web.Response(text=WELCOME)


async def _goto(request: web.Request) -> web.Response:
    return _found(request.query["to"])


async def _see_other(_: web.Request) -> web.Response:
    return _found("/echo", status=303)


async def _big(_: web.Request) -> web.Response:
    return web.Response(body=b"x" * BIG_BODY_BYTES)


async def _ok(_: web.Request) -> web.Response:
    return web.json_response(OK_DOCUMENT, headers={"x-served-by": "vouch-test"})


async def _status(request: web.Request) -> web.Response:
    return web.Response(status=int(request.match_info["code"]), text="status page")


async def _redirect(request: web.Request) -> web.Response:
    count = int(request.match_info["count"])
    return _found("/ok" if count <= 0 else f"/redirect/{count - 1}")


def _found(location: str, *, status: int = 302) -> web.Response:
    return web.Response(status=status, headers={"location": location})


async def _echo(request: web.Request) -> web.Response:
    body = await request.text()
    headers = {name.lower(): value for name, value in request.headers.items()}
    return web.json_response({"method": request.method, "headers": headers, "body": body})


# --------------------------------------------------------------------------- servers


@contextlib.contextmanager
def loop_thread(name: str) -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread; on exit its tasks are cancelled, the loop stopped and closed."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=name, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        asyncio.run_coroutine_threadsafe(_cancel_all(), loop).result(STOP_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(STOP_TIMEOUT)
        loop.close()


async def _cancel_all() -> None:
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    sock.listen(128)
    return sock


@contextlib.contextmanager
def serve_app(app: web.Application, *, ssl_context: ssl.SSLContext | None = None) -> Iterator[str]:
    """Serve ``app`` over HTTP, or HTTPS with ``ssl_context``; yields the base URL (no trailing slash)."""
    sock = _listening_socket()
    port = sock.getsockname()[1]
    runner = web.AppRunner(app, access_log=None)
    with loop_thread("test-http-server") as loop:

        async def start() -> None:
            await runner.setup()
            await web.SockSite(runner, sock, ssl_context=ssl_context).start()

        asyncio.run_coroutine_threadsafe(start(), loop).result(STOP_TIMEOUT)
        try:
            yield f"{'https' if ssl_context else 'http'}://{HOST}:{port}"
        finally:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(STOP_TIMEOUT)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.contextmanager
def serve_raw(handler: Handler, *, ssl_context: ssl.SSLContext | None = None) -> Iterator[int]:
    """Serve each connection with ``handler`` (asyncio streams); yields the port.

    On exit the connections still open are dropped, so handlers waiting on
    them end by themselves before the loop stops.
    """
    sock = _listening_socket()
    open_writers: set[asyncio.StreamWriter] = set()
    handlers: set[asyncio.Task[None]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        open_writers.add(writer)
        handlers.add(task)
        try:
            await handler(reader, writer)
        finally:
            open_writers.discard(writer)

    async def stop(server: asyncio.Server) -> None:
        server.close()
        for writer in list(open_writers):
            writer.transport.abort()
        if handlers:
            await asyncio.wait(handlers, timeout=STOP_TIMEOUT)

    with loop_thread("test-raw-server") as loop:

        async def start() -> asyncio.Server:
            return await asyncio.start_server(tracked, sock=sock, ssl=ssl_context)

        server = asyncio.run_coroutine_threadsafe(start(), loop).result(STOP_TIMEOUT)
        try:
            yield sock.getsockname()[1]
        finally:
            asyncio.run_coroutine_threadsafe(stop(server), loop).result(STOP_TIMEOUT + 1)


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port whose connections the kernel accepts but nobody ever reads or answers; yields the port."""
    with _listening_socket() as sock:
        yield sock.getsockname()[1]


async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Handler: read everything, answer nothing, until the client goes away."""
    while await reader.read(65536):
        pass
    writer.close()


async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Handler: close the connection as soon as it is made."""
    writer.close()


def answer_bytes(data: bytes) -> Handler:
    """Handler: read the request head, send ``data`` verbatim, close."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    return handler


def json_bytes(document: object) -> bytes:
    """A complete HTTP/1.1 200 answer carrying ``document`` as JSON, for :func:`answer_bytes`."""
    body = json.dumps(document).encode()
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body
