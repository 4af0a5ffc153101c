"""A pull request's journey with real git: its evidence is attested, then the merge decides what counts.

The pull request's DCO and signed-commit checks run on its head and are
signed as attestations (as CI would, through ``vouch check ... --attest``).
A fast-forward merge releases that very commit, so the default policy accepts
them; a non-fast-forward merge makes a new commit, denied until the checks
are made again for it.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.gitrepo import ALICE, GitRepo, isolated_env, make_ssh_signer, require, write_allowed_signers
from typer.testing import CliRunner

from vouch.daemon.cli import app
from vouch.rollout.attestations.keys import generate_keypair
from vouch.rollout.attestations.model import Attestation, Rejected
from vouch.rollout.attestations.sources import DirectorySource
from vouch.rollout.attestations.verify import AttestationVerifier, KeySpec, TrustSpec
from vouch.rollout.policy.input import policy_input
from vouch.rollout.policy.rego import RegoPolicy

pytestmark = pytest.mark.e2e

DIGEST = "sha256:" + hashlib.sha256(b"app artifact").hexdigest()
SETTINGS = {"required": ["dco", "signed-commits"]}


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    require("git")
    require("ssh-keygen")
    env = isolated_env(tmp_path / "home")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    repo = GitRepo.init(tmp_path / "repo", env=env)
    signer = make_ssh_signer(tmp_path / "ssh", ALICE)
    allowed = write_allowed_signers(tmp_path / "allowed_signers", [signer])
    repo.commit("initial", signoff=ALICE, signer=signer)
    key = generate_keypair(tmp_path / "ci.key")
    return repo, signer, allowed, key, tmp_path / "attestations"


def attest_checks(repo: GitRepo, base: str, head: str, allowed: Path, key, store: Path) -> None:
    """What CI does on a pull request: both checks over base..head, each signed when it passes."""
    common = ["--range", f"{base}..{head}", "--repo", str(repo.path)]
    attest = ["--attest", "--key", str(key.private_path), "--subject", f"app@{DIGEST}", "--store", str(store)]
    runner = CliRunner()
    dco = runner.invoke(app, ["check", "dco", *common, *attest])
    assert dco.exit_code == 0, dco.output
    signed = runner.invoke(app, ["check", "signed-commits", *common, "--allowed-signers", str(allowed), *attest])
    assert signed.exit_code == 0, signed.output


async def decide(store: Path, key, *, sha: str, merge: str, pr_head: str):
    raws = await DirectorySource(store).find(DIGEST)
    verifier = AttestationVerifier(TrustSpec(keys=[KeySpec(path=str(key.public_path))]))
    checked = [verifier.verify(raw, subject_digest=DIGEST) for raw in raws]
    verified = [c for c in checked if isinstance(c, Attestation)]
    rejected = [c for c in checked if isinstance(c, Rejected)]
    document = policy_input(
        environment="staging",
        service="app",
        version="1.0.0",
        artifact={"name": "app", "digest": DIGEST},
        commit={"sha": sha, "merge": merge, "pr_head": pr_head},
        attestations=verified,
        rejected=rejected,
        now=datetime.now(UTC),
        settings=SETTINGS,
    )
    return await RegoPolicy.default().decide(document)


def test_a_fast_forward_merge_reuses_the_pull_requests_attestations(world):
    repo, signer, allowed, key, store = world
    base = repo.rev("main")
    repo.branch("feature")
    repo.commit("add a feature", signoff=ALICE, signer=signer)
    head = repo.commit("and its test", signoff=ALICE, signer=signer)
    attest_checks(repo, base, head, allowed, key, store)
    repo.switch("main")
    merged = repo.merge("feature", fast_forward=True)
    assert merged == head
    decision = asyncio.run(decide(store, key, sha=merged, merge="fast-forward", pr_head=head))
    assert decision.allow, decision.denials


def test_a_non_fast_forward_merge_is_denied_until_its_evidence_is_made_again(world):
    repo, signer, allowed, key, store = world
    base = repo.rev("main")
    repo.branch("feature")
    head = repo.commit("add a feature", signoff=ALICE, signer=signer)
    attest_checks(repo, base, head, allowed, key, store)
    repo.switch("main")
    repo.commit("meanwhile on main", signoff=ALICE, signer=signer)
    merged = repo.merge("feature", fast_forward=False, signer=signer)
    assert merged != head
    denied = asyncio.run(decide(store, key, sha=merged, merge="non-fast-forward", pr_head=head))
    assert not denied.allow
    assert any("dco" in d for d in denied.denials)
    assert any("signed-commits" in d for d in denied.denials)
    attest_checks(repo, base, merged, allowed, key, store)
    allowed_now = asyncio.run(decide(store, key, sha=merged, merge="non-fast-forward", pr_head=head))
    assert allowed_now.allow, allowed_now.denials


def test_commits_without_sign_off_or_signature_make_no_evidence(world):
    repo, _, allowed, key, store = world
    base = repo.rev("main")
    head = repo.commit("unsigned and not signed off")
    common = ["--range", f"{base}..{head}", "--repo", str(repo.path)]
    attest = ["--attest", "--key", str(key.private_path), "--subject", f"app@{DIGEST}", "--store", str(store)]
    runner = CliRunner()
    assert runner.invoke(app, ["check", "dco", *common, *attest]).exit_code == 1
    signed = runner.invoke(app, ["check", "signed-commits", *common, "--allowed-signers", str(allowed), *attest])
    assert signed.exit_code == 1
    assert not list(store.rglob("*.json")), "a failed check writes no attestation"
    decision = asyncio.run(decide(store, key, sha=head, merge="fast-forward", pr_head=head))
    assert not decision.allow
