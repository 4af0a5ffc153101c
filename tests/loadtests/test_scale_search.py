"""The scale test's search, judging and comparison: pure functions on synthetic curves, no Locust."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from vouch.loadtests.model import LoadResult, Quantiles
from vouch.loadtests.scale import (
    ScaleMetrics,
    ScalePoint,
    ScaleResult,
    ScaleSearch,
    compare_knee,
    measure_point,
    most_steps,
    scale_slo,
    users_for,
)
from vouch.loadtests.settings import LoadTestSpec, LoadThresholds, ScaleSpec

SLO = scale_slo(LoadThresholds(max_latency_ms={"p95": 100}))


def replica(capacity: float) -> Callable[[float], ScalePoint]:
    """A replica serving up to ``capacity`` rps at 50 ms; past it, it queues: slower, and short of the rate."""

    def measure(rate: float) -> ScalePoint:
        if rate <= capacity:
            return ScalePoint(offered=rate, achieved=rate, p95=50.0, within_slo=True)
        slow = 50.0 * rate / capacity * 3
        return ScalePoint(offered=rate, achieved=capacity, p95=slow, within_slo=False, by_far=slow > 200)

    return measure


def search(spec: ScaleSpec, measure: Callable[[float], ScalePoint]) -> ScaleSearch:
    found = ScaleSearch(spec)
    while (step := found.next()) is not None:
        found.record(measure(step.rate))
    return found


@pytest.mark.parametrize("capacity", [7.0, 80.0, 123.0, 999.0])
@pytest.mark.parametrize("resolution", [0.05, 0.2])
def test_the_knee_is_found_within_the_resolution(capacity: float, resolution: float) -> None:
    spec = ScaleSpec(start=5, factor=2, resolution=resolution, max_rate=5000)
    found = search(spec, replica(capacity))
    assert found.stop() == "bracketed"
    assert found.knee is not None
    assert found.ceiling is not None
    assert found.knee <= capacity < found.ceiling <= found.knee * (1 + resolution)
    assert len(found.points) <= most_steps(spec)
    result = found.result(target="t", slo=SLO, duration=1.0)
    assert result.knee_rps == found.knee
    assert [p.offered for p in result.curve] == [p.offered for p in found.points]
    assert result.reason == f"knee {found.knee:.4g} rps: {found.ceiling:.4g} rps broke the SLO"


def test_a_noisy_step_that_breaks_once_is_run_again_and_the_knee_is_still_found() -> None:
    spec = ScaleSpec(start=10, factor=2, resolution=0.05, retries=1)
    steady = replica(80.0)
    noisy_once = {20.0: 1}  # the second step breaks once (the machine was busy), then holds

    def measure(rate: float) -> ScalePoint:
        if noisy_once.get(rate):
            noisy_once[rate] -= 1
            return ScalePoint(offered=rate, achieved=rate, p95=130.0, within_slo=False)
        return steady(rate)

    found = search(spec, measure)
    offered = [p.offered for p in found.points]
    assert offered[:3] == [10.0, 20.0, 20.0]
    assert [p.within_slo for p in found.points[:3]] == [True, False, True]
    assert found.knee is not None
    assert found.knee <= 80 < found.ceiling <= found.knee * 1.05  # type: ignore[operator]


def test_without_retries_a_noisy_step_lowers_the_knee() -> None:
    """The same noise with retries=0: the search believes it. (What retries are for.)"""
    spec = ScaleSpec(start=10, factor=2, resolution=0.05, retries=0)
    steady = replica(80.0)
    found = search(spec, lambda rate: ScalePoint(rate, rate, p95=130.0) if rate == 20.0 else steady(rate))
    assert found.knee is not None
    assert found.knee < 20


def test_a_step_broken_by_far_is_not_run_again_but_one_broken_by_little_is() -> None:
    spec = ScaleSpec(start=10, factor=2, resolution=0.5, retries=1)
    found = search(spec, replica(30.0))
    offered = [p.offered for p in found.points]
    assert offered == [10.0, 20.0, 40.0, 40.0, 28.28]  # 40 broke by little (p95 twice the bound): run again
    by_far = search(spec, lambda rate: replica(15.0)(rate) if rate < 20 else ScalePoint(rate, 1.0, by_far=True))
    assert [p.offered for p in by_far.points] == [10.0, 20.0, 14.14]


def test_a_replica_that_holds_the_highest_rate_has_a_knee_of_at_least_that() -> None:
    found = search(ScaleSpec(start=10, max_rate=50, factor=2), replica(1000.0))
    assert [p.offered for p in found.points] == [10.0, 20.0, 40.0, 50.0]
    result = found.result(target="t", slo=SLO, duration=1.0)
    assert (result.stop, result.knee_rps) == ("max_rate", 50.0)
    assert result.reason == "knee at least 50 rps: the replica held the highest rate offered"


def test_a_start_that_breaks_already_finds_no_knee_and_never_passes() -> None:
    found = search(ScaleSpec(start=100, retries=1), replica(10.0))
    assert [p.offered for p in found.points] == [100.0]  # broken by far: counted at once
    result = found.result(target="t", slo=SLO, duration=1.0)
    assert (result.stop, result.knee_rps, result.ceiling_rps) == ("start_broke", None, 100.0)
    comparison = compare_knee(result, None, margin=0.1)
    assert not comparison.passed
    assert comparison.reason.startswith("no rate held the SLO: the first, 100 rps, broke it already")


def test_max_steps_cuts_the_search_short_and_says_so() -> None:
    found = search(ScaleSpec(start=1, factor=2, max_steps=3), replica(1000.0))
    result = found.result(target="t", slo=SLO, duration=1.0)
    assert (len(result.curve), result.stop, result.knee_rps) == (3, "max_steps", 4.0)
    assert compare_knee(result, 100.0, margin=0.1).reason.endswith("raise max_steps")


def bracketed(knee: float) -> ScaleResult:
    return ScaleResult("http://replica", knee, (), SLO, 30.0, "bracketed", knee * 1.04)


@pytest.mark.parametrize(
    ("knee", "baseline", "passed", "reason"),
    [
        (80.0, 80.0, True, "knee 80 rps is 0% above the previous knee 80 rps, within the 10% margin"),
        (73.0, 80.0, True, "knee 73 rps is 8.75% below the previous knee 80 rps, within the 10% margin"),
        (71.0, 80.0, False, "knee 71 rps is 11.3% below the previous knee 80 rps, more than the 10% margin"),
        (120.0, 80.0, True, "knee 120 rps is 50% above the previous knee 80 rps, within the 10% margin"),
        (40.0, None, True, "knee 40 rps: 41.6 rps broke the SLO; no previous knee to compare with: judged"),
    ],
)
def test_a_knee_fails_only_when_it_falls_more_than_the_margin_below_the_previous(
    knee: float, baseline: float | None, passed: bool, reason: str
) -> None:
    comparison = compare_knee(bracketed(knee), baseline, margin=0.1)
    assert comparison.passed is passed
    assert comparison.reason.startswith(reason)
    assert comparison.ratio == (None if baseline is None else knee / baseline)


def test_a_knee_held_at_max_rate_below_the_previous_says_to_raise_max_rate() -> None:
    result = ScaleResult("http://replica", 50.0, (), SLO, 3.0, "max_rate")
    assert compare_knee(result, 200.0, margin=0.1).reason.endswith("raise it above 200 rps")


def load(rate: float, *, requests: int = 300, failures: int = 0, p95: float | None = 60.0) -> LoadResult:
    return LoadResult("t", 3.0, requests, failures, rate, Quantiles(p50=50.0, p95=p95, p99=p95))


@pytest.mark.parametrize(
    ("result", "within", "by_far"),
    [
        (load(80.0), True, False),
        (load(76.0), True, False),  # 95% of the offered rate: within min_rate_ratio 0.9
        (load(70.0), False, False),  # 87.5%: short, but by little
        (load(60.0), False, True),  # 75%: more than twice as far short as allowed
        (load(80.0, p95=150.0), False, False),
        (load(80.0, p95=201.0), False, True),
        (load(80.0, p95=None), False, True),
        (load(80.0, failures=5), False, False),  # 1.7% errors against 1%
        (load(80.0, failures=7), False, True),
        (load(0.0, requests=0, p95=None), False, True),
    ],
)
def test_a_step_is_judged_against_the_slo_and_told_apart_by_far(result: LoadResult, within: bool, by_far: bool) -> None:
    point = measure_point(80.0, result, SLO, users=16)
    assert (point.within_slo, point.by_far) == (within, by_far), point.reasons
    assert (point.offered, point.achieved, point.users) == (80.0, result.rps, 16)
    assert bool(point.reasons) is not within


def test_users_keep_the_offered_rate_until_answers_take_twice_the_bound() -> None:
    assert users_for(80, ScaleSpec(), SLO) == 16
    assert users_for(1, ScaleSpec(), SLO) == 2
    assert users_for(80, ScaleSpec(users=5), SLO) == 5
    assert users_for(10, ScaleSpec(), scale_slo(LoadThresholds(max_latency_ms={"p50": 20, "p99": 500}))) == 10


def test_the_slo_always_judges_the_rate_and_never_compares_with_stable() -> None:
    assert scale_slo(LoadThresholds(min_rate_ratio=None)).min_rate_ratio == 0.9
    assert scale_slo(LoadThresholds(min_rate_ratio=0.8)).min_rate_ratio == 0.8
    assert scale_slo(LoadThresholds(max_canary_regression={"p95": 1.2})).max_canary_regression == {}


def test_a_result_survives_json() -> None:
    found = search(ScaleSpec(start=10, resolution=0.1), replica(45.0))
    result = found.result(target="http://replica", slo=SLO, duration=12.5)
    document = result.to_dict()
    assert document["knee_rps"] == result.knee_rps
    assert document["slo"] == {"max_error_ratio": 0.01, "max_latency_ms": {"p95": 100.0}, "min_rate_ratio": 0.9}
    assert ScaleResult.from_dict(document) == result


def test_the_knee_is_exported_in_the_registry_given() -> None:
    registry = CollectorRegistry()
    metrics = ScaleMetrics(registry)
    labels = {"service": "shop", "environment": "staging", "version": "2.0.0"}
    metrics.export(bracketed(77.0), **labels)
    assert registry.get_sample_value("vouch_loadtest_knee_rps", labels) == 77.0
    metrics.export(ScaleResult("t", None, (), SLO, 1.0, "start_broke", 10.0), **labels)
    assert registry.get_sample_value("vouch_loadtest_knee_rps", labels) == 0.0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"scale": {}}, "a scale test needs a latency bound"),
        ({"thresholds": {"max_latency_ms": {"p95": 100}}, "scale": {"start": 100, "max_rate": 50}}, "below start"),
        ({"thresholds": {"max_latency_ms": {"p95": 100}}, "scale": {"step_duration": "1s"}}, "at least 2s"),
        ({"thresholds": {"max_latency_ms": {"p95": 100}}, "scale": {"factor": 1}}, "greater than 1"),
        ({"thresholds": {"max_latency_ms": {"p95": 100}}, "scale": {"resolution": 0}}, "greater than 0"),
        ({"thresholds": {"max_latency_ms": {"p95": 100}}, "scale": {"margin": 1}}, "less than 1"),
    ],
)
def test_scale_settings_refuse_what_cannot_find_a_knee(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LoadTestSpec.model_validate(values)


def test_scale_settings_have_safe_defaults() -> None:
    spec = LoadTestSpec.model_validate({"thresholds": {"max_latency_ms": {"p95": 100}}, "scale": {}})
    assert spec.scale == ScaleSpec()
    scale = ScaleSpec()
    assert (scale.start, scale.max_rate, scale.factor, scale.resolution) == (10.0, 2000.0, 2.0, 0.05)
    assert (scale.step_duration, scale.retries, scale.margin, scale.users) == (4.0, 1, 0.1, None)
    assert LoadTestSpec().scale is None
