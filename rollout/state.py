"""Persisted state of releases and promotions, and the Store contract that keeps it.

A :class:`Release` is one version's journey through a service's environment
chain; each environment is one :class:`Promotion`. Both are frozen: the engine
computes the next value with :func:`dataclasses.replace` and the store writes
it *before* anything is done about it, so a daemon killed at any instant
resumes from the last written intention.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from vouch.rollout.model import Target, Verdict
from vouch.rollout.overrides import Override


class Phase(StrEnum):
    """Where a promotion stands."""

    PENDING = "Pending"
    VERIFYING = "Verifying"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTING = "Promoting"
    SUCCEEDED = "Succeeded"
    ABORTING = "Aborting"
    ROLLED_BACK = "RolledBack"
    DENIED = "Denied"
    """Verification refused the release before anything started: no replica ever ran it here."""

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.DENIED)


ACTIVE_PHASES = tuple(p for p in Phase if not p.terminal)


class StepPhase(StrEnum):
    """Where the current step stands."""

    SCALING = "scaling"
    SETTLING = "settling"
    ANALYSING = "analysing"


class ReleasePhase(StrEnum):
    PROGRESSING = "Progressing"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        return self is not ReleasePhase.PROGRESSING


@dataclass(frozen=True)
class PlannedStep:
    """A plan step resolved against the service's replicas when the promotion was created.

    Snapshotting the plan keeps a promotion stable even if the configuration
    changes while it runs.
    """

    label: str
    canary_replicas: int
    stable_replicas: int
    pause: float


@dataclass(frozen=True)
class AnalysisLimits:
    """The analysis settings snapshotted at creation (see ``AnalysisSpec``)."""

    interval: float
    runs: int
    failure_limit: int
    inconclusive_limit: int
    consecutive_errors: int
    progress_deadline: float


@dataclass(frozen=True)
class Abort:
    """Why a promotion is being rolled back, and since when."""

    cause: str
    """``gate:<name>``, ``alarm:<alertname>``, ``deadline:<phase>``, ``user`` or ``platform``."""
    reason: str
    requested_at: float
    actor: str = "vouch"


@dataclass(frozen=True)
class Counters:
    """Analysis runs of the current step."""

    runs: int = 0
    passes: int = 0
    failures: int = 0
    inconclusives: int = 0
    consecutive_errors: int = 0


@dataclass(frozen=True)
class Promotion:
    """One version's promotion in one environment: the persisted state machine."""

    id: str
    release_id: str
    service: str
    environment: str
    version: str
    stable_version: str | None
    replicas: int
    """The service's full replica count here: stable's size before and after the promotion."""
    plan: tuple[PlannedStep, ...]
    limits: AnalysisLimits
    gates: tuple[str, ...]
    phase: Phase = Phase.PENDING
    step: int = 0
    step_phase: StepPhase | None = None
    phase_since: float = 0.0
    step_started_at: float = 0.0
    counters: Counters = field(default_factory=Counters)
    next_analysis_at: float | None = None
    abort: Abort | None = None
    message: str = ""
    actor: str = "vouch"
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None
    canary_stopped_at: float | None = None
    """When the rollback took the canary out of traffic and stopped it."""

    @property
    def target(self) -> Target:
        return Target(self.service, self.environment)

    @property
    def initial(self) -> bool:
        """A first deploy: nothing to compare with, so no steps and no analysis."""
        return self.stable_version is None

    @property
    def steps_completed(self) -> int:
        if self.phase in (Phase.PROMOTING, Phase.SUCCEEDED):
            return len(self.plan)
        return self.step

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["phase"] = self.phase.value
        data["step_phase"] = self.step_phase.value if self.step_phase else None
        data["steps_completed"] = self.steps_completed
        data["rollback_cause"] = self.abort.cause if self.abort else None
        data["detect_to_rollback_ms"] = (
            round((self.canary_stopped_at - self.abort.requested_at) * 1000, 1)
            if self.abort and self.canary_stopped_at is not None
            else None
        )
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Promotion:
        values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        values["plan"] = tuple(PlannedStep(**s) for s in values["plan"])
        values["limits"] = AnalysisLimits(**values["limits"])
        values["gates"] = tuple(values["gates"])
        values["phase"] = Phase(values["phase"])
        values["step_phase"] = StepPhase(values["step_phase"]) if values.get("step_phase") else None
        values["counters"] = Counters(**values.get("counters") or {})
        values["abort"] = Abort(**values["abort"]) if values.get("abort") else None
        return cls(**values)


@dataclass(frozen=True)
class Release:
    """One version's journey through a service's environments, in order, with no human step."""

    id: str
    service: str
    version: str
    environments: tuple[str, ...]
    phase: ReleasePhase = ReleasePhase.PROGRESSING
    index: int = 0
    """The environment being promoted now (or where the release stopped)."""
    promotion_ids: tuple[str, ...] = ()
    actor: str = "vouch"
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None
    artifact: Mapping[str, str] | None = None
    """``{"name", "digest"}`` of the artifact released (``digest`` is ``sha256:HEX``), when given."""
    commit: Mapping[str, str | None] | None = None
    """``{"sha", "merge", "pr_head"}``: the commit released and how it was merged, when given."""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["phase"] = self.phase.value
        data["artifact"] = dict(self.artifact) if self.artifact is not None else None
        data["commit"] = dict(self.commit) if self.commit is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Release:
        values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        values["environments"] = tuple(values["environments"])
        values["promotion_ids"] = tuple(values["promotion_ids"])
        values["phase"] = ReleasePhase(values["phase"])
        return cls(**values)


@dataclass(frozen=True)
class StepRecord:
    """The history of one step of one promotion; one row per (promotion, index)."""

    promotion_id: str
    index: int
    label: str
    canary_replicas: int
    stable_replicas: int
    started_at: float
    ready_at: float | None = None
    analysis_started_at: float | None = None
    completed_at: float | None = None
    outcome: str | None = None
    """``passed``, ``failed`` or ``aborted``; ``None`` while running."""


@dataclass(frozen=True)
class VerdictRecord:
    """A gate verdict as stored, with where and when it was given."""

    promotion_id: str
    step: int
    run: int
    at: float
    verdict: Verdict


@dataclass(frozen=True)
class Event:
    """Something that happened, for people and notifiers. ``id`` is assigned by the store."""

    kind: str
    message: str
    at: float
    promotion_id: str | None = None
    release_id: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "message": self.message,
            "at": self.at,
            "promotion_id": self.promotion_id,
            "release_id": self.release_id,
            "data": dict(self.data),
        }


@dataclass(frozen=True)
class AlertRecord:
    """An alert received from Alertmanager and what vouch did with it."""

    received_at: float
    status: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    fingerprint: str
    matched: tuple[str, ...]
    """Promotion ids the alert aborted (empty when resolved or unmatched)."""
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "received_at": self.received_at,
            "status": self.status,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "fingerprint": self.fingerprint,
            "matched": list(self.matched),
        }


@dataclass(frozen=True)
class ChatThread:
    """Where a subject's chat message lives, so a restarted daemon keeps updating the same one.

    ``subject`` is a release id, or ``pr:<repository>#<number>`` for a pull
    request's pipeline; ``ref`` is the notifier's handle for the parent message
    (Slack's ``ts``). ``state`` is what the notifier needs to redraw the parent.
    """

    subject: str
    notifier: str
    channel: str
    ref: str
    created_at: float
    state: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Store(Protocol):
    """Keeps releases, promotions, step history, verdicts, events and alerts.

    Every write is durable when the coroutine returns. ``create_promotion``
    refuses (``ConflictError``) a second active promotion of the same service
    and environment, atomically, whoever asks.
    """

    async def create_release(self, release: Release) -> None: ...
    async def save_release(self, release: Release) -> None: ...
    async def get_release(self, release_id: str) -> Release: ...
    async def list_releases(
        self, *, service: str | None = None, active: bool | None = None, limit: int = 100
    ) -> list[Release]: ...

    async def create_promotion(self, promotion: Promotion) -> None: ...
    async def save_promotion(self, promotion: Promotion) -> None: ...
    async def get_promotion(self, promotion_id: str) -> Promotion: ...
    async def list_promotions(
        self,
        *,
        service: str | None = None,
        environment: str | None = None,
        active: bool | None = None,
        release_id: str | None = None,
        limit: int = 100,
    ) -> list[Promotion]: ...

    async def save_step(self, step: StepRecord) -> None: ...
    async def list_steps(self, promotion_id: str) -> list[StepRecord]: ...

    async def add_verdicts(self, records: list[VerdictRecord]) -> None: ...
    async def list_verdicts(self, promotion_id: str) -> list[VerdictRecord]: ...

    async def add_event(self, event: Event) -> Event: ...
    async def list_events(
        self,
        *,
        promotion_id: str | None = None,
        release_id: str | None = None,
        after: int = 0,
        limit: int = 500,
    ) -> list[Event]: ...

    async def add_alert(self, alert: AlertRecord) -> AlertRecord: ...
    async def list_alerts(self, *, limit: int = 100) -> list[AlertRecord]: ...

    async def add_override(self, override: Override) -> Override:
        """Keep a granted override. Adding the same id again returns the one kept (files are re-read)."""
        ...

    async def list_overrides(
        self, *, service: str | None = None, environment: str | None = None, used: bool | None = None
    ) -> list[Override]: ...

    async def consume_override(
        self, override_id: str, *, promotion_id: str, at: float, overridden: Mapping[str, Any]
    ) -> Override:
        """Mark the override used, atomically: ``ConflictError`` if it was used already, by anyone."""
        ...

    async def get_chat_thread(self, subject: str, notifier: str) -> ChatThread | None: ...
    async def save_chat_thread(self, thread: ChatThread) -> None:
        """Create or replace the thread of (subject, notifier)."""
        ...

    async def close(self) -> None: ...
