"""Who may sign with Sigstore, and how a Sigstore bundle is told apart: settings and checks that need no sigstore.

:mod:`.sigstore` verifies and signs; importing it loads sigstore-python and
its dependencies, which only a bundle to verify or a keyless signature needs.
Configuration, the CLI and DSSE-only verification read this module instead.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, model_validator

from vouch.core.settings import Model

BUNDLE_MEDIA_TYPE_PREFIX = "application/vnd.dev.sigstore.bundle"
"""Every Sigstore bundle's ``mediaType`` starts with this (v0.1 to v0.3)."""


class IdentitySpec(Model):
    """One Sigstore identity allowed to sign: the certificate's SAN (exact or by pattern) and its OIDC issuer."""

    san: str | None = None
    """The exact subject alternative name: an email, or a CI workflow URI such as
    ``https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main``."""
    san_regex: str | None = None
    """A regular expression the whole SAN must match, such as
    ``https://github.com/org/repo/\\.github/workflows/.*@refs/heads/main``."""
    issuer: str = Field(min_length=1)
    """The OIDC issuer that must have vouched for the identity, e.g. ``https://token.actions.githubusercontent.com``."""

    @model_validator(mode="after")
    def _one_san(self) -> IdentitySpec:
        if (self.san is None) == (self.san_regex is None):
            raise ValueError("give exactly one of san and san_regex")
        if self.san_regex is not None:
            try:
                re.compile(self.san_regex)
            except re.error as exc:
                raise ValueError(f"san_regex is not a valid regular expression: {exc}") from exc
        return self

    def describe(self) -> str:
        san = f"SAN {self.san}" if self.san is not None else f"SAN matching /{self.san_regex}/"
        return f"{san} from issuer {self.issuer}"


def is_bundle(document: Any) -> bool:
    """Whether ``document`` says it is a Sigstore bundle."""
    return isinstance(document, dict) and str(document.get("mediaType", "")).startswith(BUNDLE_MEDIA_TYPE_PREFIX)
