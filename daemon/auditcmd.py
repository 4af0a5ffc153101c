"""``vouch audit verify|show``: prove the audit log untouched, and read it.

``verify`` checks every record's hash, the seq/prev chain and the head checkpoint
(and, given public keys, every signature) and names the first bad record. Exit
codes: 0 intact; 1 tampered or damaged (edited, deleted, inserted, reordered or
cut-off records, a bad signature); 2 usage: no log given, an unreadable file or key.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from vouch.core.durations import parse_duration
from vouch.core.errors import InputError
from vouch.daemon.audit.verify import SUBJECT_FIELDS, AuditFilter, AuditReport, read_records, verify_log
from vouch.daemon.cliout import EXIT_FAILED, err, out, reported
from vouch.rollout.attestations.keys import load_public_key

audit_app = typer.Typer(
    name="audit",
    help=(
        "Verify and read the tamper-evident audit log (hash-chained JSON lines, optionally signed).\n\n"
        "Example: vouch audit verify --path .vouch/audit.jsonl --key vouch.key.pub"
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)

PathOpt = Annotated[
    Path | None,
    typer.Option(
        "--path",
        metavar="FILE",
        envvar="VOUCH_AUDIT_LOG",
        help="The audit log (its head checkpoint is FILE.head). Required unless VOUCH_AUDIT_LOG is set.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout.")]


def _log_path(path: Path | None) -> Path:
    if path is None:
        raise InputError("give --path FILE (the audit log, e.g. .vouch/audit.jsonl) or set VOUCH_AUDIT_LOG")
    return path


@audit_app.command("verify")
def verify(
    path: PathOpt = None,
    key: Annotated[
        list[Path] | None,
        typer.Option("--key", metavar="PUB.pem", help="Public key the records must be signed by; repeat for several."),
    ] = None,
    allow_missing_head: Annotated[
        bool,
        typer.Option(
            "--allow-missing-head",
            help="Accept a log without its .head checkpoint (a copy): records cut off the end then go unnoticed.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check every record, the chain between them and the head checkpoint; name the first bad record.

    Exits 0 when the log is intact, 1 when a record was edited, deleted, inserted, moved or cut
    off (or a signature does not verify), 2 when the log or a key cannot be read.

    Example: vouch audit verify --path .vouch/audit.jsonl --key vouch.key.pub --json
    """
    with reported(as_json=as_json):
        log_path = _log_path(path)
        keys = [load_public_key(p) for p in key] if key else None
        report = verify_log(log_path, public_keys=keys, require_head=not allow_missing_head)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _print_report(report)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def _print_report(report: AuditReport) -> None:
    signed = ", every signature verified" if report.signatures_checked else ""
    if report.ok:
        head = f"head at seq {report.head_seq}" if report.head_seq is not None else "no head checkpoint"
        out.print(Text(f"intact: {report.records} record(s) chained, {head}{signed} ({report.path})"))
        return
    where = f"seq {report.first_bad_seq} (line {report.line})"
    err.print(Text.assemble(("tampered:", "bold red"), f" {report.path}: {where}: {report.problem}"))
    if report.record:
        err.print(Text(f"  record: {report.record}"))
    err.print(Text(f"  {report.records} record(s) before it chained correctly"))


@audit_app.command("show")
def show(
    path: PathOpt = None,
    kind: Annotated[
        str | None, typer.Option("--kind", metavar="GLOB", help="Kinds to show, e.g. 'override.*'.")
    ] = None,
    service: Annotated[str | None, typer.Option("--service", help="Only records about this service.")] = None,
    env: Annotated[str | None, typer.Option("--env", "-e", help="Only records about this environment.")] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="Only records by this actor.")] = None,
    since: Annotated[
        str | None, typer.Option("--since", metavar="DURATION", help="Only records this recent: 30m, 1h, 2h30m.")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=0, help="Only the last N matching records.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the records that match every filter given, oldest first (reading, not verifying).

    Example: vouch audit show --path .vouch/audit.jsonl --kind 'override.*' --since 24h --json
    """
    with reported(as_json=as_json):
        log_path = _log_path(path)
        after = None
        if since is not None:
            try:
                after = time.time() - parse_duration(since)
            except ValueError as exc:
                raise InputError(f"--since: {exc}") from exc
        chosen = AuditFilter(kind=kind, service=service, environment=env, actor=actor, since=after, limit=limit)
        records = read_records(log_path, chosen)
    if as_json:
        print(json.dumps(records, indent=2, ensure_ascii=False))
        return
    for record in records:
        out.print(Text(render_record(record)))


def render_record(record: dict[str, Any]) -> str:
    """One record on one line for people: time, seq, kind, actor, what it is about, its data.

    >>> render_record({"seq": 3, "at": 0.0, "kind": "override.used", "actor": "vouch", "service": "web",
    ...                "environment": "prod", "data": {"gate": "slo"}, "hash": "ab", "prev": "cd"})
    '1970-01-01T00:00:00Z  #3  override.used  vouch  service=web environment=prod  {"gate":"slo"}'
    """
    when = datetime.fromtimestamp(record["at"], UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    about = " ".join(f"{name}={record[name]}" for name in SUBJECT_FIELDS if name in record)
    data = json.dumps(record["data"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "  ".join(part for part in (when, f"#{record['seq']}", record["kind"], record["actor"], about, data) if part)
