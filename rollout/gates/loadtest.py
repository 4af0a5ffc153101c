"""The ``loadtest`` gate: a Locust load run against the canary's replicas, once, at one step of the plan.

A load run lasts its ``duration`` (30 s by default), longer than the engine lets one analysis run take,
so the load does not live inside an analysis run. The first analysis run of the configured step starts
it in a task of its own, remembered per (promotion, step) by :class:`LoadTests` (gates are rebuilt at
every analysis run; that memory is not). That run and the next ones wait for it for most of the
analysis interval; the first to see it finish gives the verdict, and later runs of the step give the
same one: the step's load is never repeated. A run that sees it still going is INCONCLUSIVE, "load
test running (12s of 30s)", and counts toward ``inconclusive_limit`` like any other: with
``analysis.interval`` at least the load's duration plus ~10 s the verdict comes in one run; otherwise
``inconclusive_limit`` must cover the runs it takes (:func:`inconclusive_runs`; ``vouch config
validate`` refuses a configuration whose limit is too low).

At other steps the gate passes ("load test runs at step 5%"); a step that is not in the plan, a
Locust that cannot run, or a run that made no request is INCONCLUSIVE, never a pass. With
``compare_stable`` stable's replicas are loaded at the same time and as hard, and the canary is judged
against them too. Results are exported as Prometheus metrics when a registry is given. With ``scale``
settings, a load run that held is followed by the scale test (:mod:`vouch.rollout.gates.scale`), and the
verdict is the scale test's, with the load run's reasons first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from vouch.loadtests.errors import LoadTestError
from vouch.loadtests.judge import Judgement, judge
from vouch.loadtests.locust import LocustRunner, run_time
from vouch.loadtests.locustfiles import Request, generated_locustfile, parse_request
from vouch.loadtests.metrics import LoadTestMetrics
from vouch.loadtests.model import LoadPlan, LoadResult, LoadRunner
from vouch.loadtests.settings import LoadTestSpec
from vouch.probes.http import HttpProbeSpec
from vouch.probes.registry import ProbeDefinition
from vouch.rollout.config import ServiceSpec
from vouch.rollout.gates.scale import ScaleTests
from vouch.rollout.model import Endpoint, GateContext, GatePhase, Measurement, Verdict
from vouch.rollout.state import Promotion

log = logging.getLogger(__name__)

STARTUP_ALLOWANCE = 5.0
"""Seconds Locust may take beyond its run time to start and write its results, in the estimates below."""

RunnerFactory = Callable[[LoadTestSpec], LoadRunner]
"""Picks the runner for a service's load test (a Locust subprocess by default)."""


def gate_wait(interval: float) -> float:
    """How long one analysis run waits for the load: most of its interval, leaving the engine's time limit
    (``max(interval, 5s)``) a margin so the gate answers first."""
    return interval - min(1.0, interval * 0.2)


def inconclusive_runs(duration: float, interval: float) -> int:
    """Analysis runs that see the load still running (INCONCLUSIVE) before one sees it finish.

    >>> inconclusive_runs(30, 60), inconclusive_runs(30, 30), inconclusive_runs(60, 10)
    (0, 1, 3)
    """
    load, wait = run_time(duration) + STARTUP_ALLOWANCE, gate_wait(interval)
    return max(0, math.ceil((load + interval) / (wait + interval)) - 1)


def resolve_step(step: int | str, labels: Sequence[str]) -> int:
    """The index of the plan step ``step`` names (an index, or a label such as ``"5%"``); ``ValueError`` if none.

    >>> resolve_step("50%", ["1", "50%", "100%"]), resolve_step(0, ["1", "50%"])
    (1, 0)
    """
    known = ", ".join(labels) or "none"
    if isinstance(step, int):
        if step >= len(labels):
            raise ValueError(
                f"the load test runs at step index {step}, but the plan has {len(labels)} (steps: {known})"
            )
        return step
    wanted = step.strip()
    for index, label in enumerate(labels):
        if label == wanted:
            return index
    raise ValueError(f"the load test runs at step {step!r}, which is not a step of the plan (steps: {known})")


def requests_from_probes(probes: Sequence[ProbeDefinition]) -> tuple[Request, ...]:
    """The requests of ``GET``/``HEAD`` http probes aimed at ``{address}`` (mutating probes are never multiplied
    into load).

    >>> probe = HttpProbeSpec(name="home", targets=["http://{address}/?q=1", "http://{address}/healthz"])
    >>> requests_from_probes([probe])
    (Request(method='GET', path='/?q=1'), Request(method='GET', path='/healthz'))
    """
    found: list[Request] = []
    for probe in probes:
        if not isinstance(probe, HttpProbeSpec) or probe.method not in ("GET", "HEAD"):
            continue
        for target in probe.targets:
            if "{address}" not in target:
                continue
            parts = urlsplit(target.replace("{address}", "address.invalid"))
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            found.append(Request(probe.method, path))
    return tuple(dict.fromkeys(found))


@dataclass
class _Run:
    """One load run of one (promotion, step), in flight or done."""

    task: asyncio.Task[Verdict]
    started: float
    """``time.monotonic()`` when the load started."""


class LoadTests:
    """The load runs of the ``loadtest`` gate, one per (promotion, step), kept across analysis runs.

    The daemon makes one and asks it for each promotion's gate (gates are rebuilt at every analysis
    run; this memory is not). At most ``keep`` finished runs are remembered; starting a step's run
    cancels a run of the same promotion's other step still going. ``runner`` picks the runner per
    load test (a Locust subprocess by default); ``resolve`` turns a configured locustfile into a path;
    ``scale`` reads, compares and signs scale tests' knees (default: against the SLO only, unsigned).

    Example::

        loads = LoadTests(registry=registry, resolve=config.resolve)
        gate = loads.gate(config.services["shop"], promotion)  # at each analysis run
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        resolve: Callable[[str], Path] = Path,
        runner: RunnerFactory | None = None,
        keep: int = 256,
        scale: ScaleTests | None = None,
    ) -> None:
        self.metrics = LoadTestMetrics(registry) if registry is not None else None
        self.scale = scale if scale is not None else ScaleTests(registry=registry)
        self.resolve = resolve
        self._runner = runner or _locust_runner
        self._keep = keep
        self._runs: OrderedDict[tuple[str, int], _Run] = OrderedDict()

    def gate(self, service: ServiceSpec, promotion: Promotion, *, name: str = "loadtest") -> LoadTestGate:
        """The gate judging ``promotion`` of ``service``, for its plan's steps and analysis interval."""
        return LoadTestGate(
            service.loadtest,
            tests=self,
            steps=tuple(step.label for step in promotion.plan),
            wait=gate_wait(promotion.limits.interval),
            probe_requests=requests_from_probes(service.probes),
            name=name,
            release_id=promotion.release_id,
        )

    def runner(self, spec: LoadTestSpec) -> LoadRunner:
        return self._runner(spec)

    def find(self, key: tuple[str, int]) -> _Run | None:
        return self._runs.get(key)

    def start(self, key: tuple[str, int], work: Coroutine[Any, Any, Verdict]) -> _Run:
        """Run ``work`` for ``key`` (promotion id, step index) in a task of its own."""
        for other, run in self._runs.items():
            if other[0] == key[0] and other != key and not run.task.done():
                run.task.cancel()  # a step the promotion has left: its load measures nothing anyone reads
        task = asyncio.create_task(work, name=f"loadtest:{key[0]}:step-{key[1]}")
        run = _Run(task, time.monotonic())
        self._runs[key] = run
        self._runs.move_to_end(key)
        finished = [k for k, r in self._runs.items() if r.task.done()]
        for old in finished[: max(0, len(self._runs) - self._keep)]:
            del self._runs[old]
        return run

    async def aclose(self) -> None:
        """Cancel every run still going and wait until their Locust processes are gone."""
        running = [run.task for run in self._runs.values() if not run.task.done()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


def _locust_runner(spec: LoadTestSpec) -> LoadRunner:
    return LocustRunner(command=spec.locust_command)


class LoadTestGate:
    """Loads the canary once at its configured step and judges it; see the module's docstring."""

    def __init__(
        self,
        spec: LoadTestSpec | None,
        *,
        tests: LoadTests,
        steps: Sequence[str],
        wait: float,
        probe_requests: Sequence[Request] = (),
        name: str = "loadtest",
        release_id: str | None = None,
    ) -> None:
        self.name = name
        self._release_id = release_id
        self._spec = spec
        self._tests = tests
        self._steps = tuple(steps)
        self._wait = wait
        self._probe_requests = tuple(probe_requests)

    async def evaluate(self, ctx: GateContext) -> Verdict:
        spec = self._spec
        if spec is None:
            return self._unusable(f"service {ctx.service} has no 'loadtest' settings")
        try:
            index = resolve_step(spec.step, self._steps)
        except ValueError as exc:
            return self._unusable(str(exc))
        if ctx.step_index != index:
            return Verdict(self.name, GatePhase.PASS, (f"load test runs at step {self._steps[index]}",))
        key = (ctx.promotion_id, index)
        run = self._tests.find(key)
        if run is None:
            problem = _not_ready(spec, ctx)
            if problem is not None:
                return Verdict(self.name, GatePhase.INCONCLUSIVE, (problem,))
            run = self._tests.start(key, self._measure(spec, ctx))
        done, _ = await asyncio.wait({run.task}, timeout=self._wait)
        if not done:
            running = f"load test running ({time.monotonic() - run.started:.0f}s of {spec.duration:g}s)"
            if spec.scale is not None:
                running = f"load and scale test running ({time.monotonic() - run.started:.0f}s; the load takes "
                running += f"{spec.duration:g}s, then the scale test steps the rate up)"
            return Verdict(self.name, GatePhase.INCONCLUSIVE, (running,))
        if run.task.cancelled():
            return self._unusable("the load test was cancelled before it finished")
        return run.task.result()

    async def _measure(self, spec: LoadTestSpec, ctx: GateContext) -> Verdict:
        """Load, then judge; every failure to load is an errored INCONCLUSIVE (fail closed)."""
        try:
            with self._locustfile(spec) as locustfile:
                results = await self._load(spec, ctx, locustfile)
            verdict = self._verdict(spec, ctx, results)
            if spec.scale is not None and verdict.phase is GatePhase.PASS:
                scaled = await self._scale(spec, ctx)
                verdict = Verdict(self.name, scaled.phase, verdict.reasons + scaled.reasons,
                                  verdict.measurements + scaled.measurements, scaled.errored)  # fmt: skip
        except LoadTestError as exc:
            return self._unusable(f"the load test could not run: {exc}")
        except Exception as exc:
            log.exception("load test of %s failed", ctx.target)
            return self._unusable(f"the load test failed: {type(exc).__name__}: {exc}")
        return verdict

    async def _scale(self, spec: LoadTestSpec, ctx: GateContext) -> Verdict:
        """The scale test of one canary replica, with the load's requests (or the user's locustfile)."""
        own = self._tests.resolve(spec.locustfile) if spec.locustfile is not None else None
        return await self._tests.scale.verdict(
            spec,
            ctx,
            runner=self._tests.runner(spec),
            locustfile=own,
            requests=tuple(parse_request(p) for p in spec.paths) or self._probe_requests,
            release_id=self._release_id,
            name=self.name,
        )

    @contextlib.contextmanager
    def _locustfile(self, spec: LoadTestSpec) -> Iterator[Path]:
        if spec.locustfile is not None:
            yield self._tests.resolve(spec.locustfile)
            return
        requests = tuple(parse_request(p) for p in spec.paths) or self._probe_requests
        if not requests:
            raise LoadTestError("nothing to load: set 'paths' or 'locustfile', or give the service GET http probes")
        with generated_locustfile(requests) as path:
            yield path

    async def _load(self, spec: LoadTestSpec, ctx: GateContext, locustfile: Path) -> dict[str, LoadResult]:
        """Load the canary (and stable, with ``compare_stable``) at the same time; one failing stops both."""
        tracks = {"canary": ctx.observed.canary_endpoints}
        if spec.compare_stable:
            tracks["stable"] = ctx.observed.stable_endpoints
        runner = self._tests.runner(spec)
        try:
            async with asyncio.TaskGroup() as group:
                tasks = {
                    track: group.create_task(
                        runner.run(_plan(spec, endpoints, locustfile)), name=f"loadtest:{ctx.target}:{track}"
                    )
                    for track, endpoints in tracks.items()
                }
        except ExceptionGroup as failed:
            if all(isinstance(e, LoadTestError) for e in failed.exceptions):
                raise LoadTestError("; ".join(dict.fromkeys(str(e) for e in failed.exceptions))) from failed
            raise
        return {track: task.result() for track, task in tasks.items()}

    def _verdict(self, spec: LoadTestSpec, ctx: GateContext, results: dict[str, LoadResult]) -> Verdict:
        canary, stable = results["canary"], results.get("stable")
        self._export(ctx, results)
        judgement = judge(canary, spec.thresholds, target_rate=spec.rate, stable=stable)
        measurements = _measurements(judgement, stable)
        replicas = len(ctx.observed.canary_endpoints)
        summary = (
            f"{canary.requests} requests to {replicas} canary replica{'' if replicas == 1 else 's'} of "
            f"{ctx.canary_version} at {canary.rps:.4g} rps"
        )
        if judgement.passed:
            return Verdict(self.name, GatePhase.PASS, (*judgement.reasons, summary), measurements)
        if not judgement.conclusive:
            return Verdict(self.name, GatePhase.INCONCLUSIVE, judgement.reasons, measurements, errored=True)
        failures = (f"most frequent failures: {'; '.join(canary.errors)}",) if canary.errors else ()
        return Verdict(self.name, GatePhase.FAIL, (*judgement.reasons, summary, *failures), measurements)

    def _export(self, ctx: GateContext, results: dict[str, LoadResult]) -> None:
        metrics = self._tests.metrics
        if metrics is None:
            return
        versions = {"canary": ctx.canary_version, "stable": ctx.stable_version or "none"}
        for track, result in results.items():
            metrics.export(
                result, service=ctx.service, environment=ctx.environment, version=versions[track], track=track
            )

    def _unusable(self, reason: str) -> Verdict:
        return Verdict(self.name, GatePhase.INCONCLUSIVE, (reason,), errored=True)


def _not_ready(spec: LoadTestSpec, ctx: GateContext) -> str | None:
    """Why the load cannot start yet (nothing is remembered, so a later analysis run tries again)."""
    if not ctx.observed.canary_endpoints:
        return "no ready canary replica to load"
    if spec.compare_stable and not ctx.observed.stable_endpoints:
        return "compare_stable is set but no stable replica runs at this step: run the load test at an earlier step"
    return None


def _plan(spec: LoadTestSpec, endpoints: Sequence[Endpoint], locustfile: Path) -> LoadPlan:
    """Load every replica of one track: the generated locustfile spreads its users over ``VOUCH_HOSTS``."""
    return LoadPlan(
        target=endpoints[0].url,
        locustfile=locustfile,
        users=spec.users,
        spawn_rate=spec.spawn_rate,
        duration=spec.duration,
        rate=spec.rate,
        env={"VOUCH_HOSTS": " ".join(e.url for e in endpoints)},
    )


def _measurements(judgement: Judgement, stable: LoadResult | None) -> tuple[Measurement, ...]:
    found = [Measurement(f.name, f.value, threshold=f.threshold) for f in judgement.measurements]
    if stable is not None:
        found += [
            Measurement("requests (stable)", stable.requests),
            Measurement("error ratio (stable)", stable.error_ratio),
            Measurement("rate (rps, stable)", stable.rps),
        ]
    return tuple(found)
