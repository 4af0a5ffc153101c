"""``vouch loadtest replay``: a short real replay against the demo service, signed as an attestation and written as
Prometheus metrics; the outputs' usage problems exit 2 before Locust starts."""

from __future__ import annotations

import importlib.util
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
DIGEST = "sha256:" + "e5" * 32
PATHS = ("/", "/cart", "/search?q=umbrella", "/healthz")


@pytest.fixture
def demo() -> Iterator[str]:
    """The demo service as its own process, answering every path with 200."""
    with demo_processes() as start:
        yield start()


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """Twelve GETs and one POST over 1.2 s of JSON-lines log."""
    path = tmp_path / "app.jsonl"
    records = [{"ts": 1_700_000_000 + i / 10, "method": "GET", "path": PATHS[i % 4], "status": 200} for i in range(12)]
    records.append({"ts": 1_700_000_001.2, "method": "POST", "path": "/orders", "status": 201})
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_a_replay_is_signed_as_a_test_result_and_written_as_prometheus_metrics(
    demo: str, log: Path, tmp_path: Path
) -> None:
    if importlib.util.find_spec("locust") is None:
        pytest.skip("locust not installed: pip install 'vouch[loadtest]'")
    pair = generate_keypair(tmp_path / "vouch.key")
    metrics = tmp_path / "replay.prom"
    args = ["loadtest", "replay", str(log), "--target", demo, "--users", "2", "--speed", "2", "--service", "shop"]
    args += ["--attest", "--key", str(pair.private_path), "--subject", f"shop-image@{DIGEST}", "--out", str(tmp_path)]
    args += ["--version", "1.0.0", "--metrics-out", str(metrics), "--track", "stable", "--json"]
    held = runner.invoke(app, args)
    assert held.exit_code == 0, held.output
    document = json.loads(held.stdout)
    assert (document["ok"], document["result"]["requests"], document["result"]["failures"]) == (True, 12, 0)

    written = Path(document["attestation"])
    assert written.parent == tmp_path / ("sha256-" + "e5" * 32)
    assert written.name.startswith("replay-")
    verifier = AttestationVerifier(TrustSpec(keys=[KeySpec(path=str(pair.public_path))]))
    attestation = verifier.verify(RawAttestation(str(written), written.read_bytes()), subject_digest=DIGEST)
    assert isinstance(attestation, Attestation), attestation
    assert attestation.statement.subjects[0].name == "shop-image"
    predicate = attestation.statement.predicate
    assert (predicate["result"], predicate["passedTests"]) == ("PASSED", ["replay-test"])
    assert named_commits("tests", predicate) == []
    figures = predicate[LOAD_EXTENSION]
    assert (figures["test"], figures["service"], figures["version"], "environment" in figures) == (
        "replay-test",
        "shop",
        "1.0.0",
        False,
    )
    assert (figures["requests"], figures["failures"], figures["rps"]) == (12, 0, document["result"]["rps"])
    assert figures["latency_ms"] == document["result"]["latency"]
    assert figures["thresholds"]["max_error_ratio"] == 0.01
    assert figures["details"]["summary"]["dropped_mutating"] == 1
    assert figures["details"]["timing"]["fired"] == 12

    families = {family.name: family for family in text_string_to_metric_families(metrics.read_text())}
    [requests] = [s for s in families["vouch_loadtest_requests"].samples if s.name.endswith("_total")]
    assert requests.value == 12
    assert requests.labels == {"service": "shop", "environment": "unknown", "version": "1.0.0", "track": "stable"}
    assert not locust_children()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--attest", "--subject", f"shop@{DIGEST}", "--out", "a"], "--attest needs --key KEY"),
        (["--attest", "--key", "/no.key", "--subject", f"shop@{DIGEST}", "--out", "a"], "cannot read private key"),
        (["--metrics-out", "/nonexistent/replay.prom"], "no folder /nonexistent"),
    ],
)
def test_usage_problems_of_the_outputs_exit_2_before_any_replay(log: Path, extra: list[str], message: str) -> None:
    result = runner.invoke(app, ["loadtest", "replay", str(log), "--target", "http://127.0.0.1:9", *extra, "--json"])
    assert result.exit_code == 2, result.output
    assert message in json.loads(result.stdout)["error"]["message"]
