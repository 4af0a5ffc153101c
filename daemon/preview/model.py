"""The data shared by the preview parts: where a preview runs, and what its checks found.

:class:`Preview` is what ``vouch preview up`` stood up (kept in the preview's state, read by
``down``, ``list`` and the reaper); :class:`CheckReport` is what the health checks and network tests
found, from which the two attestations are made.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preview:
    """One preview environment, on the local platform (processes) or on Kubernetes (a namespace)."""

    name: str
    """``<service>-pr-<number>`` by default; DNS-safe."""
    service: str
    version: str
    platform: str
    """``local`` or ``kubernetes``."""
    created_at: float
    expires_at: float
    address: str
    """``host:port`` where the service answers."""
    mocks: Mapping[str, str] = field(default_factory=dict)
    """Mock name -> base URL (``http://127.0.0.1:PORT``)."""
    owner: Mapping[str, str] = field(default_factory=dict)
    """Who and what it is for: ``pr``, ``repo``, ``actor``, ``commit``, ``digest``."""
    data: Mapping[str, Any] = field(default_factory=dict)
    """The platform's own bookkeeping (process ids, the namespace), for ``down``."""

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["mocks"] = dict(self.mocks)
        out["owner"] = dict(self.owner)
        out["data"] = dict(self.data)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preview:
        values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        return cls(**values)


@dataclass(frozen=True)
class Check:
    """One health check or network test and its outcome."""

    name: str
    passed: bool
    detail: str = ""
    skipped: bool = False
    """A test that was skipped (``passed`` stays true): counted apart, never as passed or failed."""


@dataclass(frozen=True)
class CheckReport:
    """What the checks of one environment (a preview, or a stable one with ``verify-env``) found."""

    environment: str
    healthy: bool
    health: tuple[Check, ...]
    tests_result: str
    """``PASSED``, ``FAILED`` (or ``WARNED``), as in-toto test-result spells it; ``FAILED`` when unhealthy."""
    tests: tuple[Check, ...] = ()
    mocked_backends: tuple[str, ...] = ()
    checked_at: float = 0.0

    @property
    def passed(self) -> bool:
        return self.healthy and self.tests_result == "PASSED"
