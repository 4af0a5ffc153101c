"""The daemon's log as a notifier: every routed notice as one line, at a level from its severity.

Useful where no chat exists (a laptop, CI) and as the last resort that cannot
be down: writing a log line never fails in a way worth retrying.
"""

from __future__ import annotations

import logging

from vouch.daemon.notify.base import Notice, Severity
from vouch.daemon.notify.settings import LogNotifierSpec

LEVELS = {Severity.INFO: logging.INFO, Severity.WARNING: logging.WARNING, Severity.CRITICAL: logging.CRITICAL}


class LogNotifier:
    """Writes notices to the logger the spec names."""

    def __init__(self, spec: LogNotifierSpec) -> None:
        self.name = spec.name
        self._log = logging.getLogger(spec.logger)

    async def send(self, notice: Notice) -> None:
        where = "/".join(p for p in (notice.service, notice.environment) if p)
        self._log.log(
            LEVELS[notice.severity],
            "%s %s%s: %s",
            notice.kind,
            where or notice.subject or "-",
            f" ({notice.version})" if notice.version else "",
            notice.message,
            extra={"notice": notice.to_dict()},
        )

    async def close(self) -> None:
        return None
