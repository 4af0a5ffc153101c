"""``vouch loadtest run``: a real Locust run against the demo service, judged, with exit codes 0, 1 and 2; its result
signed as an attestation and written as Prometheus metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.demo import demo_processes
from support.loadtarget import locust_children
from typer.testing import CliRunner

from vouch.daemon.cli import app
from vouch.rollout.attestations.keys import generate_keypair
from vouch.rollout.attestations.loadresult import LOAD_EXTENSION
from vouch.rollout.attestations.model import Attestation, RawAttestation
from vouch.rollout.attestations.verify import AttestationVerifier, KeySpec, TrustSpec
from vouch.rollout.policy.projection import named_commits

runner = CliRunner()
DIGEST = "sha256:" + "d4" * 32


@pytest.fixture
def demo() -> Iterator[str]:
    """A demo replica answering 20% of its requests with 500."""
    with demo_processes() as start:
        yield start("--error-ratio", "0.2")


def test_a_run_is_judged_and_its_exit_code_says_so(demo: str) -> None:
    common = ["loadtest", "run", demo, "--path", "/cart", "-u", "2", "-r", "100", "-d", "2s", "--rate", "20", "--json"]
    failed = runner.invoke(app, [*common, "--max-p99-ms", "5000"])
    assert failed.exit_code == 1, failed.output
    document = json.loads(failed.stdout)
    assert document["result"]["requests"] > 0
    assert document["result"]["endpoints"][0]["name"] == "GET /cart"
    assert not document["judgement"]["passed"]
    assert document["judgement"]["reasons"][0].startswith("error ratio")
    held = runner.invoke(app, [*common, "--max-error-ratio", "0.6"])
    assert held.exit_code == 0, held.output
    assert json.loads(held.stdout)["judgement"]["passed"]
    assert not locust_children()


def test_a_run_is_signed_as_a_test_result_and_written_as_prometheus_metrics(demo: str, tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path / "vouch.key")
    metrics = tmp_path / "loadtest.prom"
    args = ["loadtest", "run", demo, "--path", "/cart", "-u", "2", "-r", "100", "-d", "2s", "--rate", "20"]
    args += ["--max-error-ratio", "0.6", "--max-p99-ms", "5000", "--version", "1.0.0", "--env", "staging"]
    args += ["--attest", "--key", str(pair.private_path), "--subject", f"shop@{DIGEST}", "--out", str(tmp_path / "a")]
    held = runner.invoke(app, [*args, "--metrics-out", str(metrics), "--json"])
    assert held.exit_code == 0, held.output
    document = json.loads(held.stdout)
    measured = document["result"]
    assert measured["requests"] > 0

    written = Path(document["attestation"])
    assert written.parent == tmp_path / "a" / ("sha256-" + "d4" * 32)
    verifier = AttestationVerifier(TrustSpec(keys=[KeySpec(path=str(pair.public_path))]))
    attestation = verifier.verify(RawAttestation(str(written), written.read_bytes()), subject_digest=DIGEST)
    assert isinstance(attestation, Attestation), attestation
    predicate = attestation.statement.predicate
    assert (predicate["result"], predicate["passedTests"], predicate["failedTests"]) == ("PASSED", ["load-test"], [])
    assert named_commits("tests", predicate) == []  # never taken for the pipeline's own tests step
    figures = predicate[LOAD_EXTENSION]
    assert (figures["service"], figures["version"], figures["environment"]) == ("shop", "1.0.0", "staging")
    assert (figures["requests"], figures["failures"], figures["rps"]) == (
        measured["requests"],
        measured["failures"],
        measured["rps"],
    )
    assert figures["error_ratio"] == measured["error_ratio"]
    assert figures["latency_ms"] == measured["latency"]
    assert (figures["target_rps"], figures["judgement"]["passed"]) == (20.0, True)
    assert figures["thresholds"] == {"max_error_ratio": 0.6, "max_latency_ms": {"p99": 5000.0}, "min_rate_ratio": 0.9}

    assert document["metrics"] == str(metrics)
    samples = {
        (sample.name, sample.labels.get("quantile")): sample
        for family in text_string_to_metric_families(metrics.read_text())
        for sample in family.samples
    }
    requests = samples["vouch_loadtest_requests_total", None]
    assert requests.value == measured["requests"]
    assert requests.labels == {"service": "shop", "environment": "staging", "version": "1.0.0", "track": "canary"}
    assert samples["vouch_loadtest_failures_total", None].value == measured["failures"]
    assert samples["vouch_loadtest_latency_ms", "p99"].value == measured["latency"]["p99"]
    assert not locust_children()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["127.0.0.1:8080"], "is not an http:// or https:// URL"),
        (["http://127.0.0.1:9", "--attest", "--subject", f"shop@{DIGEST}", "--out", "a"], "--attest needs --key KEY"),
        (["http://127.0.0.1:9", "--metrics-out", "/nonexistent/run.prom"], "no folder /nonexistent"),
        (["http://127.0.0.1:9", "--track", "blue"], "--track 'blue': write canary or stable"),
        (["http://127.0.0.1:9", "-d", "soon"], "is not a duration"),
        (["http://127.0.0.1:9", "--path", "cart"], "must start with '/'"),
        (["http://127.0.0.1:9", "-f", "/nonexistent/locustfile.py"], "no locustfile at /nonexistent/locustfile.py"),
    ],
)
def test_usage_problems_exit_2_with_the_reason(arguments: list[str], message: str) -> None:
    result = runner.invoke(app, ["loadtest", "run", *arguments, "--json"])
    assert result.exit_code == 2
    assert message in json.loads(result.stdout)["error"]["message"]
