"""Real public-good Sigstore bundles verified offline: tampering, identities, issuers, trusted roots."""

from __future__ import annotations

import base64
import hashlib
import json
from importlib import resources
from pathlib import Path

import pytest
from support.attestations import (
    DSSE_BUNDLE,
    DSSE_IDENTITY,
    DSSE_SUBJECT,
    ISSUER,
    WHEEL_BUNDLE,
    WHEEL_IDENTITY,
    flipped,
    get,
    positions,
    refuse_network,
    sigstore_file,
    wheel_digest,
)

from vouch.core.errors import ConfigError
from vouch.rollout.attestations.model import Attestation, RawAttestation, Rejected, Signer
from vouch.rollout.attestations.predicates import ARTIFACT_SIGNATURE_V1, SLSA_PROVENANCE_V1
from vouch.rollout.attestations.verify import AttestationVerifier, IdentitySpec, TrustSpec, verify

TRUSTED = TrustSpec(
    sigstore=[
        IdentitySpec(san=DSSE_IDENTITY, issuer=ISSUER),
        IdentitySpec(san_regex=r"https://github\.com/trailofbits/rfc8785\.py/\.github/workflows/.*", issuer=ISSUER),
    ]
)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """No network at all, and an empty sigstore cache: only the root shipped inside the package can serve."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return refuse_network(monkeypatch)


@pytest.fixture(scope="module")
def verifier() -> AttestationVerifier:
    return AttestationVerifier(TRUSTED)


def _raw(name: str, data: bytes | None = None) -> RawAttestation:
    path = sigstore_file(name)
    return RawAttestation(source=str(path), data=path.read_bytes() if data is None else data)


def _rejected(result: Attestation | Rejected) -> str:
    assert isinstance(result, Rejected), f"expected a rejection, got {result}"
    assert result.reason
    return result.reason


def test_dsse_bundle_verifies_offline_with_the_shipped_root(offline: list[str]) -> None:
    raw = _raw(DSSE_BUNDLE)
    result = verify(raw, subject_digest=DSSE_SUBJECT, trust=TRUSTED)
    assert isinstance(result, Attestation), result
    assert result.step == "build"
    assert result.statement.predicate_type == SLSA_PROVENANCE_V1
    assert result.statement.subjects[0].name == "a.txt"
    assert result.signers == (Signer(kind="sigstore", identity=DSSE_IDENTITY, issuer=ISSUER),)
    assert result.digest == raw.digest
    assert offline == []


def test_message_signature_bundle_verifies_as_an_artifact_signature(offline: list[str]) -> None:
    digest = wheel_digest()
    result = verify(_raw(WHEEL_BUNDLE), subject_digest=digest, trust=TRUSTED)
    assert isinstance(result, Attestation), result
    assert result.step == "artifact-signature"
    assert result.statement.predicate_type == ARTIFACT_SIGNATURE_V1
    assert result.statement.subjects[0].digest == {"sha256": digest.removeprefix("sha256:")}
    assert result.signers == (Signer(kind="sigstore", identity=WHEEL_IDENTITY, issuer=ISSUER),)
    assert offline == []


def test_the_subject_file_matches_the_dsse_bundle(verifier: AttestationVerifier) -> None:
    digest = "sha256:" + hashlib.sha256(sigstore_file("a.txt").read_bytes()).hexdigest()
    assert digest == DSSE_SUBJECT
    assert isinstance(verifier.verify(_raw(DSSE_BUNDLE), subject_digest=digest), Attestation)


FIELDS = [
    (DSSE_BUNDLE, ("dsseEnvelope", "payload"), ("Sigstore verification failed: DSSE: invalid signature",)),
    (DSSE_BUNDLE, ("dsseEnvelope", "signatures", 0, "sig"), ("Sigstore verification failed: DSSE: invalid signature",)),
    (
        DSSE_BUNDLE,
        ("verificationMaterial", "certificate", "rawBytes"),
        ("untrusted or expired signing certificate", "invalid Sigstore bundle"),
    ),
    (WHEEL_BUNDLE, ("messageSignature", "signature"), ("Sigstore verification failed: Signature is invalid",)),
    (
        WHEEL_BUNDLE,
        ("verificationMaterial", "x509CertificateChain", "certificates", 0, "rawBytes"),
        ("untrusted or expired signing certificate", "invalid Sigstore bundle"),
    ),
]


@pytest.mark.parametrize(("name", "path", "reasons"), FIELDS, ids=lambda v: v if isinstance(v, str) else None)
def test_flipping_any_byte_of_payload_signature_or_certificate_fails(
    verifier: AttestationVerifier, name: str, path: tuple[str | int, ...], reasons: tuple[str, ...]
) -> None:
    document = json.loads(sigstore_file(name).read_bytes())
    subject = DSSE_SUBJECT if name == DSSE_BUNDLE else wheel_digest()
    length = len(base64.b64decode(get(document, path)))
    for index in positions(length):
        reason = _rejected(verifier.verify(_raw(name, flipped(document, path, index)), subject_digest=subject))
        assert reason.startswith(reasons), f"byte {index} of {'.'.join(map(str, path))}: {reason}"


def test_a_wrong_identity_fails_naming_expected_and_found(offline: list[str]) -> None:
    trust = TrustSpec(sigstore=[IdentitySpec(san="release@example.com", issuer=ISSUER)])
    reason = _rejected(verify(_raw(DSSE_BUNDLE), subject_digest=DSSE_SUBJECT, trust=trust))
    assert reason.startswith("identity mismatch: expected SAN release@example.com from issuer " + ISSUER)
    assert f"found SAN {DSSE_IDENTITY} from issuer {ISSUER}" in reason


def test_a_san_pattern_must_match_the_whole_san() -> None:
    trust = TrustSpec(sigstore=[IdentitySpec(san_regex="https://github.com/trailofbits/", issuer=ISSUER)])
    reason = _rejected(verify(_raw(WHEEL_BUNDLE), subject_digest=wheel_digest(), trust=trust))
    assert reason.startswith("identity mismatch: expected SAN matching /https://github.com/trailofbits/")
    assert WHEEL_IDENTITY in reason


@pytest.mark.parametrize(
    "spec",
    [
        IdentitySpec(san=DSSE_IDENTITY, issuer="https://accounts.google.com"),
        IdentitySpec(san_regex=".*oidc-beacon.*", issuer="https://accounts.google.com"),
    ],
    ids=["exact", "regex"],
)
def test_a_wrong_issuer_fails_naming_both_issuers(spec: IdentitySpec) -> None:
    reason = _rejected(verify(_raw(DSSE_BUNDLE), subject_digest=DSSE_SUBJECT, trust=TrustSpec(sigstore=[spec])))
    assert reason.startswith(f"issuer mismatch: expected issuer https://accounts.google.com, found {ISSUER}")


def test_a_dsse_bundle_about_another_artifact_fails_naming_both_digests(verifier: AttestationVerifier) -> None:
    other = "sha256:" + "0" * 64
    reason = _rejected(verifier.verify(_raw(DSSE_BUNDLE), subject_digest=other))
    assert reason == f"subject mismatch: the statement is about {DSSE_SUBJECT} (a.txt), not the artifact {other}"


def test_a_message_signature_over_another_artifact_fails(verifier: AttestationVerifier) -> None:
    other = "sha256:" + "1" * 64
    reason = _rejected(verifier.verify(_raw(WHEEL_BUNDLE), subject_digest=other))
    assert reason == f"subject mismatch: the bundle signs another artifact than {other}"


def test_a_trusted_root_file_is_used_instead_of_the_shipped_one(offline: list[str]) -> None:
    store = resources.files("sigstore") / "_store"
    production = store / "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev" / "trusted_root.json"
    staging = store / "https%3A%2F%2Ftuf-repo-cdn.sigstage.dev" / "trusted_root.json"
    if not production.is_file() or not staging.is_file():
        pytest.skip("sigstore does not ship its trusted roots in _store/ in this version")
    identity = [IdentitySpec(san=DSSE_IDENTITY, issuer=ISSUER)]
    trusted = TrustSpec(sigstore=identity, trusted_root=str(production))
    assert isinstance(verify(_raw(DSSE_BUNDLE), subject_digest=DSSE_SUBJECT, trust=trusted), Attestation)
    wrong_root = TrustSpec(sigstore=identity, trusted_root=str(staging))
    reason = _rejected(verify(_raw(DSSE_BUNDLE), subject_digest=DSSE_SUBJECT, trust=wrong_root))
    assert reason.startswith("untrusted or expired signing certificate: failed to build timestamp certificate chain")
    assert offline == []


def test_an_unreadable_trusted_root_is_a_configuration_error(tmp_path: Path) -> None:
    trust = TrustSpec(sigstore=[IdentitySpec(san=DSSE_IDENTITY, issuer=ISSUER)], trusted_root=str(tmp_path / "no.json"))
    with pytest.raises(ConfigError, match=r"trust\.trusted_root"):
        AttestationVerifier(trust)
    reason = _rejected(verify(_raw(DSSE_BUNDLE), subject_digest=DSSE_SUBJECT, trust=trust))
    assert reason.startswith("trust configuration:")


def test_a_bundle_with_no_trusted_identity_configured_is_rejected() -> None:
    reason = _rejected(verify(_raw(DSSE_BUNDLE), subject_digest=DSSE_SUBJECT, trust=TrustSpec()))
    assert "no Sigstore identities are trusted" in reason


def test_a_broken_bundle_is_rejected_not_raised(verifier: AttestationVerifier) -> None:
    document = json.loads(sigstore_file(DSSE_BUNDLE).read_bytes())
    del document["verificationMaterial"]
    reason = _rejected(verifier.verify(RawAttestation("x", json.dumps(document).encode()), subject_digest=DSSE_SUBJECT))
    assert reason.startswith("invalid Sigstore bundle")


def test_identity_spec_needs_exactly_one_san_form() -> None:
    with pytest.raises(ValueError, match="exactly one of san and san_regex"):
        IdentitySpec(issuer=ISSUER)
    with pytest.raises(ValueError, match="exactly one of san and san_regex"):
        IdentitySpec(san="a", san_regex="b", issuer=ISSUER)
    with pytest.raises(ValueError, match="not a valid regular expression"):
        IdentitySpec(san_regex="(", issuer=ISSUER)
