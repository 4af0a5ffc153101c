"""DCO, commit signatures and merge kind against real git repositories made in the test."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.gitrepo import (
    ALICE,
    BOB,
    GitRepo,
    GpgSigner,
    Identity,
    SshSigner,
    gpg_signer,
    isolated_env,
    make_ssh_signer,
    require,
    write_allowed_signers,
)

from vouch.core.errors import InputError
from vouch.rollout.attestations.predicates import predicate_type_for, validate_predicate
from vouch.rollout.evidence.git import dco, merge_kind, signed_commits

MALLORY = Identity("Mallory", "mallory@example.net")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Git and gpg confined to the test, for the helpers and for the code under test alike."""
    require("git")
    variables = isolated_env(tmp_path / "home")
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return variables


@pytest.fixture
def repo(tmp_path: Path, env: dict[str, str]) -> GitRepo:
    repo = GitRepo.init(tmp_path / "repo", env=env)
    repo.commit("initial", signoff=ALICE)
    return repo


@pytest.fixture
def alice_ssh(tmp_path: Path) -> SshSigner:
    return make_ssh_signer(tmp_path / "keys", ALICE)


@pytest.fixture
def mallory_ssh(tmp_path: Path) -> SshSigner:
    return make_ssh_signer(tmp_path / "keys", MALLORY)


@pytest.fixture
def alice_gpg(env: dict[str, str]) -> Iterator[GpgSigner]:
    with gpg_signer(ALICE) as signer:
        yield signer


# --------------------------------------------------------------------------- DCO


def test_dco_passes_when_every_commit_is_signed_off_by_its_author(repo: GitRepo) -> None:
    repo.branch("feature")
    first = repo.commit("add a thing", signoff=ALICE)
    second = repo.commit("fix it", author=BOB, signoff=[ALICE, BOB])
    third = repo.commit("case and spacing differ", signoff=Identity("alice  AUTHOR", "ALICE@example.org"))

    report = dco(repo.path, "main..feature")

    assert report.passed, report.problems
    assert [c.sha for c in report.commits] == [first, second, third]
    assert report.commit == third
    assert report.range == f"{repo.rev('main')}..{third}"
    assert report.commits[1].author == str(BOB)
    predicate = report.to_predicate()
    assert predicate["passed"] is True
    assert validate_predicate(predicate_type_for("dco"), predicate) == []


def test_dco_fails_naming_the_commit_without_sign_off_and_the_one_signed_off_by_someone_else(repo: GitRepo) -> None:
    repo.branch("feature")
    good = repo.commit("signed off", signoff=ALICE)
    missing = repo.commit("no sign-off")
    foreign = repo.commit("signed off by another", signoff=BOB)

    report = dco(repo.path, "main..feature")

    assert not report.passed
    assert {c.sha: c.signed_off for c in report.commits} == {good: True, missing: False, foreign: False}
    problems = "\n".join(report.problems)
    assert f"{missing[:12]} ({ALICE}): no Signed-off-by trailer" in problems
    assert f"{foreign[:12]} ({ALICE}): signed off by {BOB}, not by the author {ALICE}" in problems
    assert good[:12] not in problems
    predicate = report.to_predicate()
    assert predicate["passed"] is False
    assert validate_predicate(predicate_type_for("dco"), predicate) == []


def test_dco_skips_merge_commits_but_checks_the_commits_they_bring(repo: GitRepo) -> None:
    base = repo.rev("HEAD")
    repo.branch("feature")
    feature = repo.commit("feature work", signoff=ALICE)
    repo.switch("main")
    ahead = repo.commit("main moved on", signoff=ALICE)
    merge = repo.merge("feature", fast_forward=False)

    report = dco(repo.path, f"{base}..main")

    assert report.passed, report.problems
    assert report.skipped_merges == (merge,)
    assert {c.sha for c in report.commits} == {feature, ahead}


def test_an_empty_range_proves_nothing_and_does_not_pass(repo: GitRepo) -> None:
    report = dco(repo.path, "HEAD..HEAD")
    assert not report.passed
    assert report.problems == (f"no commits to check in {report.range}",)


def test_bad_input_is_an_input_error_naming_it(repo: GitRepo, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(InputError, match=re.escape(f"{plain} is not a git repository")):
        dco(plain, "a..b")
    with pytest.raises(InputError, match="range start 'nope' is not a commit"):
        dco(repo.path, "nope..HEAD")
    with pytest.raises(InputError, match=re.escape("must have the form A..B")):
        dco(repo.path, "main...HEAD")
    with pytest.raises(InputError, match="must name both ends"):
        dco(repo.path, "..HEAD")
    with pytest.raises(InputError, match=r"allowed signers file .* does not exist"):
        signed_commits(repo.path, "HEAD~0..HEAD", allowed_signers=tmp_path / "missing")


# --------------------------------------------------------------------------- signatures


def test_ssh_signed_commits_by_allowed_signers_pass(repo: GitRepo, alice_ssh: SshSigner, tmp_path: Path) -> None:
    allowed = write_allowed_signers(tmp_path / "allowed_signers", [alice_ssh])
    repo.branch("feature")
    first = repo.commit("one", signer=alice_ssh)
    second = repo.commit("two", author=BOB, signer=alice_ssh)

    report = signed_commits(repo.path, "main..feature", allowed_signers=allowed)

    assert report.passed, report.problems
    assert [c.sha for c in report.commits] == [first, second]
    for commit in report.commits:
        assert (commit.status, commit.format, commit.signer) == ("G", "ssh", ALICE.email)
        assert commit.key is not None
        assert commit.key.startswith("SHA256:")
    predicate = report.to_predicate()
    assert predicate["commits"][0] == {
        "sha": first,
        "verified": True,
        "format": "ssh",
        "status": "G",
        "signer": ALICE.email,
        "key": report.commits[0].key,
    }
    assert validate_predicate(predicate_type_for("signed-commits"), predicate) == []


def test_unsigned_commits_and_keys_not_allowed_fail(
    repo: GitRepo, alice_ssh: SshSigner, mallory_ssh: SshSigner, tmp_path: Path
) -> None:
    allowed = write_allowed_signers(tmp_path / "allowed_signers", [alice_ssh])
    repo.branch("feature")
    good = repo.commit("signed by alice", signer=alice_ssh)
    unsigned = repo.commit("not signed")
    foreign = repo.commit("signed by mallory", signer=mallory_ssh)

    report = signed_commits(repo.path, "main..feature", allowed_signers=allowed)

    assert not report.passed
    by_sha = {c.sha: c for c in report.commits}
    assert by_sha[good].verified
    assert (by_sha[unsigned].verified, by_sha[unsigned].status, by_sha[unsigned].format) == (False, "N", None)
    assert (by_sha[foreign].verified, by_sha[foreign].status, by_sha[foreign].format) == (False, "U", "ssh")
    problems = "\n".join(report.problems)
    assert f"{unsigned[:12]} ({ALICE}): no signature" in problems
    assert f"{foreign[:12]} ({ALICE}): signed by an SSH key that is not in the allowed signers file" in problems
    assert validate_predicate(predicate_type_for("signed-commits"), report.to_predicate()) == []


def test_ssh_signatures_fail_closed_without_an_allowed_signers_file(repo: GitRepo, alice_ssh: SshSigner) -> None:
    repo.branch("feature")
    repo.commit("signed", signer=alice_ssh)

    report = signed_commits(repo.path, "main..feature")

    assert not report.passed
    assert report.commits[0].status == "U"
    assert "no allowed signers file was given" in report.commits[0].meaning


def test_merge_commits_must_be_signed_too(repo: GitRepo, alice_ssh: SshSigner, tmp_path: Path) -> None:
    allowed = write_allowed_signers(tmp_path / "allowed_signers", [alice_ssh])
    base = repo.rev("HEAD")
    repo.branch("feature")
    repo.commit("feature work", signer=alice_ssh)
    repo.switch("main")
    repo.commit("main moved on", signer=alice_ssh)
    unsigned_merge = repo.merge("feature", fast_forward=False)

    report = signed_commits(repo.path, f"{base}..main", allowed_signers=allowed)
    assert [c.sha for c in report.commits if not c.verified] == [unsigned_merge]

    repo.git("reset", "-q", "--hard", "HEAD~1")
    signed_merge = repo.merge("feature", fast_forward=False, signer=alice_ssh)
    report = signed_commits(repo.path, f"{base}..main", allowed_signers=allowed)
    assert report.passed, report.problems
    assert signed_merge in {c.sha for c in report.commits}


def test_gpg_signed_commits_verify_against_the_given_keyring(repo: GitRepo, alice_gpg: GpgSigner) -> None:
    repo.branch("feature")
    signed = repo.commit("gpg signed", signer=alice_gpg)

    report = signed_commits(repo.path, "main..feature", gpg_home=alice_gpg.home)

    assert report.passed, report.problems
    commit = report.commits[0]
    assert (commit.sha, commit.status, commit.format) == (signed, "G", "gpg")
    assert commit.key == alice_gpg.fingerprint
    assert commit.signer == str(ALICE)
    assert validate_predicate(predicate_type_for("signed-commits"), report.to_predicate()) == []


def test_gpg_signature_by_a_key_missing_from_the_keyring_fails(
    repo: GitRepo, alice_gpg: GpgSigner, tmp_path: Path
) -> None:
    repo.branch("feature")
    repo.commit("gpg signed", signer=alice_gpg)
    empty_home = tmp_path / "gnupg-empty"
    empty_home.mkdir(mode=0o700)

    report = signed_commits(repo.path, "main..feature", gpg_home=empty_home)

    assert not report.passed
    assert (report.commits[0].status, report.commits[0].format) == ("E", "gpg")
    assert "cannot be checked" in report.problems[0]


# --------------------------------------------------------------------------- merge kind


def test_merge_kind_tells_fast_forward_from_a_merge_commit(repo: GitRepo) -> None:
    base = repo.rev("main")
    repo.branch("feature")
    head = repo.commit("pull request", signoff=ALICE)
    repo.switch("main")
    merged = repo.merge("feature", fast_forward=True)
    assert merged == head
    assert merge_kind(repo.path, base=base, head=head, merged=merged) == "fast-forward"

    repo.git("reset", "-q", "--hard", base)
    repo.commit("main moved on", signoff=ALICE)
    moved = repo.rev("main")
    merged = repo.merge("feature", fast_forward=False)
    assert merge_kind(repo.path, base=moved, head=head, merged=merged) == "non-fast-forward"
    assert merge_kind(repo.path, base=moved, head="feature", merged="main") == "non-fast-forward"


def test_a_head_not_built_on_base_is_not_a_fast_forward(repo: GitRepo) -> None:
    repo.branch("feature")
    head = repo.commit("pull request", signoff=ALICE)
    repo.switch("main")
    diverged = repo.commit("main moved on", signoff=ALICE)
    # the branch tip is the pull request's head, but it was forced there: base's commit is lost
    assert merge_kind(repo.path, base=diverged, head=head, merged=head) == "non-fast-forward"
    with pytest.raises(InputError, match="merged 'nowhere' is not a commit"):
        merge_kind(repo.path, base=diverged, head=head, merged="nowhere")
