"""``vouch break-glass grant|list``: one-time, audited overrides of a gate, through the daemon's API."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from vouch.daemon.cliconnect import ConfigOpt, JsonOpt, TokenFileOpt, TokenOpt, UrlOpt, connect
from vouch.daemon.client import VouchClient
from vouch.daemon.cliout import err, out, reported

break_glass_app = typer.Typer(
    help=(
        "Break the glass: let one failure of one gate pass, once, for one service in one environment.\n\n"
        "Every override has a reason, an actor and an expiry (default 1 hour); it is kept in the audit log, "
        "and security and the escalation chain hear of it when it is granted and when it is used. "
        "Files dropped in the daemon's overrides folder (`break_glass.directory`) work the same way.\n\n"
        'Example: vouch break-glass grant checkout --env production --gate slo --reason "INC-1234: SLO query broken"'
    ),
    no_args_is_help=True,
)

GATES_HELP = "The gate whose failure may pass once: attestations, slo, probes, alarms (or loadtest)."


def grant_for_promotion(
    client: VouchClient, service: str, version: str, *, environment: str | None, gate: str, reason: str | None
) -> dict[str, Any]:
    """The override `vouch promote --break-glass` grants before it submits: scoped to this version too."""
    if environment is None:
        raise typer.BadParameter("--break-glass overrides a gate in one environment: give --env", param_hint="--env")
    if not reason or not reason.strip():
        raise typer.BadParameter("--break-glass needs --reason TEXT (an incident, a ticket)", param_hint="--reason")
    granted: dict[str, Any] = client.grant_override(
        service, environment=environment, gate=gate, reason=reason, version=version
    )["override"]
    err.print(f"break-glass {granted['id']}: {_describe(granted)}", markup=False)
    return granted


@break_glass_app.command()
def grant(
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="The service, as named in the configuration.")],
    env: Annotated[str, typer.Option("--env", "-e", help="The environment it applies in.")],
    gate: Annotated[str, typer.Option("--gate", "-g", help=GATES_HELP)],
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why: an incident, a ticket. Required.")],
    version: Annotated[
        str | None, typer.Option("--version", help="Only this version's promotion may use it. Default: any.")
    ] = None,
    ttl: Annotated[
        str | None, typer.Option("--ttl", help="How long it stays usable, e.g. 30m or 2h. Default: 1h.")
    ] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Grant a one-time override of GATE for SERVICE in --env.

    The next failure of that gate there passes, once, and the verdict it overrode is kept with it.
    An override of `alarms` holds back one alert's rollback; any other alert still rolls back.

    Example: vouch break-glass grant checkout --env production --gate slo --reason "INC-1234" --ttl 30m
    """
    with reported(as_json=as_json), connect(config, url, token, token_file) as client:
        result = client.grant_override(service, environment=env, gate=gate, reason=reason, version=version, ttl=ttl)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    granted = result["override"]
    out.print(f"granted {granted['id']}: {_describe(granted)}", markup=False)


@break_glass_app.command(name="list")
def list_overrides(
    service: Annotated[str | None, typer.Argument(metavar="SERVICE", help="Only this service.")] = None,
    env: Annotated[str | None, typer.Option("--env", "-e", help="Only this environment.")] = None,
    used: Annotated[
        bool | None, typer.Option("--used/--unused", help="Only used, or only unused, overrides. Default: both.")
    ] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """List break-glass overrides: who granted them, why, until when, and which promotion used them.

    Example: vouch break-glass list checkout --env production --json
    """
    with reported(as_json=as_json), connect(config, url, token, token_file) as client:
        result = client.list_overrides(service=service, environment=env, used=used)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table("ID", "SCOPE", "ACTOR", "STATE", "REASON", box=None, pad_edge=False)
    now = time.time()
    for item in result["overrides"]:
        table.add_row(item["id"], _scope(item), item["actor"], _state(item, now), item["reason"])
    out.print(table)


def _scope(item: dict[str, Any]) -> str:
    version = f"@{item['version']}" if item.get("version") else ""
    return f"{item['service']}{version}/{item['environment']} {item['gate']}"


def _state(item: dict[str, Any], now: float) -> str:
    if item.get("used_at") is not None:
        return f"used by {item.get('promotion_id')} at {_stamp(item['used_at'])}"
    if now >= item["expires_at"]:
        return f"expired {_stamp(item['expires_at'])}"
    return f"usable until {_stamp(item['expires_at'])}"


def _describe(item: dict[str, Any]) -> str:
    return f"{_scope(item)} by {item['actor']}, until {_stamp(item['expires_at'])}: {item['reason']}"


def _stamp(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
