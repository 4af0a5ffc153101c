"""``vouch notify pr``: CI reports a pull request's pipeline steps; the daemon threads them in chat."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from vouch.daemon.cliconnect import ConfigOpt, JsonOpt, TokenFileOpt, TokenOpt, UrlOpt, connect
from vouch.daemon.cliout import out, reported

notify_app = typer.Typer(
    help=(
        "Tell people about work that is not a rollout: a pull request's pipeline steps, posted by CI.\n\n"
        'Example: vouch notify pr --repo acme/checkout --pr 42 --step build --status passed --url "$RUN_URL"'
    ),
    no_args_is_help=True,
)

STATUSES = ("pending", "running", "passed", "failed", "skipped")


@notify_app.command()
def pr(
    repo: Annotated[str, typer.Option("--repo", help="The repository, owner/name.")],
    number: Annotated[int, typer.Option("--pr", min=1, help="The pull request's number.")],
    step: Annotated[str, typer.Option("--step", help="The pipeline step: build, unit-tests, preview, ...")],
    status: Annotated[str, typer.Option("--status", help=f"One of: {', '.join(STATUSES)}.")],
    url: Annotated[str | None, typer.Option("--url", help="A link to the step's run or log.")] = None,
    message: Annotated[str | None, typer.Option("--message", help="One line about it; default 'STEP STATUS'.")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    daemon_url: UrlOpt = None,
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Post one step of pull request --pr to chat: the PR gets one message listing its steps, updated in
    place, and each step is a reply in its thread (kept across daemon restarts).

    Example: vouch notify pr --repo acme/checkout --pr 42 --step unit-tests --status failed
    """
    if status not in STATUSES:
        raise typer.BadParameter(f"{status!r} is not one of {', '.join(STATUSES)}", param_hint="--status")
    with reported(as_json=as_json), connect(config, daemon_url, token, token_file) as client:
        result = client.notify_pr(repo, number, step=step, status=status, url=url, message=message)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    where = ", ".join(result["notifiers"]) or "no notifier (none routes pull requests)"
    out.print(f"{result['subject']}: {step} {status} → {where}", markup=False)
