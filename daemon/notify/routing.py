"""Which notifiers hear of a notice: a pure function of the notice and the routes.

Kept apart from delivery so the routing table (who hears of break-glass, who
of a rollback) can be read and tested without any I/O.

>>> from vouch.daemon.notify.base import Notice, Severity
>>> from vouch.daemon.notify.settings import RouteSpec
>>> routes = [RouteSpec(kinds=["override.*"], to=["security", "oncall"]),
...           RouteSpec(services=["checkout"], to=["team", "security"])]
>>> used = Notice("override.used", Severity.CRITICAL, "slo overridden", 0.0, service="checkout")
>>> destinations(used, routes, notifiers=["team", "security", "oncall"])
('security', 'oncall', 'team')
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

from vouch.daemon.notify.base import Notice
from vouch.daemon.notify.settings import RouteSpec


def route_matches(route: RouteSpec, notice: Notice) -> bool:
    """Whether every condition the route sets holds for the notice."""
    if route.kinds and not any(fnmatchcase(notice.kind, pattern) for pattern in route.kinds):
        return False
    if notice.severity.rank < route.min_severity.rank:
        return False
    if route.services and notice.service not in route.services:
        return False
    return not (route.environments and notice.environment not in route.environments)


def destinations(
    notice: Notice, routes: Sequence[RouteSpec], *, notifiers: Iterable[str], always: Iterable[str] = ()
) -> tuple[str, ...]:
    """The names of the notifiers that receive ``notice``, each once, in the order first named.

    ``always`` (the audit log, say) receive every notice. With no routes at
    all, every notifier in ``notifiers`` does: a configuration that names
    destinations but no routes means "tell them everything", not "tell no one".
    """
    names: list[str] = list(always)
    if not routes:
        names.extend(notifiers)
    for route in routes:
        if route_matches(route, notice):
            names.extend(route.to)
    return tuple(dict.fromkeys(names))
