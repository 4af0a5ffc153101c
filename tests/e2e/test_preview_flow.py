"""A pull request's preview from end to end, through the CLI a pipeline calls, and the staging policy that reads it.

``vouch preview up`` stands the demo service up with its two backends mocked, health-checks it,
runs a network test asserting on what the mocks recorded, and signs both results; ``down`` leaves
no process. A faulty payments mock fails the network test and the attestation says so. The
default staging policy, given every attestation stored for the artifact (verified with the public
key, as the attestations gate does), denies when the preview's are missing or failed and allows
when they passed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.demo import DEMO_MODULE, is_alive
from support.network_suite import CHECKOUT_TEST, checkout_mocks, write_network_suite
from support.policy_inputs import passing_predicate

from vouch.rollout.attestations.dsse import sign_statement
from vouch.rollout.attestations.keys import generate_keypair, load_signer
from vouch.rollout.attestations.model import Attestation, Rejected, Statement, Subject
from vouch.rollout.attestations.predicates import predicate_type_for
from vouch.rollout.attestations.sources import DirectorySource
from vouch.rollout.attestations.verify import AttestationVerifier, KeySpec, TrustSpec
from vouch.rollout.policy.base import Decision
from vouch.rollout.policy.input import policy_input
from vouch.rollout.policy.rego import RegoPolicy

pytestmark = pytest.mark.e2e

COMMIT = "3a" * 20
PASSING = "sha256:" + "a1" * 32
FAILING = "sha256:" + "f0" * 32
MISSING = "sha256:" + "00" * 32
PIPELINE_STEPS = (
    "build",
    "tests",
    "dco",
    "signed-commits",
    "vulnerability-scan",
    "secret-scan",
    "coverage",
    "review-approval",
)
"""The staging steps other than the preview's two: signed here as CI would have."""


def vouch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vouch.daemon", *args], capture_output=True, text=True, timeout=120)


def write_config(folder: Path, *, payments_error_ratio: float = 0.0) -> Path:
    suite = write_network_suite(folder)
    mocks = [m.model_dump(mode="json", by_alias=True, exclude_none=True) for m in checkout_mocks(
        payments_error_ratio=payments_error_ratio)]  # fmt: skip
    config = {
        "daemon": {"state_dir": "state"},
        "services": {
            "checkout": {
                "command": [sys.executable, "-m", DEMO_MODULE, "--port", "{port}", "--version", "{version}"],
                "environments": [{"name": "staging"}],
                "probes": [{"kind": "http", "name": "healthz", "targets": ["http://{address}/healthz"]}],
                "preview": {
                    "mocks": mocks,
                    "env": {"PAYMENTS_URL": "{mock:payments}", "INVENTORY_URL": "{mock:inventory}"},
                    "health_deadline": "30s",
                    "tests": [suite.model_dump(mode="json")],
                },
            }
        },
        "environments": {"staging": {"gates": ["attestations"]}},
    }
    path = folder / "vouch.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def preview_up(config: Path, *, digest: str, key: Path, store: Path) -> tuple[int, dict[str, Any]]:
    done = vouch("preview", "up", "checkout", "1.0.0", "--pr", "7", "--config", str(config), "--digest", digest,
                 "--commit", COMMIT, "--key", str(key), "--store", str(store), "--json")  # fmt: skip
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def sign_pipeline_steps(digest: str, key: Path, store: Path) -> None:
    """The rest of the staging requirements, as CI signs them for ``digest`` at ``COMMIT``."""
    signer = load_signer(key)
    source = DirectorySource(store)
    for step in PIPELINE_STEPS:
        subject = Subject("checkout", {"sha256": digest.removeprefix("sha256:")})
        statement = Statement((subject,), predicate_type_for(step), passing_predicate(step, COMMIT))
        asyncio.run(source.put(digest, step, json.dumps(sign_statement(statement, [signer])).encode()))


def staging_decision(digest: str, key: Path, store: Path) -> tuple[Decision, list[Attestation]]:
    """The default staging policy on every document stored for ``digest``, each verified with the public key."""
    verifier = AttestationVerifier(TrustSpec(keys=[KeySpec(path=f"{key}.pub")]))
    checked = [verifier.verify(raw, subject_digest=digest) for raw in asyncio.run(DirectorySource(store).find(digest))]
    assert not [c for c in checked if isinstance(c, Rejected)], checked
    verified = [c for c in checked if isinstance(c, Attestation)]
    document = policy_input(
        environment="staging",
        service="checkout",
        version="1.0.0",
        artifact={"name": "checkout", "digest": digest},
        commit={"sha": COMMIT, "merge": "fast-forward", "pr_head": COMMIT},
        attestations=verified,
        rejected=[],
        now=datetime.now(UTC),
    )
    return RegoPolicy.default().evaluate(document), verified


def predicate(attestations: list[Attestation], step: str) -> dict[str, Any]:
    (found,) = [a for a in attestations if a.step == step]
    return dict(found.statement.predicate)


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return generate_keypair(tmp_path / "ci.key").private_path


def test_a_preview_that_passes_earns_staging_and_leaves_no_process(tmp_path: Path, key: Path) -> None:
    config, store = write_config(tmp_path), tmp_path / "attestations"

    code, up = preview_up(config, digest=PASSING, key=key, store=store)

    assert code == 0, up
    assert up["passed"]
    assert up["up"]
    report = up["report"]
    assert report["healthy"]
    assert report["tests_result"] == "PASSED"
    assert [(t["name"], t["passed"]) for t in report["tests"] if not t["skipped"]] == [(CHECKOUT_TEST, True)]
    assert sorted(report["mocked_backends"]) == ["inventory", "payments"]
    assert len(up["attestations"]) == 2
    pids = [p["pid"] for p in up["preview"]["data"]["processes"]]
    assert len(pids) == 3  # two mocks and the service
    assert all(is_alive(pid) for pid in pids)

    down = vouch("preview", "down", "checkout-pr-7", "--config", str(config), "--json")
    assert down.returncode == 0, down.stderr
    assert not [pid for pid in pids if is_alive(pid)]
    assert json.loads(vouch("preview", "list", "--config", str(config), "--json").stdout) == {"previews": []}

    decision, verified = staging_decision(PASSING, key, store)
    assert not decision.allow
    assert {d.split("'")[1] for d in decision.denials} == set(PIPELINE_STEPS)
    sign_pipeline_steps(PASSING, key, store)
    decision, verified = staging_decision(PASSING, key, store)
    assert decision.allow, decision.denials
    assert predicate(verified, "network-tests")["failed_tests"] == []
    assert predicate(verified, "ephemeral-environment-health")["healthy"] is True


def test_staging_denies_an_artifact_whose_preview_attestations_are_missing(tmp_path: Path, key: Path) -> None:
    store = tmp_path / "attestations"
    sign_pipeline_steps(MISSING, key, store)
    decision, _ = staging_decision(MISSING, key, store)
    assert not decision.allow
    assert sorted(d.split("'")[1] for d in decision.denials) == ["ephemeral-environment-health", "network-tests"]
    assert all(" is missing: expected " in d for d in decision.denials)


def test_a_faulty_backend_fails_the_preview_and_staging_denies_the_artifact(tmp_path: Path, key: Path) -> None:
    config, store = write_config(tmp_path, payments_error_ratio=1.0), tmp_path / "attestations"

    code, up = preview_up(config, digest=FAILING, key=key, store=store)

    assert code == 1, up
    assert not up["passed"]
    assert not up["up"]  # torn down at once: its checks failed
    assert up["report"]["healthy"]
    assert up["report"]["tests_result"] == "FAILED"
    assert not [p["pid"] for p in up["preview"]["data"]["processes"] if is_alive(p["pid"])]
    assert len(up["attestations"]) == 2

    sign_pipeline_steps(FAILING, key, store)
    decision, verified = staging_decision(FAILING, key, store)
    tests = predicate(verified, "network-tests")
    assert (tests["result"], tests["failed_tests"], tests["mocked_backends"]) == (
        "FAILED",
        [CHECKOUT_TEST],
        ["payments", "inventory"],
    )
    assert not decision.allow
    assert len(decision.denials) == 1
    assert decision.denials[0].startswith("staging: step 'network-tests': attestation ")
    assert f'the tests\' result is FAILED, expected PASSED (failed: ["{CHECKOUT_TEST}"])' in decision.denials[0]
