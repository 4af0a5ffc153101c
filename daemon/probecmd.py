"""``vouch probe``: run synthetic probes standalone, convert blackbox_exporter modules, write alert rules."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from vouch.core.errors import ConfigError, InputError, Problem
from vouch.daemon.cliout import err, out, reported
from vouch.daemon.configload import validate_model_text
from vouch.probes.base import ProbeResult
from vouch.probes.registry import ProbeDefinition, ProbeFile, build_probe
from vouch.probes.tlsinfo import TlsContexts

probe_app = typer.Typer(
    help="Run synthetic probes, convert blackbox_exporter modules, write Prometheus alerting rules.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)


def _load(file: Path) -> list[ProbeDefinition]:
    """Probe definitions from ``file``: a list under ``probes:``."""
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError([Problem(str(file), None, "", f"cannot read: {exc.strerror}")]) from exc
    return validate_model_text(text, ProbeFile, file=str(file), what="a 'probes:' list").probes


async def _run_once(definitions: Sequence[ProbeDefinition]) -> list[ProbeResult]:
    contexts = TlsContexts()
    probes = [build_probe(spec, contexts=contexts) for spec in definitions]
    try:
        runs = [probe.run(target) for probe, spec in zip(probes, definitions, strict=True) for target in spec.targets]
        return list(await asyncio.gather(*runs))
    finally:
        await asyncio.gather(*(p.close() for p in probes))


def _table(results: Sequence[ProbeResult]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("PROBE", "KIND", "TARGET", "STATUS", "LATENCY", "REASON"):
        table.add_column(column, overflow="fold")
    for r in results:
        status = Text("ok", style="green") if r.success else Text("FAIL", style="bold red")
        why = "" if r.success else f"{r.reason.value if r.reason else 'failed'}: {r.message}"
        if r.step:
            why = f"step {r.step}: {why}"
        table.add_row(r.probe, r.kind, r.target, status, f"{r.duration * 1000:.0f} ms", why)
    return table


@probe_app.command("run")
def run(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="YAML with a `probes:` list of probe definitions.")],
    once: Annotated[bool, typer.Option("--once", help="Run every probe once against every target, then exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout.")] = False,
) -> None:
    """Run probes standalone and show status, latency and the reason of every failure.

    With `--once` (what CI uses as an ephemeral environment's health check) it exits 0 when every probe
    passed and 1 when any failed. Without it the probes run on their schedules until Ctrl-C.

    Example: vouch probe run probes.yaml --once
    """
    with reported(as_json=as_json):
        definitions = _load(file)
    if not once:
        _run_forever(definitions)
        return
    results = asyncio.run(_run_once(definitions))
    if as_json:
        print(json.dumps({"results": [r.to_dict() for r in results], "ok": all(r.success for r in results)}, indent=2))
    else:
        out.print(_table(results))
    if not all(r.success for r in results):
        raise typer.Exit(1)


def _run_forever(definitions: Sequence[ProbeDefinition]) -> None:
    from vouch.probes.scheduler import ProbeRun, Scheduler

    def show(run: ProbeRun) -> None:
        err.print(_table([run.result]))

    async def main() -> None:
        scheduler = Scheduler(on_result=show)
        contexts = TlsContexts()
        probes = [build_probe(spec, contexts=contexts) for spec in definitions]
        try:
            for probe, spec in zip(probes, definitions, strict=True):
                for target in spec.targets:
                    scheduler.add(f"{spec.name}@{target}", probe, spec=spec, target=target, labels=dict(spec.labels))
            err.print(f"running {len(definitions)} probes on their schedules; Ctrl-C stops")
            await scheduler.run()
        finally:
            await asyncio.gather(*(p.close() for p in probes))

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        err.print("stopped")


@probe_app.command("import-blackbox")
def import_blackbox(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A blackbox_exporter modules file (blackbox.yml).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout.")] = False,
) -> None:
    """Convert blackbox_exporter modules into vouch probe definitions, naming what could not be carried over.

    Modules hold no targets: each converted probe gets a `<TARGET>` placeholder to fill in.

    Example: vouch probe import-blackbox /etc/prometheus/blackbox.yml > probes.yaml
    """
    from vouch.probes.blackbox import convert_blackbox, render_conversion

    with reported(as_json=as_json):
        try:
            text = file.read_text()
        except OSError as exc:
            raise InputError(f"cannot read {file}: {exc.strerror}") from exc
        conversion = convert_blackbox(text, source=str(file))
    if as_json:
        print(json.dumps(conversion.to_dict(), indent=2))
    else:
        sys.stdout.write(render_conversion(conversion))
    for item in conversion.unconverted:
        err.print(f"not carried over: {item.module}: {item.option}: {item.why}", markup=False)


@probe_app.command("rules")
def rules(
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the rules file here (default: stdout).")
    ] = None,
    stale_after: Annotated[float, typer.Option(help="Seconds without a run before a probe counts as stale.")] = 300,
    expiry_days: Annotated[float, typer.Option(help="Alert when a certificate expires within this many days.")] = 14,
) -> None:
    """Write Prometheus alerting rules for probes: failing, stale or absent, certificate expiring.

    Example: vouch probe rules --out /etc/prometheus/rules/vouch-probes.yml
    """
    from vouch.probes.rules import render_rules

    text = render_rules(stale_after=stale_after, expiry_days=expiry_days)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        err.print(f"wrote {output}", markup=False)
