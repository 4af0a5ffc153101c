"""The Gate family: judges of one analysis run.

Contract
--------
``evaluate(ctx)`` measures what the gate watches for ``ctx`` and returns a
:class:`~vouch.rollout.model.Verdict`. It never raises for a measurement
problem: a gate that cannot measure returns INCONCLUSIVE with ``errored=True``
and the reason. A gate never returns PASS without having measured something.
Gates run concurrently; the engine takes the worst verdict.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from vouch.rollout.model import GateContext, Verdict


@runtime_checkable
class Gate(Protocol):
    """Judges whether a step of a promotion may continue."""

    name: str

    async def evaluate(self, ctx: GateContext) -> Verdict:
        """Measure and judge one analysis run."""
