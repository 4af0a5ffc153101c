"""Logging for the daemon: one line per record on stderr, timestamps in UTC."""

from __future__ import annotations

import logging
import time


def setup_logging(level: str) -> None:
    """Send vouch's records at ``level`` and above to stderr; keep libraries at warning."""
    handler = logging.StreamHandler()
    formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("vouch").setLevel(level.upper())
