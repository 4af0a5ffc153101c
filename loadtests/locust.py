"""Locust as a subprocess: the :class:`~vouch.loadtests.model.LoadRunner` every load test uses here.

Locust is never imported into vouch's process (its gevent patches break asyncio). Each run gets a
temporary folder: Locust runs there (so no ``locust.conf`` of the caller's folder applies), headless,
with ``--exit-code-on-error 0`` (failed requests are data, not a crashed run), and writes its
``--json-file`` (the counts judged), its failures CSV (the messages shown) and its stats history
(the progress shown). It runs in a process group of its own: cancelling the run kills the whole
group, shielded from a second cancellation, so no Locust process outlives it.

Example::

    runner = LocustRunner()
    result = await runner.run(LoadPlan(target="http://127.0.0.1:8080", locustfile=Path("locustfile.py"),
                                       users=10, spawn_rate=10, duration=30, rate=50))
    print(result.rps, result.latency.p95, result.error_ratio)
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import math
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from vouch.loadtests.errors import LoadTestError
from vouch.loadtests.model import LoadPlan, LoadResult, Progress
from vouch.loadtests.stats import parse_failures, parse_progress, parse_stats

INSTALL_HINT = "install it with: pip install 'vouch[loadtest]' (or pip install 'locust>=2.20')"
"""What to do when Locust is missing: said by every error about it."""

_VERSION = re.compile(r"Starting Locust (\S+)")


def default_command() -> list[str]:
    """``[<this python>, -m, locust]``: Locust from vouch's own environment."""
    return [sys.executable, "-m", "locust"]


def run_time(duration: float) -> int:
    """Locust counts whole seconds: ``duration`` rounded, at least one."""
    return max(1, round(duration))


class LocustRunner:
    """Runs load plans with Locust in a subprocess; one instance may run many plans, also at once.

    ``command`` starts Locust (default :func:`default_command`); ``overrun`` is how long past its
    duration a run may take to start and write its results before it is killed as hung; ``stop_grace``
    how long Locust may take to exit after SIGTERM before the group is killed.
    """

    runner = "locust"

    def __init__(
        self,
        *,
        command: Sequence[str] | None = None,
        progress_interval: float = 1.0,
        overrun: float = 60.0,
        stop_grace: float = 5.0,
    ) -> None:
        self._command = list(command) if command else default_command()
        self._progress_interval = progress_interval
        self._overrun = overrun
        self._stop_grace = stop_grace

    def command_line(self, plan: LoadPlan, folder: Path) -> list[str]:
        """The argv of Locust for ``plan``, writing its files into ``folder``."""
        argv = [
            *self._command,
            "-f", str(plan.locustfile.resolve()),
            "--headless",
            "--host", plan.target,
            "--users", str(plan.users),
            "--spawn-rate", f"{plan.spawn_rate:g}",
            "--run-time", f"{run_time(plan.duration)}s",
            "--json-file", str(folder / "result"),
            "--csv", str(folder / "run"),
            "--only-summary",
            "--exit-code-on-error", "0",
        ]  # fmt: skip
        if plan.tags:
            argv += ["--tags", *plan.tags]
        return argv

    def environment(self, plan: LoadPlan) -> dict[str, str]:
        """The subprocess environment: ours, the pacing (``VOUCH_RATE``, ``VOUCH_RATE_PER_USER``), then ``plan.env``."""
        env = {**os.environ, "VOUCH_TARGET": plan.target, "VOUCH_USERS": str(plan.users)}
        env.pop("VOUCH_RATE", None)
        env.pop("VOUCH_RATE_PER_USER", None)
        if plan.rate is not None:
            env["VOUCH_RATE"] = f"{plan.rate:g}"
            env["VOUCH_RATE_PER_USER"] = repr(plan.rate / plan.users)
        env.update(plan.env)
        return env

    async def run(self, plan: LoadPlan, *, on_progress: Callable[[Progress], None] | None = None) -> LoadResult:
        """Run ``plan`` to its end and return what Locust measured; see :class:`LoadRunner`."""
        _check(plan, self._command)
        with tempfile.TemporaryDirectory(prefix="vouch-locust-", ignore_cleanup_errors=True) as name:
            folder = Path(name)
            argv = self.command_line(plan, folder)
            process = await self._start(argv, plan, folder)
            try:
                code = await self._follow(process, plan, folder, on_progress)
            except BaseException:
                await asyncio.shield(self._stop(process))
                raise
            finally:
                _kill_group(process.pid, signal.SIGKILL)  # stragglers of a leader that exited (--processes)
            return _result(plan, folder, code, argv)

    async def _start(self, argv: list[str], plan: LoadPlan, folder: Path) -> asyncio.subprocess.Process:
        with (folder / "locust.out").open("wb") as stdout, (folder / "locust.err").open("wb") as stderr:
            try:
                return await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=stderr,
                    cwd=folder,
                    env=self.environment(plan),
                    start_new_session=True,
                )
            except OSError as exc:
                raise LoadTestError(f"cannot start Locust ({argv[0]}): {exc.strerror or exc}; {INSTALL_HINT}") from exc

    async def _follow(
        self,
        process: asyncio.subprocess.Process,
        plan: LoadPlan,
        folder: Path,
        on_progress: Callable[[Progress], None] | None,
    ) -> int:
        """Wait for Locust to exit, reporting progress; a run far past its duration is killed as hung."""
        started = time.monotonic()
        deadline = started + run_time(plan.duration) + self._overrun
        waiter = asyncio.ensure_future(process.wait())
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    limit = run_time(plan.duration) + self._overrun
                    raise LoadTestError(f"Locust did not finish within {limit:g}s (run time {plan.duration:g}s)")
                done, _ = await asyncio.wait({waiter}, timeout=min(self._progress_interval, left))
                if done:
                    return waiter.result()
                if on_progress is not None:
                    on_progress(_progress(folder, elapsed=time.monotonic() - started, duration=plan.duration))
        finally:
            waiter.cancel()

    async def _stop(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM to the group, SIGKILL after ``stop_grace``; returns once the leader is reaped."""
        if process.returncode is None:
            _kill_group(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self._stop_grace)
            except TimeoutError:
                _kill_group(process.pid, signal.SIGKILL)
                await process.wait()
        _kill_group(process.pid, signal.SIGKILL)


def _check(plan: LoadPlan, command: Sequence[str]) -> None:
    """Refuse a plan Locust cannot run, before starting anything."""
    if plan.users < 1 or plan.spawn_rate <= 0 or not math.isfinite(plan.duration) or plan.duration <= 0:
        raise LoadTestError(
            f"a load run needs users >= 1, a positive spawn rate and duration (got users={plan.users}, "
            f"spawn_rate={plan.spawn_rate}, duration={plan.duration})"
        )
    if plan.rate is not None and not plan.rate > 0:
        raise LoadTestError(f"the target rate must be positive, got {plan.rate}")
    if not plan.locustfile.is_file():
        raise LoadTestError(f"no locustfile at {plan.locustfile}")
    if list(command) == default_command() and importlib.util.find_spec("locust") is None:
        raise LoadTestError(f"Locust is not installed in {sys.executable}'s environment; {INSTALL_HINT}")


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _progress(folder: Path, *, elapsed: float, duration: float) -> Progress:
    return parse_progress(_tail(folder / "run_stats_history.csv"), elapsed=elapsed, duration=duration)


def _tail(path: Path, size: int = 8192) -> str:
    """The header line and the last whole lines of a CSV file that keeps growing ('' while it does not exist)."""
    try:
        with path.open("rb") as file:
            header = file.readline()
            end = file.seek(0, os.SEEK_END)
            if end <= len(header) + size:
                file.seek(len(header))
                body = file.read()
            else:
                file.seek(end - size)
                body = file.read().split(b"\n", 1)[-1]
    except OSError:
        return ""
    return (header + body).decode("utf-8", "replace")


def _result(plan: LoadPlan, folder: Path, code: int, argv: Sequence[str]) -> LoadResult:
    """Read what Locust wrote; a crash or a missing results file is a :class:`LoadTestError`."""
    stderr = _read(folder / "locust.err")
    if code != 0:
        if "No module named locust" in stderr:
            raise LoadTestError(f"Locust is not installed for {argv[0]}; {INSTALL_HINT}")
        raise LoadTestError(f"Locust exited with code {code}: {_last_lines(stderr)}")
    try:
        entries = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    except OSError as exc:
        raise LoadTestError(f"Locust wrote no results file: {_last_lines(stderr)}") from exc
    except ValueError as exc:
        raise LoadTestError(f"Locust's results file is not JSON: {exc}") from exc
    version = _VERSION.search(stderr)
    return parse_stats(
        entries,
        target=plan.target,
        users=plan.users,
        ramp=plan.users / plan.spawn_rate,
        errors=parse_failures(_read(folder / "run_failures.csv")),
        tool_version=version.group(1) if version else None,
        data={"command": list(argv), "run_time": run_time(plan.duration), "rate": plan.rate},
    )


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _last_lines(text: str, count: int = 8) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:]) if lines else "(no output)"
