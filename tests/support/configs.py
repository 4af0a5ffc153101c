"""Reading a configuration text for tests that expect it to be refused, and for what."""

from __future__ import annotations

from textwrap import dedent

import pytest

from vouch.core.errors import ConfigError, Problem
from vouch.daemon.config import parse_config


def problems_of(text: str) -> list[Problem]:
    """The problems ``text`` has; fails the test when it has none."""
    with pytest.raises(ConfigError) as caught:
        parse_config(dedent(text), source="vouch.yaml")
    return caught.value.problems


def only(text: str) -> Problem:
    """The one problem ``text`` has; fails the test when it has none or several."""
    found = problems_of(text)
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]
