"""``vouch preview up|down|list|reap``: a pull request's artifact stood up alone, checked, attested.

``up`` stands the service's VERSION up as preview ``<service>-pr-<N>`` (its backends replaced by the
mocks of ``services.<name>.preview``), health-checks it, runs its network tests and, with
``--digest`` and ``--commit``, signs both results as attestations the deploy policies can require.
Each step is reported as it ends, and with ``--notify`` posted as a reply in the pull request's chat
thread (steps ``preview-up``, ``health``, ``network-tests``, ``attest``).

What stays up: a preview whose checks passed stays up for later pipeline steps until ``down`` or its
TTL (the daemon's reaper removes expired previews every minute). One whose checks failed is torn
down at once unless ``--keep`` is given (to look at it; the reaper still removes it), so a failing
pipeline that skips its later steps leaks nothing. A preview that does not even come up is always
removed. CI's own teardown step can run ``vouch preview down NAME --missing-ok`` unconditionally.

Exit codes: 0 up and every check passed; 1 it did not come up or a check failed (attestations, if
asked for, are written all the same and say so); 2 usage, configuration or connection problems.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from vouch.core.durations import parse_duration
from vouch.core.errors import InputError, NotFoundError, PlatformError, VouchError
from vouch.daemon.cliconnect import ConfigOpt, JsonOpt, TokenFileOpt, TokenOpt, UrlOpt, connect, load_default
from vouch.daemon.client import VouchClient
from vouch.daemon.cliout import EXIT_FAILED, err, out, reported
from vouch.daemon.config import VouchConfig
from vouch.daemon.preview.attest import attest_to, signing_key
from vouch.daemon.preview.attestopts import ArtifactNameOpt, CommitOpt, DigestOpt, SigningKeyOpt, StoreOpt
from vouch.daemon.preview.checks import NOT_RUN, report_document, report_lines, run_checks
from vouch.daemon.preview.kube import KubePreviews
from vouch.daemon.preview.local import ListedPreview, LocalPreviews
from vouch.daemon.preview.model import Check, CheckReport, Preview
from vouch.daemon.preview.state import default_name
from vouch.rollout.attestations.keys import load_signer
from vouch.rollout.config import LocalPlatformSpec, ServiceSpec
from vouch.rollout.platforms.kube.settings import KubernetesPlatformSpec

preview_app = typer.Typer(
    help=(
        "Preview environments: a pull request's artifact stood up alone on loopback, its backends mocked, "
        "health-checked, network-tested and attested; removed by `down` or, once its TTL passes, by the "
        "daemon's reaper.\n\n"
        'Example: vouch preview up checkout "$VERSION" --pr 42 --digest "sha256:$DIGEST" --commit "$SHA" --notify'
    ),
    no_args_is_help=True,
)

StateDirOpt = Annotated[
    Path | None,
    typer.Option("--state-dir", help="Where previews are kept (default: the configuration's daemon.state_dir)."),
]
PlatformOpt = Annotated[
    str | None,
    typer.Option(
        "--platform",
        metavar="local|kubernetes",
        help="Where previews run: processes here, or a namespace each in a cluster (default: the configuration's "
        "platform kind).",
    ),
]
Previews = LocalPreviews | KubePreviews


# --------------------------------------------------------------------------- up


@dataclass(frozen=True)
class StepReport:
    """One step of ``up`` as reported, and as posted to the pull request's thread."""

    step: str
    status: str
    """``passed``, ``failed`` or ``skipped``, as ``vouch notify pr`` spells them."""
    message: str


class _Steps:
    """Reports each step on stderr as it ends and, with a client, as a reply in the pull request's chat thread.

    Chat is news, not a gate: a daemon that cannot be reached is warned about and the pipeline goes on.
    """

    def __init__(self, client: VouchClient | None, *, repo: str | None, pr: int) -> None:
        self.done: list[StepReport] = []
        self._client = client
        self._repo = repo
        self._pr = pr

    async def report(self, step: str, status: str, message: str) -> None:
        self.done.append(StepReport(step, status, message))
        err.print(f"{step}: {status} — {message}", markup=False)
        if self._client is None or self._repo is None:
            return
        try:
            await asyncio.to_thread(
                self._client.notify_pr, self._repo, self._pr, step=step, status=status, message=message[:500]
            )
        except VouchError as exc:
            err.print(f"warning: could not post {step} to pull request {self._pr}: {exc}", markup=False)


@dataclass(frozen=True)
class _Attesting:
    """What the attestations are about and how they are signed."""

    subject: str
    digest: str
    commit: str
    key: Path
    store: Path | None


@dataclass
class _Outcome:
    preview: Preview | None
    report: CheckReport | None = None
    attestations: list[str] = field(default_factory=list)
    up: bool = False
    kept: bool = False

    @property
    def passed(self) -> bool:
        return self.up and (self.report is None or self.report.passed)


@preview_app.command("up")
def up_command(
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="The service, as named in the configuration.")],
    version: Annotated[str, typer.Argument(metavar="VERSION", help="The version to stand up ({version}).")],
    pr: Annotated[int, typer.Option("--pr", min=1, help="The pull request's number.")],
    repo: Annotated[
        str | None, typer.Option("--repo", envvar="GITHUB_REPOSITORY", help="The repository, owner/name.")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="The preview's name (default: SERVICE-pr-N).")] = None,
    ttl: Annotated[
        str | None, typer.Option("--ttl", help="Removed by the reaper after this long (default: preview.ttl).")
    ] = None,
    digest: DigestOpt = None,
    commit: CommitOpt = None,
    artifact_name: ArtifactNameOpt = None,
    key: SigningKeyOpt = None,
    store: StoreOpt = None,
    no_checks: Annotated[
        bool, typer.Option("--no-checks", help="Only stand it up: no checks, no attestations.")
    ] = False,
    keep: Annotated[bool, typer.Option("--keep", help="Leave the preview up even when a check failed.")] = False,
    notify: Annotated[
        bool, typer.Option("--notify", help="Post each step as a reply in the pull request's chat thread.")
    ] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    platform: PlatformOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Stand VERSION of SERVICE up as a preview with its mocked backends, check it, and attest the results.

    The preview's processes outlive this command. With --digest and --commit both results are signed
    (--key, or attestations.signing_key) and stored (--store, or the configured source). A preview whose
    checks passed stays up until `vouch preview down` or its TTL; one whose checks failed is torn down
    unless --keep.

    Exits 0 when it came up and every check passed, 1 when not, 2 on usage or configuration errors.

    Example: vouch preview up checkout 2.4.1-pr42 --pr 42 --digest "sha256:$DIGEST" --commit "$SHA" --notify
    """
    with reported(as_json=as_json), contextlib.ExitStack() as stack:
        cfg, folder = _where(config, state_dir, need_config=True)
        assert cfg is not None
        spec = cfg.service(service)
        seconds = _ttl(ttl)
        preview_name = name or default_name(service, pr)
        if no_checks and (digest or commit or key or store):
            raise InputError("--digest, --commit, --key and --store attest the checks' results: not with --no-checks")
        attesting = _attesting(
            cfg, subject=artifact_name or service, digest=digest, commit=commit, key=key, store=store
        )
        client = None
        if notify:
            if repo is None:
                raise InputError("--notify posts to pull request --pr of a repository: give --repo owner/name")
            client = stack.enter_context(connect(config, url, token, token_file))
        owner = _owner(pr, repo=repo, commit=commit, digest=digest)
        steps = _Steps(client, repo=repo, pr=pr)
        outcome = asyncio.run(
            _up(
                _previews(cfg, folder, platform),
                cfg,
                service,
                spec,
                version,
                name=preview_name,
                ttl=seconds,
                owner=owner,
                checks=not no_checks,
                keep=keep,
                attesting=attesting,
                steps=steps,
            )
        )
    _print_up(outcome, steps.done, name=preview_name, as_json=as_json)
    if not outcome.passed:
        raise typer.Exit(EXIT_FAILED)


async def _up(
    previews: Previews,
    cfg: VouchConfig,
    service_name: str,
    service: ServiceSpec,
    version: str,
    *,
    name: str,
    ttl: float | None,
    owner: dict[str, str],
    checks: bool,
    keep: bool,
    attesting: _Attesting | None,
    steps: _Steps,
) -> _Outcome:
    """Stand up, check, attest; tear down what failed unless ``keep``."""
    try:
        preview = await previews.up(service_name, service, version, name=name, ttl=ttl, owner=owner)
    except PlatformError as exc:
        await steps.report("preview-up", "failed", str(exc))
        if not checks:
            return _Outcome(None)
        report = _not_up(name, service, str(exc))
        return _Outcome(None, report, await _attest(cfg, report, attesting, steps))
    await steps.report("preview-up", "passed", f"{name}: {service_name} {version} answers at {preview.url}")
    if not checks:
        return _Outcome(preview, up=True, kept=True)
    assert service.preview is not None  # previews.up refuses a service without preview settings
    outcome = _Outcome(preview, up=True)
    try:
        config_dir = cfg.source.parent if cfg.source is not None else Path.cwd()
        outcome.report = await run_checks(preview, service.preview, service, config_dir=config_dir)
        await _report_checks(outcome.report, steps)
        outcome.attestations = await _attest(cfg, outcome.report, attesting, steps)
    finally:
        outcome.kept = keep or (outcome.passed and outcome.report is not None)
        if not outcome.kept:
            await asyncio.shield(previews.down(name))
    return outcome


async def _report_checks(report: CheckReport, steps: _Steps) -> None:
    failing = [c.name for c in report.health if not c.passed]
    if report.healthy:
        await steps.report("health", "passed", f"{len(report.health)} health check(s) passed")
    else:
        await steps.report("health", "failed", f"not healthy: {', '.join(failing)}")
    failed = [c.name for c in report.tests if not c.passed]
    status = "passed" if report.tests_result == "PASSED" else "failed"
    detail = f"{len(report.tests)} test(s)" + (f"; failed: {', '.join(failed)}" if failed else "")
    await steps.report("network-tests", status, f"{report.tests_result}: {detail}")


async def _attest(cfg: VouchConfig, report: CheckReport, attesting: _Attesting | None, steps: _Steps) -> list[str]:
    if attesting is None:
        await steps.report("attest", "skipped", "no --digest and --commit: nothing attested")
        return []
    try:
        written = await attest_to(
            cfg,
            report,
            store=attesting.store,
            subject_name=attesting.subject,
            digest=attesting.digest,
            commit=attesting.commit,
            key=attesting.key,
        )
    except VouchError as exc:
        await steps.report("attest", "failed", str(exc))
        raise
    verdict = "passed" if report.passed else "failed"
    await steps.report("attest", "passed", f"{len(written)} attestation(s) written, saying the checks {verdict}")
    return written


def _not_up(name: str, service: ServiceSpec, why: str) -> CheckReport:
    """The report of a preview that never came up: unhealthy, nothing tested (so attested as failed)."""
    mocks = tuple(m.name for m in service.preview.mocks) if service.preview else ()
    return CheckReport(
        environment=name,
        healthy=False,
        health=(Check("start", False, why[-2000:]),),
        tests_result="FAILED",
        tests=(Check(NOT_RUN, False, "the preview did not come up"),),
        mocked_backends=mocks,
        checked_at=time.time(),
    )


def _attesting(
    cfg: VouchConfig, *, subject: str, digest: str | None, commit: str | None, key: Path | None, store: Path | None
) -> _Attesting | None:
    """What to attest with, checked before anything starts (a bad key fails now, not after the checks)."""
    if digest is None and commit is None:
        if key is not None or store is not None:
            raise InputError("--key and --store sign and keep attestations: give --digest and --commit too")
        return None
    if digest is None or commit is None:
        raise InputError("--digest and --commit go together: the attestations are about both")
    key = signing_key(cfg, key)
    load_signer(key)
    return _Attesting(subject, digest, commit, key, store)


def _owner(pr: int, *, repo: str | None, commit: str | None, digest: str | None) -> dict[str, str]:
    actor = os.environ.get("GITHUB_ACTOR") or os.environ.get("USER") or "cli"
    found = {"pr": str(pr), "repo": repo, "actor": actor, "commit": commit, "digest": digest}
    return {key: value for key, value in found.items() if value}


def _ttl(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ttl") from exc
    if seconds <= 0:
        raise typer.BadParameter("must be more than zero", param_hint="--ttl")
    return seconds


def _print_up(outcome: _Outcome, steps: list[StepReport], *, name: str, as_json: bool) -> None:
    if as_json:
        document = {
            "name": name,
            "passed": outcome.passed,
            "up": outcome.kept,
            "preview": outcome.preview.to_dict() if outcome.preview else None,
            "steps": [asdict(s) for s in steps],
            "report": report_document(outcome.report) if outcome.report else None,
            "attestations": outcome.attestations,
        }
        print(json.dumps(document, indent=2))
        return
    if outcome.report is not None:
        for line in report_lines(outcome.report):
            out.print(line, markup=False)
    for location in outcome.attestations:
        out.print(f"  attested -> {location}", markup=False)
    preview = outcome.preview
    if preview is None:
        out.print(f"preview {name} did not come up; nothing of it is left running", markup=False)
    elif outcome.kept:
        until = time.strftime("%Y-%m-%d %H:%M", time.localtime(preview.expires_at))
        out.print(f"preview {name} is up at {preview.url} until {until}", markup=False)
        for mock, base in preview.mocks.items():
            out.print(f"  mock {mock}: {base}", markup=False)
        out.print(f"  remove it with: vouch preview down {name}", markup=False)
    else:
        out.print(f"preview {name} was torn down: a check failed (--keep leaves it up to look at)", markup=False)


# --------------------------------------------------------------------------- down, list, reap


@preview_app.command("down")
def down_command(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The preview, as `vouch preview list` names it.")],
    missing_ok: Annotated[
        bool, typer.Option("--missing-ok", help="No error when there is no such preview (an always-run CI step).")
    ] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    platform: PlatformOpt = None,
) -> None:
    """Stop every process of preview NAME (SIGTERM, then SIGKILL after the grace period) and remove it.

    Example: vouch preview down checkout-pr-42 --missing-ok
    """
    with reported(as_json=as_json):
        cfg, folder = _where(config, state_dir)
        found = True
        try:
            removed = asyncio.run(_previews(cfg, folder, platform).down(name))
        except NotFoundError:
            if not missing_ok:
                raise
            found, removed = False, None
    if as_json:
        document = {"removed": name if found else None, "preview": removed.to_dict() if removed else None}
        print(json.dumps(document, indent=2))
    elif found:
        out.print(f"removed preview {name}", markup=False)
    else:
        out.print(f"no preview named {name}; nothing to remove", markup=False)


@preview_app.command("list")
def list_command(
    as_json: JsonOpt = False, config: ConfigOpt = None, state_dir: StateDirOpt = None, platform: PlatformOpt = None
) -> None:
    """Show the previews: service, version, age, time left before the reaper removes them, address.

    Example: vouch preview list --json
    """
    with reported(as_json=as_json):
        cfg, folder = _where(config, state_dir)
        listed = asyncio.run(_previews(cfg, folder, platform).list(time.time()))
    if as_json:
        print(json.dumps({"previews": [_listed_document(item) for item in listed]}, indent=2))
        return
    if not listed:
        out.print("no previews")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("NAME", "SERVICE", "VERSION", "AGE", "EXPIRES IN", "ADDRESS", "STATE"):
        table.add_column(column, no_wrap=True)
    for item in listed:
        p = item.preview
        expires = "expired" if item.expires_in <= 0 else span(item.expires_in)
        table.add_row(p.name, p.service, p.version, span(item.age), expires, p.address, _state_of(item))
    out.print(table)


@preview_app.command("reap")
def reap_command(
    as_json: JsonOpt = False, config: ConfigOpt = None, state_dir: StateDirOpt = None, platform: PlatformOpt = None
) -> None:
    """Remove every preview whose TTL has passed (the daemon does this every minute while it runs).

    Example: vouch preview reap --state-dir .vouch
    """
    with reported(as_json=as_json):
        cfg, folder = _where(config, state_dir)
        removed = asyncio.run(_previews(cfg, folder, platform).reap(time.time()))
    if as_json:
        print(json.dumps({"removed": removed}, indent=2))
    elif removed:
        out.print(f"removed {len(removed)} expired preview(s): {', '.join(removed)}", markup=False)
    else:
        out.print("no expired previews", markup=False)


# --------------------------------------------------------------------------- plumbing


def _where(
    config: Path | None, state_dir: Path | None, *, need_config: bool = False
) -> tuple[VouchConfig | None, Path]:
    """The configuration (``--config`` or ./vouch.yaml) and the state folder (``--state-dir`` or its state_dir)."""
    cfg = load_default(config) if config is not None or need_config or state_dir is None else None
    if need_config and cfg is None:
        raise InputError("a preview is made from the service's configuration: give --config FILE")
    if state_dir is not None:
        return cfg, state_dir
    if cfg is None:
        raise InputError("give --state-dir DIR, or --config FILE whose daemon.state_dir holds the previews")
    return cfg, cfg.state_path()


def _previews(cfg: VouchConfig | None, state_dir: Path, kind: str | None = None) -> Previews:
    """The previews of ``kind`` (default: the configuration's platform kind): processes of this machine,
    stopped with the local platform's grace period, or namespaces of the kubernetes platform's cluster."""
    platform = cfg.platform if cfg is not None else None
    kind = kind or (platform.kind if platform is not None else "local")
    if kind == "kubernetes":
        return KubePreviews.on_platform(
            platform if isinstance(platform, KubernetesPlatformSpec) else KubernetesPlatformSpec(),
            cfg.previews if cfg is not None else None,
        )
    if kind != "local":
        raise InputError(f"unknown platform {kind!r} for previews; known: kubernetes, local")
    grace = platform.stop_grace if isinstance(platform, LocalPlatformSpec) else 5.0
    return LocalPreviews(state_dir, stop_grace=grace)


def span(seconds: float) -> str:
    """A duration for people, to the minute past the first hour.

    >>> span(42), span(3 * 60 + 5), span(2 * 3600 + 5 * 60), span(50 * 3600)
    ('42s', '3m5s', '2h05m', '2d2h')
    """
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600}h"


def _state_of(item: ListedPreview) -> str:
    if not item.running:
        return "down (a process exited)"
    return str(item.preview.data.get("status", "up"))


def _listed_document(item: ListedPreview) -> dict[str, Any]:
    return {**item.preview.to_dict(), "age": item.age, "expires_in": item.expires_in, "running": item.running}
