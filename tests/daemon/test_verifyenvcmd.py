"""``vouch verify-env``: a preview's checks against a stable environment (the real demo service), attested alike."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support.demo import DEMO_MODULE, free_port

from vouch.rollout.attestations.keys import generate_keypair
from vouch.rollout.attestations.model import Attestation
from vouch.rollout.attestations.sources import DirectorySource
from vouch.rollout.attestations.verify import AttestationVerifier, KeySpec, TrustSpec

DIGEST = "sha256:" + "7c" * 32
COMMIT = "9d" * 20

STABLE_TEST = """
import os
import urllib.request


def test_the_stable_environment_answers_without_mocks():
    assert not [name for name in os.environ if name.startswith("VOUCH_MOCK_")]
    assert os.environ["VOUCH_ENVIRONMENT"] == "staging"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(os.environ["VOUCH_PREVIEW_URL"] + "/catalog", timeout=10) as answer:
        assert answer.status == 200
"""


def vouch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vouch.daemon", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def staging() -> Iterator[int]:
    """The demo service, up, as the stable staging environment; yields its port."""
    port = free_port()
    argv = [sys.executable, "-m", DEMO_MODULE, "--port", str(port), "--version", "1.0.0"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            try:
                with opener.open(f"http://127.0.0.1:{port}/healthz", timeout=5):
                    break
            except OSError:
                assert process.poll() is None, "the demo exited"
                assert time.monotonic() < deadline, "the demo did not come up"
                time.sleep(0.01)
        yield port
    finally:
        process.kill()
        process.wait(timeout=10)


def write_config(folder: Path, *, port: int) -> Path:
    (folder / "stable").mkdir()
    (folder / "stable" / "test_stable.py").write_text(STABLE_TEST)
    config = {
        "daemon": {"state_dir": "state"},
        "services": {
            "checkout": {
                "command": [sys.executable, "-m", DEMO_MODULE, "--port", "{port}"],
                "environments": [{"name": "dev"}, {"name": "staging", "port": port}, {"name": "production"}],
                "probes": [{"kind": "http", "name": "healthz", "targets": ["http://{address}/healthz"]}],
                "preview": {
                    "health_deadline": "20s",
                    "tests": [{"kind": "pytest", "path": "stable"}, {"kind": "probes"}],
                },
            }
        },
        "environments": {name: {"gates": ["alarms"]} for name in ("dev", "staging", "production")},
    }
    path = folder / "vouch.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_verify_env_checks_staging_at_its_router_port_and_attests_with_no_mocks(staging: int, tmp_path: Path) -> None:
    config = write_config(tmp_path, port=staging)
    key = generate_keypair(tmp_path / "ci.key").private_path
    store = tmp_path / "attestations"

    done = vouch("verify-env", "checkout", "--env", "staging", "--config", str(config), "--digest", DIGEST,
                 "--commit", COMMIT, "--key", str(key), "--store", str(store), "--json")  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert (report["environment"], report["healthy"], report["tests_result"]) == ("staging", True, "PASSED")
    assert [t["name"] for t in report["tests"]] == [
        "stable.test_stable.test_the_stable_environment_answers_without_mocks",
        "probe healthz",
    ]
    assert report["mocked_backends"] == []
    assert f"127.0.0.1:{staging}" in done.stderr
    verifier = AttestationVerifier(TrustSpec(keys=[KeySpec(path=str(key) + ".pub")]))
    stored = asyncio.run(DirectorySource(store).find(DIGEST))
    found = [verifier.verify(raw, subject_digest=DIGEST) for raw in stored]
    assert sorted(raw.source for raw in found) == sorted(report["attestations"])
    by_step = {a.step: a.statement.predicate for a in found if isinstance(a, Attestation)}
    assert by_step["ephemeral-environment-health"]["environment"] == "staging"
    assert by_step["ephemeral-environment-health"]["healthy"] is True
    assert by_step["network-tests"] == {
        "result": "PASSED", "passed": 2, "failed": 0, "skipped": 0, "failed_tests": [], "mocked_backends": [],
        "commit": COMMIT,
    }  # fmt: skip


def test_verify_env_exits_1_when_a_check_fails_and_still_attests(staging: int, tmp_path: Path) -> None:
    config = write_config(tmp_path, port=staging)
    (tmp_path / "stable" / "test_stable.py").write_text("def test_broken():\n    assert 1 == 2\n")
    key = generate_keypair(tmp_path / "ci.key").private_path
    done = vouch("verify-env", "checkout", "-e", "staging", "-c", str(config), "--address", f"127.0.0.1:{staging}",
                 "--digest", DIGEST, "--commit", COMMIT, "--key", str(key), "--json")  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["tests_result"] == "FAILED"
    assert [t["name"] for t in report["tests"] if not t["passed"]] == ["stable.test_stable.test_broken"]
    assert all(path.startswith(str(tmp_path / "state" / "attestations")) for path in report["attestations"])
    assert len(report["attestations"]) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-e", "production"], "looks like production"),
        (["-e", "dev"], "sets no port"),
        (["-e", "qa"], "has no environment 'qa'"),
        (["-e", "staging", "--digest", DIGEST], "--digest and --commit go together"),
        (["-e", "staging", "--digest", DIGEST, "--commit", COMMIT], "needs a signing key"),
        (["-e", "staging", "--address", "nowhere"], "--address"),
    ],
)
def test_verify_env_refuses_what_it_cannot_do_with_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    config = write_config(tmp_path, port=free_port())
    done = vouch("verify-env", "checkout", "-c", str(config), *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
