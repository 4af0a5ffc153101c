"""``vouch check dco|signed-commits``: evidence from git that CI can sign as an attestation in the same step.

Exit codes follow the rest of vouch: 0 every commit passed, 1 some commit did not (each is named with
why), 2 usage or input error (a bad range, not a repository, a missing key). With ``--json`` stdout
carries exactly one document. ``--attest`` signs the check's predicate for ``--subject`` with a local
key and writes the envelope to a directory store, but only when the check passed: a failed check
leaves no attestation behind that a careless policy could count.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from vouch.core.errors import InputError
from vouch.daemon.cliout import err, out, reported
from vouch.rollout.attestations.dsse import parse_subject, sign_statement
from vouch.rollout.attestations.keys import load_signer
from vouch.rollout.attestations.model import Statement, Subject
from vouch.rollout.attestations.predicates import predicate_type_for, validate_predicate
from vouch.rollout.attestations.sources import DirectorySource
from vouch.rollout.evidence.git import DcoReport, SignatureReport, dco, signed_commits

check_app = typer.Typer(
    help=(
        "Check commits for DCO sign-off or verified signatures, and optionally sign the result as an "
        "attestation.\n\nExample: vouch check dco --range origin/main..HEAD"
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)

RangeOpt = Annotated[
    str, typer.Option("--range", help="The commits to check, as A..B: reachable from B and not from A.")
]
RepoOpt = Annotated[Path, typer.Option("--repo", help="The git repository (default: the current directory).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout.")]
AttestOpt = Annotated[
    bool, typer.Option("--attest", help="When the check passes, sign its result and write the attestation.")
]
KeyOpt = Annotated[
    Path | None, typer.Option("--key", help="With --attest: the private signing key (PEM, ed25519 or ECDSA P-256).")
]
SubjectOpt = Annotated[str | None, typer.Option("--subject", help="With --attest: the artifact, as NAME@sha256:HEX.")]
StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="With --attest: the attestation directory (one folder per digest).")
]


@dataclass(frozen=True)
class AttestRequest:
    """What ``--attest`` asked for, checked (key readable, subject well formed) before any commit is read."""

    key: Path
    subject: Subject
    store: Path

    @property
    def subject_digest(self) -> str:
        return "sha256:" + self.subject.digest["sha256"]


@check_app.command("dco")
def check_dco(
    range_: RangeOpt,
    repo: RepoOpt = Path("."),
    as_json: JsonOpt = False,
    attest: AttestOpt = False,
    key: KeyOpt = None,
    subject: SubjectOpt = None,
    store: StoreOpt = None,
) -> None:
    """Check that every non-merge commit in the range has a `Signed-off-by:` trailer by its own author.

    Merge commits are skipped: they bring in commits that are checked themselves.

    Example: vouch check dco --range origin/main..HEAD --attest --key ci.pem --subject app@sha256:ab12... --store att/
    """
    with reported(as_json=as_json):
        request = _attest_request(attest, key=key, subject=subject, store=store)
        report = dco(repo, range_)
        written = _maybe_attest(request, "dco", report.to_predicate(), passed=report.passed)
    _show("dco", report, _dco_table(report), written=written, as_json=as_json)


@check_app.command("signed-commits")
def check_signed_commits(
    range_: RangeOpt,
    repo: RepoOpt = Path("."),
    allowed_signers: Annotated[
        Path | None,
        typer.Option(
            "--allowed-signers",
            help="SSH allowed signers file (default: the repository's gpg.ssh.allowedSignersFile).",
        ),
    ] = None,
    gpg_home: Annotated[
        Path | None,
        typer.Option("--gpg-home", help="GnuPG home holding the trusted keys (default: $GNUPGHOME or ~/.gnupg)."),
    ] = None,
    as_json: JsonOpt = False,
    attest: AttestOpt = False,
    key: KeyOpt = None,
    subject: SubjectOpt = None,
    store: StoreOpt = None,
) -> None:
    """Verify every commit's GPG or SSH signature in the range, merges included, the way git does.

    Only a good signature by a trusted key passes: an SSH key must be in the allowed signers file, a GPG
    key must be trusted in the keyring.

    Example: vouch check signed-commits --range origin/main..HEAD --allowed-signers .github/allowed_signers
    """
    with reported(as_json=as_json):
        request = _attest_request(attest, key=key, subject=subject, store=store)
        report = signed_commits(repo, range_, allowed_signers=allowed_signers, gpg_home=gpg_home)
        written = _maybe_attest(request, "signed-commits", report.to_predicate(), passed=report.passed)
    _show("signed-commits", report, _signature_table(report), written=written, as_json=as_json)


# --------------------------------------------------------------------------- attestation


def _attest_request(attest: bool, *, key: Path | None, subject: str | None, store: Path | None) -> AttestRequest | None:
    """Validate the ``--attest`` options together, so a usage error comes before any work."""
    options = (("--key", key), ("--subject", subject), ("--store", store))
    if not attest:
        given = [name for name, value in options if value]
        if given:
            raise InputError(f"{', '.join(given)} only mean something with --attest")
        return None
    if key is None or not subject or store is None:
        raise InputError(f"--attest needs {', '.join(name for name, value in options if not value)}")
    try:
        parsed = parse_subject(subject)
    except InputError as exc:
        raise InputError(f"--subject: {exc}") from exc
    load_signer(key)
    return AttestRequest(key, parsed, store)


def _maybe_attest(request: AttestRequest | None, step: str, predicate: dict[str, Any], *, passed: bool) -> str | None:
    if request is None or not passed:
        return None
    return _attest(request, step, predicate)


def _attest(request: AttestRequest, step: str, predicate: dict[str, Any]) -> str:
    """Sign ``predicate`` for ``step`` about the request's subject as a DSSE envelope; store it; say where.

    The file is named ``STEP-HASH.json`` in the subject's folder, as ``vouch attest sign --store`` names it.
    """
    predicate_type = predicate_type_for(step)
    problems = validate_predicate(predicate_type, predicate)
    if problems:
        raise InputError(f"the {step} predicate does not fit {predicate_type}: {'; '.join(problems)}")
    statement = Statement((request.subject,), predicate_type, predicate)
    envelope = sign_statement(statement, [load_signer(request.key)])
    document = json.dumps(envelope, indent=2).encode() + b"\n"
    name = f"{step}-{hashlib.sha256(document).hexdigest()[:12]}"
    return asyncio.run(DirectorySource(request.store).put(request.subject_digest, name, document))


# --------------------------------------------------------------------------- output


def _show(check: str, report: DcoReport | SignatureReport, table: Table, *, written: str | None, as_json: bool) -> None:
    if as_json:
        document = {
            "check": check,
            **report.to_predicate(),
            "problems": list(report.problems),
            "attestation": written,
        }
        print(json.dumps(document, indent=2))
    else:
        out.print(table)
        _summary(check, report, written)
    if not report.passed:
        raise typer.Exit(1)


def _summary(check: str, report: DcoReport | SignatureReport, written: str | None) -> None:
    count = len(report.commits)
    if report.passed:
        out.print(Text(f"{check}: passed, {count} commit{'s' if count != 1 else ''} in {report.range}", "green"))
    else:
        out.print(Text(f"{check}: FAILED in {report.range}", "bold red"))
        for problem in report.problems:
            out.print(f"  {problem}", markup=False)
    if isinstance(report, DcoReport) and report.skipped_merges:
        out.print(f"skipped {len(report.skipped_merges)} merge commit(s)", markup=False)
    if written is not None:
        err.print(f"attestation written to {written}", markup=False)


def _dco_table(report: DcoReport) -> Table:
    """One row per commit; why a commit failed is listed under the table, where it has room."""
    table = _table(("COMMIT", "AUTHOR", "SIGN-OFF"))
    for c in report.commits:
        table.add_row(c.sha[:12], c.author, _status(c.signed_off))
    return table


def _signature_table(report: SignatureReport) -> Table:
    """One row per commit; why a commit failed is listed under the table, where it has room."""
    table = _table(("COMMIT", "AUTHOR", "SIGNATURE", "FORMAT", "SIGNER", "KEY"))
    for c in report.commits:
        table.add_row(c.sha[:12], c.author, _status(c.verified), c.format or "-", c.signer or "-", c.key or "-")
    return table


def _table(columns: Sequence[str]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _status(ok: bool) -> Text:
    return Text("ok", style="green") if ok else Text("FAIL", style="bold red")
