"""The checks of an environment: health first, then the network tests, in one :class:`CheckReport`.

A preview (or, with ``vouch verify-env``, a stable environment) is healthy when every probe of the
service passes within the preview's ``health_deadline``. Only a healthy environment is tested: the
network suites of ``preview.tests`` then run in order, each against the service, the mocks' addresses
in their environment. The report is what the two attestations are made from
(:mod:`vouch.daemon.preview.attest`).

Fail closed: an unhealthy environment's tests are FAILED (not run, and the report says why), and
so are the tests of a service that configures none: nothing tested is never a pass.

Example::

    report = await run_checks(preview, service.preview, service, config_dir=config_file.parent)
    if report.passed:
        ...
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vouch.daemon.preview.health import check_health, health_probes
from vouch.daemon.preview.model import Check, CheckReport, Preview
from vouch.daemon.preview.suites import SuiteContext, run_suite
from vouch.loadtests.model import LoadRunner
from vouch.rollout.config import ServiceSpec
from vouch.rollout.preview import NetworkSuite, PreviewSpec

NOT_RUN = "network tests not run"
"""The name of the failed check standing for the tests of an environment that was not healthy."""
NO_TESTS = "no network tests"
"""The name of the failed check of a service whose preview settings name no network test."""


async def run_checks(
    preview: Preview,
    spec: PreviewSpec,
    service: ServiceSpec,
    *,
    config_dir: Path,
    clock: Callable[[], float] = time.time,
    runner: LoadRunner | None = None,
) -> CheckReport:
    """Health-check ``preview`` with the service's probes, then run ``spec.tests`` against it with its mocks.

    ``config_dir`` is the configuration file's folder (suite paths are relative to it); ``clock``
    stamps the report; ``runner`` runs Locust suites (default: Locust in a subprocess).
    """
    return await check_environment(
        environment=preview.name,
        address=preview.address,
        mocks=preview.mocks,
        spec=spec,
        service=service,
        config_dir=config_dir,
        clock=clock,
        runner=runner,
    )


async def check_environment(
    *,
    environment: str,
    address: str,
    mocks: Mapping[str, str],
    spec: PreviewSpec,
    service: ServiceSpec,
    config_dir: Path,
    clock: Callable[[], float] = time.time,
    runner: LoadRunner | None = None,
) -> CheckReport:
    """The checks of any environment at ``address`` (``host:port``): a preview's, or a stable one's with no mocks."""
    health = await check_health(health_probes(service), address, deadline=spec.health_deadline)
    mocked = tuple(mocks)
    if not all(check.passed for check in health):
        failing = ", ".join(check.name for check in health if not check.passed)
        why = f"{environment} was not healthy within {spec.health_deadline:g}s (failing: {failing})"
        not_run = (Check(NOT_RUN, False, why),)
        return CheckReport(environment, False, health, "FAILED", not_run, mocked_backends=mocked, checked_at=clock())
    context = SuiteContext(
        url=f"http://{address}",
        environment=environment,
        config_dir=config_dir,
        mocks=dict(mocks),
        probes=tuple(service.probes),
    )
    tests = await run_suites(spec.tests, context, runner=runner)
    result = "PASSED" if all(check.passed for check in tests) else "FAILED"
    return CheckReport(environment, True, health, result, tests, mocked_backends=mocked, checked_at=clock())


async def run_suites(
    suites: Sequence[NetworkSuite], context: SuiteContext, *, runner: LoadRunner | None = None
) -> tuple[Check, ...]:
    """Every suite in order (all of them, so the report tells everything that failed)."""
    if not suites:
        why = "the service's preview settings name no network tests (preview.tests): nothing was tested"
        return (Check(NO_TESTS, False, why),)
    checks: list[Check] = []
    for suite in suites:
        checks.extend(await run_suite(suite, context, runner=runner))
    return tuple(checks)


def report_document(report: CheckReport) -> dict[str, Any]:
    """``report`` as JSON-ready data, for ``--json`` output."""
    return {
        "environment": report.environment,
        "passed": report.passed,
        "healthy": report.healthy,
        "health": [dataclasses.asdict(check) for check in report.health],
        "tests_result": report.tests_result,
        "tests": [dataclasses.asdict(check) for check in report.tests],
        "mocked_backends": list(report.mocked_backends),
        "checked_at": report.checked_at,
    }


def report_lines(report: CheckReport) -> list[str]:
    """``report`` for people: one line per check, the verdicts first."""
    health = "healthy" if report.healthy else "NOT healthy"
    mocks = f" (mocked: {', '.join(report.mocked_backends)})" if report.mocked_backends else ""
    lines = [f"{report.environment}: {health}; network tests {report.tests_result}{mocks}"]
    for title, checks in (("health", report.health), ("tests", report.tests)):
        for check in checks:
            mark = "skip" if check.skipped else ("ok" if check.passed else "FAIL")
            detail = f": {check.detail}" if check.detail else ""
            lines.append(f"  {title:<6} {mark:<4} {check.name}{detail}")
    return lines
