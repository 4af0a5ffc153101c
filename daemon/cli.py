"""The ``vouch`` command line.

Exit codes: 0 success; 1 the thing checked failed (a promotion rolled back);
2 usage, configuration or connection problems, with a message naming what is
wrong. With ``--json`` stdout carries exactly one JSON document and progress
goes to stderr.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from vouch.core.errors import ConflictError
from vouch.daemon.attestcmd import attest_app
from vouch.daemon.auditcmd import audit_app
from vouch.daemon.breakglasscmd import break_glass_app, grant_for_promotion
from vouch.daemon.checkcmd import check_app
from vouch.daemon.cliconnect import (
    DEFAULT_CONFIG,
    ConfigOpt,
    EnvOpt,
    JsonOpt,
    TokenFileOpt,
    TokenOpt,
    UrlOpt,
    connect,
)
from vouch.daemon.client import follow_release
from vouch.daemon.cliout import err, fail, out, reported
from vouch.daemon.config import load_config
from vouch.daemon.configcmd import config_app
from vouch.daemon.loadtestcmd import loadtest_app
from vouch.daemon.notifycmd import notify_app
from vouch.daemon.policycmd import policy_app
from vouch.daemon.previewcmd import preview_app
from vouch.daemon.probecmd import probe_app
from vouch.daemon.render import print_status, render_event, status_rows, status_table
from vouch.daemon.verifyenvcmd import verify_env

app = typer.Typer(
    name="vouch",
    help=(
        "Progressive delivery with no human in the loop after merge: roll a version out step by step, "
        "judge every step on SLOs and alarms, and roll back the moment anything fails.\n\n"
        "Start with `vouch demo`, or `vouch daemon --config vouch.yaml` and `vouch promote SERVICE VERSION`.\n\n"
        "Example: vouch promote checkout 2.4.1 --wait"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
ROLLOUTS = "Rollouts"
EVIDENCE = "Evidence: what CI proves before a release may go"
OPERATIONS = "Operations"

app.add_typer(check_app, name="check", rich_help_panel=EVIDENCE)
app.add_typer(attest_app, name="attest", rich_help_panel=EVIDENCE)
app.add_typer(policy_app, name="policy", rich_help_panel=EVIDENCE)
app.add_typer(preview_app, name="preview", rich_help_panel=EVIDENCE)
app.add_typer(loadtest_app, name="loadtest", rich_help_panel=EVIDENCE)
app.add_typer(break_glass_app, name="break-glass", rich_help_panel=OPERATIONS)
app.add_typer(audit_app, name="audit", rich_help_panel=OPERATIONS)
app.add_typer(notify_app, name="notify", rich_help_panel=OPERATIONS)
app.add_typer(probe_app, name="probe", rich_help_panel=OPERATIONS)
app.add_typer(config_app, name="config", rich_help_panel=OPERATIONS)

# --------------------------------------------------------------------------- daemon


@app.command(rich_help_panel=ROLLOUTS)
def daemon(
    config: Annotated[
        Path, typer.Option("--config", "-c", envvar="VOUCH_CONFIG", help="The configuration file.")
    ] = Path(DEFAULT_CONFIG),
) -> None:
    """Run the daemon: the API, the engine and the platform, until SIGTERM or Ctrl-C.

    Promotions in flight when it last stopped, however it stopped, resume where they stood.

    Example: vouch daemon --config examples/local.yaml
    """
    from vouch.daemon.app import DaemonInfo, serve
    from vouch.daemon.logs import setup_logging

    with reported(as_json=False):
        cfg = load_config(config)
    setup_logging(cfg.daemon.log_level)

    def announce(info: DaemonInfo) -> None:
        where = {"env": f"${cfg.daemon.token_env}", "file": str(info.token.path), "created": str(info.token.path)}
        note = " (created now)" if info.token.origin == "created" else ""
        err.print(f"vouch daemon ready on {info.url}; API token from {where[info.token.origin]}{note}", markup=False)

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        await serve(cfg, on_ready=announce)

    with reported(as_json=False):
        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            err.print("vouch daemon stopped", markup=False)


# --------------------------------------------------------------------------- promote


@app.command(rich_help_panel=ROLLOUTS)
def promote(
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="The service, as named in the configuration.")],
    version: Annotated[str, typer.Argument(metavar="VERSION", help="The version to roll out.")],
    env: EnvOpt = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Follow the release to its end; exit 1 if it fails.")
    ] = False,
    digest: Annotated[
        str | None, typer.Option("--digest", help="The artifact's digest, sha256:HEX: what attestations are about.")
    ] = None,
    artifact_name: Annotated[str | None, typer.Option("--artifact-name", help="The artifact's name.")] = None,
    commit: Annotated[str | None, typer.Option("--commit", help="The full id of the commit released.")] = None,
    merge: Annotated[
        str | None, typer.Option("--merge", help="How it was merged: fast-forward or non-fast-forward.")
    ] = None,
    pr_head: Annotated[str | None, typer.Option("--pr-head", help="The pull request's head commit.")] = None,
    break_glass: Annotated[
        str | None,
        typer.Option(
            "--break-glass",
            metavar="GATE",
            help="Let one failure of GATE pass, once, for this version in --env (audited; needs --reason).",
        ),
    ] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why the glass is broken (with --break-glass).")
    ] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Release VERSION of SERVICE through its environments in order, or only --env.

    Each environment is one promotion: its plan's steps, each judged by its gates; any failure rolls back
    and stops the release there.

    With attestations gating an environment, name the artifact (`--digest`) and the commit (`--commit`,
    `--merge`, `--pr-head`): the policy checks the attestations made for them.

    In an emergency `--break-glass GATE --reason TEXT` first grants a one-time override of that gate for
    this version in --env (see `vouch break-glass --help`): security hears of it and the audit log keeps it.

    Example: vouch promote checkout 2.4.1 --digest "sha256:$DIGEST" --commit "$(git rev-parse HEAD)" --wait
    """
    if (commit is None) and (merge is not None or pr_head is not None):
        fail("--merge and --pr-head describe a --commit; give it too", as_json=as_json)
    if reason is not None and break_glass is None:
        fail("--reason explains a --break-glass GATE; give it too", as_json=as_json)
    artifact = {"digest": digest, **({"name": artifact_name} if artifact_name else {})} if digest else None
    commit_ref = {"sha": commit, "merge": merge, "pr_head": pr_head} if commit else None
    with reported(as_json=as_json), connect(config, url, token, token_file) as client:
        if break_glass is not None:
            grant_for_promotion(client, service, version, environment=env, gate=break_glass, reason=reason)
        created = client.submit(service, version, environment=env, artifact=artifact, commit=commit_ref)
        release = created["release"]
        if not wait:
            _print_result({"release": release, "promotions": created["promotions"]}, as_json=as_json)
            return
        result = follow_release(client, release["id"], on_event=lambda e: err.print(render_event(e)))
    _print_result(result, as_json=as_json)
    if result["release"]["phase"] != "Succeeded":
        raise typer.Exit(1)


def _print_result(result: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    release = result["release"]
    out.print(f"release {release['id']}: {release['service']} {release['version']} — {release['phase']}")
    print_status(out, status_rows(result["promotions"]))


# --------------------------------------------------------------------------- status and abort


@app.command(rich_help_panel=ROLLOUTS)
def status(
    service: Annotated[str | None, typer.Argument(metavar="SERVICE", help="Only this service.")] = None,
    env: EnvOpt = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh every second until Ctrl-C.")] = False,
    limit: Annotated[int, typer.Option("--limit", help="Most recent promotions to show.")] = 20,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Show promotions, newest first: phase, step, and what they are doing.

    Example: vouch status checkout --env production --watch
    """
    if watch and as_json:
        fail("--watch is for people; scripts use --json without --watch", as_json=True)
    with reported(as_json=as_json), connect(config, url, token, token_file) as client:

        def fetch() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = client.list_promotions(service=service, environment=env, limit=limit)[
                "promotions"
            ]
            return found

        if as_json:
            print(json.dumps({"promotions": fetch()}, indent=2))
        elif watch:
            _watch(fetch)
        else:
            print_status(out, status_rows(fetch()))


def _watch(fetch: Callable[[], list[dict[str, Any]]]) -> None:
    from rich.live import Live

    with Live(status_table(status_rows(fetch())), console=out, refresh_per_second=2) as live:
        try:
            while True:
                time.sleep(1)
                live.update(status_table(status_rows(fetch())))
        except KeyboardInterrupt:
            pass


@app.command(rich_help_panel=ROLLOUTS)
def abort(
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="The service whose promotion to roll back.")],
    env: Annotated[str, typer.Option("--env", "-e", help="The environment of the promotion.")],
    reason: Annotated[str, typer.Option("--reason", help="Why; kept with the promotion.")] = "aborted from the CLI",
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Roll back the active promotion of SERVICE in --env now.

    Example: vouch abort checkout --env staging --reason "bad migration"
    """
    with reported(as_json=as_json), connect(config, url, token, token_file) as client:
        active = client.list_promotions(service=service, environment=env, active=True)["promotions"]
        if not active:
            raise ConflictError(f"{service}/{env} has no active promotion to abort")
        result = client.abort(active[0]["id"], reason=reason)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        p = result["promotion"]
        out.print(f"{p['service']}/{p['environment']} {p['version']}: {p['phase']} — {p['message']}", markup=False)


# --------------------------------------------------------------------------- demo


@app.command(rich_help_panel=ROLLOUTS)
def demo(
    as_json: JsonOpt = False,
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="Where the demo keeps its state (default: a new temp folder).")
    ] = None,
) -> None:
    """Tell the story of six releases on the local platform, in about a minute.

    v1 is deployed to staging and production (10 replicas each) under steady traffic; v2 is released through
    both, step by step, to success; v3 fails 20% of requests and is rolled back by the SLO gate; v4 looks
    healthy but trips an Alertmanager alarm and is rolled back by it; v5's vulnerability scan is signed by
    an untrusted key and the policy refuses it before any pod starts; v6 has the same flaw, but on call
    breaks the glass for staging: the denial passes once there, security hears of it, and production still
    refuses v6. Every release is gated on signed attestations; vouch signs its own when staging held. At
    the end the audit log is verified. Needs nothing but this package.

    Example: vouch demo --json > demo.json
    """
    from vouch.daemon.demo.story import run_demo

    with reported(as_json=as_json):
        result = run_demo(state_dir=state_dir, narrate=lambda line: err.print(line))
    if as_json:
        print(json.dumps(result.document, indent=2))
    if not result.ok:
        err.print("the demo did not go as told: " + "; ".join(result.surprises), markup=False)
        raise typer.Exit(1)


app.command("verify-env", rich_help_panel=EVIDENCE)(verify_env)  # after the rollout commands in --help


def main() -> None:
    """Console entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
