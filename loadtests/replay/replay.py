"""Traffic replay: a parsed access log becomes a Locust run that fires each request at its original offset.

:func:`replay_plan` is pure but for writing two files into a folder the caller owns: it filters the
log, builds the schedule, writes it and the replay locustfile (package data), and returns the
:class:`LoadPlan` any :class:`LoadRunner` runs, with a :class:`ReplaySummary` of what was kept and
dropped. :func:`run_replay` runs it and adds what Locust's statistics cannot tell: how many
scheduled requests fired and how late (:class:`ReplayTiming`, written by the locustfile).

Example::

    log = read_log(Path("examples/access.log"))
    with tempfile.TemporaryDirectory() as folder:
        prepared = replay_plan(log, target="http://127.0.0.1:8080", workdir=Path(folder), speed=4.0)
        outcome = await run_replay(prepared, LocustRunner())
    print(outcome.summary.kept, outcome.result.requests, outcome.timing)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vouch.loadtests.errors import LoadTestError
from vouch.loadtests.model import LoadPlan, LoadResult, LoadRunner, Progress, Quantiles
from vouch.loadtests.replay.filter import ReplayFilters, apply_filters
from vouch.loadtests.replay.record import ParsedLog
from vouch.loadtests.replay.schedule import Schedule, build_schedule, write_schedule

TEMPLATE = "locustfile.py.tmpl"
"""The replay locustfile, package data of :mod:`vouch.loadtests.replay`."""

ERRORS_KEPT = 5
"""Failure messages kept in a result, most frequent first."""

MAX_SPAWN_RATE = 100.0
"""Locust warns above 100 users a second; the replay clock starts once all are spawned anyway."""


@dataclass(frozen=True)
class ReplaySummary:
    """What a replay kept of its log and how the log's time maps onto the replay's."""

    file: str
    format: str
    read: int
    """Requests read from the log."""
    skipped_bad: int
    dropped_mutating: int
    dropped_by_path: int
    dropped_by_cap: int
    kept: int
    """Requests in the schedule: what the replay sends."""
    span: float
    """Seconds of log time the kept requests cover."""
    speed: float
    duration: float
    """Seconds the replay takes to fire them all (``span / speed``)."""
    users: int

    def to_dict(self) -> dict[str, Any]:
        """As JSON; seconds rounded to the millisecond (epoch floats make noise below it)."""
        out = dataclasses.asdict(self)
        for key in ("span", "duration"):
            out[key] = round(out[key], 3)
        return out


@dataclass(frozen=True)
class PreparedReplay:
    """A replay ready to run: the plan, the schedule behind it and where the timing report will appear."""

    plan: LoadPlan
    schedule: Schedule
    summary: ReplaySummary
    report: Path


@dataclass(frozen=True)
class ReplayTiming:
    """How faithfully the schedule was kept, as the locustfile measured it."""

    scheduled: int
    fired: int
    reordered: int
    """Requests that fired over 0.1 s before the one scheduled just before them."""
    replay_seconds: float
    lateness: Quantiles
    """How late requests fired against their schedule, in milliseconds."""
    failures: tuple[tuple[str, int], ...] = ()
    """Failure messages (``name: error``) and how often each occurred, most frequent first."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplayTiming:
        return cls(
            scheduled=int(data["scheduled"]),
            fired=int(data["fired"]),
            reordered=int(data["reordered"]),
            replay_seconds=float(data["replay_seconds"]),
            lateness=Quantiles(**data["lateness_ms"]),
            failures=tuple((str(message), int(count)) for message, count in data.get("failures", ())),
        )


@dataclass(frozen=True)
class ReplayOutcome:
    """One replay: what was planned, what Locust measured, how the schedule was kept."""

    summary: ReplaySummary
    result: LoadResult
    timing: ReplayTiming | None
    """None when the locustfile wrote no report (Locust stopped before the run did)."""

    @property
    def complete(self) -> bool:
        """Every scheduled request fired."""
        return self.timing is not None and self.timing.fired >= self.summary.kept

    def problems(self, *, max_error_ratio: float) -> tuple[str, ...]:
        """Why this replay does not pass (empty when it does): fail closed on anything not measured."""
        found = []
        if self.timing is None:
            found.append("no timing report: the replay locustfile did not finish")
        elif not self.complete:
            found.append(f"only {self.timing.fired} of {self.summary.kept} scheduled requests fired")
        if self.result.requests == 0:
            found.append("no requests were made")
        elif self.result.error_ratio > max_error_ratio:
            found.append(
                f"error ratio {self.result.error_ratio:.4f} over {max_error_ratio:g} "
                f"({self.result.failures} of {self.result.requests} failed)"
            )
        return tuple(found)

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary.to_dict(),
            "result": self.result.to_dict(),
            "timing": dataclasses.asdict(self.timing) if self.timing else None,
        }


def replay_plan(
    log: ParsedLog,
    *,
    target: str,
    workdir: Path,
    speed: float = 1.0,
    filters: ReplayFilters | None = None,
    users: int = 10,
    max_duration: float | None = None,
    grace: float = 10.0,
) -> PreparedReplay:
    """The Locust run that replays ``log`` against ``target``; schedule and locustfile are written to ``workdir``.

    ``users`` share the schedule (at most one per request): enough of them that a slow answer does
    not hold up the next request. ``grace`` seconds are added to the run time for answers and
    lateness; the locustfile ends the run as soon as every request has fired and been answered.
    """
    scheme = urlsplit(target).scheme
    if scheme not in ("http", "https") or not urlsplit(target).netloc:
        raise LoadTestError(f"target must be an http(s) URL such as http://127.0.0.1:8080, not {target!r}")
    if users < 1:
        raise LoadTestError(f"users must be at least 1, not {users}")
    filtered = apply_filters(log.requests, filters or ReplayFilters())
    schedule = build_schedule(filtered.requests, speed=speed, max_duration=max_duration)
    if not schedule.entries:
        raise LoadTestError(
            f"{log.file}: nothing to replay: {len(log.requests)} requests read, {filtered.dropped_mutating} "
            f"mutating dropped (--allow-mutating keeps them), {filtered.dropped_by_path} dropped by --include/--exclude"
        )
    users = min(users, len(schedule.entries))
    spawn_rate = min(float(users), MAX_SPAWN_RATE)
    workdir = workdir.resolve()  # Locust runs in a folder of its own: every path it reads must be absolute
    workdir.mkdir(parents=True, exist_ok=True)
    schedule_file = write_schedule(schedule.entries, workdir / "schedule.jsonl")
    locustfile = workdir / "locustfile.py"
    locustfile.write_text(template_text(), encoding="utf-8")
    report = workdir / "replay-report.json"
    plan = LoadPlan(
        target=target.rstrip("/"),
        locustfile=locustfile,
        users=users,
        spawn_rate=spawn_rate,
        duration=users / spawn_rate + schedule.duration + grace,
        env={
            "VOUCH_REPLAY_SCHEDULE": str(schedule_file),
            "VOUCH_REPLAY_USERS": str(users),
            "VOUCH_REPLAY_REPORT": str(report),
        },
    )
    summary = ReplaySummary(
        file=log.file,
        format=log.format,
        read=len(log.requests),
        skipped_bad=log.skipped,
        dropped_mutating=filtered.dropped_mutating,
        dropped_by_path=filtered.dropped_by_path,
        dropped_by_cap=schedule.dropped_by_cap,
        kept=len(schedule.entries),
        span=schedule.span,
        speed=schedule.speed,
        duration=schedule.duration,
        users=users,
    )
    return PreparedReplay(plan=plan, schedule=schedule, summary=summary, report=report)


def template_text() -> str:
    """The shipped replay locustfile's source."""
    return resources.files("vouch.loadtests.replay").joinpath(TEMPLATE).read_text(encoding="utf-8")


def read_timing(report: Path) -> ReplayTiming | None:
    """The locustfile's timing report, or None when it wrote none (or half of one)."""
    try:
        return ReplayTiming.from_dict(json.loads(report.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


async def run_replay(
    prepared: PreparedReplay, runner: LoadRunner, *, on_progress: Callable[[Progress], None] | None = None
) -> ReplayOutcome:
    """Run a prepared replay with ``runner``; a run that could not happen raises :class:`LoadTestError`."""
    prepared.report.unlink(missing_ok=True)
    result = await runner.run(prepared.plan, on_progress=on_progress)
    timing = read_timing(prepared.report)
    if timing is not None and timing.failures:  # complete to the last request, where Locust's CSV lags
        result = dataclasses.replace(result, errors=tuple(message for message, _ in timing.failures[:ERRORS_KEPT]))
    return ReplayOutcome(summary=prepared.summary, result=result, timing=timing)
