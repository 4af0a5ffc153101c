"""``vouch loadtest scale``: find the knee of one replica (the highest rate it serves within its SLO), standalone.

Exit codes: 0 a knee was found and, given a baseline (``--previous`` or ``--baseline-rps``), it is not more
than ``--margin`` below it; 1 no rate held the SLO, or the knee fell below the baseline by more than the
margin; 2 usage, an unreadable baseline or key, or Locust unable to run. Each step is reported on stderr as
it ends; ``--json`` prints one document to stdout. ``--attest`` signs the result as an in-toto test-result
statement and stores it where the daemon's directory source reads it (``DIR/sha256-HEX/``); ``--metrics-out``
writes the knee in Prometheus text format.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.status import Status
from rich.table import Table
from rich.text import Text
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]  # re-exported without __all__

from vouch.core.errors import InputError
from vouch.daemon.cliout import EXIT_FAILED, err, out, reported
from vouch.daemon.loadtest_run import UNKNOWN, MetricsOutOption, check_metrics_out, write_metrics
from vouch.daemon.loadtestcmd import loadtest_app
from vouch.loadtests.locust import LocustRunner
from vouch.loadtests.locustfiles import parse_request
from vouch.loadtests.scale import (
    KneeComparison,
    ScaleMetrics,
    ScaleResult,
    ScaleStep,
    compare_knee,
    run_scale,
    scale_locustfile,
)
from vouch.loadtests.settings import LoadTestSpec
from vouch.rollout.attestations.dsse import parse_subject
from vouch.rollout.attestations.keys import load_signer
from vouch.rollout.attestations.loadresult import attestation_name
from vouch.rollout.attestations.model import RawAttestation, Subject
from vouch.rollout.attestations.scale import SCALE_EXTENSION, read_scale, scale_statement, store_scale
from vouch.rollout.attestations.sources import DirectorySource


def _baseline(previous: Path | None, baseline_rps: float | None, signer: CryptoSigner | None) -> float | None:
    """The knee to compare with: ``--baseline-rps``, or the knee in ``--previous``: the ``--json`` output of an
    earlier run, or an attestation ``--attest`` wrote (verified with ``--key``'s public half)."""
    if previous is None:
        return baseline_rps
    try:
        data = previous.read_bytes()
        document = json.loads(data)
    except OSError as exc:
        raise InputError(f"cannot read --previous {previous}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise InputError(f"--previous {previous} is not JSON: {exc}") from exc
    if isinstance(document, dict) and "signatures" in document:
        if signer is None:
            raise InputError(f"--previous {previous} is an attestation: give --key, whose public half verifies it")
        record = read_scale(RawAttestation(str(previous), data), digest=None, keys=[signer.public_key])
        if record is None:
            raise InputError(
                f"--previous {previous} is not a scale attestation signed by --key {signer.public_key.keyid}"
            )
        knee = record.result.knee_rps
    else:
        found = document.get("result", document) if isinstance(document, dict) else None
        try:
            knee = ScaleResult.from_dict(found).knee_rps if isinstance(found, dict) else None
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"--previous {previous} is not the --json output of vouch loadtest scale: {exc}") from exc
    if knee is None:
        raise InputError(f"--previous {previous} found no knee (no rate held its SLO): nothing to compare with")
    return knee


async def _run(url: str, spec: LoadTestSpec) -> ScaleResult:
    """Search the knee, a line on stderr per step and a spinner while a step runs."""
    assert spec.scale is not None
    source: AbstractContextManager[Path]
    if spec.locustfile is not None:
        source = nullcontext(Path(spec.locustfile))
    else:
        source = scale_locustfile([parse_request(p) for p in spec.paths or ["/"]])
    with source as locustfile, Status("starting", console=err) as status:

        def show(step: ScaleStep) -> None:
            point = step.point
            if point is None:
                status.update(f"step {step.number} ({step.phase}): offering {step.rate:g} rps with {step.users} users")
                return
            held = Text("held", style="green") if point.within_slo else Text("broke", style="yellow")
            why = f": {'; '.join(point.reasons)}" if point.reasons else ""
            err.print(
                Text.assemble(
                    f"step {step.number} ({step.phase}) {step.rate:g} rps: achieved {point.achieved:.4g} rps, "
                    f"p95 {_ms(point.p95)}, errors {point.error_ratio:.3g} ",
                    held,
                    why,
                )
            )

        return await run_scale(url, spec.scale, spec.thresholds, runner=LocustRunner(command=spec.locust_command),
                               locustfile=locustfile, on_step=show)  # fmt: skip


def _attest(
    result: ScaleResult,
    comparison: KneeComparison,
    *,
    signer: CryptoSigner,
    subject: Subject,
    folder: Path,
    names: tuple[str, str, str | None],
) -> str:
    """Sign the result and store it in the directory source ``folder``; returns the file written."""
    service, version, environment = names
    digest = "sha256:" + subject.digest["sha256"]
    statement = scale_statement(result, subject_name=subject.name, digest=digest, version=version, service=service,
                                environment=environment, comparison=comparison)  # fmt: skip
    name = attestation_name("scale", statement, stamp=str(statement.predicate[SCALE_EXTENSION]["measured_at"]))
    return asyncio.run(store_scale(statement, signer=signer, source=DirectorySource(folder), digest=digest,
                                   name=name))  # fmt: skip


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _report(result: ScaleResult, comparison: KneeComparison, location: str | None, metrics: str | None) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("STEP", "OFFERED", "ACHIEVED", "USERS", "P50", "P95", "P99", "ERRORS", "SLO"):
        table.add_column(column)
    for number, p in enumerate(result.curve, 1):
        held = Text("held", style="green") if p.within_slo else Text("broke", style="yellow")
        table.add_row(str(number), f"{p.offered:g}", f"{p.achieved:.4g}", str(p.users), _ms(p.p50), _ms(p.p95),
                      _ms(p.p99), f"{p.error_ratio:.3g}", held)  # fmt: skip
    out.print(table)
    out.print(f"{result.target}: {len(result.curve)} steps in {result.duration:.0f}s", markup=False)
    style = "green" if comparison.passed else "bold red"
    out.print(Text.assemble(("ok" if comparison.passed else "FAIL", style), " ", comparison.reason))
    if location is not None:
        out.print(Text(f"attestation: {location}"))
    if metrics is not None:
        out.print(Text(f"metrics: {metrics}"))


@loadtest_app.command("scale")
def scale(
    url: Annotated[str, typer.Argument(metavar="URL", help="ONE replica's base URL, e.g. http://10.0.0.7:8080.")],
    max_p95_ms: Annotated[float | None, typer.Option("--max-p95-ms", help="95th percentile bound (the SLO).")] = None,
    max_p50_ms: Annotated[float | None, typer.Option("--max-p50-ms", help="Median latency bound.")] = None,
    max_p99_ms: Annotated[float | None, typer.Option("--max-p99-ms", help="99th percentile bound.")] = None,
    max_error_ratio: Annotated[
        float, typer.Option("--max-error-ratio", min=0.0, max=1.0, help="Failed requests allowed.")
    ] = 0.01,
    min_rate_ratio: Annotated[
        float, typer.Option("--min-rate-ratio", min=0.001, max=1.0, help="Achieved over offered, at least.")
    ] = 0.9,
    start: Annotated[float, typer.Option("--start", min=0.001, help="The first rate offered (rps).")] = 10.0,
    max_rate: Annotated[float, typer.Option("--max-rate", min=0.001, help="The highest rate offered (rps).")] = 2000.0,
    factor: Annotated[float, typer.Option("--factor", help="The ramp: each step offers this many times more.")] = 2.0,
    step_duration: Annotated[str, typer.Option("--step-duration", help="Each step's run: 4s, 10s.")] = "4s",
    resolution: Annotated[float, typer.Option("--resolution", help="Bisect until within this share.")] = 0.05,
    retries: Annotated[int, typer.Option("--retries", min=0, help="Runs again of a step that broke by little.")] = 1,
    max_steps: Annotated[
        int, typer.Option("--max-steps", min=2, help="At most this many steps, retries included.")
    ] = 30,
    users: Annotated[int | None, typer.Option("--users", min=1, help="Users per step (default from the rate).")] = None,
    path: Annotated[
        list[str] | None, typer.Option("--path", "-p", help="A request: '/cart' or 'POST /orders'; repeat.")
    ] = None,
    locustfile: Annotated[Path | None, typer.Option("--locustfile", "-f", help="Your own locustfile.")] = None,
    previous: Annotated[
        Path | None, typer.Option("--previous", metavar="FILE", help="An earlier --json output or attestation.")
    ] = None,
    baseline_rps: Annotated[float | None, typer.Option("--baseline-rps", help="The knee to compare with.")] = None,
    margin: Annotated[float, typer.Option("--margin", min=0.0, max=0.999, help="Allowed drop below it.")] = 0.1,
    attest: Annotated[bool, typer.Option("--attest", help="Sign the result (needs --key, --subject, --out).")] = False,
    key: Annotated[Path | None, typer.Option("--key", metavar="KEY", help="Private key to sign with.")] = None,
    subject: Annotated[
        str | None, typer.Option("--subject", metavar="NAME@sha256:HEX", help="The artifact tested.")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", metavar="DIR", help="Directory source to store it in (DIR/sha256-HEX/).")
    ] = None,
    service: Annotated[str | None, typer.Option("--service", help="Service named in it (default: NAME).")] = None,
    version: Annotated[str, typer.Option("--version", help="Version named in the attestation.")] = "unknown",
    environment: Annotated[str | None, typer.Option("--env", "--environment", help="Environment named in it.")] = None,
    metrics_out: MetricsOutOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout.")] = False,
) -> None:
    """Step the offered rate against ONE replica until its SLO breaks, and report the knee and the curve.

    A geometric ramp from --start (times --factor) until a step breaks the SLO (error ratio, latency bounds,
    achieved over offered rate), then a bisection to --resolution. Exits 0 when a knee was found (and is
    within --margin of the baseline, when one is given), 1 when not.

    `--metrics-out FILE` writes vouch_loadtest_knee_rps{service, environment, version} (0: no rate held;
    `unknown` where no option gave a label) for node_exporter's textfile collector or a Pushgateway.

    Example: vouch loadtest scale http://127.0.0.1:8080 --max-p95-ms 100 --start 20 --baseline-rps 80 --json
    """
    with reported(as_json=as_json):
        if not url.startswith(("http://", "https://")):
            raise InputError(f"{url!r} is not an http:// or https:// URL")
        if previous is not None and baseline_rps is not None:
            raise InputError("give --previous FILE or --baseline-rps N, not both")
        if attest and (key is None or subject is None or out_dir is None):
            raise InputError("--attest needs --key KEY, --subject NAME@sha256:HEX and --out DIR")
        check_metrics_out(metrics_out)
        bounds = {"p50": max_p50_ms, "p95": max_p95_ms, "p99": max_p99_ms}
        settings: dict[str, Any] = {
            "start": start, "max_rate": max_rate, "factor": factor, "step_duration": step_duration,
            "resolution": resolution, "retries": retries, "max_steps": max_steps, "users": users, "margin": margin,
        }  # fmt: skip
        spec = LoadTestSpec.model_validate(
            {
                "locustfile": str(locustfile) if locustfile is not None else None,
                "paths": path or [],
                "thresholds": {
                    "max_error_ratio": max_error_ratio,
                    "max_latency_ms": {k: v for k, v in bounds.items() if v is not None},
                    "min_rate_ratio": min_rate_ratio,
                },
                "scale": settings,
            }
        )
        signer = load_signer(key) if key is not None else None
        parsed = parse_subject(subject) if subject is not None else None
        baseline = _baseline(previous, baseline_rps, signer)
        result = asyncio.run(_run(url, spec))
        comparison = compare_knee(result, baseline, margin=margin)
        location = None
        if attest and signer is not None and parsed is not None and out_dir is not None:
            names = (service or parsed.name, version, environment)
            location = _attest(result, comparison, signer=signer, subject=parsed, folder=out_dir, names=names)
        metrics = None
        if metrics_out is not None:
            labels = {"service": service or (parsed.name if parsed is not None else UNKNOWN),
                      "environment": environment or UNKNOWN, "version": version}  # fmt: skip
            metrics = write_metrics(metrics_out, lambda registry: ScaleMetrics(registry).export(result, **labels))
    if as_json:
        report = {
            "result": result.to_dict(),
            "comparison": {"passed": comparison.passed, "reason": comparison.reason,
                           "baseline_rps": comparison.baseline_rps, "margin": comparison.margin},
            "attestation": location,
            "metrics": metrics,
        }  # fmt: skip
        print(json.dumps(report, indent=2))
    else:
        _report(result, comparison, location, metrics)
    if not comparison.passed:
        raise typer.Exit(EXIT_FAILED)
