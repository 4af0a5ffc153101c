"""``vouch loadtest scale``: real Locust runs against a capped demo replica; exit codes 0, 1 and 2; attestations."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.loadtarget import demo_targets, locust_children
from typer.testing import CliRunner

from vouch.core.errors import InputError
from vouch.daemon.cli import app
from vouch.daemon.loadtest_scale import _baseline
from vouch.rollout.attestations.keys import generate_keypair, load_public_key, load_signer
from vouch.rollout.attestations.model import RawAttestation
from vouch.rollout.attestations.scale import read_scale

runner = CliRunner()
DIGEST = "sha256:" + "c3" * 32
# 40 rps replica; a short, coarse search: 30 held, 45 broke, then 36.7 (within 30% of 45: done)
SEARCH = ["--max-p95-ms", "150", "--start", "30", "--factor", "1.5", "--resolution", "0.3", "--retries", "0"]
SEARCH += ["--step-duration", "2s", "--path", "/work", "--json"]


@pytest.fixture(scope="module")
def replica() -> Iterator[str]:
    """One demo replica of 2 workers at 50 ms: 40 requests per second."""
    loop = asyncio.new_event_loop()
    context = demo_targets()
    start = loop.run_until_complete(context.__aenter__())
    try:
        yield loop.run_until_complete(start("3.0.0", latency_ms=50, max_in_flight=2)).url
    finally:
        loop.run_until_complete(context.__aexit__(None, None, None))
        loop.close()


def test_a_knee_within_the_margin_exits_0_and_a_knee_below_it_exits_1_with_an_attestation(
    replica: str, tmp_path: Path
) -> None:
    metrics = ["--metrics-out", str(tmp_path / "scale.prom"), "--service", "shop", "--env", "staging"]
    held = runner.invoke(
        app, ["loadtest", "scale", replica, *SEARCH, "--baseline-rps", "34", "--margin", "0.5", *metrics]
    )
    assert held.exit_code == 0, held.output
    document = json.loads(held.stdout)
    assert document["comparison"]["passed"] is True
    assert document["comparison"]["baseline_rps"] == 34
    assert document["attestation"] is None
    knee = document["result"]["knee_rps"]
    assert knee is not None
    assert 20 <= knee <= 46, document["result"]["curve"]
    assert document["metrics"] == str(tmp_path / "scale.prom")
    [family] = text_string_to_metric_families((tmp_path / "scale.prom").read_text())
    [sample] = family.samples
    assert (sample.name, sample.value) == ("vouch_loadtest_knee_rps", knee)
    assert sample.labels == {"service": "shop", "environment": "staging", "version": "unknown"}
    (tmp_path / "previous.json").write_text(held.stdout)
    assert _baseline(tmp_path / "previous.json", None, None) == knee

    pair = generate_keypair(tmp_path / "vouch.key")
    attest = ["--attest", "--key", str(pair.private_path), "--subject", f"shop@{DIGEST}", "--out", str(tmp_path)]
    attest += ["--version", "3.0.0", "--environment", "staging"]
    dropped = runner.invoke(app, ["loadtest", "scale", replica, *SEARCH, "--baseline-rps", "1000", *attest])
    assert dropped.exit_code == 1, dropped.output
    document = json.loads(dropped.stdout)
    assert document["comparison"]["passed"] is False
    assert "below the previous knee 1000 rps, more than the 10% margin" in document["comparison"]["reason"]
    written = Path(document["attestation"])
    assert written.parent == tmp_path / ("sha256-" + "c3" * 32)
    record = read_scale(RawAttestation(str(written), written.read_bytes()), digest=DIGEST,
                        keys=[load_public_key(pair.public_path)])  # fmt: skip
    assert record is not None
    assert (record.passed, record.version, record.environment, record.baseline_rps) == (False, "3.0.0", "staging", 1000)
    assert record.result.knee_rps == document["result"]["knee_rps"]
    assert _baseline(written, None, load_signer(pair.private_path)) == record.result.knee_rps
    assert not locust_children()


def test_text_output_shows_the_curve_and_progress(replica: str) -> None:
    shown = runner.invoke(app, ["loadtest", "scale", replica, *SEARCH[:-1], "--start", "20", "--max-rate", "20"])
    assert shown.exit_code == 0, shown.output
    assert "step 1 (ramp) 20 rps: achieved" in shown.stderr
    assert "STEP" in shown.stdout
    assert "ok knee at least 20 rps: the replica held the highest rate offered" in shown.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--previous", "x.json", "--baseline-rps", "10"], "give --previous FILE or --baseline-rps N, not both"),
        (["--attest", "--subject", f"shop@{DIGEST}"], "--attest needs --key KEY"),
        (["--step-duration", "1s"], "at least 2s"),
        (["--metrics-out", "/nonexistent/scale.prom"], "no folder /nonexistent"),
        (["--previous", "/nonexistent/previous.json"], "cannot read --previous"),
    ],
)
def test_usage_problems_exit_2_before_any_load(extra: list[str], message: str) -> None:
    result = runner.invoke(app, ["loadtest", "scale", "http://127.0.0.1:9", "--max-p95-ms", "100", *extra, "--json"])
    assert result.exit_code == 2, result.output
    assert message in json.loads(result.stdout)["error"]["message"]


def test_a_latency_bound_is_required() -> None:
    result = runner.invoke(app, ["loadtest", "scale", "http://127.0.0.1:9", "--json"])
    assert result.exit_code == 2, result.output
    assert "needs a latency bound" in json.loads(result.stdout)["error"]["message"]


def test_a_previous_attestation_needs_the_key_that_signed_it(tmp_path: Path) -> None:
    envelope = tmp_path / "previous.json"
    envelope.write_text(json.dumps({"payload": "", "payloadType": "x", "signatures": []}))
    with pytest.raises(InputError, match="is an attestation: give --key"):
        _baseline(envelope, None, None)
    signer = load_signer(generate_keypair(tmp_path / "k.key").private_path)
    with pytest.raises(InputError, match="is not a scale attestation signed by --key"):
        _baseline(envelope, None, signer)
    (tmp_path / "other.json").write_text('{"something": "else"}')
    with pytest.raises(InputError, match="is not the --json output of vouch loadtest scale"):
        _baseline(tmp_path / "other.json", None, None)
