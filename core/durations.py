"""Durations as people write them in configuration: ``250ms``, ``5s``, ``2m``, ``1h``, or seconds."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(value: Any) -> float:
    """Return seconds for ``value``; raise ``ValueError`` naming the accepted forms.

    >>> parse_duration("1m30s")
    90.0
    >>> parse_duration(2)
    2.0
    """
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '500ms', '5s', '2m', '1h'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        pos, seconds = 0, 0.0
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise ValueError(f"{value!r} is not a duration; write e.g. '500ms', '5s', '2m', '1h30m'")
    else:
        raise ValueError("a duration must be a number of seconds or a string like '500ms', '5s', '2m', '1h'")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds compactly for people: ``1.5s``, ``2m``, ``250ms``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:g}s"
    return f"{seconds / 60:g}m"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h))+$"},
            ],
            "description": "seconds, or a string such as '500ms', '5s', '2m', '1h'",
        }
    ),
]
"""A duration in seconds, accepting ``'5s'``-style strings in configuration."""
