"""Locust's files reduced to a LoadResult: a real --json-file, failures CSV and stats history from Locust 2.47.

The data was written by ``locust --headless -u 4 -r 4 -t 3s --json-file … --csv …`` against the demo
service with 10% injected errors, 4 users paced at 10 task runs per second each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vouch.loadtests.errors import LoadTestError
from vouch.loadtests.model import LoadResult, Quantiles
from vouch.loadtests.stats import parse_failures, parse_progress, parse_stats, percentile

DATA = Path(__file__).parent / "data"


def entries() -> Any:
    return json.loads((DATA / "locust-2.47-result.json").read_text())


def test_counts_come_from_the_json_file() -> None:
    result = parse_stats(entries(), target="http://127.0.0.1:18731", users=4)
    assert (result.requests, result.failures) == (116, 14)
    by_name = {e.name: e for e in result.endpoints}
    assert (by_name["GET /a"].requests, by_name["GET /a"].failures, by_name["GET /a"].method) == (54, 5, "GET")
    assert (by_name["POST /b"].requests, by_name["POST /b"].failures) == (62, 9)
    assert result.error_ratio == pytest.approx(14 / 116)


def test_quantiles_of_the_merged_histogram_follow_locusts_own_rule() -> None:
    result = parse_stats(entries(), target="t")
    assert result.latency == Quantiles(p50=7, p90=7, p95=9, p99=10, max=pytest.approx(32.408, abs=0.001))
    by_name = {e.name: e for e in result.endpoints}
    assert by_name["GET /a"].latency.p99 == 8
    assert by_name["GET /a"].latency.max == pytest.approx(8.348, abs=0.001)


def test_the_rate_counts_whole_seconds_after_spawning() -> None:
    # 40 requests in each of the two whole seconds of the run; the partial first and last are left out.
    assert parse_stats(entries(), target="t").rps == 40.0
    assert parse_stats(entries(), target="t", ramp=1.0).rps == 40.0
    # A ramp as long as the run leaves no whole second: the rate is taken over the whole run.
    whole = parse_stats(entries(), target="t", ramp=3.0)
    assert whole.rps == pytest.approx(116 / 2.7754, rel=0.001)
    assert whole.duration == pytest.approx(2.7754, rel=0.001)


def test_extras_are_carried_and_the_result_round_trips() -> None:
    result = parse_stats(
        entries(), target="t", users=4, errors=("GET /a: 500",), tool_version="2.47.0", data={"run_time": 3}
    )
    assert (result.users, result.errors, result.tool_version, result.runner) == (
        4,
        ("GET /a: 500",),
        "2.47.0",
        "locust",
    )
    assert LoadResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_no_entries_is_a_run_with_no_requests() -> None:
    result = parse_stats([], target="t")
    assert (result.requests, result.rps, result.duration, result.latency) == (0, 0.0, 0.0, Quantiles())


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"stats": []}, "a list of request entries"),
        ([{"name": "x"}], "missing"),
        ([{"name": "x", "num_requests": "many", "num_failures": 0, "response_times": {}, "num_reqs_per_sec": {}}],
         "malformed"),
    ],
)  # fmt: skip
def test_a_document_that_is_not_locusts_is_an_error(document: object, message: str) -> None:
    with pytest.raises(LoadTestError, match=message):
        parse_stats(document, target="t")


def test_percentile_matches_locust_on_edges() -> None:
    assert percentile({10: 1}, 1, 0.99) == 10
    assert percentile({1: 99, 1000: 1}, 100, 0.99) == 1000  # Locust's rule: the slowest 1% is the 99th
    assert percentile({1: 995, 1000: 5}, 1000, 0.99) == 1
    assert percentile({}, 0, 0.5) == 0


def test_failure_messages_most_frequent_first() -> None:
    text = (DATA / "locust-2.47-failures.csv").read_text()
    assert parse_failures(text) == ("GET /a: LocustBadStatusCode(code=500)", "POST /b: LocustBadStatusCode(code=500)")
    assert parse_failures("") == ()


def test_progress_from_the_last_aggregated_history_row() -> None:
    text = (DATA / "locust-2.47-stats-history.csv").read_text()
    progress = parse_progress(text, elapsed=2.0, duration=3.0)
    assert (progress.requests, progress.failures, progress.rps) == (80, 7, 40.0)
    assert parse_progress("", elapsed=1.0, duration=3.0).requests == 0
    assert parse_progress(text.splitlines()[0] + "\n17", elapsed=1.0, duration=3.0).requests == 0
