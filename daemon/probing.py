"""Synthetic probes inside the daemon: every environment checked on schedule, and the probes gate's probes.

Fixed probes (``probes:`` at the top of the configuration) run against their
own targets. A service's probes name ``{address}``: on schedule they run
against the service's address in every environment of its chain, so after a
promotion they keep checking whatever version is stable there; during a step
the ``probes`` gate aims the same definitions at each canary replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from vouch.daemon.config import VouchConfig
from vouch.probes.base import Probe
from vouch.probes.metrics import ProbeMetrics
from vouch.probes.registry import ProbeDefinition, build_probe
from vouch.probes.scheduler import ProbeRun, Scheduler
from vouch.probes.tlsinfo import TlsContexts
from vouch.rollout.gates.probes import AimedProbe, aim
from vouch.rollout.model import Target
from vouch.rollout.platforms.base import Platform

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scheduled:
    """One probe aimed at one target on a schedule: what meta-monitoring expects to find in Prometheus."""

    key: str
    probe: str
    target: str
    interval: float
    labels: dict[str, str]


class Probing:
    """Runs the configuration's probes on schedule, exports their metrics, and lends them to the gate."""

    def __init__(
        self,
        config: VouchConfig,
        platform: Platform,
        registry: CollectorRegistry,
        *,
        on_change: Callable[[ProbeRun], None] | None = None,
    ) -> None:
        self._config = config
        self._platform = platform
        self._metrics = ProbeMetrics(registry)
        self._on_change = on_change
        self._failing: dict[str, bool] = {}
        self._probes: list[Probe] = []
        self._contexts = TlsContexts()
        self._gate_probes: dict[str, list[AimedProbe]] = {}
        self.scheduled: list[Scheduled] = []

    def gate_probes(self, service: str) -> list[AimedProbe]:
        """The service's probes for the ``probes`` gate, built once and shared across analysis runs."""
        if service not in self._gate_probes:
            specs = self._config.services[service].probes
            self._gate_probes[service] = [AimedProbe(self._build(spec), tuple(spec.targets)) for spec in specs]
        return self._gate_probes[service]

    async def run(self) -> None:
        """Schedule every probe and run until cancelled; may run again after (a leader elected anew)."""
        scheduler = Scheduler(on_result=self._observe)
        self.scheduled.clear()
        try:
            for item, probe, spec in await self._plan():
                scheduler.add(item.key, probe, spec=spec, target=item.target, labels=item.labels)
                self.scheduled.append(item)
            log.info("probing %d targets", len(self.scheduled))
            await scheduler.run()
        finally:
            await asyncio.shield(self.close())

    async def close(self) -> None:
        probes, self._probes = self._probes, []
        await asyncio.gather(*(p.close() for p in probes), return_exceptions=True)

    def _build(self, spec: ProbeDefinition) -> Probe:
        probe = build_probe(spec, contexts=self._contexts)
        self._probes.append(probe)
        return probe

    async def _plan(self) -> list[tuple[Scheduled, Probe, ProbeDefinition]]:
        plan = []
        for spec in self._config.probes:
            probe = self._build(spec)
            for target in spec.targets:
                plan.append(
                    (
                        Scheduled(f"{spec.name}@{target}", spec.name, target, spec.interval, dict(spec.labels)),
                        probe,
                        spec,
                    )
                )
        for service, environment, spec in self._service_probes():
            address = await self._platform.address(Target(service, environment))
            probe = self._build(spec)
            labels = {**spec.labels, "service": service, "environment": environment}
            for template in spec.targets:
                target = aim(template, address)
                key = f"{service}/{environment}/{spec.name}@{template}"
                plan.append((Scheduled(key, spec.name, target, spec.interval, labels), probe, spec))
        return plan

    def _service_probes(self) -> Iterator[tuple[str, str, ProbeDefinition]]:
        for name, service in self._config.services.items():
            for env in service.environments:
                for spec in service.probes:
                    yield name, env.name, spec

    def _observe(self, run: ProbeRun) -> None:
        self._metrics.observe(run)
        was = self._failing.get(run.key, False)
        now = run.state.failing
        self._failing[run.key] = now
        if now != was:
            result = run.result
            if now:
                reason = result.reason.value if result.reason else "failed"
                log.warning("probe %s is failing on %s: %s: %s", result.probe, result.target, reason, result.message)
            else:
                log.info("probe %s recovered on %s", result.probe, result.target)
            if self._on_change is not None:
                self._on_change(run)
