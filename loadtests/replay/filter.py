"""Which logged requests a replay sends: pure, so what is kept and why is easy to show and test.

Replaying a log must not change anything the logged requests changed: methods other than
``GET``, ``HEAD`` and ``OPTIONS`` (``POST``, ``PUT``, ``PATCH``, ``DELETE`` and any method not known
to be safe) are dropped unless ``allow_mutating`` is set. ``include`` keeps only paths matching
one of its patterns, ``exclude`` drops paths matching any of its; patterns are regular expressions
searched in the path and query.

>>> from vouch.loadtests.replay.record import LoggedRequest
>>> logged = [LoggedRequest(0, "GET", "/cart"), LoggedRequest(1, "POST", "/cart"), LoggedRequest(2, "GET", "/healthz")]
>>> kept = apply_filters(logged, ReplayFilters(exclude=("^/healthz",)))
>>> [r.path for r in kept.requests], kept.dropped_mutating, kept.dropped_by_path
(['/cart'], 1, 1)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from vouch.loadtests.errors import LoadTestError
from vouch.loadtests.replay.record import LoggedRequest

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that change nothing on the server (RFC 9110 safe methods, without TRACE)."""


@dataclass(frozen=True)
class ReplayFilters:
    """What a replay leaves out of the log."""

    allow_mutating: bool = False
    """Send ``POST``, ``PUT``, ``PATCH``, ``DELETE`` and unknown methods too: only against a target that may change."""
    include: tuple[str, ...] = ()
    """Regular expressions; when any are given, only paths matching one of them are replayed."""
    exclude: tuple[str, ...] = ()
    """Regular expressions; paths matching any of them are not replayed."""

    def compiled(self) -> tuple[tuple[re.Pattern[str], ...], tuple[re.Pattern[str], ...]]:
        """The patterns compiled; a bad one is an error naming it (a typo must not silently match nothing)."""
        out: list[tuple[re.Pattern[str], ...]] = []
        for option, patterns in (("include", self.include), ("exclude", self.exclude)):
            try:
                out.append(tuple(re.compile(p) for p in patterns))
            except re.error as exc:
                raise LoadTestError(f"--{option} {exc.pattern!s}: not a regular expression: {exc}") from exc
        return out[0], out[1]


@dataclass(frozen=True)
class Filtered:
    """The requests kept, in their order, and how many each rule dropped."""

    requests: tuple[LoggedRequest, ...]
    dropped_mutating: int = 0
    dropped_by_path: int = 0


def _path_wanted(path: str, include: tuple[re.Pattern[str], ...], exclude: tuple[re.Pattern[str], ...]) -> bool:
    if include and not any(p.search(path) for p in include):
        return False
    return not any(p.search(path) for p in exclude)


def apply_filters(requests: Iterable[LoggedRequest], filters: ReplayFilters) -> Filtered:
    """The requests ``filters`` lets through; the mutating rule is applied first, then include, then exclude."""
    include, exclude = filters.compiled()
    kept = []
    mutating = by_path = 0
    for request in requests:
        if not filters.allow_mutating and request.method not in SAFE_METHODS:
            mutating += 1
        elif not _path_wanted(request.path, include, exclude):
            by_path += 1
        else:
            kept.append(request)
    return Filtered(tuple(kept), dropped_mutating=mutating, dropped_by_path=by_path)
