"""``vouch config validate|schema``: check a configuration before the daemon ever reads it.

Made for CI and editors: ``validate`` names every problem as ``FILE:LINE: PATH:
MESSAGE`` (the form compilers use, so editors jump to it) and exits 2 on any,
``--json`` gives the same as one document; ``schema`` prints the JSON Schema an
editor can complete and check against as you type.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated

import typer

from vouch.core.errors import ConfigError, Problem
from vouch.daemon.cliout import EXIT_USAGE, print_problems, problem_dicts
from vouch.daemon.config import VouchConfig, config_schema, load_config

config_app = typer.Typer(
    name="config",
    help=(
        "Check vouch's configuration file, or print its JSON Schema.\n\n"
        "Example: vouch config validate examples/local.yaml"
    ),
    no_args_is_help=True,
    add_completion=False,
)


@config_app.command("validate")
def validate(
    file: Annotated[str, typer.Argument(help="The configuration file (YAML).", show_default=False)],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document {file, valid, problems} to stdout.")
    ] = False,
) -> None:
    """Check a configuration file and report every problem with its line and field.

    Exits 0 when the file is valid and 2 when it is not, printing each problem
    to stderr as FILE:LINE: PATH: MESSAGE.

    Example: vouch config validate vouch.yaml --json
    """
    config: VouchConfig | None = None
    problems: list[Problem] = []
    try:
        config = load_config(file)
    except ConfigError as exc:
        problems = exc.problems
    if as_json:
        document = {
            "file": file,
            "valid": config is not None,
            "problems": problem_dicts(problems),
        }
        typer.echo(json.dumps(document, indent=2))
    elif config is not None:
        typer.echo(f"{file}: valid: {summary(config)}")
    else:
        print_problems(problems)
    if config is None:
        raise typer.Exit(EXIT_USAGE)


@config_app.command("schema")
def schema() -> None:
    """Print the JSON Schema (draft 2020-12) of the configuration file.

    Point your editor's YAML support at it for completion and checks as you type.

    Example: vouch config schema > vouch.schema.json
    """
    typer.echo(json.dumps(config_schema(), indent=2))


def summary(config: VouchConfig) -> str:
    """One line naming what a configuration defines: services, environments, metric providers.

    >>> from vouch.daemon.config import parse_config
    >>> summary(parse_config('''
    ... services: {web: {command: [app, "{port}"], environments: [{name: prod}]}}
    ... environments: {prod: {gates: [alarms]}}
    ... '''))
    '1 service (web), 1 environment (prod), 1 metric provider (builtin)'
    """
    return ", ".join(
        (
            _count(config.services, "service"),
            _count(config.environments, "environment"),
            _count(config.metric_providers, "metric provider"),
        )
    )


def _count(items: Mapping[str, object], noun: str) -> str:
    plural = "" if len(items) == 1 else "s"
    return f"{len(items)} {noun}{plural} ({', '.join(items)})"
