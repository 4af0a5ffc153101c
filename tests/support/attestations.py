"""Helpers for attestation tests: the real Sigstore bundles, byte flips, and a machine with no network."""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

SIGSTORE_DIR = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "sigstore"
"""Real public-good Sigstore bundles (see its README.md), read in place."""

ISSUER = "https://token.actions.githubusercontent.com"
DSSE_BUNDLE = "slsa-provenance-dsse.sigstore.json"
DSSE_IDENTITY = (
    "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/"
    ".github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main"
)
DSSE_SUBJECT = "sha256:a0cfc71271d6e278e57cd332ff957c3f7043fdda354c4cbb190a30d56efa01bf"
WHEEL_BUNDLE = "rfc8785-0.1.2-wheel.sigstore.json"
WHEEL_IDENTITY = "https://github.com/trailofbits/rfc8785.py/.github/workflows/release.yml@refs/tags/v0.1.2"


def sigstore_file(name: str) -> Path:
    """A file of the Sigstore test data; skips the test when the folder is absent."""
    path = SIGSTORE_DIR / name
    if not path.exists():
        pytest.skip(f"Sigstore test data not available: {path} is missing")
    return path


def wheel_digest() -> str:
    """The wheel's digest, as its bundle states it (the wheel itself is not in the test data)."""
    document = json.loads(sigstore_file(WHEEL_BUNDLE).read_bytes())
    return "sha256:" + base64.b64decode(document["messageSignature"]["messageDigest"]["digest"]).hex()


def get(document: Any, path: Sequence[str | int]) -> Any:
    for part in path:
        document = document[part]
    return document


def flipped(document: dict[str, Any], path: Sequence[str | int], index: int) -> bytes:
    """``document`` with one byte of the base64 field at ``path`` flipped (decoded, flipped, re-encoded)."""
    changed = copy.deepcopy(document)
    raw = bytearray(base64.b64decode(get(changed, path)))
    raw[index] ^= 0x01
    get(changed, path[:-1])[path[-1]] = base64.b64encode(bytes(raw)).decode()
    return json.dumps(changed).encode()


def positions(length: int, count: int = 12) -> list[int]:
    """``count`` byte positions spread over ``length`` bytes, first and last included."""
    step = max(1, length // count)
    return sorted({*range(0, length, step), length - 1})


def _loopback(host: Any) -> bool:
    if host in (None, "localhost", b"localhost"):
        return True
    try:
        return ipaddress.ip_address(host.decode() if isinstance(host, bytes) else str(host)).is_loopback
    except ValueError:
        return False


def refuse_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every non-loopback connection or name lookup fail; returns the attempts, for asserting none."""
    attempts: list[str] = []
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            attempts.append(f"connect {address}")
            raise OSError("network disabled in this test")
        real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _loopback(host):
            attempts.append(f"getaddrinfo {host}")
            raise socket.gaierror("network disabled in this test")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts
