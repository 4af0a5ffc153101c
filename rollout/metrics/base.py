"""The MetricProvider family: where SLO measurements come from.

Contract
--------
``query(expr, at)`` evaluates one instant query and returns its samples. An
empty list means "no data" (the SLO gate turns that into INCONCLUSIVE). Any
failure — unreachable, timeout, bad expression, malformed answer — raises
:class:`~vouch.core.errors.MetricQueryError` with a message a person can act
on. A provider never guesses a value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Sample:
    """One value of an instant vector (or a scalar, with no labels)."""

    value: float
    labels: Mapping[str, str] = field(default_factory=dict)
    at: float | None = None


@runtime_checkable
class MetricProvider(Protocol):
    """Answers instant queries in the provider's own expression language."""

    kind: str

    async def query(self, expr: str, *, at: float | None = None) -> list[Sample]:
        """Evaluate ``expr`` at ``at`` (epoch seconds; ``None`` for now)."""

    async def close(self) -> None:
        """Release connections."""
