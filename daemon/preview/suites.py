"""Network test suites run against an environment: the user's pytest files, a short Locust run, the service's probes.

Every suite gets the environment's addresses: pytest and Locust through environment variables
(:func:`suite_environment`), so a test reaches the service at ``$VOUCH_PREVIEW_URL`` and mock
``payments`` at ``$VOUCH_MOCK_PAYMENTS_URL``, where it can read the calls the mock recorded. Each
suite gives :class:`~vouch.daemon.preview.model.Check` items: one per test case for pytest, one for
the Locust run, one per probe target. A suite that cannot run (no file, a crash, a timeout, no test
collected) is a failed check saying why, never a pass.

Example::

    context = SuiteContext(url="http://127.0.0.1:8080", environment="checkout-pr-42",
                           mocks={"payments": "http://127.0.0.1:9001"}, config_dir=Path("."))
    checks = await run_suite(PytestSuite(path="tests/network"), context)
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import signal
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vouch.daemon.preview.health import check_health
from vouch.daemon.preview.model import Check
from vouch.loadtests.errors import LoadTestError
from vouch.loadtests.judge import judge
from vouch.loadtests.locust import LocustRunner
from vouch.loadtests.model import LoadPlan, LoadRunner
from vouch.loadtests.settings import LoadThresholds
from vouch.probes.registry import ProbeDefinition
from vouch.rollout.preview import LocustSuite, ProbeSuite, PytestSuite

STOP_GRACE = 5.0
"""Seconds a timed-out or cancelled pytest run has after SIGTERM before its process group is killed."""

_OUTPUT_TAIL = 8


@dataclass(frozen=True)
class SuiteContext:
    """Where the suites aim: the service's URL, the mocks' base URLs, and what relative paths are relative to."""

    url: str
    """``http://host:port`` of the service under test."""
    environment: str
    """The preview's name, or the stable environment's."""
    config_dir: Path
    """Suite paths are relative to the configuration file's folder."""
    mocks: Mapping[str, str] = field(default_factory=dict)
    """Mock name -> base URL; empty for a stable environment."""
    probes: Sequence[ProbeDefinition] = ()
    """The service's probes, for ``kind: probes`` suites."""

    @property
    def address(self) -> str:
        return self.url.removeprefix("http://").removeprefix("https://").rstrip("/")


def mock_variable(name: str) -> str:
    """The environment variable holding mock ``name``'s base URL.

    >>> mock_variable("payments-eu")
    'VOUCH_MOCK_PAYMENTS_EU_URL'
    """
    return "VOUCH_MOCK_" + re.sub(r"[^A-Z0-9]", "_", name.upper()) + "_URL"


def suite_environment(context: SuiteContext) -> dict[str, str]:
    """What a suite's process learns of the environment: the service's URL and every mock's base URL."""
    env = {
        "VOUCH_PREVIEW_URL": context.url,
        "VOUCH_PREVIEW_ADDRESS": context.address,
        "VOUCH_ENVIRONMENT": context.environment,
    }
    env.update({mock_variable(name): url for name, url in context.mocks.items()})
    return env


def _inherited(context: SuiteContext) -> dict[str, str]:
    """This process's environment with the suite's variables, none of them inherited from a caller's run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOUCH_MOCK_", "VOUCH_PREVIEW_"))}
    return {**env, **suite_environment(context)}


async def run_suite(
    suite: PytestSuite | LocustSuite | ProbeSuite, context: SuiteContext, *, runner: LoadRunner | None = None
) -> tuple[Check, ...]:
    """Run one suite against ``context``; ``runner`` runs Locust plans (default: a :class:`LocustRunner`)."""
    if isinstance(suite, PytestSuite):
        return await run_pytest(suite, context)
    if isinstance(suite, LocustSuite):
        return await run_locust(suite, context, runner=runner or LocustRunner())
    return await run_probes(suite, context)


# --------------------------------------------------------------------------- pytest


async def run_pytest(suite: PytestSuite, context: SuiteContext) -> tuple[Check, ...]:
    """The user's pytest files in a subprocess, read back from its JUnit XML: one check per test case."""
    label = f"pytest {suite.path}"
    path = context.config_dir / suite.path
    if not path.exists():
        return (Check(label, False, f"no tests at {path}"),)
    if importlib.util.find_spec("pytest") is None:
        return (Check(label, False, f"pytest is not installed in {sys.executable}'s environment: pip install pytest"),)
    with tempfile.TemporaryDirectory(prefix="vouch-pytest-", ignore_cleanup_errors=True) as name:
        folder = Path(name)
        junit = folder / "junit.xml"
        argv = [sys.executable, "-m", "pytest", str(path), "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
        try:
            code = await run_process([*argv, *suite.args], env=_inherited(context), cwd=context.config_dir,
                                     log=folder / "output.txt", timeout=suite.timeout)  # fmt: skip
        except OSError as exc:
            return (Check(label, False, f"cannot start pytest: {exc.strerror or exc}"),)
        cases = read_junit(junit)
        output = _tail(folder / "output.txt")
    return _judged(label, code, cases, output=output, timeout=suite.timeout)


def _judged(
    label: str, code: int | None, cases: tuple[Check, ...], *, output: str, timeout: float
) -> tuple[Check, ...]:
    """The test cases, plus a failed check for the run itself when pytest's exit says more than its cases."""
    if code is None:
        return (*cases, Check(label, False, f"did not finish within {timeout:g}s"))
    if code == 5 or (code == 0 and not cases):
        return (*cases, Check(label, False, "no test was collected"))
    if code != 0 and all(c.passed for c in cases):
        return (*cases, Check(label, False, f"pytest exited with code {code}: {output}"))
    return cases


def read_junit(path: Path) -> tuple[Check, ...]:
    """Each ``testcase`` of a JUnit XML file as a check (failures and errors fail; skips are marked skipped).

    A missing or unreadable file gives no case: the caller judges the run on its exit code.
    """
    try:
        root = ElementTree.parse(path).getroot()  # pytest's own output, written just now
    except (OSError, ElementTree.ParseError):
        return ()
    checks = []
    for case in root.iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "?")
        title = f"{classname}.{name}" if classname else name
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        skipped = case.find("skipped")
        if problem is not None:
            checks.append(Check(title, False, _why(problem.get("message") or "", problem.text or "")))
        elif skipped is not None:
            checks.append(Check(title, True, _first_line(skipped.get("message") or "skipped"), skipped=True))
        else:
            checks.append(Check(title, True))
    return tuple(checks)


async def run_process(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log: Path, timeout: float
) -> int | None:
    """Run ``argv`` in a process group of its own; its exit code, or ``None`` when it ran out of time.

    The whole group is stopped (SIGTERM, then SIGKILL after :data:`STOP_GRACE`) on a timeout or a
    cancellation, shielded from a second cancellation, so no process outlives the run.
    """
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
        )
    try:
        return await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        await asyncio.shield(_stop(process))
        return None
    except BaseException:
        await asyncio.shield(_stop(process))
        raise
    finally:
        _kill_group(process.pid, signal.SIGKILL)  # anything the tests started and left behind


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        _kill_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE)
        except TimeoutError:
            _kill_group(process.pid, signal.SIGKILL)
            await process.wait()


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _why(message: str, text: str) -> str:
    """A failure's message, with the first ``E`` line of its report when the message alone is vague."""
    detail = _first_line(message) or "failed"
    errors = [line[1:].strip() for line in text.splitlines() if line.startswith("E ") and line[1:].strip()]
    if errors and errors[0] not in detail:
        detail = f"{detail}: {errors[0]}"
    return detail[:500]


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0][:500] if lines else ""


def _tail(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no output)"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-_OUTPUT_TAIL:]) if lines else "(no output)"


# --------------------------------------------------------------------------- locust


async def run_locust(suite: LocustSuite, context: SuiteContext, *, runner: LoadRunner) -> tuple[Check, ...]:
    """A short Locust run against the service, judged on its error ratio alone: one check."""
    label = f"locust {suite.locustfile}"
    plan = LoadPlan(
        target=context.url,
        locustfile=context.config_dir / suite.locustfile,
        users=suite.users,
        spawn_rate=float(suite.users),
        duration=suite.duration,
        env=suite_environment(context),
    )
    try:
        result = await runner.run(plan)
    except LoadTestError as exc:
        return (Check(label, False, str(exc)),)
    judgement = judge(result, LoadThresholds(max_error_ratio=suite.max_error_ratio), stable=None)
    summary = f"{result.requests} requests, {result.failures} failed"
    return (Check(label, judgement.passed, f"{summary}: {'; '.join(judgement.reasons)}"),)


# --------------------------------------------------------------------------- probes


async def run_probes(suite: ProbeSuite, context: SuiteContext) -> tuple[Check, ...]:
    """The named probes of the service (all of them by default), once each against the service."""
    by_name = {spec.name: spec for spec in context.probes}
    unknown = [name for name in suite.names if name not in by_name]
    if unknown:
        known = ", ".join(sorted(by_name)) or "none"
        return tuple(
            Check(f"probe {name}", False, f"the service has no probe {name!r}; it has {known}") for name in unknown
        )
    specs = [by_name[name] for name in suite.names] if suite.names else list(context.probes)
    if not specs:
        return (Check("probes", False, "the service has no probes to run"),)
    checks = await check_health(specs, context.address, deadline=0.0)
    return tuple(Check(f"probe {c.name}", c.passed, c.detail) for c in checks)
