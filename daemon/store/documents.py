"""What both stores say and write about break-glass overrides and chat threads.

The SQLite and the Kubernetes store keep these records as JSON documents and
must agree on their shape and on their refusals word for word: a caller (the
engine, the CLI, a test) cannot care which store answered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from vouch.core.errors import ConflictError, NotFoundError
from vouch.rollout.overrides import Override
from vouch.rollout.state import ChatThread


def consumed(override: Override, *, promotion_id: str, at: float, overridden: Mapping[str, Any]) -> Override:
    """``override`` as it reads once ``promotion_id`` used it at ``at``."""
    return dataclasses.replace(override, used_at=at, promotion_id=promotion_id, overridden=dict(overridden))


def already_used(override: Override) -> ConflictError:
    """The refusal of a second consumption, naming the first: who used it and when.

    >>> str(already_used(Override("bg-1", "checkout", "staging", "slo", used_at=0.0, promotion_id="p-1")))
    'override bg-1 (checkout/staging gate slo) was already used by promotion p-1 at 1970-01-01T00:00:00Z'
    """
    return ConflictError(
        f"override {override.id} ({override.scope()}) was already used"
        f" by promotion {override.promotion_id or 'unknown'} at {_when(override.used_at)}"
    )


def override_not_found(override_id: str) -> NotFoundError:
    return NotFoundError(f"override {override_id} not found")


def matches(override: Override, *, service: str | None, environment: str | None, used: bool | None) -> bool:
    """Whether ``override`` passes the filters of ``list_overrides`` (``None`` lets anything pass)."""
    return (
        (service is None or override.service == service)
        and (environment is None or override.environment == environment)
        and (used is None or override.used == used)
    )


def grant_order(override: Override) -> tuple[float, str]:
    """Overrides are listed in the order they were granted, the oldest first (as ``match_override`` picks)."""
    return (override.created_at, override.id)


def chat_thread_dict(thread: ChatThread) -> dict[str, Any]:
    data = dataclasses.asdict(thread)
    data["state"] = dict(thread.state)
    return data


def chat_thread_from_dict(data: Mapping[str, Any]) -> ChatThread:
    values = {f.name: data[f.name] for f in dataclasses.fields(ChatThread) if f.name in data}
    values["state"] = dict(values.get("state") or {})
    return ChatThread(**values)


def _when(at: float | None) -> str:
    if at is None:
        return "an unknown time"
    try:
        return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return str(at)
