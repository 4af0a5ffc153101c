"""in-toto Statements in DSSE envelopes: build, sign with local keys, verify against trusted keys.

The envelope work (pre-authentication encoding, signing, threshold
verification) is securesystemslib's; this module adds what vouch needs around
it: the Statement's exact JSON, a reason for every way verification fails,
and the checks DSSE itself leaves to the caller (the payload is an in-toto
Statement v1 about the artifact being released).

>>> from securesystemslib.signer import CryptoSigner
>>> signer = CryptoSigner.generate_ed25519()
>>> statement = Statement((parse_subject("app@sha256:" + "ab" * 32),), "https://vouch.dev/attestations/coverage/v1",
...                       {"percent": 91.5})
>>> envelope = sign_statement(statement, [signer])
>>> checked = verify_envelope(envelope, [signer.public_key], threshold=1)
>>> parse_statement(checked.payload) == statement, checked.keyids == (signer.public_key.keyid,)
(True, True)
"""

from __future__ import annotations

import binascii
import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import Key, Signer  # type: ignore[attr-defined]  # re-exported without __all__

from vouch.core.errors import InputError, VouchError
from vouch.rollout.attestations.model import PAYLOAD_TYPE, STATEMENT_TYPE, Statement, Subject

_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


class Unverified(VouchError):
    """A document failed one check of verification; ``str(error)`` is the reason a person reads.

    Raised only inside the attestations package: :func:`vouch.rollout.attestations.verify.verify`
    turns it into a :class:`~vouch.rollout.attestations.model.Rejected`.
    """


@dataclass(frozen=True)
class CheckedEnvelope:
    """An envelope whose signatures met the threshold; the payload is not interpreted yet."""

    payload_type: str
    payload: bytes
    keyids: tuple[str, ...]
    """The distinct trusted keyids whose signatures verified."""


# --------------------------------------------------------------------------- subjects and statements


def parse_digest(text: str) -> str:
    """The lowercase hex of a ``sha256:HEX`` digest; :class:`InputError` for anything else.

    >>> parse_digest("SHA256:" + "AB" * 32) == "ab" * 32
    True
    """
    match = _DIGEST.match(text.strip().lower())
    if match is None:
        raise InputError(f"{text!r} is not a digest; write sha256: and 64 hex digits")
    return match.group(1)


def parse_subject(text: str) -> Subject:
    """A subject written ``NAME@sha256:HEX`` (the form ``vouch attest sign --subject`` takes).

    >>> parse_subject("checkout@sha256:" + "0" * 64).name
    'checkout'
    """
    name, at, digest = text.rpartition("@")
    if not at or not name:
        raise InputError(f"{text!r} is not a subject; write NAME@sha256:HEX")
    return Subject(name=name, digest={"sha256": parse_digest(digest)})


def statement_bytes(statement: Statement) -> bytes:
    """The Statement as canonical JSON (sorted keys, no spaces): the exact bytes that get signed."""
    document = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": s.name, "digest": dict(s.digest)} for s in statement.subjects],
        "predicateType": statement.predicate_type,
        "predicate": dict(statement.predicate),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_statement(payload: bytes) -> Statement:
    """The in-toto Statement v1 in ``payload``; :class:`Unverified` naming what is wrong otherwise."""
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Unverified(f"the payload is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise Unverified("the payload is not an in-toto statement (not a JSON object)")
    if document.get("_type") != STATEMENT_TYPE:
        raise Unverified(f"statement type {document.get('_type')!r} is not {STATEMENT_TYPE}")
    predicate_type = document.get("predicateType")
    if not isinstance(predicate_type, str) or not predicate_type:
        raise Unverified("the statement has no predicateType")
    predicate = document.get("predicate", {})
    if not isinstance(predicate, dict):
        raise Unverified("the statement's predicate is not a JSON object")
    return Statement(subjects=_subjects(document.get("subject")), predicate_type=predicate_type, predicate=predicate)


def _subjects(value: Any) -> tuple[Subject, ...]:
    if not isinstance(value, list) or not value:
        raise Unverified("the statement has no subject")
    subjects = []
    for item in value:
        digest = item.get("digest") if isinstance(item, dict) else None
        if not isinstance(digest, dict) or not all(isinstance(v, str) for v in digest.values()):
            raise Unverified("a statement subject has no digest map")
        subjects.append(Subject(name=str(item.get("name", "")), digest={k: v.lower() for k, v in digest.items()}))
    return tuple(subjects)


def check_subject(statement: Statement, subject_digest: str) -> None:
    """Raise :class:`Unverified` naming both digests unless a subject of ``statement`` is ``subject_digest``."""
    expected = parse_digest(subject_digest)
    if any(s.digest.get("sha256") == expected for s in statement.subjects):
        return
    found = ", ".join(
        f"sha256:{s.digest['sha256']} ({s.name})" if "sha256" in s.digest else f"{s.name} (no sha256)"
        for s in statement.subjects
    )
    raise Unverified(f"subject mismatch: the statement is about {found}, not the artifact sha256:{expected}")


# --------------------------------------------------------------------------- envelopes


def sign_statement(statement: Statement, signers: Sequence[Signer]) -> dict[str, Any]:
    """A DSSE envelope (as its JSON object) over ``statement``, signed by every one of ``signers``."""
    if not signers:
        raise InputError("at least one signing key is needed")
    envelope = Envelope(statement_bytes(statement), PAYLOAD_TYPE, {})
    for signer in signers:
        envelope.sign(signer)
    return envelope.to_dict()


def is_envelope(document: Any) -> bool:
    """Whether ``document`` looks like a DSSE envelope (the three fields DSSE defines)."""
    return isinstance(document, dict) and {"payload", "payloadType", "signatures"} <= document.keys()


def verify_envelope(document: Mapping[str, Any], keys: Sequence[Key], *, threshold: int) -> CheckedEnvelope:
    """Check that at least ``threshold`` distinct trusted ``keys`` signed the envelope ``document``.

    Raises :class:`Unverified` with a reason: malformed envelope, no trusted key
    configured, signed only by untrusted keys, a signature that does not verify
    under its key, or fewer valid signatures than required (with the counts).
    """
    envelope = _load(document)
    if not envelope.signatures:
        raise Unverified("the envelope carries no signature")
    if not keys:
        raise Unverified("no trusted public keys are configured for DSSE envelopes")
    if threshold < 1 or threshold > len(keys):
        raise Unverified(f"threshold {threshold} cannot be met by {len(keys)} trusted key(s)")
    try:
        accepted = envelope.verify(list(keys), threshold)
    except (VerificationError, ValueError):
        raise Unverified(_why_not(envelope, keys, threshold)) from None
    return CheckedEnvelope(envelope.payload_type, envelope.payload, tuple(sorted(accepted)))


def _load(document: Mapping[str, Any]) -> Envelope:
    signatures = document.get("signatures")
    if not isinstance(signatures, list) or not all(isinstance(s, dict) for s in signatures):
        raise Unverified("malformed DSSE envelope: signatures is not a list of objects")
    if not isinstance(document.get("payload"), str) or not isinstance(document.get("payloadType"), str):
        raise Unverified("malformed DSSE envelope: payload and payloadType must be strings")
    data = copy.deepcopy(dict(document))  # Envelope.from_dict consumes the signature dicts
    for signature in data["signatures"]:
        signature.setdefault("keyid", "")
        if not isinstance(signature.get("sig"), str) or not isinstance(signature["keyid"], str):
            raise Unverified("malformed DSSE envelope: a signature lacks sig")
    try:
        return Envelope.from_dict(data)
    except (binascii.Error, ValueError, KeyError) as exc:
        raise Unverified(f"malformed DSSE envelope: {exc}") from exc


def _why_not(envelope: Envelope, keys: Sequence[Key], threshold: int) -> str:
    """Explain a failed threshold check: which signatures were untrusted, invalid or valid."""
    trusted = {key.keyid for key in keys}
    signed = [keyid for keyid in envelope.signatures if keyid in trusted]
    valid = [key.keyid for key in keys if key.keyid in envelope.signatures and _verifies(envelope, key)]
    untrusted = sorted(keyid or "(none)" for keyid in envelope.signatures if keyid not in trusted)
    if not signed:
        return (
            f"wrong key: signed by keyid {', '.join(untrusted)}, which is not trusted "
            f"(trusted keyids: {', '.join(sorted(trusted))})"
        )
    if not valid:
        return f"bad signature: the signature by trusted keyid {', '.join(sorted(signed))} does not verify"
    parts = [f"valid: {', '.join(sorted(valid))}"]
    invalid = sorted(set(signed) - set(valid))
    if invalid:
        parts.append(f"invalid: {', '.join(invalid)}")
    if untrusted:
        parts.append(f"untrusted: {', '.join(untrusted)}")
    return f"below threshold: {len(valid)} of {threshold} required signatures verified ({'; '.join(parts)})"


def _verifies(envelope: Envelope, key: Key) -> bool:
    try:
        envelope.verify([key], 1)
    except (VerificationError, ValueError):
        return False
    return True
