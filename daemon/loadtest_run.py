"""``vouch loadtest run``: one Locust load run against a URL, judged like the ``loadtest`` gate judges a canary.

Exit codes: 0 the run held every bound; 1 it ran and did not (or sent no request: nothing to judge);
2 usage, or Locust unable to run. Progress goes to stderr; ``--json`` prints one document to stdout.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from vouch.daemon.cliout import EXIT_FAILED, err, fail, out, reported
from vouch.daemon.loadtestcmd import loadtest_app
from vouch.loadtests.judge import Judgement, judge
from vouch.loadtests.locust import LocustRunner
from vouch.loadtests.locustfiles import generated_locustfile, parse_request
from vouch.loadtests.model import LoadPlan, LoadResult
from vouch.loadtests.model import Progress as RunProgress
from vouch.loadtests.settings import LoadTestSpec


def _spec(
    *,
    locustfile: Path | None,
    paths: list[str],
    users: int,
    spawn_rate: float,
    duration: str,
    rate: float | None,
    thresholds: dict[str, object],
) -> LoadTestSpec:
    """The options as the settings the gate uses, validated by the same model (a bad option exits 2)."""
    return LoadTestSpec.model_validate(
        {
            "locustfile": str(locustfile) if locustfile is not None else None,
            "paths": paths,
            "users": users,
            "spawn_rate": spawn_rate,
            "duration": duration,
            "rate": rate,
            "thresholds": thresholds,
        }
    )


async def _run(url: str, spec: LoadTestSpec) -> LoadResult:
    """Run the load with a progress bar on stderr (elapsed against the duration; figures as Locust flushes them)."""
    source: AbstractContextManager[Path]
    if spec.locustfile is not None:
        source = nullcontext(Path(spec.locustfile))
    else:
        source = generated_locustfile([parse_request(p) for p in spec.paths or ["/"]])
    with source as locustfile, Progress(
        TextColumn("loading"), BarColumn(), TextColumn("{task.fields[shown]}"), TimeElapsedColumn(),
        console=err, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("load", total=spec.duration, shown="")

        def show(progress: RunProgress) -> None:
            shown = f"{progress.requests} requests, {progress.failures} failed" if progress.requests else ""
            bar.update(task, completed=min(progress.elapsed, spec.duration), shown=shown)

        plan = LoadPlan(
            target=url,
            locustfile=locustfile,
            users=spec.users,
            spawn_rate=spec.spawn_rate,
            duration=spec.duration,
            rate=spec.rate,
        )
        return await LocustRunner(command=spec.locust_command).run(plan, on_progress=show)


def _report(result: LoadResult, judgement: Judgement) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("FIGURE", "VALUE", "BOUND"):
        table.add_column(column)
    for figure in judgement.measurements:
        value = "-" if figure.value is None else f"{figure.value:.4g}"
        table.add_row(figure.name, value, figure.threshold or "")
    out.print(table)
    q = result.latency
    out.print(
        f"{result.requests} requests to {result.target} in {result.duration:.1f}s after spawning "
        f"({result.rps:.1f}/s); latency p50 {q.p50} ms, p95 {q.p95} ms, p99 {q.p99} ms, max {_ms(q.max)}",
        markup=False,
    )
    for message in result.errors:
        err.print(Text.assemble(("failure", "yellow"), " ", message))
    style = "green" if judgement.passed else "bold red"
    for reason in judgement.reasons:
        out.print(Text.assemble(("ok" if judgement.passed else "FAIL", style), " ", reason))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


@loadtest_app.command("run")
def run(
    url: Annotated[str, typer.Argument(metavar="URL", help="The target's base URL, e.g. http://127.0.0.1:8080.")],
    locustfile: Annotated[
        Path | None, typer.Option("--locustfile", "-f", help="Your own locustfile (reads VOUCH_RATE to pace itself).")
    ] = None,
    path: Annotated[
        list[str] | None,
        typer.Option("--path", "-p", help="A request of a generated locustfile: '/cart' or 'POST /orders'; repeat."),
    ] = None,
    users: Annotated[int, typer.Option("--users", "-u", min=1, help="Concurrent Locust users.")] = 10,
    spawn_rate: Annotated[float, typer.Option("--spawn-rate", "-r", min=0.001, help="Users started per second.")] = 10,
    duration: Annotated[str, typer.Option("--duration", "-d", help="How long, spawning included: 30s, 2m.")] = "30s",
    rate: Annotated[
        float | None, typer.Option("--rate", min=0.001, help="Total requests per second to offer (paced users).")
    ] = None,
    max_error_ratio: Annotated[
        float, typer.Option("--max-error-ratio", min=0.0, max=1.0, help="Failed requests allowed.")
    ] = 0.01,
    max_p50_ms: Annotated[float | None, typer.Option("--max-p50-ms", help="Median latency bound.")] = None,
    max_p90_ms: Annotated[float | None, typer.Option("--max-p90-ms", help="90th percentile bound.")] = None,
    max_p95_ms: Annotated[float | None, typer.Option("--max-p95-ms", help="95th percentile bound.")] = None,
    max_p99_ms: Annotated[float | None, typer.Option("--max-p99-ms", help="99th percentile bound.")] = None,
    min_rate_ratio: Annotated[
        float, typer.Option("--min-rate-ratio", min=0.001, max=1.0, help="With --rate: achieved over offered.")
    ] = 0.9,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout.")] = False,
) -> None:
    """Load a URL with Locust (a subprocess) and judge error ratio, latency and achieved rate.

    Without `--locustfile` vouch writes one that sends the `--path` requests (`GET /` when none are given;
    other methods only when written, e.g. `--path 'POST /orders'`). Exits 0 when every bound held, 1 when
    one did not.

    Example: vouch loadtest run http://127.0.0.1:8080 --path /cart --users 20 --rate 100 --duration 30s --max-p95-ms 250
    """
    if not url.startswith(("http://", "https://")):
        fail(f"{url!r} is not an http:// or https:// URL", as_json=as_json)
    bounds = {"p50": max_p50_ms, "p90": max_p90_ms, "p95": max_p95_ms, "p99": max_p99_ms}
    thresholds: dict[str, object] = {
        "max_error_ratio": max_error_ratio,
        "max_latency_ms": {k: v for k, v in bounds.items() if v is not None},
        "min_rate_ratio": min_rate_ratio,
    }
    with reported(as_json=as_json):
        spec = _spec(
            locustfile=locustfile,
            paths=path or [],
            users=users,
            spawn_rate=spawn_rate,
            duration=duration,
            rate=rate,
            thresholds=thresholds,
        )
        result = asyncio.run(_run(url, spec))
    judgement = judge(result, spec.thresholds, target_rate=spec.rate, stable=None)
    if as_json:
        print(json.dumps({"result": result.to_dict(), "judgement": judgement.to_dict()}, indent=2))
    else:
        _report(result, judgement)
    if not judgement.passed:
        raise typer.Exit(EXIT_FAILED)
