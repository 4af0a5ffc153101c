"""What an attestation is once found and verified: frozen data the policy reads.

An attestation is an in-toto Statement v1 (subjects, a predicate type, a
predicate) wrapped in a DSSE envelope, signed either by a local key (ed25519
or ECDSA P-256) or through Sigstore (a Fulcio certificate for an OIDC
identity, logged in Rekor). Verification turns raw bytes into an
:class:`Attestation` or a :class:`Rejected` with the reason; it never raises
for bad input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

PAYLOAD_TYPE = "application/vnd.in-toto+json"
"""The only DSSE payload type vouch accepts (sigstore's ``verify_dsse`` does not check it: we do)."""
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
"""The in-toto Statement version vouch reads."""


@dataclass(frozen=True)
class RawAttestation:
    """Bytes as found by a source, and where: a DSSE envelope (JSON) or a Sigstore bundle (JSON)."""

    source: str
    data: bytes

    @property
    def digest(self) -> str:
        """``sha256:HEX`` of the bytes, so a decision can name exactly what it read."""
        return "sha256:" + hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Subject:
    name: str
    digest: Mapping[str, str]
    """Algorithm to lowercase hex, e.g. ``{"sha256": "ab12..."}``."""


@dataclass(frozen=True)
class Statement:
    """An in-toto Statement v1."""

    subjects: tuple[Subject, ...]
    predicate_type: str
    predicate: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Signer:
    """Who signed: a local key (by keyid) or a Sigstore identity (SAN and OIDC issuer)."""

    kind: Literal["key", "sigstore"]
    keyid: str | None = None
    identity: str | None = None
    issuer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "keyid": self.keyid, "identity": self.identity, "issuer": self.issuer}


@dataclass(frozen=True)
class Attestation:
    """A statement whose signature(s), payload type and subject were verified."""

    statement: Statement
    signers: tuple[Signer, ...]
    source: str
    digest: str
    """``sha256:HEX`` of the raw document verified."""
    step: str | None = None
    """The pipeline step the predicate type stands for (``dco``, ``build``, ...), if vouch knows it."""

    def to_policy_input(self) -> dict[str, Any]:
        """The attestation as the policy sees it (see the policy input schema)."""
        return {
            "step": self.step,
            "predicate_type": self.statement.predicate_type,
            "predicate": dict(self.statement.predicate),
            "subjects": [{"name": s.name, "digest": dict(s.digest)} for s in self.statement.subjects],
            "signers": [s.to_dict() for s in self.signers],
            "source": self.source,
            "digest": self.digest,
        }


@dataclass(frozen=True)
class Rejected:
    """A document that did not verify, and why: kept so a denial can explain itself."""

    source: str
    digest: str
    reason: str

    def to_policy_input(self) -> dict[str, Any]:
        return {"source": self.source, "digest": self.digest, "reason": self.reason}
