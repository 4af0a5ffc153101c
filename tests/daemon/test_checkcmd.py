"""``vouch check dco|signed-commits`` through the command line, against real git repositories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.gitrepo import (
    ALICE,
    BOB,
    GitRepo,
    SshSigner,
    isolated_env,
    make_ssh_signer,
    require,
    write_allowed_signers,
)
from typer.testing import CliRunner

from vouch.daemon.checkcmd import check_app
from vouch.rollout.attestations.dsse import check_subject, parse_statement, verify_envelope
from vouch.rollout.attestations.keys import generate_keypair, load_public_key
from vouch.rollout.attestations.model import PAYLOAD_TYPE
from vouch.rollout.attestations.predicates import predicate_type_for

runner = CliRunner()
DIGEST_HEX = "ab" * 32
SUBJECT = f"app@sha256:{DIGEST_HEX}"


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> GitRepo:
    """A repository with ``main`` and a ``feature`` branch checked out, git confined to the test."""
    require("git")
    env = isolated_env(tmp_path / "home")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    repo = GitRepo.init(tmp_path / "repo", env=env)
    repo.commit("initial", signoff=ALICE)
    repo.branch("feature")
    return repo


@pytest.fixture
def alice_ssh(tmp_path: Path) -> SshSigner:
    return make_ssh_signer(tmp_path / "keys", ALICE)


def _dco(repo: GitRepo, *extra: str) -> list[str]:
    return ["dco", "--range", "main..feature", "--repo", str(repo.path), *extra]


def test_dco_exits_0_and_shows_a_table_when_every_commit_is_signed_off(repo: GitRepo) -> None:
    sha = repo.commit("work", signoff=ALICE)

    result = runner.invoke(check_app, _dco(repo))

    assert result.exit_code == 0, result.output
    assert sha[:12] in result.stdout
    assert "dco: passed, 1 commit in" in result.stdout


def test_dco_exits_1_naming_each_failing_commit(repo: GitRepo) -> None:
    repo.commit("fine", signoff=ALICE)
    missing = repo.commit("no sign-off")
    foreign = repo.commit("someone else", signoff=BOB)

    result = runner.invoke(check_app, _dco(repo))

    assert result.exit_code == 1, result.output
    assert "dco: FAILED" in result.stdout
    assert f"{missing[:12]} ({ALICE}): no Signed-off-by trailer" in result.stdout
    assert f"{foreign[:12]} ({ALICE}): signed off by {BOB}, not by the author {ALICE}" in result.stdout


def test_dco_json_is_one_document_with_the_predicate_and_problems(repo: GitRepo) -> None:
    good = repo.commit("fine", signoff=ALICE)
    bad = repo.commit("no sign-off")

    result = runner.invoke(check_app, _dco(repo, "--json"))

    assert result.exit_code == 1, result.output
    document = json.loads(result.stdout)
    assert document["check"] == "dco"
    assert document["passed"] is False
    assert document["commit"] == bad
    assert [(c["sha"], c["signed_off"]) for c in document["commits"]] == [(good, True), (bad, False)]
    assert document["problems"] == [f"{bad[:12]} ({ALICE}): no Signed-off-by trailer"]
    assert document["attestation"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--range", "nope..feature"], "range start 'nope' is not a commit"),
        (["--range", "main...feature"], "must have the form A..B"),
        (["--range", "main..feature", "--attest"], "--attest needs --key, --subject, --store"),
        (["--range", "main..feature", "--subject", "app@sha256:00"], "--subject only mean something with --attest"),
    ],
)
def test_usage_and_input_errors_exit_2(repo: GitRepo, args: list[str], message: str) -> None:
    result = runner.invoke(check_app, ["dco", "--repo", str(repo.path), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr

    result = runner.invoke(check_app, ["dco", "--repo", str(repo.path), *args, "--json"])
    assert result.exit_code == 2, result.output
    assert message in json.loads(result.stdout)["error"]["message"]


def test_a_missing_range_a_bad_subject_or_a_bad_key_is_a_usage_error(repo: GitRepo, tmp_path: Path) -> None:
    repo.commit("work", signoff=ALICE)
    result = runner.invoke(check_app, ["dco", "--repo", str(repo.path)])
    assert result.exit_code == 2
    assert "--range" in result.output

    pair = generate_keypair(tmp_path / "ci.key")
    store = tmp_path / "store"
    result = runner.invoke(
        check_app, _dco(repo, "--attest", "--key", str(pair.private_path), "--store", str(store), "--subject", "app")
    )
    assert result.exit_code == 2
    assert "--subject: 'app' is not a subject" in result.stderr

    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("hello")
    result = runner.invoke(
        check_app, _dco(repo, "--attest", "--key", str(not_a_key), "--store", str(store), "--subject", SUBJECT)
    )
    assert result.exit_code == 2
    assert f"{not_a_key}: not an unencrypted PEM private key" in result.stderr
    assert not store.exists()


def test_a_directory_that_is_not_a_repository_exits_2(tmp_path: Path, repo: GitRepo) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    result = runner.invoke(check_app, ["signed-commits", "--range", "a..b", "--repo", str(plain)])
    assert result.exit_code == 2
    assert f"{plain} is not a git repository" in result.stderr


def test_signed_commits_pass_with_allowed_signers_and_fail_without(
    repo: GitRepo, alice_ssh: SshSigner, tmp_path: Path
) -> None:
    sha = repo.commit("signed", signer=alice_ssh)
    allowed = write_allowed_signers(tmp_path / "allowed_signers", [alice_ssh])
    args = ["signed-commits", "--range", "main..feature", "--repo", str(repo.path)]

    result = runner.invoke(check_app, [*args, "--allowed-signers", str(allowed), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["passed"] is True
    assert document["commits"][0]["sha"] == sha
    assert (document["commits"][0]["format"], document["commits"][0]["signer"]) == ("ssh", ALICE.email)

    result = runner.invoke(check_app, args)
    assert result.exit_code == 1, result.output
    assert "signed-commits: FAILED" in result.stdout
    assert "no allowed signers file was given" in result.stdout


def test_a_failed_check_writes_no_attestation(repo: GitRepo, tmp_path: Path) -> None:
    repo.commit("no sign-off")
    pair = generate_keypair(tmp_path / "ci.key")
    store = tmp_path / "store"
    attest = ["--attest", "--key", str(pair.private_path), "--subject", SUBJECT, "--store", str(store)]

    result = runner.invoke(check_app, _dco(repo, *attest, "--json"))

    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["attestation"] is None
    assert not store.exists()


@pytest.mark.parametrize("check", ["dco", "signed-commits"])
def test_attest_writes_a_signed_statement_of_the_check_for_the_subject(
    repo: GitRepo, alice_ssh: SshSigner, tmp_path: Path, check: str
) -> None:
    head = repo.commit("work", signoff=ALICE, signer=alice_ssh)
    allowed = write_allowed_signers(tmp_path / "allowed_signers", [alice_ssh])
    pair = generate_keypair(tmp_path / "ci.key")
    store = tmp_path / "store"
    args = [check, "--range", "main..feature", "--repo", str(repo.path)]
    if check == "signed-commits":
        args += ["--allowed-signers", str(allowed)]
    attest = ["--attest", "--key", str(pair.private_path), "--subject", SUBJECT, "--store", str(store)]

    result = runner.invoke(check_app, [*args, *attest, "--json"])

    assert result.exit_code == 0, result.output
    written = Path(json.loads(result.stdout)["attestation"])
    assert written.parent == store / ("sha256-" + DIGEST_HEX)
    assert written.name.startswith(f"{check}-")
    checked = verify_envelope(json.loads(written.read_bytes()), [load_public_key(pair.public_path)], threshold=1)
    assert checked.payload_type == PAYLOAD_TYPE
    statement = parse_statement(checked.payload)
    check_subject(statement, "sha256:" + DIGEST_HEX)
    assert statement.predicate_type == predicate_type_for(check)
    assert statement.predicate["commit"] == head
    assert statement.predicate["passed"] is True
    assert [c["sha"] for c in statement.predicate["commits"]] == [head]
