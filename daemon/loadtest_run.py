"""``vouch loadtest run``: one Locust load run against a URL, judged like the ``loadtest`` gate judges a canary.

Exit codes: 0 the run held every bound; 1 it ran and did not (or sent no request: nothing to judge);
2 usage, an unreadable key, or Locust unable to run. Progress goes to stderr; ``--json`` prints one document to
stdout. ``--attest`` signs the result as an in-toto test-result statement and stores it where the daemon's
directory source reads it (``DIR/sha256-HEX/``); ``--metrics-out`` writes it in Prometheus text format.

The options and helpers for those two outputs (:class:`Outputs`, :func:`write_metrics`) are shared with
``vouch loadtest replay`` and ``vouch loadtest scale``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from prometheus_client import CollectorRegistry, write_to_textfile
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]  # re-exported without __all__

from vouch.core.errors import InputError
from vouch.daemon.cliout import EXIT_FAILED, err, fail, out, reported
from vouch.daemon.loadtestcmd import loadtest_app
from vouch.loadtests.judge import Judgement, judge
from vouch.loadtests.locust import LocustRunner
from vouch.loadtests.locustfiles import generated_locustfile, parse_request
from vouch.loadtests.metrics import export_result
from vouch.loadtests.model import LoadPlan, LoadResult
from vouch.loadtests.model import Progress as RunProgress
from vouch.loadtests.settings import LoadTestSpec
from vouch.rollout.attestations.dsse import parse_subject
from vouch.rollout.attestations.keys import load_signer
from vouch.rollout.attestations.loadresult import attestation_name, load_statement, store_statement
from vouch.rollout.attestations.model import Statement, Subject
from vouch.rollout.attestations.sources import DirectorySource

AttestOption = Annotated[
    bool, typer.Option("--attest", help="Sign the result as a test-result attestation (needs --key, --subject, --out).")
]
KeyOption = Annotated[Path | None, typer.Option("--key", metavar="KEY", help="Private key to sign with.")]
SubjectOption = Annotated[str | None, typer.Option("--subject", metavar="NAME@sha256:HEX", help="The artifact tested.")]
OutOption = Annotated[
    Path | None, typer.Option("--out", metavar="DIR", help="Directory source to store it in (DIR/sha256-HEX/).")
]
MetricsOutOption = Annotated[
    Path | None,
    typer.Option(
        "--metrics-out",
        metavar="FILE",
        help="Write the result in Prometheus text format (name it *.prom for node_exporter's textfile collector).",
    ),
]
ServiceOption = Annotated[
    str | None, typer.Option("--service", help="Service in the attestation and metrics (default: the subject's NAME).")
]
EnvironmentOption = Annotated[
    str | None, typer.Option("--env", "--environment", help="Environment in the attestation and metrics.")
]
VersionOption = Annotated[str, typer.Option("--version", help="Version in the attestation and metrics.")]
TrackOption = Annotated[str, typer.Option("--track", help="The metrics' track label: canary or stable.")]
UNKNOWN = "unknown"
"""A metric label no option gave."""


@dataclass(frozen=True)
class Outputs:
    """Where a standalone test's result goes besides the screen: a signed attestation, a metrics file.

    Built by :meth:`checked` before any load is sent, so a usage problem costs no run.
    """

    signer: CryptoSigner | None
    subject: Subject | None
    folder: Path | None
    metrics: Path | None
    service: str | None
    environment: str | None
    version: str
    track: str

    @classmethod
    def checked(
        cls,
        *,
        attest: bool,
        key: Path | None,
        subject: str | None,
        folder: Path | None,
        metrics: Path | None,
        service: str | None = None,
        environment: str | None = None,
        version: str = UNKNOWN,
        track: str = "canary",
    ) -> Outputs:
        """The options checked, the key loaded; :class:`InputError` for any that cannot be used."""
        if attest and (key is None or subject is None or folder is None):
            raise InputError("--attest needs --key KEY, --subject NAME@sha256:HEX and --out DIR")
        if track not in ("canary", "stable"):
            raise InputError(f"--track {track!r}: write canary or stable")
        check_metrics_out(metrics)
        signer = load_signer(key) if attest and key is not None else None
        parsed = parse_subject(subject) if subject is not None else None
        return cls(signer, parsed, folder if attest else None, metrics, service, environment, version, track)

    def labels(self) -> dict[str, str]:
        """The metrics' ``service``, ``environment``, ``version`` and ``track``; ``unknown`` where none was given."""
        service = self.service or (self.subject.name if self.subject is not None else UNKNOWN)
        environment = self.environment or UNKNOWN
        return {"service": service, "environment": environment, "version": self.version, "track": self.track}

    def about(self) -> dict[str, Any]:
        """What an attestation says it is about: the ``load_statement`` arguments naming subject and service."""
        if self.subject is None:
            raise InputError("--attest needs --subject NAME@sha256:HEX")
        return {
            "subject_name": self.subject.name,
            "digest": "sha256:" + self.subject.digest["sha256"],
            "version": self.version,
            "service": self.service or self.subject.name,
            "environment": self.environment,
        }

    @property
    def attesting(self) -> bool:
        """Whether ``--attest`` asked for an attestation (key and subject then checked and loaded)."""
        return self.signer is not None and self.subject is not None and self.folder is not None

    def store(self, statement: Statement, *, prefix: str) -> str:
        """Sign ``statement`` and store it in the ``--out`` directory source; returns the file written."""
        if self.signer is None or self.folder is None:
            raise InputError("--attest needs --key KEY, --subject NAME@sha256:HEX and --out DIR")
        digest = self.about()["digest"]
        name = attestation_name(prefix, statement)
        source = DirectorySource(self.folder)
        return asyncio.run(store_statement(statement, signer=self.signer, source=source, digest=digest, name=name))

    def write(self, export: Callable[[CollectorRegistry], object]) -> str | None:
        """Write the series ``export`` adds to a fresh registry to ``--metrics-out``; the file (``None``: not asked)."""
        return write_metrics(self.metrics, export) if self.metrics is not None else None


def check_metrics_out(path: Path | None) -> None:
    """Fail before any load when ``--metrics-out`` cannot be written: its folder missing, or a folder itself."""
    if path is None:
        return
    if path.is_dir():
        raise InputError(f"--metrics-out {path} is a folder: give a file, e.g. {path / 'loadtest.prom'}")
    if not path.parent.is_dir():
        raise InputError(f"--metrics-out {path}: no folder {path.parent}")


def write_metrics(path: Path, export: Callable[[CollectorRegistry], object]) -> str:
    """Write the series ``export`` puts in a fresh registry to ``path`` in Prometheus text format, atomically
    (a temporary file renamed over it, as node_exporter's textfile collector expects); returns the path."""
    registry = CollectorRegistry()
    export(registry)
    try:
        write_to_textfile(str(path), registry)
    except OSError as exc:
        raise InputError(f"cannot write --metrics-out {path}: {exc.strerror or exc}") from exc
    return str(path)


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


def _report(result: LoadResult, judgement: Judgement, written: dict[str, str | None]) -> None:
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
    print_written(written)


def print_written(written: dict[str, str | None]) -> None:
    """``attestation: PATH`` and ``metrics: PATH``, for the outputs that were asked for."""
    for what, where in written.items():
        if where is not None:
            out.print(Text(f"{what}: {where}"))


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
    """Load a URL with Locust (a subprocess) and judge error ratio, latency and achieved rate.

    Without `--locustfile` vouch writes one that sends the `--path` requests (`GET /` when none are given;
    other methods only when written, e.g. `--path 'POST /orders'`). Exits 0 when every bound held, 1 when
    one did not.

    `--attest` signs the result with `--key` as an in-toto test-result attestation about `--subject`
    (PASSED or FAILED, the figures in the extension field https://vouch.dev/attestations/load/v1) and stores
    it in the directory source `--out` (DIR/sha256-HEX/). `--metrics-out FILE` writes
    vouch_loadtest_requests_total, vouch_loadtest_failures_total, vouch_loadtest_rps and
    vouch_loadtest_latency_ms{quantile}, labelled service, environment, version and track (`unknown` where
    no option gave one), for node_exporter's textfile collector or a Pushgateway.

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
        outputs = Outputs.checked(attest=attest, key=key, subject=subject, folder=out_dir, metrics=metrics_out,
                                  service=service, environment=environment, version=version, track=track)  # fmt: skip
        result = asyncio.run(_run(url, spec))
        judgement = judge(result, spec.thresholds, target_rate=spec.rate, stable=None)
        written: dict[str, str | None] = {"attestation": None, "metrics": None}
        if outputs.attesting:
            about = outputs.about()
            statement = load_statement(result, judgement, thresholds=spec.thresholds, target_rps=spec.rate, **about)
            written["attestation"] = outputs.store(statement, prefix="load")
        written["metrics"] = outputs.write(lambda registry: export_result(result, registry, **outputs.labels()))
    if as_json:
        print(json.dumps({"result": result.to_dict(), "judgement": judgement.to_dict(), **written}, indent=2))
    else:
        _report(result, judgement, written)
    if not judgement.passed:
        raise typer.Exit(EXIT_FAILED)
