"""The log notifier: one line per notice at a level from its severity."""

from __future__ import annotations

import logging

import pytest
from support.notify_fakes import notice

from vouch.daemon.notify.logger import LogNotifier
from vouch.daemon.notify.settings import LogNotifierSpec


async def test_levels_follow_severity(caplog: pytest.LogCaptureFixture) -> None:
    notifier = LogNotifier(LogNotifierSpec(name="ops", logger="vouch.test.notices"))
    with caplog.at_level(logging.DEBUG, logger="vouch.test.notices"):
        await notifier.send(notice("step.scaling", message="step 1"))
        await notifier.send(notice("override.granted", message="slo may fail once"))
        await notifier.send(notice("promotion.rolledback", message="alarm", environment="production"))
        await notifier.send(notice("probe.failing", subject=None, service=None, environment=None, message="dns"))
    await notifier.close()
    got = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "vouch.test.notices"]
    assert got == [
        (logging.INFO, "step.scaling checkout/staging (2.4.1): step 1"),
        (logging.WARNING, "override.granted checkout/staging (2.4.1): slo may fail once"),
        (logging.CRITICAL, "promotion.rolledback checkout/production (2.4.1): alarm"),
        (logging.WARNING, "probe.failing - (2.4.1): dns"),
    ]
