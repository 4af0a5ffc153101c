"""Typed settings of everything a rollout needs: services, environments, plans, SLOs, providers.

Every model forbids unknown fields (a typo is an error, never silently
ignored) and documents each field in its docstring, which also becomes its
description in ``vouch config schema``.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import Field, GetJsonSchemaHandler, field_validator, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from vouch.core.durations import Duration
from vouch.core.settings import Model
from vouch.loadtests.settings import LoadTestSpec
from vouch.probes.registry import ProbeDefinition
from vouch.rollout.platforms.kube.settings import KubernetesPlatformSpec
from vouch.rollout.policy import PolicySpec, RegoPolicySpec
from vouch.rollout.preview import PreviewSpec

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
"""Service and environment names: DNS labels, so they fit Kubernetes and metric labels alike."""


# --------------------------------------------------------------------------- plans

_STEP = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")
_STEP_SHORTHAND = r"^\s*\d+(\.\d+)?\s*%?\s*$"
"""The strings ``_STEP`` reads, as a JSON Schema pattern (no groups: only the match matters there)."""


class Step(Model):
    """One step of a plan: a number of canary pods, or a share of the service's replicas."""

    pods: int | None = Field(default=None, ge=1)
    """Run this many canary replicas."""
    percent: float | None = Field(default=None, gt=0, le=100)
    """Run this share of the service's replicas as canary (rounded up, at least one)."""
    pause: Duration | None = None
    """Wait this long after the step is ready before analysing it; defaults to the plan's ``pause``."""

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("a step is a pod count such as 2 or a share such as '50%'")
        if isinstance(value, int):
            return {"pods": value}
        if isinstance(value, str):
            match = _STEP.match(value)
            if not match:
                raise ValueError(f"{value!r} is not a step; write a pod count such as 2 or a share such as '50%'")
            number, percent = match.groups()
            if percent:
                return {"percent": float(number)}
            if "." in number:
                raise ValueError(f"{value!r}: a pod count must be a whole number")
            return {"pods": int(number)}
        return value

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """The object, or the shorthand ``_from_shorthand`` converts (``2``, ``'50%'``), which pydantic cannot see.

        Only when validating: a dumped step is always the object.
        """
        schema = handler(core_schema)
        if handler.mode != "validation":
            return schema
        shorthand: list[JsonSchemaValue] = [
            {"type": "integer", "minimum": 1, "description": "canary pods"},
            {"type": "string", "pattern": _STEP_SHORTHAND, "description": "pods, or a share such as '50%'"},
        ]
        return {"anyOf": [*shorthand, schema]}

    @model_validator(mode="after")
    def _exactly_one(self) -> Step:
        if (self.pods is None) == (self.percent is None):
            raise ValueError("a step sets exactly one of 'pods' or 'percent'")
        return self

    def canary_replicas(self, replicas: int) -> int:
        """Canary pods for a service of ``replicas``: percentages round up, never below one.

        >>> Step(percent=50).canary_replicas(5)
        3
        """
        if self.pods is not None:
            return self.pods
        assert self.percent is not None
        return max(1, math.ceil(round(self.percent * replicas, 6) / 100))

    @property
    def label(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.pods)


class PlanSpec(Model):
    """How a new version is stepped in: ``steps: [1, 2, 5, '50%', '100%']``."""

    steps: list[Step] = Field(default_factory=lambda: [Step(percent=100)], min_length=1)
    """Canary sizes in order: plain numbers are pods, ``N%`` a share of the service's replicas."""
    pause: Duration = 0.0
    """Default wait after each step becomes ready, before its analysis starts."""
    keep_capacity: bool = True
    """Scale stable down as the canary grows so the total stays at the service's replicas and
    the canary's traffic share equals its pod share. When false, stable stays at full size."""


class AnalysisSpec(Model):
    """When and how strictly each step is judged."""

    interval: Duration = 30.0
    """Time between analysis runs of a step."""
    runs: int = Field(default=1, ge=1)
    """Passing runs a step needs before the next step starts."""
    failure_limit: int = Field(default=0, ge=0)
    """Failed runs tolerated in one step; one more rolls back."""
    inconclusive_limit: int = Field(default=1, ge=0)
    """Inconclusive runs tolerated in one step (each pauses the promotion); one more rolls back."""
    consecutive_errors: int = Field(default=3, ge=1)
    """Runs in a row in which a gate could not measure at all before the promotion rolls back."""


class AlarmSpec(Model):
    """Which Alertmanager alerts abort a promotion of this environment."""

    match_labels: list[str] = Field(default_factory=lambda: ["service", "environment"], min_length=1)
    """Alert labels that must equal the promotion's own (``service``, ``environment``, ``version``)."""
    matchers: dict[str, str] = Field(default_factory=dict)
    """Further labels the alert must carry with exactly these values, e.g. ``severity: critical``."""

    @field_validator("match_labels")
    @classmethod
    def _known_labels(cls, value: list[str]) -> list[str]:
        known = {"service", "environment", "version"}
        unknown = [v for v in value if v not in known]
        if unknown:
            raise ValueError(f"unknown label(s) {unknown}; a promotion has {sorted(known)}")
        return value


class EnvironmentSpec(Model):
    """One stage of the service chain, with its plan, gates and limits."""

    plan: PlanSpec = Field(default_factory=PlanSpec)
    """The steps a promotion takes here."""
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    """How each step is judged."""
    gates: list[str] = Field(default_factory=lambda: ["slo", "alarms"], min_length=1)
    """Gate kinds that judge every step here (production typically: ``[slo, alarms]``)."""
    alarms: AlarmSpec = Field(default_factory=AlarmSpec)
    """How firing alerts are matched to promotions here."""
    progress_deadline: Duration = 600.0
    """Longest any one phase (scaling, waiting for analysis data, promoting, rolling back) may take."""
    policy: PolicySpec = Field(default_factory=RegoPolicySpec)
    """With the ``attestations`` gate: the policy deciding on the verified attestations (default: the Rego
    policy shipped with vouch)."""
    policy_settings: dict[str, Any] = Field(default_factory=dict)
    """Passed to the policy as ``input.settings`` (the default policy reads required steps, signers, CVE
    thresholds and minimum coverage from here)."""
    allow_load_tests: bool = False
    """Let the ``loadtest`` gate put load on this environment even though its name says production (contains
    ``prod``). Load tests belong in staging; this switch is loud on purpose."""


# --------------------------------------------------------------------------- services


class ReadinessSpec(Model):
    """How a new replica is known to be ready for traffic."""

    path: str = "/healthz"
    """HTTP path polled on each replica until it answers 2xx."""
    timeout: Duration = 30.0
    """How long a new replica may take to become ready."""
    interval: Duration = 0.1
    """Time between readiness polls."""


class ServiceEnvironment(Model):
    """A service's place in one environment."""

    name: str = Field(pattern=NAME_PATTERN)
    """The environment, as named under ``environments``."""
    port: int = Field(default=0, ge=0, le=65535)
    """Local platform: the router's port on the loopback address (0 picks a free one)."""
    replicas: int | None = Field(default=None, ge=1)
    """Replicas here, if not the service's default."""


class CompareSpec(Model):
    """Judge the canary against stable instead of (or as well as) an absolute bound."""

    max_increase: float | None = None
    """Fail when ``canary - stable`` exceeds this."""
    max_ratio: float | None = Field(default=None, gt=0)
    """Fail when ``canary / stable`` exceeds this (stable of zero compares as an increase)."""

    @model_validator(mode="after")
    def _one_bound(self) -> CompareSpec:
        if self.max_increase is None and self.max_ratio is None:
            raise ValueError("set 'max_increase' or 'max_ratio'")
        return self


BuiltinMetric = Literal["error_ratio", "latency", "request_rate"]


class SloSpec(Model):
    """A service level objective checked at every analysis run.

    Either ``metric`` (for the ``builtin`` provider: ``error_ratio``, ``latency``
    with a ``quantile``, ``request_rate``) or ``query`` (the provider's own language,
    e.g. PromQL) with the placeholders ``{service}``, ``{environment}``,
    ``{version}``, ``{stable_version}``, ``{canary_version}`` and ``{window}``.
    """

    name: str
    """Shown in verdicts and metrics."""
    provider: str = "builtin"
    """A provider named under ``metric_providers``."""
    metric: BuiltinMetric | None = None
    """A builtin measurement of the router's traffic."""
    quantile: float | None = Field(default=None, gt=0, lt=1)
    """For ``metric: latency``: which quantile, e.g. 0.99."""
    query: str | None = None
    """An expression in the provider's language; ``{version}`` is the version being judged."""
    window: Duration = 30.0
    """How far back the measurement looks."""
    max: float | None = None
    """Fail when the canary's value is above this."""
    min: float | None = None
    """Fail when the canary's value is below this."""
    compare: CompareSpec | None = None
    """Also measure stable with the same query and bound the difference."""
    min_requests: int = Field(default=1, ge=0)
    """Builtin provider: fewer requests than this in the window is 'no data' (inconclusive)."""

    @model_validator(mode="after")
    def _coherent(self) -> SloSpec:
        if (self.metric is None) == (self.query is None):
            raise ValueError("set exactly one of 'metric' (builtin) or 'query'")
        if self.metric == "latency" and self.quantile is None:
            raise ValueError("metric 'latency' needs a 'quantile', e.g. 0.99")
        if self.max is None and self.min is None and self.compare is None:
            raise ValueError("set a bound: 'max', 'min' or 'compare'")
        return self


class ServiceSpec(Model):
    """A service vouch rolls out, and the environments it moves through in order."""

    command: list[str] | None = Field(default=None, min_length=1)
    """Local platform: the argv of one replica. Placeholders: ``{port}`` (required), ``{version}``,
    ``{service}``, ``{environment}``, ``{replica}``, and ``{python}`` (the daemon's own interpreter)."""
    image: str | None = None
    """Kubernetes platform: the container image, with ``{version}`` as its tag."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment variables for each replica; the same placeholders as ``command``."""
    replicas: int = Field(default=1, ge=1, le=1000)
    """Replicas of the stable version."""
    readiness: ReadinessSpec = Field(default_factory=ReadinessSpec)
    """How a replica is known to be ready."""
    environments: list[ServiceEnvironment] = Field(min_length=1)
    """The chain a release walks, in order, e.g. staging then production."""
    slos: list[SloSpec] = Field(default_factory=list)
    """Objectives the ``slo`` gate checks at every analysis run."""
    probes: list[ProbeDefinition] = Field(default_factory=list)
    """Synthetic probes of this service. Their targets name ``{address}``: on schedule, the service's
    address in each environment of its chain; in the ``probes`` gate, each canary and stable replica."""
    performance_critical: bool = False
    """Run the ``loadtest`` gate for this service in the environments that list it (needs ``loadtest``)."""
    loadtest: LoadTestSpec | None = None
    """The Locust load test the ``loadtest`` gate runs at one step against the canary's replicas."""
    preview: PreviewSpec | None = None
    """How a pull request's artifact is stood up alone (``vouch preview up``): mocked backends, health
    deadline, network tests."""

    @field_validator("probes")
    @classmethod
    def _aimed(cls, value: list[ProbeDefinition]) -> list[ProbeDefinition]:
        names = [p.name for p in value]
        if len(set(names)) != len(names):
            raise ValueError(f"probe names must be unique within a service: {names}")
        for probe in value:
            if not all("{address}" in target for target in probe.targets):
                raise ValueError(
                    f"probe {probe.name!r}: every target names '{{address}}', e.g. http://{{address}}/healthz"
                )
        return value

    @field_validator("command")
    @classmethod
    def _port_placeholder(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not any("{port}" in part for part in value):
            raise ValueError(
                "the command must pass '{port}' to the replica so it listens where the router sends traffic"
            )
        return value

    def replicas_in(self, environment: str) -> int:
        """Stable replicas of this service in ``environment``."""
        for env in self.environments:
            if env.name == environment and env.replicas is not None:
                return env.replicas
        return self.replicas

    def environment(self, name: str) -> ServiceEnvironment | None:
        return next((env for env in self.environments if env.name == name), None)


# --------------------------------------------------------------------------- providers


class BuiltinProviderSpec(Model):
    """Metrics of the local platform's router, measured in the daemon itself."""

    kind: Literal["builtin"] = "builtin"


class PrometheusProviderSpec(Model):
    """A Prometheus (or compatible) server queried with PromQL over HTTP."""

    kind: Literal["prometheus"]
    url: str = Field(pattern=r"^https?://")
    """Base URL, e.g. ``http://prometheus:9090``."""
    timeout: Duration = 5.0
    """Per-query timeout; a slower answer is an error (inconclusive), never a pass."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra HTTP headers, e.g. a tenant header."""
    bearer_token_file: str | None = None
    """A file holding a bearer token sent with each query."""


ProviderSpec = Annotated[BuiltinProviderSpec | PrometheusProviderSpec, Field(discriminator="kind")]


# --------------------------------------------------------------------------- platforms


class LocalPlatformSpec(Model):
    """Runs replicas as child processes on this machine behind a weighted router (the default)."""

    kind: Literal["local"] = "local"
    host: str = "127.0.0.1"
    """Address replicas and routers bind to."""
    stop_grace: Duration = 5.0
    """How long a replica may take to exit after SIGTERM before it is killed."""
    upstream_timeout: Duration = 30.0
    """Router: longest a replica may take to answer a request."""


PlatformSpec = Annotated[LocalPlatformSpec | KubernetesPlatformSpec, Field(discriminator="kind")]
"""Where replicas run, chosen by ``kind``: ``local`` processes (the default) or ``kubernetes``."""
