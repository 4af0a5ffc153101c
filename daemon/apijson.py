"""The API's JSON, in and out: request models, reading bodies and queries, the error shape, serialisers.

Everything here is about what crosses the wire, so :mod:`vouch.daemon.api` can
hold only routes and middleware. Input is refused early and precisely (size,
media type, malformed JSON, unknown or mistyped fields, each naming what is
wrong); output is strict JSON, never NaN, errors always as
``{"error": {"code", "message", "field"?}}``.

    body = validated(SubmitRequest, await read_json(request, max_bytes=limit, required=True))
    return json_response({"release": release.to_dict()}, status=201)
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from enum import Enum
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vouch.rollout.state import AlertRecord, Event, StepRecord, VerdictRecord

_M = TypeVar("_M", bound=BaseModel)


# --------------------------------------------------------------------------- request models


class _Body(BaseModel):
    """Request bodies: unknown fields are errors and JSON types are taken as they are."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ArtifactRef(_Body):
    name: str | None = Field(default=None, max_length=512)
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")


class CommitRef(_Body):
    sha: str = Field(pattern=r"^([0-9a-f]{40}|[0-9a-f]{64})$")
    """The full commit id: attestations name full ids, and a short one could be forged to match."""
    merge: Literal["fast-forward", "non-fast-forward"] | None = None
    pr_head: str | None = Field(default=None, pattern=r"^([0-9a-f]{40}|[0-9a-f]{64})$")


class SubmitRequest(_Body):
    service: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=256)
    environment: str | None = Field(default=None, min_length=1, max_length=128)
    artifact: ArtifactRef | None = None
    """The artifact released, by digest: what attestations are about."""
    commit: CommitRef | None = None
    """The commit released and how it was merged."""


class PrNoticeRequest(_Body):
    """``POST /api/v1/notify/pr``: one step of a pull request's pipeline, as CI reports it."""

    repo: str = Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+$", max_length=200)
    number: int = Field(ge=1)
    step: str = Field(min_length=1, max_length=100)
    status: Literal["pending", "running", "passed", "failed", "skipped"]
    url: str | None = Field(default=None, pattern=r"^https?://", max_length=2000)
    message: str | None = Field(default=None, max_length=2000)


class AbortRequest(_Body):
    reason: str | None = Field(default=None, max_length=2000)


class OverrideQuery(BaseModel):
    """``GET /api/v1/overrides``: filters (strings converted, unknown names refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    service: str | None = None
    environment: str | None = None
    used: bool | None = None


class _Query(BaseModel):
    """Query strings: strings converted (``active=true``, ``limit=10``); unknown names are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PromotionQuery(_Query):
    service: str | None = None
    environment: str | None = None
    active: bool | None = None
    release: str | None = None
    limit: int = Field(default=100, ge=1, le=1000)


class ReleaseQuery(_Query):
    service: str | None = None
    active: bool | None = None
    limit: int = Field(default=100, ge=1, le=1000)


class EventQuery(_Query):
    after: int = Field(default=0, ge=0)
    promotion: str | None = None
    release: str | None = None
    limit: int = Field(default=500, ge=1, le=5000)


class AlertQuery(_Query):
    limit: int = Field(default=100, ge=1, le=1000)


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An answer other than success, already decided: status, stable code, message, field."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return json_response({"error": error}, status=self.status, headers=self.headers)


# --------------------------------------------------------------------------- JSON in and out


def _json_default(value: object) -> object:
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def _finite(value: object) -> object:
    """Non-finite floats as null: NaN is not JSON, and a NaN measurement means "no value"."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_response(data: object, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """Strict JSON (never NaN) with the API's content type."""
    try:
        text = json.dumps(data, default=_json_default, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(json.loads(json.dumps(data, default=_json_default))), allow_nan=False)
    return web.Response(text=text, status=status, content_type="application/json", headers=headers)


def _is_json_type(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


async def _read_limited(request: web.Request, max_bytes: int) -> bytes:
    """The body, refused as soon as it passes ``max_bytes`` (a chunked body has no length to check)."""
    too_large = ApiError(413, "too_large", f"the request body is larger than {max_bytes} bytes")
    length = request.content_length
    if length is not None and length > max_bytes:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: web.Request, *, max_bytes: int, required: bool) -> object | None:
    """The parsed JSON body; None when there is none and ``required`` is false."""
    empty = ApiError(400, "bad_json", "the request body is empty; send a JSON object")
    if not request.body_exists:
        if required:
            raise empty
        return None
    if not _is_json_type(request.content_type):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send the body as 'Content-Type: application/json', not {request.content_type!r}",
        )
    raw = await _read_limited(request, max_bytes)
    if not raw.strip():
        if required:
            raise empty
        return None
    try:
        parsed: object = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_json", f"the body is not UTF-8 (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        message = f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        raise ApiError(400, "bad_json", message) from exc
    except ValueError as exc:
        raise ApiError(400, "bad_json", f"malformed JSON: {exc}") from exc
    except RecursionError as exc:
        raise ApiError(400, "bad_json", "malformed JSON: nested too deeply") from exc
    return parsed


def _describe(error: Mapping[str, Any]) -> str:
    kind = error.get("type")
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    return str(error.get("msg", "is invalid"))


def validated(model: type[_M], data: object, *, where: str = "body") -> _M:
    """``data`` as ``model``, or a 422 naming the first field at fault (and listing all)."""
    if not isinstance(data, dict):
        kind = "an array" if isinstance(data, list) else type(data).__name__
        if data is None:
            kind = "null"
        raise ApiError(422, "invalid", f"the request {where} must be a JSON object, not {kind}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        fields = [".".join(str(p) for p in e["loc"]) for e in errors]
        message = "; ".join(f"{f or where}: {_describe(e)}" for f, e in zip(fields, errors, strict=True))
        raise ApiError(422, "invalid", message, field=fields[0] or None) from exc


def query_of(request: web.Request, model: type[_M]) -> _M:
    """The query string as ``model``; a parameter given twice is ambiguous and refused."""
    seen: dict[str, str] = {}
    for name, value in request.query.items():
        if name in seen:
            raise ApiError(422, "invalid", f"query parameter {name!r} is given more than once", field=name)
        seen[name] = value
    return validated(model, seen, where="query")


# --------------------------------------------------------------------------- serialisation


def step_dict(step: StepRecord) -> dict[str, Any]:
    return dataclasses.asdict(step)


def verdict_dict(record: VerdictRecord) -> dict[str, Any]:
    return {
        "promotion_id": record.promotion_id,
        "step": record.step,
        "run": record.run,
        "at": record.at,
        "verdict": record.verdict.to_dict(),
    }


def event_dict(event: Event) -> dict[str, Any]:
    return event.to_dict()


def alert_dict(alert: AlertRecord) -> dict[str, Any]:
    return alert.to_dict()
