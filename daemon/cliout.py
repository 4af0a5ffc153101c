"""Where the ``vouch`` commands print, and how every one of them reports a failure.

One place, so that all commands fail alike: exit code 2 for usage, input,
configuration or connection problems (1 is left to the thing checked failing);
without ``--json`` a message on stderr, ``error: MESSAGE``, or each
configuration problem as ``FILE:LINE: PATH: MESSAGE`` (the form editors jump
to); with ``--json`` stdout carries exactly one document even then,
``{"error": {"message": ..., ...}}``.

Example:

    with reported(as_json=as_json):
        config = load_config(path)  # a ConfigError exits 2 naming every problem
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from vouch.core.errors import ConfigError, Problem, VouchError

EXIT_FAILED = 1
"""The thing checked failed: a promotion rolled back, a verification or a policy said no."""
EXIT_USAGE = 2
"""Usage, input, configuration or connection problems, the same for every vouch command."""

err = Console(stderr=True, highlight=False, soft_wrap=True)
"""Messages and progress for people; never part of what a script reads."""
out = Console(highlight=False, soft_wrap=True)
"""Results for people; scripts ask for ``--json`` instead."""


def fail(message: str, *, as_json: bool, code: int = EXIT_USAGE, **extra: Any) -> NoReturn:
    """Report ``message`` and exit with ``code``; ``extra`` adds fields to the JSON error.

    The message is printed as it is, never read as markup: brackets in it (``['shop']``) stay.
    """
    if as_json:
        print(json.dumps({"error": {"message": message, **extra}}))
    else:
        err.print(Text.assemble(("error:", "bold red"), " ", message))
    raise typer.Exit(code)


def fail_problems(problems: Iterable[Problem], *, as_json: bool, invalid: str | None = None) -> NoReturn:
    """Report configuration problems and exit 2.

    ``invalid`` names what was found wrong (``"invalid policy"``): it is the JSON message and, in text,
    an ``error:`` line above the problems; without it the problems speak for themselves (and the JSON
    message is ``"invalid configuration"``).
    """
    found = list(problems)
    message = invalid or "invalid configuration"
    if as_json:
        print(json.dumps({"error": {"message": message, "problems": problem_dicts(found)}}))
    else:
        if invalid is not None or not found:
            err.print(Text.assemble(("error:", "bold red"), " ", message))
        print_problems(found)
    raise typer.Exit(EXIT_USAGE)


def print_problems(problems: Iterable[Problem]) -> None:
    """Each problem on its own stderr line, as ``FILE:LINE: PATH: MESSAGE``."""
    for problem in problems:
        err.print(Text(str(problem)))


def problem_dicts(problems: Iterable[Problem]) -> list[dict[str, Any]]:
    """Problems as JSON objects: ``{file, line, path, message}``, ``line`` null when there is none."""
    return [{"file": p.file, "line": p.line, "path": p.path, "message": p.message} for p in problems]


@contextmanager
def reported(*, as_json: bool, invalid: str | None = None) -> Iterator[None]:
    """Turn vouch's errors, and pydantic's about options, into a report and exit code 2.

    A :class:`ConfigError` goes to :func:`fail_problems` (``invalid`` is passed on); any other
    :class:`VouchError` to :func:`fail`, its class named as ``kind``; a pydantic ``ValidationError``
    (options that do not fit a settings model) to :func:`fail` as one line per error.
    """
    try:
        yield
    except ConfigError as exc:
        fail_problems(exc.problems, as_json=as_json, invalid=invalid)
    except VouchError as exc:
        fail(str(exc), as_json=as_json, kind=type(exc).__name__)
    except ValidationError as exc:
        fail(_validation_message(exc), as_json=as_json)


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(map(str, error["loc"]))
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)
