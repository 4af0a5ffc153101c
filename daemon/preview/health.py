"""Health checks of a preview (or a stable environment): the service's own probes, until all pass or a deadline.

A freshly started service is rarely healthy at once: each probe whose targets name ``{address}`` is
aimed at the environment and run again and again until it passes; a probe that passed is not run
again. When the deadline comes, each probe's last result is what counts. A service with no probes
is checked on its readiness path, so health is never claimed on nothing.

Example::

    checks = await check_health(service.probes, "127.0.0.1:8080", deadline=60.0)
    healthy = all(c.passed for c in checks)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vouch.daemon.preview.model import Check
from vouch.probes.base import Probe, ProbeResult
from vouch.probes.http import HttpProbeSpec
from vouch.probes.registry import ProbeDefinition, build_probe
from vouch.probes.tlsinfo import TlsContexts
from vouch.rollout.config import ServiceSpec
from vouch.rollout.gates.probes import ADDRESS

READINESS_PROBE = "readiness"
"""The name of the probe made from the readiness path of a service that configures no probes."""


@dataclass(frozen=True)
class _Aimed:
    """One probe aimed at one concrete target; ``name`` is how its check is called."""

    name: str
    probe: Probe
    target: str


def health_probes(service: ServiceSpec) -> list[ProbeDefinition]:
    """The probes health is judged by: the service's own, or an http check of its readiness path."""
    if service.probes:
        return list(service.probes)
    path = service.readiness.path
    return [HttpProbeSpec(name=READINESS_PROBE, targets=[f"http://{ADDRESS}{path}"], timeout=5.0)]


def aimed_targets(spec: ProbeDefinition, address: str) -> list[str]:
    """The probe's targets with ``{address}`` replaced by ``address`` (``host:port``)."""
    return [target.replace(ADDRESS, address) for target in spec.targets]


def describe(result: ProbeResult) -> str:
    """One line on a probe run, for a check's detail."""
    took = f"{result.duration * 1000:.0f} ms"
    if result.success:
        status = f"HTTP {result.status_code} " if result.status_code is not None else ""
        return f"{status}in {took}"
    reason = result.reason.value if result.reason is not None else "failed"
    step = f" (step {result.step})" if result.step else ""
    return f"{reason}{step}: {result.message}".strip()


def result_check(name: str, result: ProbeResult) -> Check:
    return Check(name=name, passed=result.success, detail=describe(result))


async def check_health(
    specs: Sequence[ProbeDefinition],
    address: str,
    *,
    deadline: float,
    poll: float = 0.5,
    monotonic: Callable[[], float] = time.monotonic,
) -> tuple[Check, ...]:
    """Run every probe against ``address`` until all pass or ``deadline`` seconds have passed.

    Returns each probe's last result as a :class:`Check`, in the order of ``specs`` (a probe with
    several targets gives one check per target). Probes never raise; a probe's own timeout bounds
    how far past the deadline the last round may run.
    """
    contexts = TlsContexts()
    probes = [(spec, build_probe(spec, contexts=contexts)) for spec in specs]
    aimed = [
        _Aimed(spec.name if len(spec.targets) == 1 else f"{spec.name} {target}", probe, target)
        for spec, probe in probes
        for target in aimed_targets(spec, address)
    ]
    try:
        last = await _until_passed(aimed, end=monotonic() + deadline, poll=poll, monotonic=monotonic)
    finally:
        await asyncio.shield(asyncio.gather(*(probe.close() for _, probe in probes), return_exceptions=True))
    return tuple(result_check(item.name, last[item.name]) for item in aimed)


async def _until_passed(
    aimed: Sequence[_Aimed], *, end: float, poll: float, monotonic: Callable[[], float]
) -> dict[str, ProbeResult]:
    """Rounds of the probes not passed yet; a round starts every ``poll`` seconds until none is left or ``end``."""
    last: dict[str, ProbeResult] = {}
    pending = list(aimed)
    while pending:
        started = monotonic()
        results = await asyncio.gather(*(item.probe.run(item.target) for item in pending))
        for item, result in zip(pending, results, strict=True):
            last[item.name] = result
        pending = [item for item, result in zip(pending, results, strict=True) if not result.success]
        now = monotonic()
        if not pending or now >= end:
            break
        await asyncio.sleep(min(max(0.0, started + poll - now), end - now))
    return last
