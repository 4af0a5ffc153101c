"""Local signing keys: ed25519 or ECDSA P-256, as PEM files, identified by securesystemslib keyids.

A key pair is two files: the private key (PKCS#8 PEM, mode 0600) and the
public key next to it with ``.pub`` appended (SubjectPublicKeyInfo PEM). The
keyid is never stored: it is what securesystemslib computes from the public
key (a SHA-256 over its canonical description), so a verifier given only the
``.pub`` file finds the same keyid a signer put in the envelope.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> pair = generate_keypair(folder / "ci.key", key_type="ed25519")
>>> load_public_key(pair.public_path).keyid == pair.keyid == load_signer(pair.private_path).public_key.keyid
True
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ec import (
    SECP256R1,
    EllipticCurvePrivateKey,
    EllipticCurvePublicKey,
    generate_private_key,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)
from securesystemslib.signer import CryptoSigner, SSlibKey  # type: ignore[attr-defined]  # re-exported without __all__

from vouch.core.errors import InputError

KeyType = Literal["ed25519", "ecdsa-p256"]
KEY_TYPES: tuple[KeyType, ...] = ("ed25519", "ecdsa-p256")
"""The key types vouch makes and accepts."""


@dataclass(frozen=True)
class KeyPair:
    """Where a new key pair was written, and its keyid."""

    private_path: Path
    public_path: Path
    keyid: str
    key_type: KeyType


def public_path_for(private_path: Path) -> Path:
    """The public key's file for a private key file: the same name with ``.pub`` appended."""
    return private_path.with_name(private_path.name + ".pub")


def generate_keypair(private_path: Path, *, key_type: KeyType = "ed25519", overwrite: bool = False) -> KeyPair:
    """Generate a key pair and write it to ``private_path`` (0600) and ``private_path.pub``.

    Refuses to replace existing files unless ``overwrite``: losing a signing key
    by a typo is worse than a second command.
    """
    private_key: Ed25519PrivateKey | EllipticCurvePrivateKey
    if key_type == "ed25519":
        private_key = Ed25519PrivateKey.generate()
    elif key_type == "ecdsa-p256":
        private_key = generate_private_key(SECP256R1())
    else:
        raise InputError(f"unknown key type {key_type!r}; known: {', '.join(KEY_TYPES)}")
    signer = CryptoSigner(private_key)
    public_path = public_path_for(private_path)
    if not overwrite:
        for path in (private_path, public_path):
            if path.exists():
                raise InputError(f"{path} already exists; remove it or choose another --out")
    public_pem = private_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    _write(private_path, signer.private_bytes, mode=0o600)
    _write(public_path, public_pem, mode=0o644)
    return KeyPair(private_path, public_path, signer.public_key.keyid, key_type)


def load_signer(path: Path) -> CryptoSigner:
    """A securesystemslib signer for the private key in ``path`` (PEM, unencrypted PKCS#8)."""
    data = _read(path, "private key")
    try:
        private_key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InputError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
    _check_type(path, private_key)
    return CryptoSigner(private_key)


def load_public_key(path: Path, *, keyid: str | None = None) -> SSlibKey:
    """The public key in ``path`` (PEM) as a securesystemslib key.

    ``keyid`` overrides the computed one, for envelopes made by tools that name
    keys their own way; by default it is the keyid securesystemslib computes.
    """
    data = _read(path, "public key")
    try:
        public_key = load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InputError(f"{path}: not a PEM public key ({exc})") from exc
    _check_type(path, public_key)
    return SSlibKey.from_crypto(public_key, keyid or None)


def _check_type(path: Path, key: object) -> None:
    if isinstance(key, Ed25519PrivateKey | Ed25519PublicKey):
        return
    if isinstance(key, EllipticCurvePrivateKey | EllipticCurvePublicKey) and isinstance(key.curve, SECP256R1):
        return
    raise InputError(f"{path}: unsupported key ({type(key).__name__}); vouch uses ed25519 or ECDSA P-256 keys")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def _write(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to ``path`` created with ``mode`` from the start (never briefly world-readable)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from exc
