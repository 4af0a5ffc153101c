"""Locustfiles vouch writes itself: one task per request, one FastHttpUser class, pacing from the environment.

The locustfile is a fixed file shipped with vouch (``locustfile.py.tmpl``), copied into a run's own
temporary folder next to an ``endpoints.json`` listing the requests. Nothing from configuration is
pasted into Python source: the requests travel as JSON, the pacing and the hosts as environment
variables (``VOUCH_RATE_PER_USER``, ``VOUCH_HOSTS``), so a path can never become code.

>>> parse_request("/cart"), parse_request("post /orders?id=1")
(Request(method='GET', path='/cart'), Request(method='POST', path='/orders?id=1'))
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

METHODS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")
"""Methods a generated locustfile may send; only ``GET`` unless a request names another."""

TEMPLATE = "locustfile.py.tmpl"
"""The shipped locustfile, package data of :mod:`vouch.loadtests`."""

ENDPOINTS_FILE = "endpoints.json"
"""The requests, beside the copied locustfile."""


@dataclass(frozen=True)
class Request:
    """One request a generated locustfile sends, named ``METHOD path`` in Locust's statistics."""

    method: str
    path: str

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"


def parse_request(text: str) -> Request:
    """``"/x"`` (a GET) or ``"POST /x"``; ``ValueError`` naming the accepted forms otherwise."""
    parts = text.split()
    if len(parts) == 1:
        method, path = "GET", parts[0]
    elif len(parts) == 2:
        method, path = parts[0].upper(), parts[1]
    else:
        raise ValueError(f"{text!r} is not a request; write a path such as '/cart' or 'POST /orders'")
    if method not in METHODS:
        raise ValueError(f"{text!r}: unknown method {method!r}; known: {', '.join(METHODS)}")
    if not path.startswith("/"):
        raise ValueError(f"{text!r}: the path must start with '/', e.g. '/cart'")
    return Request(method, path)


def template_text() -> str:
    """The shipped locustfile's source."""
    return resources.files("vouch.loadtests").joinpath(TEMPLATE).read_text(encoding="utf-8")


def write_locustfile(requests: Sequence[Request], folder: Path) -> Path:
    """Write the locustfile for ``requests`` into ``folder``; returns its path.

    ``ValueError`` when there is nothing to send: a load run without requests measures nothing.
    """
    if not requests:
        raise ValueError("no requests to send: list 'paths', give a locustfile, or add GET http probes")
    unique = list(dict.fromkeys(requests))
    folder.mkdir(parents=True, exist_ok=True)
    endpoints = [{"method": r.method, "path": r.path, "name": r.name} for r in unique]
    (folder / ENDPOINTS_FILE).write_text(json.dumps(endpoints, indent=2) + "\n", encoding="utf-8")
    path = folder / "locustfile.py"
    path.write_text(template_text(), encoding="utf-8")
    return path


@contextlib.contextmanager
def generated_locustfile(requests: Sequence[Request]) -> Iterator[Path]:
    """A locustfile for ``requests`` in a temporary folder of its own, removed afterwards.

    Example::

        with generated_locustfile([parse_request("/"), parse_request("POST /orders")]) as locustfile:
            result = await LocustRunner().run(LoadPlan(target=url, locustfile=locustfile, users=10,
                                                       spawn_rate=10, duration=30))
    """
    with tempfile.TemporaryDirectory(prefix="vouch-locustfile-") as folder:
        yield write_locustfile(requests, Path(folder))
