"""The data every part of a rollout exchanges: frozen, comparable, easy to persist.

Measuring is separate from judging: a :class:`Measurement` is what was seen, a
:class:`Verdict` is what a gate concluded from it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum


class GatePhase(StrEnum):
    """A gate's conclusion. INCONCLUSIVE means "could not tell" and is never a pass."""

    PASS = "Pass"
    INCONCLUSIVE = "Inconclusive"
    FAIL = "Fail"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {GatePhase.PASS: 0, GatePhase.INCONCLUSIVE: 1, GatePhase.FAIL: 2}


def worst(phases: Iterable[GatePhase]) -> GatePhase:
    """The worst of ``phases``: FAIL beats INCONCLUSIVE beats PASS. No phases at all is INCONCLUSIVE.

    >>> worst([GatePhase.PASS, GatePhase.INCONCLUSIVE])
    <GatePhase.INCONCLUSIVE: 'Inconclusive'>
    """
    found = list(phases)
    if not found:
        return GatePhase.INCONCLUSIVE
    return max(found, key=lambda p: p.severity)


@dataclass(frozen=True)
class Measurement:
    """One observed value and the bound it was judged against.

    ``error`` is set when the value could not be measured (the provider failed,
    the query returned nothing); ``value`` is then ``None``.
    """

    name: str
    value: float | None
    threshold: str | None = None
    query: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "value": self.value,
            "threshold": self.threshold,
            "query": self.query,
            "error": self.error,
        }


@dataclass(frozen=True)
class Verdict:
    """A gate's judgement of one analysis run.

    ``errored`` says the gate could not measure at all (counts toward the
    analysis' ``consecutive_errors`` limit); an errored verdict is always
    INCONCLUSIVE or FAIL, never PASS.
    """

    gate: str
    phase: GatePhase
    reasons: tuple[str, ...] = ()
    measurements: tuple[Measurement, ...] = ()
    errored: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "gate": self.gate,
            "phase": self.phase.value,
            "reasons": list(self.reasons),
            "measurements": [m.to_dict() for m in self.measurements],
            "errored": self.errored,
        }


@dataclass(frozen=True)
class Target:
    """Where a promotion happens: one service in one environment."""

    service: str
    environment: str

    def __str__(self) -> str:
        return f"{self.service}/{self.environment}"


@dataclass(frozen=True)
class Endpoint:
    """A network address of one replica, for probes and load aimed at it."""

    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class Observed:
    """What the platform reports about a target right now.

    ``*_desired`` is what was asked for; ``*_ready`` how many replicas serve
    traffic. Endpoints list only ready replicas.
    """

    stable_version: str | None
    canary_version: str | None
    stable_desired: int
    stable_ready: int
    canary_desired: int
    canary_ready: int
    stable_endpoints: tuple[Endpoint, ...] = ()
    canary_endpoints: tuple[Endpoint, ...] = ()

    @property
    def canary_weight(self) -> float:
        """The share of traffic the canary takes when traffic follows ready pods."""
        total = self.stable_ready + self.canary_ready
        return self.canary_ready / total if total else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "stable_version": self.stable_version,
            "canary_version": self.canary_version,
            "stable_desired": self.stable_desired,
            "stable_ready": self.stable_ready,
            "canary_desired": self.canary_desired,
            "canary_ready": self.canary_ready,
            "canary_weight": round(self.canary_weight, 4),
        }


@dataclass(frozen=True)
class GateContext:
    """Everything a gate may use to judge one analysis run of one step.

    ``now`` is wall-clock seconds since the epoch, from the engine's clock, so
    gates can be tested with a fake clock.
    """

    promotion_id: str
    target: Target
    canary_version: str
    stable_version: str | None
    step_index: int
    step_started_at: float
    now: float
    observed: Observed
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def service(self) -> str:
        return self.target.service

    @property
    def environment(self) -> str:
        return self.target.environment
