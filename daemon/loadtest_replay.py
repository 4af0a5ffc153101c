"""``vouch loadtest replay``: replay an access log against a target with its original timing, through Locust.

Exit codes: 0 the replay ran, every scheduled request fired and the error ratio is within
``--max-error-ratio``; 1 it ran and did not hold; 2 usage, an unreadable log, nothing left to
replay, an unreadable key or Locust unable to run. Progress goes to stderr; ``--json`` prints one document to
stdout. ``--attest`` and ``--metrics-out`` write the result as ``vouch loadtest run`` does (see
:class:`vouch.daemon.loadtest_run.Outputs`), the test named ``replay-test``.
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
from vouch.daemon.loadtest_run import (
    UNKNOWN,
    AttestOption,
    EnvironmentOption,
    KeyOption,
    MetricsOutOption,
    OutOption,
    Outputs,
    ServiceOption,
    SubjectOption,
    TrackOption,
    VersionOption,
    print_written,
)
from vouch.daemon.loadtestcmd import loadtest_app
from vouch.loadtests.judge import Figure, Judgement
from vouch.loadtests.locust import LocustRunner
from vouch.loadtests.metrics import export_result
from vouch.loadtests.model import Progress as RunProgress
from vouch.loadtests.model import Quantiles
from vouch.loadtests.replay import FORMATS, JsonFields, ReplayFilters, read_log, replay_plan, run_replay
from vouch.loadtests.replay.replay import PreparedReplay, ReplayOutcome
from vouch.loadtests.settings import LoadThresholds
from vouch.rollout.attestations.loadresult import load_statement


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


def _judgement(outcome: ReplayOutcome, problems: tuple[str, ...], *, max_error_ratio: float) -> Judgement:
    """The replay's verdict in the form a load run's takes, for its attestation: ``problems`` are the reasons it
    failed; the figures are the requests, the error ratio and how many scheduled requests fired."""
    r, kept = outcome.result, outcome.summary.kept
    fired = outcome.timing.fired if outcome.timing is not None else None
    figures = (
        Figure("requests", r.requests, "> 0"),
        Figure("error ratio", r.error_ratio, f"<= {max_error_ratio:.4g}"),
        Figure("fired", fired, f">= {kept}"),
    )
    held = (
        f"all {kept} scheduled requests fired; error ratio {r.error_ratio:.4g} within the maximum {max_error_ratio:.4g}"
    )
    return Judgement(not problems, problems or (held,), figures, conclusive=r.requests > 0)


def _report(outcome: ReplayOutcome, problems: tuple[str, ...], written: dict[str, str | None]) -> None:
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
    print_written(written)


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
    attest: AttestOption = False,
    key: KeyOption = None,
    subject: SubjectOption = None,
    out_dir: OutOption = None,
    metrics_out: MetricsOutOption = None,
    service: ServiceOption = None,
    environment: EnvironmentOption = None,
    version: VersionOption = UNKNOWN,
    track: TrackOption = "canary",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout.")] = False,
) -> None:
    """Replay an access log against a target with the requests' original relative timing, through Locust.

    Mutating requests are left out unless `--allow-mutating`; a replayed request fails when it gets no
    answer, a 5xx, or a 4xx where the log had none. Exits 0 when every request fired and the error ratio
    is within `--max-error-ratio`, 1 when not.

    `--attest` signs the result with `--key` as an in-toto test-result attestation about `--subject`
    (test `replay-test`, PASSED or FAILED, the figures, summary and timing in the extension field
    https://vouch.dev/attestations/load/v1) and stores it in the directory source `--out` (DIR/sha256-HEX/).
    `--metrics-out FILE` writes vouch_loadtest_requests_total, vouch_loadtest_failures_total,
    vouch_loadtest_rps and vouch_loadtest_latency_ms{quantile}, labelled service, environment, version and
    track (`unknown` where no option gave one), for node_exporter's textfile collector or a Pushgateway.

    Example: vouch loadtest replay examples/access.log --target http://127.0.0.1:8080 --speed 4
    """
    with reported(as_json=as_json):
        cap = _duration(max_duration, as_json=as_json)
        fields = _fields(field or [], as_json=as_json)
        outputs = Outputs.checked(attest=attest, key=key, subject=subject, folder=out_dir, metrics=metrics_out,
                                  service=service, environment=environment, version=version, track=track)  # fmt: skip
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
        written = _write(outcome, problems, outputs, max_error_ratio=max_error_ratio)
    if as_json:
        document: dict[str, Any] = {"ok": not problems, "problems": list(problems), **outcome.to_dict(), **written}
        print(json.dumps(document, indent=2))
    else:
        _report(outcome, problems, written)
    if problems:
        raise typer.Exit(EXIT_FAILED)


def _write(
    outcome: ReplayOutcome, problems: tuple[str, ...], outputs: Outputs, *, max_error_ratio: float
) -> dict[str, str | None]:
    """The attestation and the metrics file the options asked for; where each went (``None``: not asked)."""
    written: dict[str, str | None] = {"attestation": None, "metrics": None}
    if outputs.attesting:
        judgement = _judgement(outcome, problems, max_error_ratio=max_error_ratio)
        thresholds = LoadThresholds(max_error_ratio=max_error_ratio, min_rate_ratio=None)
        details = {key: value for key, value in outcome.to_dict().items() if key != "result"}
        statement = load_statement(outcome.result, judgement, thresholds=thresholds, test_name="replay-test",
                                   details=details, **outputs.about())  # fmt: skip
        written["attestation"] = outputs.store(statement, prefix="replay")
    result = outcome.result
    written["metrics"] = outputs.write(lambda registry: export_result(result, registry, **outputs.labels()))
    return written


def _duration(text: str | None, *, as_json: bool) -> float | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        fail(f"--max-duration: {exc}", as_json=as_json)
