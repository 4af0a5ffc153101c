"""judge(): every bound on a measured figure, nothing measured never a pass."""

from __future__ import annotations

from typing import Any

import pytest

from vouch.loadtests.judge import Figure, judge
from vouch.loadtests.model import LoadResult, Quantiles
from vouch.loadtests.settings import LoadThresholds


def run(*, requests: int = 1000, failures: int = 0, rps: float = 100.0, **latency: float | None) -> LoadResult:
    quantiles = {"p50": 5.0, "p90": 9.0, "p95": 10.0, "p99": 20.0, "max": 50.0, **latency}
    return LoadResult(target="http://x", duration=10, requests=requests, failures=failures, rps=rps,
                      latency=Quantiles(**quantiles))  # fmt: skip


def limits(**values: Any) -> LoadThresholds:
    return LoadThresholds.model_validate(values)


@pytest.mark.parametrize(
    ("result", "thresholds", "target_rate", "passed", "reason"),
    [
        (run(), limits(), None, True, "error ratio 0 is within the maximum 0.01"),
        (run(failures=10), limits(), None, True, "error ratio 0.01 is within the maximum 0.01"),
        (run(failures=11), limits(), None, False, "error ratio 0.011 is above the maximum 0.01"),
        (run(), limits(max_latency_ms={"p95": 10}), None, True, "p95 latency 10 ms is within the maximum 10 ms"),
        (run(p95=10.5), limits(max_latency_ms={"p95": 10}), None, False, "p95 latency 10.5 ms is above the maximum"),
        (run(p99=None), limits(max_latency_ms={"p99": 100}), None, False, "p99 latency was not measured"),
        (run(rps=90), limits(), 100, True, "achieved rate 90 rps is 90% of the target 100 rps, at least the minimum"),
        (run(rps=89), limits(), 100, False, "achieved rate 89 rps is 89% of the target 100 rps, below the minimum 90%"),
        (run(rps=10), limits(min_rate_ratio=None), 100.0, True, "error ratio 0 is within the maximum 0.01"),
        (run(rps=10), limits(), None, True, "error ratio 0 is within the maximum 0.01"),
    ],
)  # fmt: skip
def test_bounds(result: LoadResult, thresholds: LoadThresholds, target_rate: float | None, passed: bool, reason: str):
    judgement = judge(result, thresholds, target_rate=target_rate, stable=None)
    assert judgement.passed is passed
    assert judgement.conclusive
    assert any(r.startswith(reason) for r in judgement.reasons), judgement.reasons


def test_a_failed_judgement_names_only_what_failed_and_measures_everything() -> None:
    judgement = judge(run(failures=50, p95=300), limits(max_latency_ms={"p95": 250, "p50": 10}), stable=None)
    assert judgement.reasons == (
        "error ratio 0.05 is above the maximum 0.01",
        "p95 latency 300 ms is above the maximum 250 ms",
    )
    assert judgement.measurements == (
        Figure("requests", 1000, None),
        Figure("error ratio", 0.05, "<= 0.01"),
        Figure("p95 latency (ms)", 300, "<= 250"),
        Figure("p50 latency (ms)", 5, "<= 10"),
    )
    assert judgement.to_dict()["measurements"][1] == {"name": "error ratio", "value": 0.05, "threshold": "<= 0.01"}


def test_zero_requests_is_never_a_pass() -> None:
    judgement = judge(run(requests=0), limits(), target_rate=100, stable=None)
    assert (judgement.passed, judgement.conclusive) == (False, False)
    assert "no request" in judgement.reasons[0]


@pytest.mark.parametrize(
    ("canary_p95", "stable_p95", "passed", "reason"),
    [
        (100.0, 100.0, True, "p95 latency 100 ms is 1× stable's 100 ms, within the maximum 1.2×"),
        (120.0, 100.0, True, "p95 latency 120 ms is 1.2× stable's 100 ms, within the maximum 1.2×"),
        (121.0, 100.0, False, "p95 latency 121 ms is 1.21× stable's 100 ms, above the maximum 1.2×"),
        (3.0, 1.0, True, "p95 latency 3 ms is 3× stable's 1 ms, but only 2 ms slower: within the 2 ms tolerance"),
        (4.0, 1.0, False, "p95 latency 4 ms is 4× stable's 1 ms, above the maximum 1.2×"),
        (0.0, 0.0, True, "p95 latency 0 ms is 1× stable's 0 ms"),
        (None, 100.0, False, "p95 latency cannot be compared with stable: the canary's was not measured"),
        (100.0, None, False, "p95 latency cannot be compared with stable: stable's was not measured"),
    ],
)
def test_canary_against_stable(canary_p95: float | None, stable_p95: float | None, passed: bool, reason: str) -> None:
    thresholds = limits(max_canary_regression={"p95": 1.2})
    judgement = judge(run(p95=canary_p95), thresholds, stable=run(p95=stable_p95))
    assert judgement.passed is passed
    assert any(r.startswith(reason) for r in judgement.reasons), judgement.reasons


def test_without_stable_no_regression_is_judged() -> None:
    judgement = judge(run(p95=1000), limits(max_canary_regression={"p95": 1.2}), stable=None)
    assert judgement.passed
    assert not any("stable" in r for r in judgement.reasons)
