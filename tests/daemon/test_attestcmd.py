"""``vouch attest keygen|sign|verify``: exit codes 0/1/2, what is printed, JSON output."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest
from support.attestations import (
    DSSE_BUNDLE,
    DSSE_IDENTITY,
    DSSE_SUBJECT,
    ISSUER,
    WHEEL_BUNDLE,
    WHEEL_IDENTITY,
    refuse_network,
    sigstore_file,
    wheel_digest,
)
from typer.testing import CliRunner, Result

from vouch.daemon.attestcmd import attest_app
from vouch.rollout.attestations.keys import load_public_key

HEX = "ab" * 32
SUBJECT = f"checkout@sha256:{HEX}"
COMMIT = "3f2a9c41d0b7e6f58a1c2d3e4f5061728394a5b6"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return refuse_network(monkeypatch)


@pytest.fixture
def key(runner: CliRunner, tmp_path: Path) -> Path:
    path = tmp_path / "ci.key"
    result = runner.invoke(attest_app, ["keygen", "--out", str(path)])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def coverage(tmp_path: Path) -> Path:
    path = tmp_path / "coverage.json"
    path.write_text(json.dumps({"percent": 92.5, "tool": "coverage.py"}))
    return path


def invoke(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(attest_app, list(args))


# --------------------------------------------------------------------------- keygen


def test_keygen_writes_the_pair_and_reports_the_keyid(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, "keygen", "--out", str(tmp_path / "k"), "--type", "ecdsa-p256", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["type"] == "ecdsa-p256"
    assert len(report["keyid"]) == 64
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert (tmp_path / "k.pub").is_file()


def test_keygen_usage_errors_exit_2(runner: CliRunner, key: Path, tmp_path: Path) -> None:
    again = invoke(runner, "keygen", "--out", str(key))
    assert again.exit_code == 2
    assert "already exists" in again.stderr
    bad_type = invoke(runner, "keygen", "--out", str(tmp_path / "other"), "--type", "rsa")
    assert bad_type.exit_code == 2
    assert "choose one of ed25519, ecdsa-p256" in bad_type.stderr
    assert invoke(runner, "keygen", "--out", str(key), "--force").exit_code == 0


# --------------------------------------------------------------------------- sign and verify


def test_sign_then_verify_with_the_public_key(runner: CliRunner, key: Path, coverage: Path, tmp_path: Path) -> None:
    envelope = tmp_path / "coverage.dsse.json"
    signed = invoke(
        runner, "sign", "--step", "coverage", "--subject", SUBJECT, "--key", str(key),
        "--predicate", str(coverage), "--commit", COMMIT.upper(), "--out", str(envelope),
    )  # fmt: skip
    assert signed.exit_code == 0, signed.output
    assert f"-> {envelope}" in signed.stderr
    verified = invoke(runner, "verify", "--bundle", str(envelope), "--digest", f"sha256:{HEX}", "--key", f"{key}.pub")
    assert verified.exit_code == 0, verified.output
    lines = verified.stdout.splitlines()
    assert lines[0] == "verified: step coverage (https://vouch.dev/attestations/coverage/v1)"
    assert lines[1] == f"  subject: checkout sha256:{HEX}"
    assert lines[2].startswith("  signed by: key ")
    as_json = invoke(
        runner, "verify", "--bundle", str(envelope), "--digest", f"sha256:{HEX}", "--key", f"{key}.pub", "--json"
    )
    report = json.loads(as_json.stdout)
    assert report["verified"] is True
    assert report["predicate"] == {"percent": 92.5, "tool": "coverage.py", "commit": COMMIT}


def test_sign_to_stdout_and_to_a_store(runner: CliRunner, key: Path, coverage: Path, tmp_path: Path) -> None:
    printed = invoke(
        runner, "sign", "--step", "coverage", "--subject", SUBJECT, "--key", str(key), "--predicate", str(coverage)
    )
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout)["payloadType"] == "application/vnd.in-toto+json"
    store = tmp_path / "attestations"
    stored = invoke(
        runner, "sign", "--step", "coverage", "--subject", SUBJECT, "--key", str(key),
        "--predicate", str(coverage), "--store", str(store), "--json",
    )  # fmt: skip
    assert stored.exit_code == 0, stored.output
    report = json.loads(stored.stdout)
    written = Path(report["written"])
    assert written.parent == store / f"sha256-{HEX}"
    assert written.name.startswith("coverage-")
    assert report["digest"] == "sha256:" + hashlib.sha256(written.read_bytes()).hexdigest()
    assert report["signed_by"] == [load_public_key(Path(f"{key}.pub")).keyid]


def test_verify_with_the_wrong_key_exits_1_with_the_reason(
    runner: CliRunner, key: Path, coverage: Path, tmp_path: Path
) -> None:
    envelope = tmp_path / "e.json"
    invoke(
        runner,
        "sign",
        "--step",
        "coverage",
        "--subject",
        SUBJECT,
        "--key",
        str(key),
        "--predicate",
        str(coverage),
        "--out",
        str(envelope),
    )
    other = tmp_path / "other.key"
    invoke(runner, "keygen", "--out", str(other))
    result = invoke(runner, "verify", "--bundle", str(envelope), "--digest", f"sha256:{HEX}", "--key", f"{other}.pub")
    assert result.exit_code == 1
    assert "not verified: wrong key: signed by keyid" in result.stderr
    mismatch = invoke(
        runner, "verify", "--bundle", str(envelope), "--digest", "sha256:" + "cd" * 32, "--key", f"{key}.pub", "--json"
    )
    assert mismatch.exit_code == 1
    assert json.loads(mismatch.stdout)["reason"].startswith("subject mismatch:")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give --key KEY (one or more) or --keyless"),
        (["--key", "K", "--keyless"], "give --key KEY (one or more) or --keyless"),
        (["--key", "K", "--out", "a", "--store", "b"], "give --out FILE or --store DIR, not both"),
        (["--key", "K", "--step-override"], "No such option"),
    ],
)
def test_sign_contradictory_options_exit_2(runner: CliRunner, key: Path, extra: list[str], message: str) -> None:
    args = [a.replace("K", str(key)) if a == "K" else a for a in extra]
    result = invoke(runner, "sign", "--step", "coverage", "--subject", SUBJECT, *args)
    assert result.exit_code == 2
    assert message in result.stderr


@pytest.mark.parametrize(
    ("step", "predicate", "extra", "message"),
    [
        ("lint", "{}", [], "unknown step 'lint'"),
        (
            "coverage",
            "{}",
            [],
            "does not fit https://vouch.dev/attestations/coverage/v1: predicate: 'percent' is a required property",
        ),
        ("coverage", "[1]", [], "must hold a JSON object"),
        ("coverage", "{nope", [], "not JSON"),
        (
            "build",
            '{"buildDefinition": {"buildType": "x"}, "runDetails": {"builder": {"id": "y"}}}',
            ["--commit", COMMIT],
            "have no commit field",
        ),
        (
            "coverage",
            f'{{"percent": 1, "commit": "{"0" * 40}"}}',
            ["--commit", COMMIT],
            "contradicts the predicate's commit",
        ),
    ],
)
def test_sign_bad_predicates_exit_2(
    runner: CliRunner, key: Path, tmp_path: Path, step: str, predicate: str, extra: list[str], message: str
) -> None:
    path = tmp_path / "predicate.json"
    path.write_text(predicate)
    result = invoke(
        runner, "sign", "--step", step, "--subject", SUBJECT, "--key", str(key), "--predicate", str(path), *extra
    )
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_sign_with_an_unreadable_key_or_predicate_exits_2(
    runner: CliRunner, tmp_path: Path, key: Path, coverage: Path
) -> None:
    missing_key = invoke(
        runner, "sign", "--step", "coverage", "--subject", SUBJECT, "--key", str(tmp_path / "none"),
        "--predicate", str(coverage),
    )  # fmt: skip
    assert missing_key.exit_code == 2
    assert "cannot read private key" in missing_key.stderr
    missing = invoke(
        runner,
        "sign",
        "--step",
        "coverage",
        "--subject",
        SUBJECT,
        "--key",
        str(key),
        "--predicate",
        str(tmp_path / "p"),
    )
    assert missing.exit_code == 2
    assert "cannot read predicate" in missing.stderr
    bad_subject = invoke(runner, "sign", "--step", "coverage", "--subject", "checkout", "--key", str(key), "--json")
    assert bad_subject.exit_code == 2
    assert "write NAME@sha256:HEX" in json.loads(bad_subject.stdout)["error"]["message"]


def test_keyless_without_a_token_exits_2_with_a_clear_message(
    runner: CliRunner, offline: list[str], monkeypatch: pytest.MonkeyPatch, coverage: Path
) -> None:
    for variable in ("SIGSTORE_ID_TOKEN", "ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
                     "GOOGLE_SERVICE_ACCOUNT_NAME", "BUILDKITE", "GITLAB_CI", "CIRCLECI"):  # fmt: skip
        monkeypatch.delenv(variable, raising=False)
    sign = ("sign", "--step", "coverage", "--subject", SUBJECT, "--predicate", str(coverage), "--keyless")
    result = invoke(runner, *sign)
    assert result.exit_code == 2
    assert "keyless signing needs an OIDC identity token" in result.stderr
    garbage = invoke(runner, *sign, "--identity-token", "not-a-jwt")
    assert garbage.exit_code == 2
    assert "keyless signing needs an OIDC identity token" in garbage.stderr
    assert offline == []


# --------------------------------------------------------------------------- real Sigstore bundles


def test_verify_a_real_dsse_bundle_against_the_artifact(runner: CliRunner, offline: list[str]) -> None:
    bundle, artifact = sigstore_file(DSSE_BUNDLE), sigstore_file("a.txt")
    result = invoke(
        runner,
        "verify",
        "--bundle",
        str(bundle),
        "--artifact",
        str(artifact),
        "--identity",
        DSSE_IDENTITY,
        "--issuer",
        ISSUER,
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "verified: step build (https://slsa.dev/provenance/v1)",
        f"  subject: a.txt {DSSE_SUBJECT}",
        f"  signed by: {DSSE_IDENTITY} (issuer {ISSUER})",
    ]
    assert result.stderr == ""
    assert offline == []


def test_verify_a_real_message_signature_by_digest_and_pattern(runner: CliRunner, offline: list[str]) -> None:
    result = invoke(
        runner, "verify", "--bundle", str(sigstore_file(WHEEL_BUNDLE)), "--digest", wheel_digest(),
        "--identity-regex", r"https://github\.com/trailofbits/.*", "--issuer", ISSUER, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["step"] == "artifact-signature"
    assert report["signers"] == [{"kind": "sigstore", "keyid": None, "identity": WHEEL_IDENTITY, "issuer": ISSUER}]


def test_verify_a_real_bundle_with_the_wrong_identity_exits_1(runner: CliRunner) -> None:
    bundle = str(sigstore_file(DSSE_BUNDLE))
    result = invoke(
        runner,
        "verify",
        "--bundle",
        bundle,
        "--digest",
        DSSE_SUBJECT,
        "--identity",
        "me@example.com",
        "--issuer",
        ISSUER,
    )
    assert result.exit_code == 1
    assert "not verified: identity mismatch: expected SAN me@example.com" in result.stderr
    issuer = invoke(
        runner, "verify", "--bundle", bundle, "--digest", DSSE_SUBJECT, "--identity", DSSE_IDENTITY,
        "--issuer", "https://accounts.google.com", "--json",
    )  # fmt: skip
    assert issuer.exit_code == 1
    assert json.loads(issuer.stdout)["reason"].startswith(
        "issuer mismatch: expected issuer https://accounts.google.com"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--identity", "x", "--issuer", "y"], "give --artifact FILE or --digest sha256:HEX"),
        (
            ["--digest", DSSE_SUBJECT, "--artifact", "a", "--identity", "x", "--issuer", "y"],
            "give --artifact FILE or --digest",
        ),
        (["--digest", "sha256:short", "--identity", "x", "--issuer", "y"], "is not a digest"),
        (["--digest", DSSE_SUBJECT], "give --identity SAN --issuer URL (Sigstore) or --key PUB.pem (DSSE)"),
        (["--digest", DSSE_SUBJECT, "--identity", "x"], "--identity needs --issuer"),
        (["--digest", DSSE_SUBJECT, "--key", "k.pub", "--issuer", "y"], "--issuer goes with --identity"),
        (["--digest", DSSE_SUBJECT, "--key", "k.pub", "--identity", "x", "--issuer", "y"], "exactly one of them"),
        (["--digest", DSSE_SUBJECT, "--identity", "x", "--identity-regex", "y", "--issuer", "z"], "not both"),
        (["--digest", DSSE_SUBJECT, "--key", "absent.pub"], "cannot read public key absent.pub"),
        (["--digest", DSSE_SUBJECT, "--key", "absent.pub", "--threshold", "2"], "threshold 2 is more than the 1 key"),
        (["--digest", DSSE_SUBJECT, "--identity-regex", "(", "--issuer", "z"], "not a valid regular expression"),
    ],
)
def test_verify_usage_errors_exit_2(runner: CliRunner, args: list[str], message: str) -> None:
    result = invoke(runner, "verify", "--bundle", str(sigstore_file(DSSE_BUNDLE)), *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_verify_unreadable_files_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    no_bundle = invoke(
        runner,
        "verify",
        "--bundle",
        str(tmp_path / "b.json"),
        "--digest",
        DSSE_SUBJECT,
        "--identity",
        "x",
        "--issuer",
        "y",
    )
    assert no_bundle.exit_code == 2
    assert "cannot read bundle" in no_bundle.stderr
    no_artifact = invoke(
        runner, "verify", "--bundle", str(sigstore_file(DSSE_BUNDLE)), "--artifact", str(tmp_path / "a"),
        "--identity", "x", "--issuer", "y", "--json",
    )  # fmt: skip
    assert no_artifact.exit_code == 2
    assert "cannot read artifact" in json.loads(no_artifact.stdout)["error"]["message"]
    missing_option = invoke(runner, "verify", "--digest", DSSE_SUBJECT)
    assert missing_option.exit_code == 2


def test_help_has_examples(runner: CliRunner) -> None:
    for command in ("keygen", "sign", "verify"):
        result = invoke(runner, command, "--help")
        assert result.exit_code == 0
        assert "Example" in result.stdout
