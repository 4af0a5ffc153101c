"""Signed attestations: in-toto statements in DSSE envelopes or Sigstore bundles, found and verified."""
