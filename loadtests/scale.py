"""The scale test: how many requests per second one replica serves within its SLO, and the curve to get there.

The offered rate is stepped up against ONE replica (a single URL), each step a short Locust run paced
to the rate: a geometric ramp (``start``, ``start × factor``, ...) until a step breaks the SLO, then a
bisection between the last rate that held and the first that broke, until they are within
``resolution`` of each other. The **knee** is the highest offered rate that held: error ratio and
latency bounds within the SLO, and the achieved rate within ``min_rate_ratio`` of the offered one (a
replica that queues what it cannot serve shows up there, and in its latency). A step that breaks the
SLO by little (every figure within twice its bound) is run again (``retries``) and counts as broken
only if every run is: noise on a shared machine makes a replica look slower, never faster. A step
that breaks it by far (a latency more than twice its bound, say) counts at once: well past the knee,
running it again would only cost time.

Searching is pure (:class:`ScaleSearch`: which rate next, given the points so far); running is a thin
loop around a :class:`~vouch.loadtests.model.LoadRunner` (:func:`run_scale`); comparing a knee with the
previous version's is pure too (:func:`compare_knee`).

>>> from vouch.loadtests.settings import ScaleSpec
>>> search = ScaleSearch(ScaleSpec(start=10, factor=2, resolution=0.05, retries=0))
>>> while (step := search.next()) is not None:   # a replica that holds up to 50 rps
...     search.record(ScalePoint(offered=step.rate, achieved=step.rate, within_slo=step.rate <= 50))
>>> [p.offered for p in search.points], search.knee
([10.0, 20.0, 40.0, 80.0, 56.57, 47.57, 51.88, 49.68], 49.68)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import tempfile
import time
import typing
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Gauge

from vouch.loadtests.judge import judge
from vouch.loadtests.locustfiles import Request, write_locustfile
from vouch.loadtests.model import LoadPlan, LoadResult, LoadRunner
from vouch.loadtests.settings import LoadThresholds, ScaleSpec

"""The scale test's locustfile (package data): users spread evenly over one period, then a fixed schedule."""

DEFAULT_RATE_RATIO = 0.9
"""``min_rate_ratio`` of the SLO when the thresholds leave it unset: the knee must be a rate actually served."""

Phase = Literal["ramp", "bisect", "retry"]
Stop = Literal["bracketed", "max_rate", "start_broke", "max_steps"]


@dataclass(frozen=True)
class ScalePoint:
    """One step of the curve: the rate offered, what the replica did with it, and whether that held the SLO."""

    offered: float
    achieved: float
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    error_ratio: float = 0.0
    within_slo: bool = False
    requests: int = 0
    users: int = 0
    reasons: tuple[str, ...] = ()
    """Which bounds broke (empty when the step held)."""
    by_far: bool = False
    """It broke a bound by more than twice (or sent nothing): counted at once, never run again."""

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "reasons": list(self.reasons)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScalePoint:
        values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        values["reasons"] = tuple(values.get("reasons", ()))
        return cls(**values)


@dataclass(frozen=True)
class ScaleResult:
    """What a scale test found: the knee (``None`` when no rate held), every step in the order run, the SLO."""

    target: str
    knee_rps: float | None
    curve: tuple[ScalePoint, ...]
    slo: LoadThresholds
    duration: float
    """Seconds the whole test took."""
    stop: Stop
    """Why it ended: the knee ``bracketed`` within the resolution, held at ``max_rate``, the ``start`` rate
    broke the SLO already, or ``max_steps`` ran out first (the knee is then a lower bound)."""
    ceiling_rps: float | None = None
    """The lowest offered rate that broke the SLO (every run of it)."""
    resolution: float = 0.05

    @property
    def reason(self) -> str:
        knee = f"{self.knee_rps:.4g} rps" if self.knee_rps is not None else "none"
        if self.stop == "bracketed":
            return f"knee {knee}: {self.ceiling_rps:.4g} rps broke the SLO"
        if self.stop == "max_rate":
            return f"knee at least {knee}: the replica held the highest rate offered"
        if self.stop == "start_broke":
            return f"no rate held the SLO: the first, {self.ceiling_rps:.4g} rps, broke it already (start lower)"
        return f"knee at least {knee}: the search stopped after {len(self.curve)} steps (max_steps)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "knee_rps": self.knee_rps,
            "ceiling_rps": self.ceiling_rps,
            "stop": self.stop,
            "reason": self.reason,
            "resolution": self.resolution,
            "duration": self.duration,
            "slo": slo_dict(self.slo),
            "curve": [point.to_dict() for point in self.curve],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScaleResult:
        """The result :meth:`to_dict` wrote (``KeyError``/``TypeError``/``ValueError`` when it is not one)."""
        if data["stop"] not in typing.get_args(Stop):
            raise ValueError(f"unknown stop {data['stop']!r}; known: {', '.join(typing.get_args(Stop))}")
        return cls(
            target=str(data["target"]),
            knee_rps=None if data["knee_rps"] is None else float(data["knee_rps"]),
            curve=tuple(ScalePoint.from_dict(point) for point in data["curve"]),
            slo=LoadThresholds.model_validate(data["slo"]),
            duration=float(data["duration"]),
            stop=data["stop"],
            ceiling_rps=None if data.get("ceiling_rps") is None else float(data["ceiling_rps"]),
            resolution=float(data.get("resolution", 0.05)),
        )


@dataclass(frozen=True)
class ScaleStep:
    """Progress: step ``number`` offers ``rate`` with ``users``; ``point`` is ``None`` until the step is measured."""

    number: int
    phase: Phase
    rate: float
    users: int = 0
    point: ScalePoint | None = None


def slo_dict(slo: LoadThresholds) -> dict[str, Any]:
    """The bounds a scale test judges each step by, as JSON."""
    return {
        "max_error_ratio": slo.max_error_ratio,
        "max_latency_ms": dict(slo.max_latency_ms),
        "min_rate_ratio": slo.min_rate_ratio,
    }


def scale_slo(thresholds: LoadThresholds) -> LoadThresholds:
    """The load test's thresholds as a scale test's SLO: no comparison with stable, a rate ratio always."""
    ratio = thresholds.min_rate_ratio if thresholds.min_rate_ratio is not None else DEFAULT_RATE_RATIO
    return thresholds.model_copy(update={"max_canary_regression": {}, "min_rate_ratio": ratio})


class ScaleSearch:
    """Which rate to offer next, given the points so far: ramp, then bisect, retrying what broke. No I/O."""

    def __init__(self, spec: ScaleSpec) -> None:
        self._spec = spec
        self.points: list[ScalePoint] = []
        self.knee: float | None = None
        """The highest rate that held so far."""
        self.ceiling: float | None = None
        """The lowest rate that broke on every run so far."""
        self._retry: float | None = None
        self._broke: Counter[float] = Counter()

    def next(self) -> ScaleStep | None:
        """The next step to run, or ``None`` when the search is over."""
        spec = self._spec
        if len(self.points) >= spec.max_steps:
            return None
        number = len(self.points) + 1
        if self._retry is not None:
            return ScaleStep(number, "retry", self._retry)
        if self.ceiling is None:
            if self.knee is None:
                return ScaleStep(number, "ramp", _round(spec.start)) if not self.points else None
            if self.knee >= spec.max_rate:
                return None
            return ScaleStep(number, "ramp", _round(min(self.knee * spec.factor, spec.max_rate)))
        if self.knee is None or self.ceiling <= self.knee * (1 + spec.resolution):
            return None
        middle = math.sqrt(self.knee * self.ceiling)
        rounded = _round(middle)
        return ScaleStep(number, "bisect", rounded if self.knee < rounded < self.ceiling else middle)

    def record(self, point: ScalePoint) -> None:
        """Take the measured ``point`` of the step :meth:`next` gave."""
        self.points.append(point)
        rate = point.offered
        if point.within_slo:
            self._retry = None
            self.knee = rate if self.knee is None else max(self.knee, rate)
            return
        self._broke[rate] += 1
        if point.by_far or self._broke[rate] > self._spec.retries:
            self._retry = None
            self.ceiling = rate if self.ceiling is None else min(self.ceiling, rate)
        else:
            self._retry = rate

    def stop(self) -> Stop:
        """Why the search ended (meaningful once :meth:`next` returned ``None``)."""
        if self.knee is None:
            return "start_broke" if self.ceiling is not None else "max_steps"
        if self.ceiling is None:
            return "max_rate" if self.knee >= self._spec.max_rate else "max_steps"
        return "bracketed" if self.ceiling <= self.knee * (1 + self._spec.resolution) else "max_steps"

    def result(self, *, target: str, slo: LoadThresholds, duration: float) -> ScaleResult:
        return ScaleResult(
            target=target,
            knee_rps=self.knee,
            curve=tuple(self.points),
            slo=slo,
            duration=duration,
            stop=self.stop(),
            ceiling_rps=self.ceiling,
            resolution=self._spec.resolution,
        )


def most_steps(spec: ScaleSpec) -> int:
    """The most steps a search can take: every rate of the ramp and of the bisection, each run ``1 + retries``
    times; never more than ``max_steps``. For time budgets (a typical search takes about half).

    >>> most_steps(ScaleSpec()), most_steps(ScaleSpec(start=30, factor=2, resolution=0.1, retries=0))
    (26, 11)
    """
    ramp = math.ceil(math.log(spec.max_rate / spec.start) / math.log(spec.factor)) + 1
    bisect = max(0, math.ceil(math.log2(math.log(spec.factor) / math.log(1 + spec.resolution))))
    return min(spec.max_steps, (ramp + bisect) * (1 + spec.retries))


def users_for(rate: float, spec: ScaleSpec, slo: LoadThresholds) -> int:
    """Locust users for a step: ``spec.users``, or enough that each waits twice the latency bound between requests.

    A user sends its next request only after the last answer, so with fewer users a replica that slows down
    would be offered less load; with these, the offered rate holds until answers take twice the bound.

    >>> users_for(80, ScaleSpec(), LoadThresholds(max_latency_ms={"p95": 100}))
    16
    """
    if spec.users is not None:
        return spec.users
    bound = max(slo.max_latency_ms.values(), default=1000.0) / 1000
    return max(2, math.ceil(2 * rate * bound))


def measure_point(rate: float, result: LoadResult, slo: LoadThresholds, *, users: int = 0) -> ScalePoint:
    """Judge one step's Locust result against the SLO (a step that sent nothing did not hold)."""
    judgement = judge(result, slo, target_rate=rate, stable=None)
    return ScalePoint(
        by_far=not judgement.passed and _by_far(rate, result, slo),
        offered=rate,
        achieved=result.rps,
        p50=result.latency.p50,
        p95=result.latency.p95,
        p99=result.latency.p99,
        error_ratio=result.error_ratio,
        within_slo=judgement.passed,
        requests=result.requests,
        users=users,
        reasons=() if judgement.passed else judgement.reasons,
    )


async def run_scale(
    target: str,
    spec: ScaleSpec,
    thresholds: LoadThresholds,
    *,
    runner: LoadRunner,
    locustfile: Path,
    on_step: Callable[[ScaleStep], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ScaleResult:
    """Search ``target``'s knee (one replica's URL), one Locust run per step; ``on_step`` hears each step start
    (``point`` is ``None``) and end. A run that cannot happen raises :class:`~vouch.loadtests.errors.LoadTestError`.

    Example::

        with scale_locustfile([parse_request("/cart")]) as locustfile:
            result = await run_scale("http://10.0.0.7:8080", ScaleSpec(start=20), thresholds,
                                     runner=LocustRunner(), locustfile=locustfile)
        print(result.knee_rps, result.reason)
    """
    slo = scale_slo(thresholds)
    search = ScaleSearch(spec)
    started = clock()
    while (step := search.next()) is not None:
        users = users_for(step.rate, spec, slo)
        step = dataclasses.replace(step, users=users)
        if on_step is not None:
            on_step(step)
        plan = LoadPlan(
            target=target,
            locustfile=locustfile,
            users=users,
            spawn_rate=max(step.rate, float(users)),  # one dispatch: Locust spawns floor(rate) users at once
            duration=spec.step_duration,
            rate=step.rate,
            env={"VOUCH_HOSTS": target},
        )
        point = measure_point(step.rate, await runner.run(plan), slo, users=users)
        search.record(point)
        if on_step is not None:
            on_step(dataclasses.replace(step, point=point))
    return search.result(target=target, slo=slo, duration=clock() - started)


@contextlib.contextmanager
def scale_locustfile(requests: Sequence[Request]) -> Iterator[Path]:
    """The scale test's locustfile for ``requests`` in a temporary folder of its own, removed afterwards: the
    generated one, whose users spread their requests evenly over each period (a burst would read as a knee)."""
    with tempfile.TemporaryDirectory(prefix="vouch-scale-") as folder:
        yield write_locustfile(requests, Path(folder))


@dataclass(frozen=True)
class KneeComparison:
    """A knee judged against the previous version's (``baseline_rps``; ``None`` when there is none)."""

    passed: bool
    reason: str
    knee_rps: float | None
    baseline_rps: float | None
    margin: float

    @property
    def ratio(self) -> float | None:
        if self.knee_rps is None or not self.baseline_rps:
            return None
        return self.knee_rps / self.baseline_rps


def compare_knee(result: ScaleResult, baseline_rps: float | None, *, margin: float) -> KneeComparison:
    """Fail a knee more than ``margin`` below ``baseline_rps``; no knee at all always fails.

    >>> from vouch.loadtests.settings import LoadThresholds
    >>> found = ScaleResult("http://replica", 70.0, (), LoadThresholds(), 30.0, "bracketed", 73.0)
    >>> compare_knee(found, 80.0, margin=0.1).reason
    'knee 70 rps is 12.5% below the previous knee 80 rps, more than the 10% margin'
    """
    knee = result.knee_rps

    def verdict(passed: bool, reason: str) -> KneeComparison:
        return KneeComparison(passed, reason, knee, baseline_rps, margin)

    if knee is None:
        return verdict(False, result.reason)
    if baseline_rps is None:
        return verdict(True, f"{result.reason}; no previous knee to compare with: judged against the SLO only")
    share = f"{abs(1 - knee / baseline_rps) * 100:.3g}%" if baseline_rps > 0 else "-"
    bound = f"the {margin * 100:.3g}% margin"
    if knee >= baseline_rps * (1 - margin):
        side = "above" if knee >= baseline_rps else "below"
        held = f"knee {knee:.4g} rps is {share} {side} the previous knee {baseline_rps:.4g} rps, within {bound}"
        return verdict(True, held)
    reason = f"knee {knee:.4g} rps is {share} below the previous knee {baseline_rps:.4g} rps, more than {bound}"
    if result.stop == "max_rate":
        reason += f"; the test stopped at its max_rate {knee:.4g} rps: raise it above {baseline_rps:.4g} rps"
    elif result.stop == "max_steps":
        reason += "; the search ran out of steps before it bracketed the knee: raise max_steps"
    return verdict(False, reason)


class ScaleMetrics:
    """``vouch_loadtest_knee_rps{service, environment, version}``: the last scale test's knee (0: none held)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._knee = Gauge(
            "vouch_loadtest_knee_rps",
            "Requests per second one replica served within its SLO in the last scale test (0: no rate held).",
            ("service", "environment", "version"),
            registry=registry,
        )

    def export(self, result: ScaleResult, *, service: str, environment: str, version: str) -> None:
        self._knee.labels(service=service, environment=environment, version=version).set(result.knee_rps or 0.0)


def _by_far(rate: float, result: LoadResult, slo: LoadThresholds) -> bool:
    """Whether a step broke the SLO by far: no request, or a figure more than twice its bound (for the rate:
    twice as far below the offered rate as ``min_rate_ratio`` allows)."""
    if result.requests == 0:
        return True
    if result.error_ratio > 2 * slo.max_error_ratio:
        return True
    ratio = slo.min_rate_ratio if slo.min_rate_ratio is not None else DEFAULT_RATE_RATIO
    if result.rps < rate * (1 - 2 * (1 - ratio)):
        return True
    for name, bound in slo.max_latency_ms.items():
        value = result.latency.get(name)
        if value is None or value > 2 * bound:
            return True
    return False


def _round(rate: float) -> float:
    """Four significant digits: rates people can read, 0.05% apart at most from the exact ones."""
    return float(f"{rate:.4g}")
