"""The local platform's router: one HTTP front door per (service, environment).

Traffic follows ready pods: requests go round-robin over every ready replica,
stable and canary together, so the canary's share of traffic equals its share
of ready replicas (3 stable + 1 canary: exactly one request in four). The
backend list is replaced as a whole whenever readiness changes, so a replica
taken out (a rollback, a crash) receives not one more request.

Every forwarded request is counted in the :class:`TrafficRecorder` under the
version and track (``stable`` or ``canary``) that answered it; the router's own
502 (replica refused or died) and 504 (replica too slow) count as that
version's errors. A request that found no ready replica at all is answered 503
and counted apart, in ``vouch_router_unavailable_total``, since no version
can be blamed for it.

Bodies are read whole before they are passed on (requests up to ``MAX_BODY``):
simple and exact for request/response APIs, not meant for streaming answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from vouch.core.errors import PlatformError
from vouch.rollout.model import Endpoint, Target
from vouch.rollout.platforms.traffic import TrafficRecorder

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
"""Headers that describe one connection, never forwarded (RFC 9110 section 7.6.1)."""

MAX_BODY = 64 * 1024 * 1024
"""Largest request body the router accepts."""

CONNECTION_LIMIT = 1024
"""Connections the shared upstream pool may hold open at once, across all replicas."""


@dataclass(frozen=True)
class Backend:
    """A ready replica the router may send a request to."""

    endpoint: Endpoint
    version: str
    track: str
    """``stable`` or ``canary``: the label traffic is recorded under."""


def upstream_session() -> aiohttp.ClientSession:
    """The one client session every router forwards through: pooled, and transparent.

    No cookie jar (a replica's cookies must not leak to another client), no
    decompression (bodies pass through as the replica sent them) and no
    headers of its own making.
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=CONNECTION_LIMIT),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )


_RETRIES_AFTER_REMOVAL = 2
"""Other replicas a request may be sent to when the one it was sent to was taken out meanwhile."""
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def _forwardable(headers: Any, *, drop: frozenset[str] = frozenset()) -> CIMultiDict[str]:
    """``headers`` without hop-by-hop headers, nor those the ``Connection`` header names."""
    named = {token.strip().lower() for value in headers.getall("Connection", ()) for token in value.split(",")}
    skip = HOP_BY_HOP | named | drop
    return CIMultiDict((key, value) for key, value in headers.items() if key.lower() not in skip)


class Router:
    """Forwards one target's requests to its ready replicas; see the module docstring.

    Example::

        router = Router(target, host="127.0.0.1", port=0, session=upstream_session(),
                        traffic=traffic, unavailable=counter, upstream_timeout=30.0)
        await router.start()
        router.set_backends([Backend(Endpoint("127.0.0.1", 9001), "1.0.0", "stable")])
        print(router.endpoint.url)  # http://127.0.0.1:<bound port>
    """

    def __init__(
        self,
        target: Target,
        *,
        host: str,
        port: int,
        session: aiohttp.ClientSession,
        traffic: TrafficRecorder,
        unavailable: Any,
        upstream_timeout: float,
    ) -> None:
        self.target = target
        self._host = host
        self._port = port
        self._session = session
        self._traffic = traffic
        self._unavailable = unavailable
        self._timeout = aiohttp.ClientTimeout(total=upstream_timeout)
        self._backends: tuple[Backend, ...] = ()
        self._turn = 0
        self._runner: web.AppRunner | None = None

    @property
    def backends(self) -> tuple[Backend, ...]:
        return self._backends

    def set_backends(self, backends: Sequence[Backend]) -> None:
        """Replace the backend list; the very next request already uses the new one."""
        self._backends = tuple(backends)

    @property
    def endpoint(self) -> Endpoint:
        """The address the router listens on (the bound port when 0 was asked for)."""
        return Endpoint(self._host, self._port)

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise PlatformError(
                f"the router of {self.target} cannot listen on {self._host}:{self._port}: {exc}"
            ) from exc
        self._runner = runner
        self._port = site.port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        self._backends = ()
        if runner is not None:
            await runner.cleanup()

    def _pick(self) -> Backend | None:
        backends = self._backends
        if not backends:
            return None
        backend = backends[self._turn % len(backends)]
        self._turn += 1
        return backend

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        for attempt in range(_RETRIES_AFTER_REMOVAL + 1):
            backend = self._pick()
            if backend is None:
                self._unavailable.inc()
                return web.json_response({"error": f"no ready replica of {self.target}"}, status=503)
            started = time.perf_counter()
            try:
                response = await self._forward(request, backend)
            except TimeoutError:
                response = self._failure(504, f"replica {backend.version} did not answer in time")
            except (aiohttp.ClientError, OSError) as exc:
                if attempt < _RETRIES_AFTER_REMOVAL and self._retryable(request, backend, exc):
                    continue  # the replica was taken out while this request raced to it: not its version's fault
                log.debug("router %s: replica %s failed: %r", self.target, backend.endpoint, exc)
                response = self._failure(502, f"replica {backend.version} failed: {type(exc).__name__}")
            seconds = time.perf_counter() - started
            self._traffic.record(self.target, backend.version, backend.track, status=response.status, seconds=seconds)
            return response
        raise AssertionError("unreachable: the last attempt always answers")

    async def _forward(self, request: web.Request, backend: Backend) -> web.Response:
        url = URL(backend.endpoint.url + request.raw_path, encoded=True)
        headers = _forwardable(request.headers, drop=frozenset({"host", "content-length"}))
        peer = request.remote
        if peer:
            prior = request.headers.get("X-Forwarded-For")
            headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        headers.setdefault("X-Forwarded-Host", request.host)
        headers.setdefault("X-Forwarded-Proto", request.scheme)
        body = await request.read() if request.body_exists else None
        async with self._session.request(
            request.method, url, headers=headers, data=body, allow_redirects=False, timeout=self._timeout
        ) as upstream:
            payload = await upstream.read()
            answer = _forwardable(upstream.headers, drop=frozenset({"content-length"}))
            return web.Response(status=upstream.status, reason=upstream.reason, body=payload, headers=answer)

    def _retryable(self, request: web.Request, backend: Backend, exc: BaseException) -> bool:
        """A request that reached a replica just as it was removed goes to another one, when that is safe.

        Safe means the replica is no longer routed to (stopped on purpose, not crashed: a crash stays
        a 502 counted against its version) and the request was never processed: the connection was
        refused, or an idempotent request found its connection closed or reset.
        """
        if backend in self._backends:
            return False
        if isinstance(exc, aiohttp.ClientConnectorError):
            return True
        disconnected = isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError))
        return disconnected and request.method in _IDEMPOTENT

    @staticmethod
    def _failure(status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status)
