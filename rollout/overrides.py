"""Break-glass overrides: a one-time, scoped, expiring permission for one gate's failure to pass.

An :class:`Override` names a service, an environment and a gate (and
optionally a version); it carries who asked, why and until when. It is used
at most once: the store's ``consume_override`` is atomic, so two daemons or a
restarted one can never let the same override pass two failures. Matching is
pure (:func:`match_override`); consuming is the shell's job, and a verdict
counts as overridden only after the store confirmed the consumption: fail
closed.

>>> o = Override("bg-1", "checkout", "staging", "slo", reason="hotfix", actor="ana",
...              created_at=0.0, expires_at=3600.0)
>>> match_override([o], service="checkout", environment="staging", gate="slo", version="2.0", now=10.0) is o
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vouch.rollout.model import GatePhase, Verdict

DEFAULT_TTL = 3600.0
"""How long an override stays usable when its grant names no expiry."""

OVERRIDABLE_GATES = ("attestations", "slo", "alarms", "probes", "loadtest")
"""Gates a break-glass override may name."""


@dataclass(frozen=True)
class Override:
    """One break-glass override, as granted and (once used) as consumed."""

    id: str
    service: str
    environment: str
    gate: str
    version: str | None = None
    """Only this version's promotion may use it; ``None`` means whichever comes first."""
    reason: str = ""
    actor: str = ""
    created_at: float = 0.0
    expires_at: float = 0.0
    source: str = "api"
    """``api`` or ``file:<name>`` (dropped in the overrides directory)."""
    used_at: float | None = None
    promotion_id: str | None = None
    """The promotion that used it."""
    overridden: Mapping[str, Any] | None = None
    """The verdict it let pass (``Verdict.to_dict()``), or the alert it held back."""
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def used(self) -> bool:
        return self.used_at is not None

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def usable(self, now: float) -> bool:
        return not self.used and not self.expired(now)

    def scope(self) -> str:
        version = f"@{self.version}" if self.version else ""
        return f"{self.service}{version}/{self.environment} gate {self.gate}"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["overridden"] = dict(self.overridden) if self.overridden is not None else None
        data["data"] = dict(self.data)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Override:
        values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        values["data"] = dict(values.get("data") or {})
        return cls(**values)


def match_override(
    overrides: Iterable[Override], *, service: str, environment: str, gate: str, version: str, now: float
) -> Override | None:
    """The usable override for this gate here, the oldest first; ``None`` when there is none."""
    found = [
        o
        for o in overrides
        if o.usable(now)
        and o.service == service
        and o.environment == environment
        and o.gate == gate
        and o.version in (None, version)
    ]
    return min(found, key=lambda o: (o.created_at, o.id)) if found else None


def overridden_verdict(verdict: Verdict, override: Override) -> Verdict:
    """The verdict as it counts once ``override`` let it pass; its own reasons are kept."""
    note = f"break-glass {override.id} by {override.actor or 'unknown'} overrode this failure: {override.reason}"
    return dataclasses.replace(verdict, phase=GatePhase.PASS, reasons=(*verdict.reasons, note), errored=False)
