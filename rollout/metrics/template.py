"""Placeholders in SLO queries: ``{service}``, ``{version}``, ``{window}`` and a few more.

PromQL is full of braces of its own (``rate(x{code=~"5.."}[1m])``), so
``str.format`` would choke on every label matcher. Only the exact tokens below
are replaced; every other brace is left as written.

>>> render('sum(rate(http_requests_total{job="{service}",version="{version}"}[{window}]))',
...        {"service": "checkout", "version": "2.4.1", "window": "30s"})
'sum(rate(http_requests_total{job="checkout",version="2.4.1"}[30s]))'
"""

from __future__ import annotations

import re
from collections.abc import Mapping

PLACEHOLDERS: tuple[str, ...] = (
    "service",
    "environment",
    "version",
    "stable_version",
    "canary_version",
    "window",
)
"""The tokens a query may use, each written in braces, e.g. ``{version}``."""

_TOKEN = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


def placeholders_in(template: str) -> set[str]:
    """The placeholder names ``template`` uses.

    >>> sorted(placeholders_in('x{version="{version}"} / y{v="{stable_version}"}'))
    ['stable_version', 'version']
    """
    return {match.group(1) for match in _TOKEN.finditer(template)}


def render(template: str, values: Mapping[str, str]) -> str:
    """Replace the known placeholders of ``template`` with ``values``; leave every other brace alone.

    A known placeholder the template uses but ``values`` lacks (``{stable_version}``
    on a first deploy) is a ``ValueError`` naming it: a query with a hole in it
    would measure something else, so it must not run.

    >>> render('up{job="{service}"} {unknown}', {"service": "shop"})
    'up{job="shop"} {unknown}'
    """
    missing = sorted(placeholders_in(template) - values.keys())
    if missing:
        raise ValueError(f"no value for placeholder(s) {', '.join('{' + m + '}' for m in missing)}")
    return _TOKEN.sub(lambda match: values[match.group(1)], template)


def promql_duration(seconds: float) -> str:
    """A PromQL range duration for ``seconds``, in the largest unit that keeps it whole.

    PromQL rejects fractional durations such as ``1.5s``, so sub-second parts
    are written in milliseconds.

    >>> promql_duration(30), promql_duration(120), promql_duration(1.5), promql_duration(3600)
    ('30s', '2m', '1500ms', '1h')
    """
    millis = round(seconds * 1000)
    if millis <= 0:
        raise ValueError(f"a window must be positive, not {seconds!r} seconds")
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if millis % size == 0:
            return f"{millis // size}{unit}"
    return f"{millis}ms"
