"""Synthetic probes (not built yet). Imports nothing of ``rollout`` or ``daemon``."""

if __name__ != "vouch.probes":
    raise ImportError(f"import this package as vouch.probes, not as {__name__!r}: one module, one name")
