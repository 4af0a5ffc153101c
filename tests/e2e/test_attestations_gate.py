"""The attestations gate in the real daemon: verified attestations and a Rego policy decide before any pod.

Attestations are signed with ``vouch attest sign`` as a pipeline would; the
daemon signs its own "deployed" attestation when staging held, and the
production policy requires it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.daemon import Daemon, demo_service_pids, local_config, wait_for

pytestmark = pytest.mark.e2e

POLICY = """
package vouch

required := {"staging": ["vulnerability-scan"], "production": ["vulnerability-scan", "deployed"]}

have contains a.step if {
	some a in input.attestations
	a.step != "deployed"
}

have contains "deployed" if {
	some a in input.attestations
	a.step == "deployed"
	a.predicate.environment == "staging"
}

denials contains msg if {
	some step in required[input.environment]
	not step in have
	msg := sprintf("%s needs a verified %s attestation for %s", [input.environment, step, input.artifact.digest])
}

denials contains msg if {
	some r in input.rejected
	msg := sprintf("rejected %s: %s", [r.source, r.reason])
}

decision := {"allow": count(denials) == 0, "denials": denials}
"""

VULNS = {"scanner": {"uri": "https://github.com/aquasecurity/trivy", "version": "0.50.0", "result": []}}


def vouch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vouch.daemon", *args], capture_output=True, text=True, timeout=60)


def digest_of(version: str) -> str:
    return "sha256:" + hashlib.sha256(f"shop-{version}".encode()).hexdigest()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("attest-e2e")
    keys = state / "keys"
    keys.mkdir()
    for name in ("ci", "rogue", "vouch"):
        assert vouch("attest", "keygen", "--out", str(keys / f"{name}.key")).returncode == 0
    (state / "policy").mkdir()
    (state / "policy" / "vouch.rego").write_text(POLICY)
    (state / "vulns.json").write_text(json.dumps(VULNS))
    config = local_config(
        state, replicas=2, steps=[1], interval="1s", environments=("staging", "production"), gates=["attestations"]
    )
    config["services"]["shop"]["slos"] = []
    config["attestations"] = {
        "trust": {"keys": [{"path": str(keys / "ci.key.pub")}, {"path": str(keys / "vouch.key.pub")}]},
        "signing_key": str(keys / "vouch.key"),
    }
    for env in config["environments"].values():
        env["policy"] = {"kind": "rego", "path": str(state / "policy")}
    daemon = Daemon(config, state)
    client = daemon.start()
    try:
        yield daemon, client, state
    finally:
        client.close()
        daemon.stop()


def sign_scan(state: Path, version: str, key: str) -> None:
    store = state / "attestations"
    result = vouch(
        "attest", "sign", "--step", "vulnerability-scan", "--subject", f"shop@{digest_of(version)}",
        "--key", str(state / "keys" / f"{key}.key"), "--predicate", str(state / "vulns.json"), "--store", str(store),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def release(client, version: str) -> dict:
    commit = {"sha": hashlib.sha1(version.encode()).hexdigest(), "merge": "fast-forward", "pr_head": None}
    artifact = {"name": "shop", "digest": digest_of(version)}
    created = client.submit("shop", version, artifact=artifact, commit=commit)["release"]
    return wait_for(
        lambda: (r := client.get_release(created["id"]))["release"]["phase"] != "Progressing" and r,
        what=f"release of {version} to end",
    )


def test_a_release_with_its_attestations_goes_through_and_production_requires_vouchs_own(stack):
    _, client, state = stack
    sign_scan(state, "v1", "ci")
    done = release(client, "v1")
    assert done["release"]["phase"] == "Succeeded", [p["message"] for p in done["promotions"]]
    assert [p["environment"] for p in done["promotions"]] == ["staging", "production"]
    own = list((state / "attestations" / f"sha256-{digest_of('v1').split(':')[1]}").glob("deployed-staging-*.json"))
    assert len(own) == 1, "vouch signed that v1 held in staging"
    detail = client.get_promotion(done["promotions"][1]["id"])
    [verdict] = [v["verdict"] for v in detail["verdicts"] if v["verdict"]["gate"] == "attestations"]
    assert verdict["phase"] == "Pass"
    [event] = [e for e in detail["events"] if e["kind"] == "verification.allowed"]
    assert event["data"]["input_digest"].startswith("sha256:")
    assert {a["step"] for a in event["data"]["attestations"]} == {"vulnerability-scan", "deployed"}
    assert event["data"]["decision"]["failed"] is False


def test_an_attestation_by_an_untrusted_key_is_denied_before_any_pod_starts(stack):
    _, client, state = stack
    sign_scan(state, "v2", "rogue")
    done = release(client, "v2")
    [promotion] = done["promotions"]
    assert promotion["phase"] == "Denied"
    assert promotion["steps_completed"] == 0
    assert "staging needs a verified vulnerability-scan attestation" in promotion["message"]
    assert "rejected" in promotion["message"]
    assert not [pid for pid in demo_service_pids(state) if b"v2" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    detail = client.get_promotion(promotion["id"])
    assert detail["steps"] == [], "no step ever started"
    [event] = [e for e in detail["events"] if e["kind"] == "verification.denied"]
    assert event["data"]["decision"]["allow"] is False
    assert event["data"]["input"]["artifact"]["digest"] == digest_of("v2")


def test_a_release_without_any_attestation_or_digest_is_denied_with_the_reason(stack):
    _, client, _ = stack
    done = release(client, "v3")
    assert done["promotions"][0]["phase"] == "Denied"
    assert "vulnerability-scan" in done["promotions"][0]["message"]
    bare = client.submit("shop", "v4")["release"]
    ended = wait_for(lambda: (r := client.get_release(bare["id"]))["release"]["phase"] != "Progressing" and r)
    assert "--digest" in ended["promotions"][0]["message"]


def decisions(daemon: Daemon) -> dict[tuple[str, str], float]:
    """``vouch_policy_decisions_total`` by (environment, outcome), scraped from the daemon."""
    text = httpx.get(f"{daemon.url}/metrics", timeout=10).text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vouch_policy_decisions_total":
                found[sample.labels["environment"], sample.labels["outcome"]] = sample.value
    return found


def test_decisions_are_counted_by_outcome(stack):
    daemon, client, state = stack
    sign_scan(state, "v5", "ci")
    before = decisions(daemon)
    # v5 is allowed into staging; it reaches production only as the service's first version (after v1 its
    # canary has no gate to be judged by, so it does not hold)
    reached = {p["environment"] for p in release(client, "v5")["promotions"]}
    denied = release(client, "v6")  # no scan at all
    assert denied["promotions"][0]["phase"] == "Denied"
    after = decisions(daemon)
    grew = {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)}
    expected = {("staging", "allowed"): 1.0, ("staging", "denied"): 1.0}
    if "production" in reached:
        expected["production", "allowed"] = 1.0
    assert grew == expected
