"""A release as people see it in chat: its environments in order, each with its phase and steps.

The view is rebuilt from the store for every message, never accumulated from
the notices seen, so a restarted daemon, a dropped notice or two notices out
of order still draw the true state.

>>> from vouch.rollout.state import Release
>>> view = release_view(Release("r-1", "checkout", "2.4.1", ("staging", "production")), [])
>>> [(e.name, e.phase) for e in view.environments]
[('staging', None), ('production', None)]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vouch.core.errors import NotFoundError
from vouch.rollout.state import Promotion, Release, Store


@dataclass(frozen=True)
class EnvironmentView:
    """One environment of a release; ``phase`` is ``None`` until its promotion starts."""

    name: str
    phase: str | None = None
    step: int = 0
    """Steps completed."""
    steps: int = 0
    """Steps in the plan (0 for a first deploy, which has none)."""
    step_phase: str | None = None
    rollback_cause: str | None = None
    message: str = ""


@dataclass(frozen=True)
class ReleaseView:
    """What the parent message of a release shows."""

    id: str
    service: str
    version: str
    phase: str
    environments: tuple[EnvironmentView, ...]
    actor: str = "vouch"


def environment_view(name: str, promotion: Promotion | None) -> EnvironmentView:
    if promotion is None:
        return EnvironmentView(name)
    return EnvironmentView(
        name,
        phase=promotion.phase.value,
        step=promotion.steps_completed,
        steps=len(promotion.plan),
        step_phase=promotion.step_phase.value if promotion.step_phase else None,
        rollback_cause=promotion.abort.cause if promotion.abort else None,
        message=promotion.message,
    )


def release_view(release: Release, promotions: Iterable[Promotion]) -> ReleaseView:
    """The view of ``release`` from its promotions; the newest promotion of an environment wins."""
    latest: dict[str, Promotion] = {}
    for p in promotions:
        if p.release_id != release.id:
            continue
        if p.environment not in latest or p.created_at >= latest[p.environment].created_at:
            latest[p.environment] = p
    return ReleaseView(
        id=release.id,
        service=release.service,
        version=release.version,
        phase=release.phase.value,
        environments=tuple(environment_view(name, latest.get(name)) for name in release.environments),
        actor=release.actor,
    )


async def load_release_view(store: Store, release_id: str) -> ReleaseView | None:
    """The view of a stored release, or ``None`` when the store knows no such release.

    Store failures (``StoreError``) propagate: the caller retries later rather
    than draw a message from nothing.
    """
    try:
        release = await store.get_release(release_id)
    except NotFoundError:
        return None
    promotions = await store.list_promotions(release_id=release_id, limit=100)
    return release_view(release, promotions)
