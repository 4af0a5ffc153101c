"""Evidence vouch produces itself, with no external service: DCO sign-off and commit signatures, read from git.

Each producer returns a frozen report with ``passed`` and ``to_predicate()``, the predicate document of the
attestation that records it, so CI can sign exactly what was checked.
"""
