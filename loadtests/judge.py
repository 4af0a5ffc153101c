"""Judging a load run against its thresholds: a pure function of what was measured.

Every bound is checked on a measured figure, and one that cannot be checked (no requests, a quantile
Locust did not report, stable not measured) fails closed. A run that made no request at all is never
a pass: it is *inconclusive*, since there was nothing to judge (a gate reports it so, not as a
regression of the service).

>>> from vouch.loadtests.model import LoadResult, Quantiles
>>> from vouch.loadtests.settings import LoadThresholds
>>> run = LoadResult(target="http://canary", duration=10, requests=1000, failures=30, rps=95.0,
...                  latency=Quantiles(p50=4, p90=8, p95=12, p99=30, max=80))
>>> j = judge(run, LoadThresholds(max_latency_ms={"p95": 10}), target_rate=100, stable=None)
>>> j.passed, j.reasons
(False, ('error ratio 0.03 is above the maximum 0.01', 'p95 latency 12 ms is above the maximum 10 ms'))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from vouch.loadtests.model import LoadResult
from vouch.loadtests.settings import LoadThresholds


class Figure(NamedTuple):
    """One judged figure: ``(name, value, threshold)``; ``value`` is ``None`` when it was not measured."""

    name: str
    value: float | None
    threshold: str | None


@dataclass(frozen=True)
class Judgement:
    """The verdict on one load run: ``reasons`` name each figure and bound (the failing ones when it failed)."""

    passed: bool
    reasons: tuple[str, ...]
    measurements: tuple[Figure, ...]
    conclusive: bool = True
    """False when there was nothing to judge (no requests): never a pass, and not a measured failure either."""

    def to_dict(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "conclusive": self.conclusive,
            "reasons": list(self.reasons),
            "measurements": [f._asdict() for f in self.measurements],
        }


@dataclass(frozen=True)
class _Check:
    ok: bool
    reason: str
    figures: tuple[Figure, ...]


def judge(
    result: LoadResult, thresholds: LoadThresholds, *, target_rate: float | None = None, stable: LoadResult | None
) -> Judgement:
    """Judge ``result`` (the canary, or the one target of a standalone run) against ``thresholds``.

    ``target_rate`` (the offered requests per second) enables ``min_rate_ratio``; ``stable`` (measured at
    the same time, as hard) enables ``max_canary_regression``.
    """
    if result.requests == 0:
        reason = f"the load test sent no request to {result.target}: nothing to judge"
        return Judgement(False, (reason,), (Figure("requests", 0, "> 0"),), conclusive=False)
    checks = [_error_ratio(result, thresholds)]
    checks.extend(_latency(result, name, bound) for name, bound in thresholds.max_latency_ms.items())
    if target_rate is not None and thresholds.min_rate_ratio is not None:
        checks.append(_rate(result, target_rate, thresholds.min_rate_ratio))
    if stable is not None:
        checks.extend(
            _regression(result, stable, name, ratio, thresholds.regression_tolerance_ms)
            for name, ratio in thresholds.max_canary_regression.items()
        )
    passed = all(c.ok for c in checks)
    reasons = tuple(c.reason for c in checks if passed or not c.ok)
    figures = (Figure("requests", result.requests, None), *(f for c in checks for f in c.figures))
    return Judgement(passed, reasons, figures)


def _error_ratio(result: LoadResult, thresholds: LoadThresholds) -> _Check:
    ratio, bound = result.error_ratio, thresholds.max_error_ratio
    figure = Figure("error ratio", ratio, f"<= {_num(bound)}")
    if ratio > bound:
        return _Check(False, f"error ratio {_num(ratio)} is above the maximum {_num(bound)}", (figure,))
    return _Check(True, f"error ratio {_num(ratio)} is within the maximum {_num(bound)}", (figure,))


def _latency(result: LoadResult, name: str, bound: float) -> _Check:
    value = result.latency.get(name)
    figure = Figure(f"{name} latency (ms)", value, f"<= {_num(bound)}")
    if value is None:
        return _Check(False, f"{name} latency was not measured, so its maximum {_num(bound)} ms cannot hold", (figure,))
    if value > bound:
        return _Check(False, f"{name} latency {_num(value)} ms is above the maximum {_num(bound)} ms", (figure,))
    return _Check(True, f"{name} latency {_num(value)} ms is within the maximum {_num(bound)} ms", (figure,))


def _rate(result: LoadResult, target: float, minimum: float) -> _Check:
    ratio = result.rps / target if target > 0 else 0.0
    figures = (
        Figure("rate (rps)", result.rps, f">= {_num(target * minimum)}"),
        Figure("rate ratio", ratio, f">= {_num(minimum)}"),
    )
    subject = f"achieved rate {_num(result.rps)} rps is {_percent(ratio)} of the target {_num(target)} rps"
    if ratio < minimum:
        return _Check(False, f"{subject}, below the minimum {_percent(minimum)}", figures)
    return _Check(True, f"{subject}, at least the minimum {_percent(minimum)}", figures)


def _regression(canary: LoadResult, stable: LoadResult, name: str, ratio: float, tolerance: float) -> _Check:
    mine, theirs = canary.latency.get(name), stable.latency.get(name)
    bound = f"<= {_num(ratio)}× stable"
    if mine is None or theirs is None:
        missing = "the canary's" if mine is None else "stable's"
        figure = Figure(f"{name} latency vs stable", None, bound)
        return _Check(False, f"{name} latency cannot be compared with stable: {missing} was not measured", (figure,))
    factor = mine / theirs if theirs > 0 else (1.0 if mine == 0 else float("inf"))
    figures = (Figure(f"{name} latency (ms, stable)", theirs, None), Figure(f"{name} latency vs stable", factor, bound))
    subject = f"{name} latency {_num(mine)} ms is {_num(factor)}× stable's {_num(theirs)} ms"
    if factor > ratio and mine - theirs > tolerance:
        return _Check(False, f"{subject}, above the maximum {_num(ratio)}×", figures)
    if factor > ratio:
        slower = f"{subject}, but only {_num(mine - theirs)} ms slower: within the {_num(tolerance)} ms tolerance"
        return _Check(True, slower, figures)
    return _Check(True, f"{subject}, within the maximum {_num(ratio)}×", figures)


def _num(value: float) -> str:
    return f"{value:.4g}"


def _percent(ratio: float) -> str:
    return f"{ratio * 100:.3g}%"
