"""Load-test attestations: a judged run as a test-result statement that validates, names no commit, and fails closed."""

from __future__ import annotations

import json
from typing import Any

from vouch.loadtests.judge import Figure, Judgement, judge
from vouch.loadtests.model import EndpointStats, LoadResult, Quantiles
from vouch.loadtests.settings import LoadThresholds
from vouch.rollout.attestations.dsse import statement_bytes
from vouch.rollout.attestations.loadresult import LOAD_EXTENSION, attestation_name, load_statement
from vouch.rollout.attestations.model import Statement
from vouch.rollout.attestations.predicates import TEST_RESULT_V01, validate_predicate
from vouch.rollout.policy.projection import named_commits

DIGEST = "sha256:" + "f6" * 32
LATENCY = Quantiles(p50=4.0, p90=8.0, p95=12.0, p99=30.0, max=80.0)
RUN = LoadResult(target="http://10.0.0.7:8080", duration=10.0, requests=1000, failures=30, rps=95.0, latency=LATENCY,
                 endpoints=(EndpointStats("GET /cart", "GET", 1000, 30, 95.0, LATENCY),), users=10)  # fmt: skip
THRESHOLDS = LoadThresholds(max_latency_ms={"p95": 10})


def test_a_failed_run_is_a_failed_test_result_carrying_its_figures() -> None:
    judgement = judge(RUN, THRESHOLDS, target_rate=100, stable=None)
    made = statement(RUN, judgement, environment="staging", target_rps=100, measured_at=1_700_000_000)
    predicate = made.predicate
    assert made.predicate_type == TEST_RESULT_V01
    assert validate_predicate(TEST_RESULT_V01, predicate) == []
    assert named_commits("tests", predicate) == []
    assert (predicate["result"], predicate["passedTests"], predicate["failedTests"]) == ("FAILED", [], ["load-test"])
    assert [d["name"] for d in predicate["configuration"]] == ["thresholds.json"]
    figures = predicate[LOAD_EXTENSION]
    assert (figures["requests"], figures["failures"], figures["error_ratio"], figures["rps"]) == (1000, 30, 0.03, 95.0)
    assert figures["latency_ms"] == {"p50": 4.0, "p90": 8.0, "p95": 12.0, "p99": 30.0, "max": 80.0}
    assert figures["thresholds"] == {"max_error_ratio": 0.01, "max_latency_ms": {"p95": 10.0}, "min_rate_ratio": 0.9}
    assert figures["judgement"]["reasons"] == list(judgement.reasons)
    assert (figures["measured_at"], figures["environment"], figures["target_rps"]) == (
        "2023-11-14T22:13:20Z",
        "staging",
        100,
    )
    assert figures["endpoints"][0]["name"] == "GET /cart"


def test_nothing_to_judge_is_never_passed_and_non_finite_figures_stay_valid_json() -> None:
    empty = LoadResult(target=RUN.target, duration=10.0, requests=0, failures=0, rps=0.0, latency=Quantiles())
    failed = statement(empty, judge(empty, THRESHOLDS, stable=None), test_name="replay-test")
    assert (failed.predicate["result"], failed.predicate["failedTests"]) == ("FAILED", ["replay-test"])

    odd = Judgement(True, ("held",), (Figure("p95 latency vs stable", float("inf"), "<= 1.2× stable"),))
    payload = json.loads(statement_bytes(statement(RUN, odd, details={"speed": float("nan")})), parse_constant=refuse)
    extension = payload["predicate"][LOAD_EXTENSION]
    assert extension["judgement"]["measurements"][0]["value"] is None
    assert extension["details"] == {"speed": None}


def test_names_differ_for_different_statements_stored_in_the_same_second() -> None:
    judgement = judge(RUN, THRESHOLDS, stable=None)
    first = statement(RUN, judgement, version="1", measured_at=1_700_000_000)
    second = statement(RUN, judgement, version="2", measured_at=1_700_000_000)
    assert attestation_name("load", first).startswith("load-20231114T221320Z-")  # when it was measured
    assert attestation_name("load", first) != attestation_name("load", second)
    assert attestation_name("replay", first, stamp="2025-01-02T03:04:05Z").startswith("replay-20250102T030405Z-")


def statement(result: LoadResult, judgement: Judgement, **extra: Any) -> Statement:
    about: dict[str, Any] = {"subject_name": "shop", "digest": DIGEST, "version": "2", "service": "shop", **extra}
    return load_statement(result, judgement, thresholds=THRESHOLDS, **about)


def refuse(name: str) -> None:
    raise AssertionError(f"the signed payload holds {name}, which is not JSON")
