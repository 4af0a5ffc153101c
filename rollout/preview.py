"""Settings of ephemeral preview environments: the mocked backends, the checks, the network tests.

A pull request's artifact is stood up alone, with each backend it calls replaced by a mock HTTP
server declared here; its probes must pass (health), a small suite of network tests runs against
it, and both results become signed attestations (``ephemeral-environment-health`` and
``network-tests``) that the staging and production policies can require.

    services:
      checkout:
        command: ["{python}", "-m", "vouch.daemon.demo.service", "--port", "{port}"]
        preview:
          env: {PAYMENTS_URL: "{mock:payments}"}
          mocks:
            - name: payments
              routes:
                - {method: POST, path: /charge, status: 200, json: {"ok": true}}
          tests:
            - {kind: pytest, path: tests/network}
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from vouch.core.durations import Duration
from vouch.core.settings import Model

MOCK_PLACEHOLDER = re.compile(r"\{mock:([a-z0-9][a-z0-9-]*)\}")
"""``{mock:NAME}`` in a preview's ``env`` becomes the base URL of mock NAME (``http://127.0.0.1:PORT``)."""

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class MockFaults(Model):
    """Faults a mock injects into every answer of a route (or of the whole mock)."""

    error_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of requests answered with ``error_status`` instead of the route's answer."""
    error_status: int = Field(default=503, ge=400, le=599)
    latency: Duration = 0.0
    """Added before every answer."""
    drop_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of requests whose connection is closed with no answer at all."""


class MockRoute(Model):
    """One canned or templated answer. ``path`` may hold ``{name}`` segments, readable in templates."""

    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    path: str = Field(pattern=r"^/")
    status: int = Field(default=200, ge=100, le=599)
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")
    """A JSON answer (sets ``Content-Type: application/json``)."""
    body: str | None = None
    """A text answer; a template: ``{{path.NAME}}``, ``{{query.NAME}}``, ``{{header.NAME}}``,
    ``{{json.FIELD}}`` (of the request body) and ``{{method}}`` are replaced."""
    faults: MockFaults | None = None

    @model_validator(mode="after")
    def _one_body(self) -> MockRoute:
        if self.json_body is not None and self.body is not None:
            raise ValueError("give 'json' or 'body', not both")
        return self


class MockSpec(Model):
    """A mocked backend: an HTTP server answering its routes and recording every request it gets.

    Unmatched requests are answered 404 and recorded too, so a test sees a call it did not expect.
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")
    routes: list[MockRoute] = Field(min_length=1)
    faults: MockFaults | None = None
    """Faults for every route that names none of its own."""


class PytestSuite(Model):
    """The user's own pytest files, run as a subprocess with the preview's addresses in the environment."""

    kind: Literal["pytest"] = "pytest"
    path: str
    """A file or folder of tests; relative to the configuration file's folder."""
    args: list[str] = Field(default_factory=list)
    timeout: Duration = 300.0


class LocustSuite(Model):
    """A short Locust run against the preview, judged by the load-test thresholds."""

    kind: Literal["locust"] = "locust"
    locustfile: str
    users: int = Field(default=2, ge=1)
    duration: Duration = 10.0
    max_error_ratio: float = Field(default=0.0, ge=0.0, le=1.0)


class ProbeSuite(Model):
    """The service's own probes (flow probes included) aimed at the preview, each once."""

    kind: Literal["probes"] = "probes"
    names: list[str] = Field(default_factory=list)
    """Only these probes (default: all of the service's)."""


NetworkSuite = Annotated[PytestSuite | LocustSuite | ProbeSuite, Field(discriminator="kind")]


class PreviewSpec(Model):
    """How a service is stood up as a preview: its mocked backends, how they are wired in, what is checked."""

    mocks: list[MockSpec] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    """Environment variables for the service in a preview; ``{mock:NAME}`` is mock NAME's base URL.
    Added to (and winning over) the service's own ``env``."""
    ttl: Duration = 7200.0
    """A preview older than this is removed by the reaper."""
    health_deadline: Duration = 60.0
    """The service's probes must all pass within this long after start."""
    tests: list[NetworkSuite] = Field(default_factory=list)
    """Network tests, in order; all must pass."""

    @field_validator("mocks")
    @classmethod
    def _unique(cls, mocks: list[MockSpec]) -> list[MockSpec]:
        names = [m.name for m in mocks]
        if len(set(names)) != len(names):
            raise ValueError(f"mock names must be unique: {names}")
        return mocks

    @model_validator(mode="after")
    def _known_mocks(self) -> PreviewSpec:
        known = {m.name for m in self.mocks}
        for key, value in self.env.items():
            for name in MOCK_PLACEHOLDER.findall(value):
                if name not in known:
                    raise ValueError(f"env {key}: no mock named {name!r}; mocks: {', '.join(sorted(known)) or 'none'}")
        return self
