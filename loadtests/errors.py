"""Errors of the load-test family, in vouch's one tree (:mod:`vouch.core.errors`)."""

from __future__ import annotations

from vouch.core.errors import VouchError


class LoadTestError(VouchError):
    """A load run could not happen or could not be read: Locust missing or crashed, no results file,
    the target unreachable, a Job that never ran. Failed *requests* are data, never this error."""


class AccessLogError(LoadTestError):
    """An access log (nginx/Apache combined, JSON lines, HAR) that cannot be read; names the file and line."""
