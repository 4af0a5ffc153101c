"""Turn raw documents into verified attestations, or into a rejection that says why.

A document is trusted for a release only when all of these hold, checked in
this order, and the first that fails is the reason given:

1. it is JSON, and either a DSSE envelope or a Sigstore bundle;
2. its signatures verify: a DSSE envelope under at least ``threshold``
   distinct configured public keys; a Sigstore bundle offline against the
   trusted root, its certificate issued to a trusted identity (SAN and issuer);
3. the payload type is in-toto (``application/vnd.in-toto+json``) and the
   payload an in-toto Statement v1;
4. a subject of the statement is the artifact being released (its digest);
5. the predicate is well formed for its type (see :mod:`.predicates`).

Example::

    trust = TrustSpec(keys=[KeySpec(path="ci.pub")])
    result = verify(RawAttestation("build.json", data), subject_digest="sha256:ab12...", trust=trust)
    if isinstance(result, Rejected):
        print(result.reason)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator
from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]  # re-exported without __all__

from vouch.core.errors import VouchError
from vouch.core.settings import Model
from vouch.rollout.attestations.dsse import (
    Unverified,
    check_subject,
    is_envelope,
    parse_digest,
    parse_statement,
    verify_envelope,
)
from vouch.rollout.attestations.identity import IdentitySpec, is_bundle
from vouch.rollout.attestations.keys import load_public_key
from vouch.rollout.attestations.model import PAYLOAD_TYPE, Attestation, RawAttestation, Rejected, Signer, Statement
from vouch.rollout.attestations.predicates import step_of, validate_predicate

if TYPE_CHECKING:
    from vouch.rollout.attestations.sigstore import SigstoreVerifier

__all__ = ["AttestationVerifier", "IdentitySpec", "KeySpec", "TrustSpec", "verify"]


class KeySpec(Model):
    """A public key whose signatures on DSSE envelopes are trusted."""

    path: str = Field(min_length=1)
    """PEM file of an ed25519 or ECDSA P-256 public key (what ``vouch attest keygen`` writes as ``KEY.pub``)."""
    keyid: str | None = None
    """The keyid signatures name; default: the one securesystemslib computes from the key."""


class TrustSpec(Model):
    """Who may sign the attestations a release needs: local keys with a threshold, and Sigstore identities."""

    keys: list[KeySpec] = Field(default_factory=list)
    """Public keys trusted to sign DSSE envelopes."""
    threshold: int = Field(default=1, ge=1)
    """How many distinct trusted keys must have signed one envelope."""
    sigstore: list[IdentitySpec] = Field(default_factory=list)
    """Sigstore identities trusted to sign bundles; any one of them suffices."""
    trusted_root: str | None = None
    """A ``trusted_root.json`` for a private Sigstore instance; default: the public-good root shipped with
    sigstore-python, used offline."""

    @model_validator(mode="after")
    def _reachable_threshold(self) -> TrustSpec:
        if self.keys and self.threshold > len(self.keys):
            raise ValueError(f"threshold {self.threshold} is more than the {len(self.keys)} key(s) configured")
        return self


class AttestationVerifier:
    """Verifies documents under one :class:`TrustSpec`; build it once, it loads keys and the trusted root.

    Raises :class:`~vouch.core.errors.InputError` for an unreadable key and
    :class:`~vouch.core.errors.ConfigError` for a trusted root that cannot be
    loaded: those are configuration problems, not properties of a document.
    """

    def __init__(self, trust: TrustSpec) -> None:
        self._trust = trust
        self._keys: tuple[SSlibKey, ...] = tuple(load_public_key(Path(k.path), keyid=k.keyid) for k in trust.keys)
        self._sigstore: SigstoreVerifier | None = None
        if trust.sigstore:
            # sigstore-python takes a third of a second to import: only trust in Sigstore identities loads it.
            from vouch.rollout.attestations.sigstore import SigstoreVerifier

            self._sigstore = SigstoreVerifier(trust.sigstore, trusted_root=trust.trusted_root)

    def verify(self, raw: RawAttestation, *, subject_digest: str) -> Attestation | Rejected:
        """Verify ``raw`` for the artifact ``subject_digest`` (``sha256:HEX``); never raises for bad input."""
        try:
            parse_digest(subject_digest)
            statement, signers = self._check(raw.data, subject_digest)
            problems = validate_predicate(statement.predicate_type, statement.predicate)
            if problems:
                raise Unverified(
                    f"predicate of type {statement.predicate_type} does not match its schema: {'; '.join(problems)}"
                )
        except VouchError as exc:
            return Rejected(source=raw.source, digest=raw.digest, reason=str(exc))
        except Exception as exc:  # the boundary: a library failing on hostile input is a rejection, not a crash
            reason = f"verification failed unexpectedly: {type(exc).__name__}: {exc}"
            return Rejected(source=raw.source, digest=raw.digest, reason=reason)
        return Attestation(
            statement=statement,
            signers=tuple(signers),
            source=raw.source,
            digest=raw.digest,
            step=step_of(statement.predicate_type),
        )

    def _check(self, data: bytes, subject_digest: str) -> tuple[Statement, Sequence[Signer]]:
        document = _json(data)
        if is_envelope(document):
            return self._check_envelope(document, subject_digest)
        if is_bundle(document):
            if self._sigstore is None:
                raise Unverified("a Sigstore bundle, but no Sigstore identities are trusted (configure trust.sigstore)")
            statement, signer = self._sigstore.verify(document, data, subject_digest=subject_digest)
            return statement, [signer]
        raise Unverified(
            "unknown format: neither a DSSE envelope (payload, payloadType, signatures) "
            "nor a Sigstore bundle (mediaType application/vnd.dev.sigstore.bundle...)"
        )

    def _check_envelope(self, document: dict[str, Any], subject_digest: str) -> tuple[Statement, Sequence[Signer]]:
        checked = verify_envelope(document, self._keys, threshold=self._trust.threshold)
        if checked.payload_type != PAYLOAD_TYPE:
            raise Unverified(f"payload type {checked.payload_type!r} is not {PAYLOAD_TYPE}")
        statement = parse_statement(checked.payload)
        check_subject(statement, subject_digest)
        return statement, [Signer(kind="key", keyid=keyid) for keyid in checked.keyids]


def verify(raw: RawAttestation, *, subject_digest: str, trust: TrustSpec) -> Attestation | Rejected:
    """Verify one document under ``trust``; every failure, configuration included, is a :class:`Rejected`.

    Convenient for one-off checks; a gate verifying many documents should hold
    one :class:`AttestationVerifier` instead, so keys and the trusted root load once.
    """
    try:
        verifier = AttestationVerifier(trust)
    except VouchError as exc:
        return Rejected(source=raw.source, digest=raw.digest, reason=f"trust configuration: {exc}")
    return verifier.verify(raw, subject_digest=subject_digest)


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Unverified(f"not valid JSON: {exc}") from exc
