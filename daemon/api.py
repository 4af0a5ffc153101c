"""The daemon's HTTP API: JSON under ``/api/v1/`` behind a bearer token, plus metrics and probes.

The API is a thin shell. It authenticates, validates and serialises; every
decision belongs to the :class:`Controller` behind it. Whatever a client sends,
the answer is JSON (``{"error": {"code", "message", "field"?}}`` on failure)
and the server keeps serving: one middleware maps every error class, and an
unexpected exception becomes a logged 500 with a generic message. This module
holds the routes and the middleware; what crosses the wire (request models,
body and query reading, serialisers) is in :mod:`vouch.daemon.apijson`.

    app = build_app(controller, token=source.token, registry=registry)
    runner = web.AppRunner(app)
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from vouch.core.errors import AuthError, ConflictError, InputError, NotFoundError, NotLeaderError
from vouch.daemon.apijson import (
    AbortRequest,
    AlertQuery,
    ApiError,
    EventQuery,
    OverrideQuery,
    PrNoticeRequest,
    PromotionQuery,
    ReleaseQuery,
    SubmitRequest,
    alert_dict,
    event_dict,
    json_response,
    query_of,
    read_json,
    step_dict,
    validated,
    verdict_dict,
)
from vouch.daemon.breakglass import GrantRequest
from vouch.daemon.notify.base import Notice, pr_notice
from vouch.rollout.overrides import Override
from vouch.rollout.state import AlertRecord, Promotion, Release, Store

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
PUBLIC_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})
"""The only routes served without a token: Prometheus and probes cannot hold one."""
ACTOR_HEADER = "X-Vouch-Actor"
MAX_ACTOR_LENGTH = 64
DEFAULT_ACTOR = "api"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Controller(Protocol):
    """What the API needs from the rest of the daemon; the daemon's wiring implements it."""

    @property
    def store(self) -> Store:
        """Read paths: promotions, releases, steps, verdicts, events, alerts."""
        ...

    def ready(self) -> bool:
        """True once the daemon can act on requests (store open, engine running)."""
        ...

    async def submit(
        self,
        *,
        service: str,
        version: str,
        environment: str | None,
        actor: str,
        artifact: Mapping[str, str] | None = None,
        commit: Mapping[str, str | None] | None = None,
    ) -> Release:
        """Start a release; ``environment`` None means the service's whole chain.

        Raises NotFoundError (unknown service or environment), ConflictError (an
        active promotion exists) or InputError.
        """
        ...

    async def abort(self, promotion_id: str, *, actor: str, reason: str) -> Promotion:
        """Roll a promotion back. NotFoundError; ConflictError when it already finished."""
        ...

    async def receive_alerts(self, payload: object, *, actor: str) -> list[AlertRecord]:
        """Act on an Alertmanager webhook (version 4). InputError names the JSON path at fault."""
        ...

    async def grant_override(self, request: GrantRequest, *, actor: str) -> Override:
        """Keep a break-glass override. InputError or NotFoundError says why a grant is refused."""
        ...

    def notify(self, notice: Notice) -> tuple[str, ...]:
        """Audit and publish a notice that is not an engine event; returns the notifiers it was queued for."""
        ...


# --------------------------------------------------------------------------- errors and middleware


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> ApiError:
    """aiohttp's own refusals (no route, wrong method, body too large) in the API's shape."""
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")}
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        message = f"{request.method} is not allowed on {request.path}; allowed: {allowed}"
    elif isinstance(exc, web.HTTPNotFound):
        message = f"no route for {request.method} {request.path}"
    else:
        message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
    return ApiError(exc.status, _HTTP_CODES.get(exc.status, f"http_{exc.status}"), message, headers=headers)


def _from_vouch_error(exc: Exception) -> ApiError | None:
    """The error tree's public classes; their messages are written for the caller."""
    if isinstance(exc, NotFoundError):
        return ApiError(404, "not_found", str(exc))
    if isinstance(exc, ConflictError):
        return ApiError(409, "conflict", str(exc))
    if isinstance(exc, InputError):
        return ApiError(400, "bad_input", str(exc))
    if isinstance(exc, AuthError):
        return ApiError(401, "unauthorized", str(exc), headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, NotLeaderError):
        return ApiError(503, "not_leader", str(exc), headers={"Retry-After": "1"})
    return None


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turns every failure into a JSON answer, so no input can stop the server or leak a trace."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        return _from_http_exception(request, exc).response()
    except Exception as exc:
        mapped = _from_vouch_error(exc)
        if mapped is not None:
            return mapped.response()
        logger.exception("unexpected error serving %s %s", request.method, request.path)
        return ApiError(500, "internal", "internal error; the daemon's log has the details").response()


def auth_middleware(token: str) -> Middleware:
    """Requires ``Authorization: Bearer <token>`` on everything but the public routes.

    Fail closed: a route is public only when it matched one of PUBLIC_PATHS; an
    unmatched path under ``/api`` still needs the token, so probing reveals nothing.
    """
    expected = token.encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not _needs_token(request):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if not header or scheme.lower() != "bearer" or not presented.strip():
            raise ApiError(
                401,
                "unauthorized",
                "missing bearer token: send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": 'Bearer realm="vouch"'},
            )
        given = presented.strip().encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, expected):
            raise ApiError(
                401,
                "unauthorized",
                "wrong bearer token",
                headers={"WWW-Authenticate": 'Bearer realm="vouch", error="invalid_token"'},
            )
        return await handler(request)

    return middleware


def _needs_token(request: web.Request) -> bool:
    resource = request.match_info.route.resource
    if resource is not None:
        return resource.canonical not in PUBLIC_PATHS
    return request.path.startswith("/api")


_ACTOR_UNSAFE = re.compile(r"[^\w.@:+/ -]")


def actor_of(request: web.Request) -> str:
    """Who asked, as they say (``X-Vouch-Actor``), made safe for logs and chat; else ``api``."""
    raw = request.headers.get(ACTOR_HEADER, "")
    cleaned = _ACTOR_UNSAFE.sub("_", " ".join(raw.split()))[:MAX_ACTOR_LENGTH].strip()
    return cleaned or DEFAULT_ACTOR


# --------------------------------------------------------------------------- routes


class _Routes:
    """The handlers, bound to one controller."""

    def __init__(self, controller: Controller, *, registry: CollectorRegistry, max_body_bytes: int) -> None:
        self._controller = controller
        self._registry = registry
        self._max_body = max_body_bytes

    @property
    def _store(self) -> Store:
        return self._controller.store

    async def _promotions_of(self, release: Release) -> list[Promotion]:
        """A release's promotions in the order of its environment chain."""
        found = await self._store.list_promotions(release_id=release.id, limit=1000)
        order = {pid: i for i, pid in enumerate(release.promotion_ids)}
        return sorted(found, key=lambda p: order.get(p.id, len(order)))

    async def submit(self, request: web.Request) -> web.Response:
        raw = await read_json(request, max_bytes=self._max_body, required=True)
        body = validated(SubmitRequest, raw)
        release = await self._controller.submit(
            service=body.service,
            version=body.version,
            environment=body.environment,
            actor=actor_of(request),
            artifact=body.artifact.model_dump(exclude_none=True) if body.artifact else None,
            commit=body.commit.model_dump() if body.commit else None,
        )
        promotions = await self._promotions_of(release)
        return json_response(
            {"release": release.to_dict(), "promotions": [p.to_dict() for p in promotions]},
            status=201,
            headers={"Location": f"{API_PREFIX}/releases/{quote(release.id, safe='')}"},
        )

    async def list_promotions(self, request: web.Request) -> web.Response:
        query = query_of(request, PromotionQuery)
        found = await self._store.list_promotions(
            service=query.service,
            environment=query.environment,
            active=query.active,
            release_id=query.release,
            limit=query.limit,
        )
        return json_response({"promotions": [p.to_dict() for p in found]})

    async def get_promotion(self, request: web.Request) -> web.Response:
        promotion = await self._store.get_promotion(request.match_info["id"])
        steps = await self._store.list_steps(promotion.id)
        verdicts = await self._store.list_verdicts(promotion.id)
        events = await self._store.list_events(promotion_id=promotion.id)
        return json_response(
            {
                "promotion": promotion.to_dict(),
                "steps": [step_dict(s) for s in steps],
                "verdicts": [verdict_dict(v) for v in verdicts],
                "events": [event_dict(e) for e in events],
            }
        )

    async def abort(self, request: web.Request) -> web.Response:
        raw = await read_json(request, max_bytes=self._max_body, required=False)
        body = validated(AbortRequest, {} if raw is None else raw)
        actor = actor_of(request)
        promotion = await self._controller.abort(
            request.match_info["id"], actor=actor, reason=body.reason or f"aborted by {actor}"
        )
        return json_response({"promotion": promotion.to_dict()})

    async def list_releases(self, request: web.Request) -> web.Response:
        query = query_of(request, ReleaseQuery)
        found = await self._store.list_releases(service=query.service, active=query.active, limit=query.limit)
        return json_response({"releases": [r.to_dict() for r in found]})

    async def get_release(self, request: web.Request) -> web.Response:
        release = await self._store.get_release(request.match_info["id"])
        promotions = await self._promotions_of(release)
        return json_response({"release": release.to_dict(), "promotions": [p.to_dict() for p in promotions]})

    async def events(self, request: web.Request) -> web.Response:
        query = query_of(request, EventQuery)
        found = await self._store.list_events(
            promotion_id=query.promotion, release_id=query.release, after=query.after, limit=query.limit
        )
        return json_response({"events": [event_dict(e) for e in found]})

    async def receive_alerts(self, request: web.Request) -> web.Response:
        payload = await read_json(request, max_bytes=self._max_body, required=True)
        records = await self._controller.receive_alerts(payload, actor=actor_of(request))
        matched = list(dict.fromkeys(pid for record in records for pid in record.matched))
        return json_response({"received": len(records), "matched": matched})

    async def grant_override(self, request: web.Request) -> web.Response:
        raw = await read_json(request, max_bytes=self._max_body, required=True)
        body = validated(GrantRequest, raw)
        if body.actor is not None:
            raise ApiError(422, "invalid", "actor: the actor is who calls (X-Vouch-Actor), not a field", field="actor")
        override = await self._controller.grant_override(body, actor=actor_of(request))
        return json_response({"override": override.to_dict()}, status=201)

    async def notify_pr(self, request: web.Request) -> web.Response:
        raw = await read_json(request, max_bytes=self._max_body, required=True)
        body = validated(PrNoticeRequest, raw)
        notice = pr_notice(
            body.repo, body.number, body.step, body.status, url=body.url, message=body.message, actor=actor_of(request)
        )
        queued = self._controller.notify(notice)
        return json_response({"subject": notice.subject, "notifiers": list(queued)}, status=202)

    async def list_overrides(self, request: web.Request) -> web.Response:
        query = query_of(request, OverrideQuery)
        found = await self._store.list_overrides(service=query.service, environment=query.environment, used=query.used)
        return json_response({"overrides": [o.to_dict() for o in found]})

    async def list_alerts(self, request: web.Request) -> web.Response:
        query = query_of(request, AlertQuery)
        found = await self._store.list_alerts(limit=query.limit)
        return json_response({"alerts": [alert_dict(a) for a in found]})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self._controller.ready():
            return json_response({"status": "ready"})
        return json_response({"status": "not ready"}, status=503)


def build_app(
    controller: Controller,
    *,
    token: str,
    registry: CollectorRegistry,
    max_body_bytes: int = 1 << 20,
) -> web.Application:
    """The daemon's web application; the caller runs it (``web.AppRunner``) where it likes.

    ``token`` must not be empty: an API without a secret would act for anyone.
    ``max_body_bytes`` bounds every request body, chunked or not.
    """
    if not token:
        raise AuthError("the API token is empty; refusing to serve an API anyone could use")
    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be positive")
    routes = _Routes(controller, registry=registry, max_body_bytes=max_body_bytes)
    app = web.Application(middlewares=[error_middleware, auth_middleware(token)], client_max_size=max_body_bytes)
    app.router.add_post(f"{API_PREFIX}/promotions", routes.submit)
    app.router.add_get(f"{API_PREFIX}/promotions", routes.list_promotions)
    app.router.add_get(f"{API_PREFIX}/promotions/{{id}}", routes.get_promotion)
    app.router.add_post(f"{API_PREFIX}/promotions/{{id}}/abort", routes.abort)
    app.router.add_get(f"{API_PREFIX}/releases", routes.list_releases)
    app.router.add_get(f"{API_PREFIX}/releases/{{id}}", routes.get_release)
    app.router.add_get(f"{API_PREFIX}/events", routes.events)
    app.router.add_post(f"{API_PREFIX}/alerts", routes.receive_alerts)
    app.router.add_get(f"{API_PREFIX}/alerts", routes.list_alerts)
    app.router.add_post(f"{API_PREFIX}/overrides", routes.grant_override)
    app.router.add_get(f"{API_PREFIX}/overrides", routes.list_overrides)
    app.router.add_post(f"{API_PREFIX}/notify/pr", routes.notify_pr)
    app.router.add_get("/metrics", routes.metrics)
    app.router.add_get("/healthz", routes.healthz)
    app.router.add_get("/readyz", routes.readyz)
    return app
