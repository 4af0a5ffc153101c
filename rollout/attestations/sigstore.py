"""Sigstore bundles: verified offline against a trusted root, under an identity policy; keyless signing.

Verification never touches the network: the trusted root is either the
production root shipped inside sigstore-python (``Verifier.production(offline=True)``)
or a ``trusted_root.json`` file. The identity policy says which OIDC
identities may sign: an exact SAN or a regular expression over SANs, always
together with the OIDC issuer, so ``repo:main`` from one issuer is never
mistaken for the same string from another.

Two bundle kinds carry vouch's evidence: a DSSE bundle holds an in-toto
Statement (checked here for payload type and subject, which
``verify_dsse`` leaves to the caller), and a message-signature
(hashedrekord) bundle signs the artifact's digest itself; the latter becomes
a synthetic "artifact signature" statement.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat import asn1
from sigstore import dsse as sigstore_dsse
from sigstore.errors import CertValidationError
from sigstore.errors import Error as SigstoreError
from sigstore.errors import VerificationError as SigstoreVerificationError
from sigstore.hashes import Hashed
from sigstore.models import Bundle, ClientTrustConfig, TrustedRoot
from sigstore.oidc import IdentityError, IdentityToken, detect_credential
from sigstore.sign import SigningContext
from sigstore.verify import Verifier, policy
from sigstore_models.common.v1 import HashAlgorithm

from vouch.core.errors import AuthError, ConfigError, PlatformUnavailable, Problem
from vouch.rollout.attestations.dsse import Unverified, check_subject, parse_digest, parse_statement, statement_bytes
from vouch.rollout.attestations.identity import IdentitySpec
from vouch.rollout.attestations.model import PAYLOAD_TYPE, Signer, Statement, Subject
from vouch.rollout.attestations.predicates import ARTIFACT_SIGNATURE_V1

_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
_OTHERNAME = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.7")


@dataclass(frozen=True)
class CertificateIdentity:
    """What a signing certificate says about who signed."""

    sans: tuple[str, ...]
    issuer: str | None

    @classmethod
    def of(cls, cert: x509.Certificate) -> CertificateIdentity:
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return cls((), _issuer(cert))
        sans = [*names.get_values_for_type(x509.RFC822Name), *names.get_values_for_type(x509.UniformResourceIdentifier)]
        others = names.get_values_for_type(x509.OtherName)
        sans += [o.value.decode(errors="replace") for o in others if o.type_id == _OTHERNAME]
        return cls(tuple(sans), _issuer(cert))

    def describe(self) -> str:
        return f"SAN {', '.join(self.sans) or '(none)'} from issuer {self.issuer or '(none)'}"


def _issuer(cert: x509.Certificate) -> str | None:
    for oid in (_ISSUER_V2, _ISSUER_V1):
        try:
            value = cert.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            continue
        raw = getattr(value, "value", b"")
        try:
            return asn1.decode_der(str, raw) if oid == _ISSUER_V2 else raw.decode()
        except (ValueError, UnicodeDecodeError):
            return None
    return None


class _SanPattern:
    """A sigstore verification policy: the issuer is exact, some SAN matches ``pattern`` entirely."""

    def __init__(self, pattern: str, issuer: str) -> None:
        self._pattern = re.compile(pattern)
        self._issuer = policy.OIDCIssuer(issuer)

    def verify(self, cert: x509.Certificate) -> None:
        self._issuer.verify(cert)
        if not any(self._pattern.fullmatch(san) for san in CertificateIdentity.of(cert).sans):
            raise SigstoreVerificationError(f"no SAN matches {self._pattern.pattern}")


class _IdentityMismatch(SigstoreVerificationError):
    """The certificate is sound but names nobody trusted; the message says who was expected and who signed."""


class _TrustedIdentities:
    """Any of the configured identities, with a reason naming expected and found when none matches.

    Like sigstore's ``AnyOf`` over ``Identity`` (exact SAN) and a SAN-pattern
    policy, except that a failure explains itself and a success records which
    identity matched, for the :class:`Signer` reported.
    """

    def __init__(self, identities: Sequence[IdentitySpec]) -> None:
        self._identities = list(identities)
        self.matched: Signer | None = None

    def verify(self, cert: x509.Certificate) -> None:
        found = CertificateIdentity.of(cert)
        for spec in self._identities:
            child: policy.VerificationPolicy = (
                policy.Identity(identity=spec.san, issuer=spec.issuer)
                if spec.san is not None
                else _SanPattern(spec.san_regex or "", spec.issuer)
            )
            try:
                child.verify(cert)
            except SigstoreVerificationError:
                continue
            san = spec.san or next(s for s in found.sans if re.fullmatch(spec.san_regex or "", s))
            self.matched = Signer(kind="sigstore", identity=san, issuer=spec.issuer)
            return
        raise _IdentityMismatch(self._reason(found))

    def _reason(self, found: CertificateIdentity) -> str:
        same_san = [spec for spec in self._identities if _san_matches(spec, found.sans)]
        if same_san:
            expected = " or ".join(sorted({spec.issuer for spec in same_san}))
            san = same_san[0].san or found.sans[0]
            return f"issuer mismatch: expected issuer {expected}, found {found.issuer or '(none)'} (SAN {san})"
        expected = "; or ".join(spec.describe() for spec in self._identities)
        return f"identity mismatch: expected {expected}; found {found.describe()}"


def _san_matches(spec: IdentitySpec, sans: Sequence[str]) -> bool:
    if spec.san is not None:
        return spec.san in sans
    return any(re.fullmatch(spec.san_regex or "", san) for san in sans)


class SigstoreVerifier:
    """Verifies Sigstore bundles offline against one trusted root, for a set of trusted identities.

    Build once and reuse: loading the trusted root is the expensive part.
    Raises :class:`ConfigError` when the trusted root cannot be loaded.
    """

    def __init__(self, identities: Sequence[IdentitySpec], *, trusted_root: str | None = None) -> None:
        self._identities = tuple(identities)
        self._verifier = _load_verifier(trusted_root)

    def verify(self, document: Mapping[str, Any], data: bytes, *, subject_digest: str) -> tuple[Statement, Signer]:
        """The statement the bundle ``data`` vouches for, and who signed it; :class:`Unverified` otherwise."""
        if not self._identities:
            raise Unverified("no Sigstore identities are trusted (configure trust.sigstore)")
        try:
            bundle = Bundle.from_json(data)
        except (SigstoreError, ValueError, TypeError) as exc:
            raise Unverified(f"invalid Sigstore bundle: {_message(exc)}") from exc
        identities = _TrustedIdentities(self._identities)
        if document.get("dsseEnvelope") is not None:
            statement = self._verify_dsse(bundle, identities, subject_digest)
        elif document.get("messageSignature") is not None:
            statement = self._verify_message(bundle, identities, subject_digest, str(document.get("mediaType")))
        else:
            raise Unverified("the Sigstore bundle has neither a DSSE envelope nor a message signature")
        assert identities.matched is not None  # set by the policy whenever verification passes
        return statement, identities.matched

    def _verify_dsse(self, bundle: Bundle, identities: _TrustedIdentities, subject_digest: str) -> Statement:
        with _translated():
            payload_type, payload = self._verifier.verify_dsse(bundle, identities)
        if payload_type != PAYLOAD_TYPE:
            raise Unverified(f"payload type {payload_type!r} is not {PAYLOAD_TYPE}")
        statement = parse_statement(payload)
        check_subject(statement, subject_digest)
        return statement

    def _verify_message(
        self, bundle: Bundle, identities: _TrustedIdentities, subject_digest: str, media_type: str
    ) -> Statement:
        hex_digest = parse_digest(subject_digest)
        hashed = Hashed(algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(hex_digest))
        with _translated(subject_digest=subject_digest):
            self._verifier.verify_artifact(hashed, bundle, identities)
        return Statement(
            subjects=(Subject(name="", digest={"sha256": hex_digest}),),
            predicate_type=ARTIFACT_SIGNATURE_V1,
            predicate={"digest": f"sha256:{hex_digest}", "bundle": media_type},
        )


def _load_verifier(trusted_root: str | None) -> Verifier:
    try:
        if trusted_root is None:
            return Verifier.production(offline=True)
        return Verifier(trusted_root=TrustedRoot.from_file(trusted_root))
    except (OSError, SigstoreError, ValueError) as exc:
        where = trusted_root or "sigstore's shipped production trusted root"
        raise ConfigError([Problem(where, None, "trust.trusted_root", f"cannot load: {_message(exc)}")]) from exc


@contextmanager
def _translated(*, subject_digest: str | None = None) -> Iterator[None]:
    """Turn sigstore's exceptions into :class:`Unverified` with a reason a person can act on."""
    try:
        yield
    except _IdentityMismatch as exc:
        raise Unverified(str(exc)) from exc
    except CertValidationError as exc:
        raise Unverified(f"untrusted or expired signing certificate: {_message(exc)}") from exc
    except Exception as exc:  # the boundary: whatever sigstore raises is a failed verification
        message = _message(exc)
        if subject_digest is not None and "digest mismatch" in message.lower():
            raise Unverified(f"subject mismatch: the bundle signs another artifact than {subject_digest}") from exc
        raise Unverified(f"Sigstore verification failed: {message}") from exc


def _message(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0] if len(text) > 300 else text


# --------------------------------------------------------------------------- keyless signing


def sign_keyless(statement: Statement, *, identity_token: str | None) -> str:
    """Sign ``statement`` with a Sigstore keyless identity; the bundle's JSON.

    Needs an OIDC identity token (given, or ambient on CI runners that offer
    one) and the public Sigstore services: Fulcio issues a short-lived
    certificate for the identity, Rekor logs the signature. Raises
    :class:`AuthError` when no usable token is available and
    :class:`PlatformUnavailable` when the services cannot be reached.
    """
    try:
        token = IdentityToken(identity_token or detect_credential() or "")
    except IdentityError as exc:
        raise AuthError(
            "keyless signing needs an OIDC identity token: pass --identity-token or set SIGSTORE_ID_TOKEN "
            f"(CI runners such as GitHub Actions provide one with id-token: write); {exc}"
        ) from exc
    try:
        context = SigningContext.from_trust_config(ClientTrustConfig.production())
        with context.signer(token, cache=False) as signer:
            bundle = signer.sign_dsse(sigstore_dsse.Statement(statement_bytes(statement)))
    except (SigstoreError, OSError) as exc:
        raise PlatformUnavailable(f"keyless signing failed: {_message(exc)}") from exc
    return bundle.to_json()
