"""``vouch loadtest replay``: replay an access log against a target with its original timing, through Locust.

Exit codes: 0 the replay ran, every scheduled request fired and the error ratio is within
``--max-error-ratio``; 1 it ran and did not hold; 2 usage, an unreadable log, nothing left to
replay or Locust unable to run. Progress goes to stderr; ``--json`` prints one document to stdout.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from vouch.core.durations import format_duration, parse_duration
from vouch.daemon.cliout import EXIT_FAILED, err, fail, out, reported
from vouch.daemon.loadtestcmd import loadtest_app
from vouch.loadtests.locust import LocustRunner
from vouch.loadtests.model import Progress as RunProgress
from vouch.loadtests.model import Quantiles
from vouch.loadtests.replay import FORMATS, JsonFields, ReplayFilters, read_log, replay_plan, run_replay
from vouch.loadtests.replay.replay import PreparedReplay, ReplayOutcome


def _fields(specs: list[str], *, as_json: bool) -> JsonFields:
    """``--field time=ts`` options as JSON field names."""
    overrides = {}
    for spec in specs:
        part, sep, name = spec.partition("=")
        if not sep or not part or not name:
            fail(f"--field {spec!r}: write PART=NAME, e.g. --field time=ts", as_json=as_json)
        overrides[part.strip()] = name.strip()
    try:
        return JsonFields().with_overrides(overrides)
    except ValueError as exc:
        fail(f"--field: {exc}", as_json=as_json)


async def _run(prepared: PreparedReplay) -> ReplayOutcome:
    """Run the replay with a progress bar on stderr, measured against the schedule's own length."""
    expected = prepared.summary.duration + prepared.plan.users / prepared.plan.spawn_rate
    with Progress(
        TextColumn("replaying"),
        BarColumn(),
        TextColumn("{task.fields[shown]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("replay", total=max(expected, 0.1), shown="")

        def show(progress: RunProgress) -> None:
            bar.update(task, completed=min(progress.elapsed, expected), shown=f"{progress.requests} requests")

        return await run_replay(prepared, LocustRunner(), on_progress=show)


def _quantiles(q: Quantiles, *names: str) -> str:
    """``p50 2.0 ms, p95 4.1 ms``; a quantile Locust did not report shows as ``-``."""
    return ", ".join(f"{name} {'-' if (v := q.get(name)) is None else f'{v:.1f}'} ms" for name in names)


def _report(outcome: ReplayOutcome, problems: tuple[str, ...]) -> None:
    s, r, t = outcome.summary, outcome.result, outcome.timing
    table = Table(box=None, pad_edge=False, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    dropped = f"{s.dropped_mutating} mutating, {s.dropped_by_path} by path, {s.dropped_by_cap} past the cap"
    table.add_row("log", Text(f"{s.file} ({s.format}): {s.read} requests, {s.skipped_bad} bad records skipped"))
    table.add_row("kept", f"{s.kept} (dropped {dropped})")
    table.add_row("timing", f"{format_duration(s.span)} of log at {s.speed:g}x = {format_duration(s.duration)}")
    table.add_row("requests", f"{r.requests}, {r.failures} failed (error ratio {r.error_ratio:.4f}), {r.rps:.1f}/s")
    table.add_row("latency", _quantiles(r.latency, "p50", "p95", "p99", "max"))
    if t is not None:
        table.add_row("schedule", f"{t.fired} of {t.scheduled} fired, {t.reordered} out of order")
        table.add_row("lateness", _quantiles(t.lateness, "p50", "p95", "max"))
    for message in r.errors:
        table.add_row("error", Text(message))
    out.print(table)
    if problems:
        for problem in problems:
            err.print(Text.assemble(("FAIL", "bold red"), " ", problem))
    else:
        out.print(Text("replay held", style="green"))


@loadtest_app.command("replay")
def replay(
    log: Annotated[Path, typer.Argument(metavar="LOG", help="nginx/Apache combined, JSON lines or HAR.")],
    target: Annotated[str, typer.Option("--target", help="Where to replay it: http(s)://host:port.")],
    log_format: Annotated[
        str | None, typer.Option("--format", help=f"The log's format ({'|'.join(FORMATS)}); guessed when left out.")
    ] = None,
    speed: Annotated[float, typer.Option("--speed", help="2 replays twice as fast, 0.5 at half speed.")] = 1.0,
    allow_mutating: Annotated[
        bool, typer.Option("--allow-mutating", help="Also send POST, PUT, PATCH, DELETE and unknown methods.")
    ] = False,
    include: Annotated[list[str] | None, typer.Option("--include", help="Only paths matching this regex.")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Leave out paths matching this regex.")] = None,
    users: Annotated[int, typer.Option("--users", min=1, help="Locust users sharing the schedule.")] = 10,
    max_duration: Annotated[
        str | None, typer.Option("--max-duration", help="Stop scheduling after this long, e.g. 2m.")
    ] = None,
    max_error_ratio: Annotated[
        float, typer.Option("--max-error-ratio", min=0.0, max=1.0, help="Failed requests allowed.")
    ] = 0.01,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Leave out unreadable records and count them.")] = False,
    keep_credentials: Annotated[
        bool, typer.Option("--keep-credentials", help="Send logged Cookie, Authorization: acts as its users.")
    ] = False,
    field: Annotated[
        list[str] | None, typer.Option("--field", help="JSON lines field name, PART=NAME, e.g. time=ts.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout.")] = False,
) -> None:
    """Replay an access log against a target with the requests' original relative timing, through Locust.

    Mutating requests are left out unless `--allow-mutating`; a replayed request fails when it gets no
    answer, a 5xx, or a 4xx where the log had none. Exits 0 when every request fired and the error ratio
    is within `--max-error-ratio`, 1 when not.

    Example: vouch loadtest replay examples/access.log --target http://127.0.0.1:8080 --speed 4
    """
    with reported(as_json=as_json):
        cap = _duration(max_duration, as_json=as_json)
        fields = _fields(field or [], as_json=as_json)
        parsed = read_log(log, format=log_format, skip_bad=skip_bad, keep_credentials=keep_credentials, fields=fields)
        if parsed.skipped:
            err.print(Text(f"skipped {parsed.skipped} bad records, the first: " + "; ".join(parsed.first_skipped)))
        filters = ReplayFilters(
            allow_mutating=allow_mutating, include=tuple(include or ()), exclude=tuple(exclude or ())
        )
        with tempfile.TemporaryDirectory(prefix="vouch-replay-") as folder:
            prepared = replay_plan(
                parsed, target=target, workdir=Path(folder), speed=speed, filters=filters, users=users, max_duration=cap
            )
            s = prepared.summary
            err.print(
                Text(
                    f"replaying {s.kept} of {s.read} requests ({s.dropped_mutating} mutating left out) from {s.file} "
                    f"against {target} at {s.speed:g}x: {format_duration(s.duration)}"
                )
            )
            outcome = asyncio.run(_run(prepared))
    problems = outcome.problems(max_error_ratio=max_error_ratio)
    if as_json:
        document: dict[str, Any] = {"ok": not problems, "problems": list(problems), **outcome.to_dict()}
        print(json.dumps(document, indent=2))
    else:
        _report(outcome, problems)
    if problems:
        raise typer.Exit(EXIT_FAILED)


def _duration(text: str | None, *, as_json: bool) -> float | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        fail(f"--max-duration: {exc}", as_json=as_json)
