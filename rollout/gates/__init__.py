"""Gates judge each analysis run (see ``base.Gate``)."""

GATE_KINDS: tuple[str, ...] = ("slo", "alarms")
"""Gate kinds an environment may list under ``gates``."""
