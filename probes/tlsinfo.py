"""TLS for probes: client contexts shared across runs, and what a server's TLS session presented.

Building an :class:`ssl.SSLContext` (loading a CA bundle) and parsing a
certificate both cost far more than a probe's handshake, so
:class:`TlsContexts` keeps one context per :class:`TlsClientSpec` and the
certificates it parsed. :func:`peer_tls` describes an established session
(version, cipher, the chain presented, leaf first) also when verification was
off, and :func:`verify_failure` turns OpenSSL's verify code into the
documented :class:`~vouch.probes.base.Reason`.

Example::

    contexts = TlsContexts()                                   # one per process
    context = contexts.context(TlsClientSpec(ca_file="ca.pem"))
    await writer.start_tls(context, server_hostname="shop.example")
    peer = peer_tls(writer.get_extra_info("ssl_object"), contexts)
    peer.version, peer.leaf.subject, peer.earliest_expiry
"""

from __future__ import annotations

import ssl
from collections import OrderedDict
from dataclasses import dataclass

from cryptography import x509

from vouch.probes.base import ProbeFailure, Reason
from vouch.probes.settings import TlsClientSpec

__all__ = ["CertificateInfo", "PeerTls", "TlsContexts", "peer_tls", "verify_failure"]

_EXPIRED_CODES = frozenset({9, 10})
"""OpenSSL verify codes: certificate not yet valid, certificate has expired."""
_HOSTNAME_CODES = frozenset({62, 63, 64})
"""OpenSSL verify codes: host name, e-mail or IP address mismatch."""


@dataclass(frozen=True)
class CertificateInfo:
    """What a probe reports about one certificate: names and validity (epoch seconds)."""

    subject: str
    issuer: str
    sans: tuple[str, ...]
    not_before: float
    not_after: float


@dataclass(frozen=True)
class PeerTls:
    """The negotiated TLS session: version, cipher and the certificates the server presented (leaf first)."""

    version: str | None
    cipher: str | None
    chain: tuple[CertificateInfo, ...]

    @property
    def leaf(self) -> CertificateInfo | None:
        return self.chain[0] if self.chain else None

    @property
    def earliest_expiry(self) -> float | None:
        """The soonest ``not_after`` of the presented chain (blackbox_exporter's ``probe_ssl_earliest_cert_expiry``)."""
        return min((cert.not_after for cert in self.chain), default=None)


class TlsContexts:
    """SSL contexts and parsed certificates shared across runs: building either costs far more than a probe.

    One context per distinct :class:`TlsClientSpec` (kept for the life of this
    object: there are as many as configurations); parsed certificates are kept
    by their DER bytes, the ``max_certificates`` most recent ones.
    """

    def __init__(self, *, max_certificates: int = 1024) -> None:
        self._contexts: dict[TlsClientSpec, ssl.SSLContext] = {}
        self._certificates: OrderedDict[bytes, CertificateInfo | None] = OrderedDict()
        self._max_certificates = max_certificates

    def context(self, spec: TlsClientSpec) -> ssl.SSLContext:
        """The client context for ``spec``; TLS files that cannot be loaded are a config failure."""
        context = self._contexts.get(spec)
        if context is None:
            context = self._contexts[spec] = _new_context(spec)
        return context

    def certificate(self, der: bytes) -> CertificateInfo | None:
        """``der`` parsed (``None`` when it is not a certificate cryptography can read)."""
        if der in self._certificates:
            self._certificates.move_to_end(der)
            return self._certificates[der]
        info = _parse_certificate(der)
        self._certificates[der] = info
        if len(self._certificates) > self._max_certificates:
            self._certificates.popitem(last=False)
        return info


def _new_context(spec: TlsClientSpec) -> ssl.SSLContext:
    try:
        if spec.verify:
            context = ssl.create_default_context(cafile=spec.ca_file)
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if spec.cert_file is not None:
            context.load_cert_chain(spec.cert_file, spec.key_file)
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(f for f in (spec.ca_file, spec.cert_file, spec.key_file) if f) or "the system's CAs"
        why = exc.strerror or str(exc) or type(exc).__name__
        raise ProbeFailure(Reason.CONFIG, f"cannot load TLS files ({files}): {why}") from exc
    context.set_alpn_protocols(["http/1.1"])
    return context


def _parse_certificate(der: bytes) -> CertificateInfo | None:
    try:
        cert = x509.load_der_x509_certificate(der)
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            sans = tuple(names.get_values_for_type(x509.DNSName)) + tuple(
                str(ip) for ip in names.get_values_for_type(x509.IPAddress)
            )
        except x509.ExtensionNotFound:
            sans = ()
        return CertificateInfo(
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            sans=sans,
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
        )
    except ValueError:
        return None


def peer_tls(ssl_object: ssl.SSLObject, contexts: TlsContexts) -> PeerTls:
    """Describe an established TLS session, including with verification off (the chain is then unverified)."""
    chain = tuple(info for info in map(contexts.certificate, _presented_chain(ssl_object)) if info is not None)
    cipher = ssl_object.cipher()
    return PeerTls(version=ssl_object.version(), cipher=cipher[0] if cipher else None, chain=chain)


def _presented_chain(ssl_object: ssl.SSLObject) -> list[bytes]:
    """The DER certificates the server sent, leaf first; only the leaf where Python cannot tell more."""
    public = getattr(ssl_object, "get_unverified_chain", None)  # Python 3.13+
    if public is not None:
        return [bytes(der) for der in public() or ()]
    private = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)  # 3.10 to 3.12
    if private is not None:
        return [cert.public_bytes(_ENCODING_DER) for cert in private() or ()]
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


_ENCODING_DER = 2
"""``_ssl.ENCODING_DER``: what ``Certificate.public_bytes`` takes to give DER bytes."""


def verify_failure(exc: ssl.SSLCertVerificationError) -> tuple[Reason, str]:
    """The reason and a readable cause of a failed certificate verification, from OpenSSL's verify code."""
    code = exc.verify_code
    why = exc.verify_message or exc.reason or str(exc)
    if code in _EXPIRED_CODES:
        return Reason.TLS_EXPIRED, why
    if code in _HOSTNAME_CODES:
        return Reason.TLS_HOSTNAME, why
    return Reason.TLS_UNTRUSTED, why
