"""Local keys and DSSE envelopes: round trips, and a reason for every way verification fails."""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key
from pydantic import ValidationError
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

from vouch.core.errors import InputError
from vouch.rollout.attestations.dsse import parse_subject, sign_statement, statement_bytes
from vouch.rollout.attestations.keys import KeyPair, generate_keypair, load_public_key, load_signer
from vouch.rollout.attestations.model import PAYLOAD_TYPE, Attestation, RawAttestation, Rejected, Signer, Statement
from vouch.rollout.attestations.predicates import predicate_type_for
from vouch.rollout.attestations.verify import AttestationVerifier, KeySpec, TrustSpec, verify

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
COVERAGE = Statement((parse_subject(f"checkout@{DIGEST}"),), predicate_type_for("coverage"), {"percent": 87.5})


@pytest.fixture
def make_key(tmp_path: Path) -> Callable[..., KeyPair]:
    def make(name: str, key_type: Any = "ed25519") -> KeyPair:
        return generate_keypair(tmp_path / name, key_type=key_type)

    return make


def _envelope(statement: Statement, *pairs: KeyPair) -> dict[str, Any]:
    return sign_statement(statement, [load_signer(p.private_path) for p in pairs])


def _raw(document: Any) -> RawAttestation:
    return RawAttestation(source="test.json", data=json.dumps(document).encode())


def _trust(*pairs: KeyPair, threshold: int = 1) -> TrustSpec:
    return TrustSpec(keys=[KeySpec(path=str(p.public_path)) for p in pairs], threshold=threshold)


def _reason(result: Attestation | Rejected) -> str:
    assert isinstance(result, Rejected), f"expected a rejection, got {result}"
    return result.reason


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa-p256"])
def test_keygen_writes_a_private_key_only_its_owner_reads_and_a_public_key(
    make_key: Callable[..., KeyPair], key_type: str
) -> None:
    pair = make_key("ci.key", key_type)
    assert stat.S_IMODE(pair.private_path.stat().st_mode) == 0o600
    assert pair.public_path.name == "ci.key.pub"
    assert pair.private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pair.public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert load_public_key(pair.public_path).keyid == pair.keyid == load_signer(pair.private_path).public_key.keyid
    assert list(pair.private_path.parent.glob(".*")) == []


def test_keyids_are_the_ones_securesystemslib_computes(make_key: Callable[..., KeyPair]) -> None:
    pair = make_key("ci.key", "ecdsa-p256")
    computed = SSlibKey.from_crypto(load_pem_public_key(pair.public_path.read_bytes()))
    assert (computed.keyid, computed.scheme) == (pair.keyid, "ecdsa-sha2-nistp256")


def test_keygen_refuses_to_replace_a_key(make_key: Callable[..., KeyPair]) -> None:
    pair = make_key("ci.key")
    with pytest.raises(InputError, match="already exists"):
        make_key("ci.key")
    assert generate_keypair(pair.private_path, overwrite=True).keyid != pair.keyid


def test_keys_of_other_kinds_and_garbage_are_refused(tmp_path: Path) -> None:
    rsa_public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    (tmp_path / "rsa.pub").write_bytes(rsa_public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(InputError, match="unsupported key"):
        load_public_key(tmp_path / "rsa.pub")
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(InputError, match="not a PEM public key"):
        load_public_key(tmp_path / "junk.pub")
    with pytest.raises(InputError, match="cannot read private key"):
        load_signer(tmp_path / "absent.key")


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa-p256"])
def test_sign_and_verify_round_trip(make_key: Callable[..., KeyPair], key_type: str) -> None:
    pair = make_key("ci.key", key_type)
    envelope = _envelope(COVERAGE, pair)
    assert envelope["payloadType"] == PAYLOAD_TYPE
    assert base64.b64decode(envelope["payload"]) == statement_bytes(COVERAGE)
    raw = _raw(envelope)
    result = verify(raw, subject_digest=DIGEST, trust=_trust(pair))
    assert isinstance(result, Attestation), result
    assert result.statement == COVERAGE
    assert result.step == "coverage"
    assert result.signers == (Signer(kind="key", keyid=pair.keyid),)
    assert result.to_policy_input()["predicate"] == {"percent": 87.5}
    assert result.digest == raw.digest


def test_a_threshold_counts_distinct_valid_keys(make_key: Callable[..., KeyPair]) -> None:
    a, b, c = make_key("a.key"), make_key("b.key", "ecdsa-p256"), make_key("c.key")
    result = verify(_raw(_envelope(COVERAGE, a, b)), subject_digest=DIGEST, trust=_trust(a, b, c, threshold=2))
    assert isinstance(result, Attestation), result
    assert {s.keyid for s in result.signers} == {a.keyid, b.keyid}


def test_a_configured_keyid_overrides_the_computed_one(make_key: Callable[..., KeyPair]) -> None:
    pair = make_key("ci.key")
    signer = load_signer(pair.private_path)
    envelope = Envelope(statement_bytes(COVERAGE), PAYLOAD_TYPE, {})
    envelope.sign(signer)
    document = envelope.to_dict()
    document["signatures"][0]["keyid"] = "ci-2024"
    trust = TrustSpec(keys=[KeySpec(path=str(pair.public_path), keyid="ci-2024")])
    result = verify(_raw(document), subject_digest=DIGEST, trust=trust)
    assert isinstance(result, Attestation), result
    assert result.signers[0].keyid == "ci-2024"


# --------------------------------------------------------------------------- failures


def test_a_wrong_key_is_rejected_naming_both_keyids(make_key: Callable[..., KeyPair]) -> None:
    signer, trusted = make_key("signer.key"), make_key("trusted.key")
    reason = _reason(verify(_raw(_envelope(COVERAGE, signer)), subject_digest=DIGEST, trust=_trust(trusted)))
    assert reason == (
        f"wrong key: signed by keyid {signer.keyid}, which is not trusted (trusted keyids: {trusted.keyid})"
    )


def test_below_threshold_gives_the_counts(make_key: Callable[..., KeyPair]) -> None:
    a, b = make_key("a.key"), make_key("b.key")
    reason = _reason(verify(_raw(_envelope(COVERAGE, a)), subject_digest=DIGEST, trust=_trust(a, b, threshold=2)))
    assert reason == f"below threshold: 1 of 2 required signatures verified (valid: {a.keyid})"


def test_an_invalid_signature_does_not_count_toward_the_threshold(make_key: Callable[..., KeyPair]) -> None:
    a, b = make_key("a.key"), make_key("b.key", "ecdsa-p256")
    document = _envelope(COVERAGE, a, b)
    for signature in document["signatures"]:
        if signature["keyid"] == b.keyid:
            signature["sig"] = _flip(signature["sig"])
    reason = _reason(verify(_raw(document), subject_digest=DIGEST, trust=_trust(a, b, threshold=2)))
    assert reason == f"below threshold: 1 of 2 required signatures verified (valid: {a.keyid}; invalid: {b.keyid})"


@pytest.mark.parametrize("field", ["payload", "sig", "payloadType"])
def test_tampering_with_a_signed_envelope_breaks_the_signature(make_key: Callable[..., KeyPair], field: str) -> None:
    pair = make_key("ci.key")
    document = _envelope(COVERAGE, pair)
    if field == "payload":
        document["payload"] = _flip(document["payload"])
    elif field == "sig":
        document["signatures"][0]["sig"] = _flip(document["signatures"][0]["sig"])
    else:
        document["payloadType"] = "application/vnd.in-toto+jsom"
    reason = _reason(verify(_raw(document), subject_digest=DIGEST, trust=_trust(pair)))
    assert reason == f"bad signature: the signature by trusted keyid {pair.keyid} does not verify"


def test_a_validly_signed_foreign_payload_type_is_rejected(make_key: Callable[..., KeyPair]) -> None:
    pair = make_key("ci.key")
    envelope = Envelope(statement_bytes(COVERAGE), "application/json", {})
    envelope.sign(load_signer(pair.private_path))
    reason = _reason(verify(_raw(envelope.to_dict()), subject_digest=DIGEST, trust=_trust(pair)))
    assert reason == "payload type 'application/json' is not application/vnd.in-toto+json"


def test_a_statement_about_another_artifact_is_rejected_naming_both(make_key: Callable[..., KeyPair]) -> None:
    pair = make_key("ci.key")
    reason = _reason(verify(_raw(_envelope(COVERAGE, pair)), subject_digest=OTHER, trust=_trust(pair)))
    assert reason == f"subject mismatch: the statement is about {DIGEST} (checkout), not the artifact {OTHER}"


def test_an_old_statement_version_is_rejected(make_key: Callable[..., KeyPair]) -> None:
    pair = make_key("ci.key")
    payload = json.loads(statement_bytes(COVERAGE))
    payload["_type"] = "https://in-toto.io/Statement/v0.1"
    envelope = Envelope(json.dumps(payload).encode(), PAYLOAD_TYPE, {})
    envelope.sign(load_signer(pair.private_path))
    reason = _reason(verify(_raw(envelope.to_dict()), subject_digest=DIGEST, trust=_trust(pair)))
    assert reason == "statement type 'https://in-toto.io/Statement/v0.1' is not https://in-toto.io/Statement/v1"


def test_a_predicate_that_breaks_its_schema_is_rejected(make_key: Callable[..., KeyPair]) -> None:
    pair = make_key("ci.key")
    statement = Statement(COVERAGE.subjects, COVERAGE.predicate_type, {"percent": "high"})
    reason = _reason(verify(_raw(_envelope(statement, pair)), subject_digest=DIGEST, trust=_trust(pair)))
    assert reason == (
        "predicate of type https://vouch.dev/attestations/coverage/v1 does not match its schema: "
        "percent: 'high' is not of type 'number'"
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"hello": "world"}', "unknown format: neither a DSSE envelope"),
        (b'{"payload": "%%%", "payloadType": "x", "signatures": [{"sig": "AA=="}]}', "malformed DSSE envelope"),
        (b'{"payload": "", "payloadType": "x", "signatures": []}', "the envelope carries no signature"),
        (b'{"payload": "", "payloadType": "x", "signatures": "none"}', "malformed DSSE envelope"),
    ],
)
def test_malformed_documents_are_rejected_with_a_reason(
    make_key: Callable[..., KeyPair], data: bytes, expected: str
) -> None:
    pair = make_key("ci.key")
    reason = _reason(verify(RawAttestation("x", data), subject_digest=DIGEST, trust=_trust(pair)))
    assert reason.startswith(expected), reason


def test_no_trusted_keys_and_bad_inputs_are_rejections_not_errors(make_key: Callable[..., KeyPair]) -> None:
    pair = make_key("ci.key")
    raw = _raw(_envelope(COVERAGE, pair))
    assert "no trusted public keys" in _reason(verify(raw, subject_digest=DIGEST, trust=TrustSpec()))
    assert "is not a digest" in _reason(verify(raw, subject_digest="md5:abc", trust=_trust(pair)))
    missing = TrustSpec(keys=[KeySpec(path=str(pair.public_path) + ".absent")])
    assert _reason(verify(raw, subject_digest=DIGEST, trust=missing)).startswith("trust configuration: cannot read")


def test_a_threshold_above_the_number_of_keys_is_a_settings_error(make_key: Callable[..., KeyPair]) -> None:
    with pytest.raises(ValidationError, match="threshold 2 is more than the 1 key"):
        _trust(make_key("ci.key"), threshold=2)


def test_one_verifier_serves_many_documents(make_key: Callable[..., KeyPair]) -> None:
    pair = make_key("ci.key")
    verifier = AttestationVerifier(_trust(pair))
    good = verifier.verify(_raw(_envelope(COVERAGE, pair)), subject_digest=DIGEST)
    bad = verifier.verify(_raw(_envelope(COVERAGE, pair)), subject_digest=OTHER)
    assert isinstance(good, Attestation)
    assert isinstance(bad, Rejected)


def _flip(text: str) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()
