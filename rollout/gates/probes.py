"""The ``probes`` gate: a service's synthetic probes aimed at the canary's own replicas.

Each probe whose targets name ``{address}`` runs once against every ready
canary replica and, for comparison, against every ready stable replica. A
canary failure fails the step unless stable fails the same probe too: then the
trouble is the environment's, not the new version's, and the verdict is
INCONCLUSIVE (never a pass). No canary replica to aim at is INCONCLUSIVE too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from vouch.probes.base import Probe, ProbeResult
from vouch.rollout.model import Endpoint, GateContext, GatePhase, Measurement, Verdict

ADDRESS = "{address}"
"""The placeholder a probe target uses for "the replica (or service) under test": ``http://{address}/health``."""


@dataclass(frozen=True)
class AimedProbe:
    """A probe and the target templates it is aimed with."""

    probe: Probe
    targets: tuple[str, ...]


def aim(template: str, endpoint: Endpoint) -> str:
    """The template with ``{address}`` replaced by ``endpoint``.

    >>> aim("http://{address}/healthz", Endpoint("127.0.0.1", 8080))
    'http://127.0.0.1:8080/healthz'
    """
    return template.replace(ADDRESS, f"{endpoint.host}:{endpoint.port}")


class ProbeGate:
    """FAIL when a probe fails on a canary replica while it passes on stable."""

    def __init__(self, probes: Sequence[AimedProbe], *, name: str = "probes") -> None:
        self.name = name
        self._probes = [p for p in probes if any(ADDRESS in t for t in p.targets)]

    async def evaluate(self, ctx: GateContext) -> Verdict:
        if not self._probes:
            return Verdict(self.name, GatePhase.INCONCLUSIVE, (f"no probe of {ctx.service} targets {ADDRESS}",))
        canary_endpoints = ctx.observed.canary_endpoints
        if not canary_endpoints:
            return Verdict(self.name, GatePhase.INCONCLUSIVE, ("no ready canary replica to probe",))
        canary, stable = await asyncio.gather(
            self._run_all(canary_endpoints), self._run_all(ctx.observed.stable_endpoints)
        )
        return self._judge(canary, stable, ctx)

    async def _run_all(self, endpoints: Sequence[Endpoint]) -> list[ProbeResult]:
        runs = [
            aimed.probe.run(aim(template, endpoint))
            for aimed in self._probes
            for template in aimed.targets
            if ADDRESS in template
            for endpoint in endpoints
        ]
        return list(await asyncio.gather(*runs))

    def _judge(self, canary: list[ProbeResult], stable: list[ProbeResult], ctx: GateContext) -> Verdict:
        measurements = (
            Measurement("probe success (canary)", _ratio(canary), threshold="== 1"),
            Measurement("probe success (stable)", _ratio(stable) if stable else None),
        )
        failed = [r for r in canary if not r.success]
        if not failed:
            reason = f"{len(canary)} probe runs passed on {ctx.canary_version}"
            return Verdict(self.name, GatePhase.PASS, (reason,), measurements)
        stable_failing = {r.probe for r in stable if not r.success}
        reasons = tuple(_describe(r, ctx.canary_version) for r in failed[:10])
        if all(r.probe in stable_failing for r in failed):
            why = ("stable fails the same probes, so the environment is at fault, not the canary", *reasons)
            return Verdict(self.name, GatePhase.INCONCLUSIVE, why, measurements)
        return Verdict(self.name, GatePhase.FAIL, reasons, measurements)


def _ratio(results: Sequence[ProbeResult]) -> float | None:
    return sum(r.success for r in results) / len(results) if results else None


def _describe(result: ProbeResult, version: str) -> str:
    where = f" at step {result.step}" if result.step else ""
    reason = result.reason.value if result.reason else "failed"
    return f"probe {result.probe} failed on {version} ({result.target}){where}: {reason}: {result.message}"
