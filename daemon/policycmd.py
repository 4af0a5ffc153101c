"""``vouch policy eval|schema``: run a policy on an input document, for CI and for debugging a denial.

``eval`` evaluates the embedded Rego engine exactly as the attestations gate
does (strict builtins; undefined, errors and malformed answers deny; a policy of
your own in a worker process with a deadline) and prints the decision with every
reason. Exit codes follow vouch's: 0 allowed, 1 denied,
2 for a usage error, an unreadable input or an invalid policy.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from vouch.core.errors import InputError
from vouch.daemon.cliout import reported
from vouch.rollout.policy.base import Decision
from vouch.rollout.policy.input import input_schema
from vouch.rollout.policy.isolated import IsolatedRegoPolicy
from vouch.rollout.policy.rego import DEFAULT_QUERY, RegoPolicy

EXIT_DENIED = 1

policy_app = typer.Typer(
    name="policy",
    help=(
        "Evaluate a Rego policy on a policy input, or print the input's JSON Schema.\n\n"
        "Example: vouch policy eval --input input.json --policy policies/"
    ),
    no_args_is_help=True,
    add_completion=False,
)


@policy_app.command("eval")
def evaluate(
    input_file: Annotated[
        Path,
        typer.Option("--input", "-i", help="The policy input (JSON; see `vouch policy schema`).", show_default=False),
    ],
    policy: Annotated[
        Path | None,
        typer.Option("--policy", "-p", help="A directory of .rego files, or one file. Default: vouch's own policy."),
    ] = None,
    query: Annotated[str, typer.Option("--query", help="The rule whose value is the decision.")] = DEFAULT_QUERY,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            min=0.1,
            help="Longest a decision of your own policy (--policy) may take; it runs in a worker process and "
            "denies when stopped.",
        ),
    ] = 5.0,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the decision as JSON {allow, denials, failed, input_digest, policy_digest, elapsed}."
        ),
    ] = False,
) -> None:
    """Decide on an input and print allow or deny with every reason.

    Exits 0 when allowed, 1 when denied, 2 when the input cannot be read or the policy is invalid.

    Example: vouch policy eval --input input.json --json
    """
    with reported(as_json=as_json, invalid="invalid policy"):
        document = _read_input(input_file)
        engine = RegoPolicy.default(query=query) if policy is None else RegoPolicy.from_path(policy, query=query)
    if policy is None:
        decision = engine.evaluate(document)
    else:
        decision = asyncio.run(_isolated(IsolatedRegoPolicy(engine, timeout=timeout), document))
    if as_json:
        typer.echo(json.dumps(decision.to_dict(), indent=2))
    else:
        typer.echo(render(decision))
    if not decision.allow:
        raise typer.Exit(EXIT_DENIED)


@policy_app.command("schema")
def schema() -> None:
    """Print the JSON Schema (draft 2020-12) of the policy input.

    Example: vouch policy schema > policy-input.schema.json
    """
    typer.echo(json.dumps(input_schema(), indent=2))


def render(decision: Decision) -> str:
    """The decision for people: the verdict, each reason on its own line, then what was evaluated.

    >>> print(render(Decision(False, ("staging: step 'tests' is missing",), "sha256:aa", "sha256:bb", 0.0021)))
    denied (2.1 ms)
      - staging: step 'tests' is missing
    input  sha256:aa
    policy sha256:bb
    """
    lines = [f"{'allowed' if decision.allow else 'denied'} ({decision.elapsed * 1000:.1f} ms)"]
    lines += [f"  - {reason}" for reason in decision.denials]
    lines += [f"input  {decision.input_digest}", f"policy {decision.policy_digest}"]
    return "\n".join(lines)


async def _isolated(engine: IsolatedRegoPolicy, document: dict[str, Any]) -> Decision:
    try:
        return await engine.decide(document)
    finally:
        await engine.close()


def _read_input(path: Path) -> dict[str, Any]:
    """The policy input, which must be a JSON object; anything else is the caller's mistake, not a denial."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read the input: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: the input is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InputError(f"{path}: the input must be a JSON object, got {type(document).__name__}")
    return document
