"""Settings of a load test: what to load, how hard, for how long, and the bounds it is judged by.

A service marked ``performance_critical`` carries a :class:`LoadTestSpec` under ``loadtest``; the
``loadtest`` gate runs it at one step of the plan, against the canary's replicas (and stable's, to
compare). ``vouch loadtest run`` builds the same settings from its options.

>>> spec = LoadTestSpec.model_validate({"paths": ["/", "POST /orders"], "users": 20, "rate": 100, "duration": "1m",
...                                     "thresholds": {"max_latency_ms": {"p95": 250}}})
>>> spec.duration, spec.thresholds.max_error_ratio, spec.thresholds.max_latency_ms
(60.0, 0.01, {'p95': 250.0})
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from vouch.core.durations import Duration
from vouch.core.settings import Model
from vouch.loadtests.locustfiles import parse_request

QuantileName = Literal["p50", "p90", "p95", "p99", "max"]
"""The latency figures a load run reports (see :class:`vouch.loadtests.model.Quantiles`)."""


class LoadThresholds(Model):
    """The bounds a load run must hold. Every figure is judged on what Locust measured; nothing measured
    is never a pass."""

    max_error_ratio: float = Field(default=0.01, ge=0, le=1)
    """Failed requests over all requests (a non-2xx/3xx answer or no answer at all), at most."""
    max_latency_ms: dict[QuantileName, float] = Field(default_factory=dict)
    """Response-time bounds in milliseconds per quantile, e.g. ``{p95: 250, p99: 800}``."""
    min_rate_ratio: float | None = Field(default=0.9, gt=0, le=1)
    """When ``rate`` is set: the achieved rate over the target rate (after spawning), at least. A service that
    cannot keep up with the offered load fails here even when the requests it answered were fast."""
    max_canary_regression: dict[QuantileName, float] = Field(default_factory=dict)
    """With ``compare_stable``: the canary's quantile over stable's, at most, e.g. ``{p95: 1.2}`` (20% slower)."""
    regression_tolerance_ms: float = Field(default=2.0, ge=0)
    """A canary within this many milliseconds of stable never counts as a regression: Locust keeps times
    below 100 ms to the whole millisecond, so ratios of tiny times are noise (2 ms over 1 ms is not 2× slower)."""

    @field_validator("max_latency_ms", "max_canary_regression")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        for name, bound in value.items():
            if not bound > 0:
                raise ValueError(f"the bound for {name} must be positive, got {bound}")
        return value


class ScaleSpec(Model):
    """A scale test: the offered rate is stepped up against one replica until its SLO breaks; the *knee* is the
    highest rate it held (see :mod:`vouch.loadtests.scale`). The SLO is the load test's ``thresholds``:
    ``max_error_ratio``, ``max_latency_ms`` (at least one bound) and ``min_rate_ratio`` (0.9 when unset)."""

    start: float = Field(default=10.0, gt=0)
    """The first rate offered, in requests per second."""
    max_rate: float = Field(default=2000.0, gt=0)
    """The highest rate offered: a replica that holds it has a knee of at least this (said so in the result)."""
    factor: float = Field(default=2.0, gt=1, le=10)
    """The ramp: each step offers this many times the last rate that held, until one does not."""
    resolution: float = Field(default=0.05, gt=0, lt=1)
    """Then bisect until the first rate that broke the SLO is within this share above the knee (5%)."""
    step_duration: Duration = 4.0
    """How long each step's Locust run lasts (whole seconds; the rate is counted once every user has started)."""
    retries: int = Field(default=1, ge=0, le=5)
    """A step that breaks the SLO by little (every figure within twice its bound) is run again this many times and
    counts as broken only if every run is: noise on a shared machine makes a replica look slower, never faster.
    One that breaks it by far counts at once."""
    max_steps: int = Field(default=30, ge=2, le=200)
    """At most this many steps (retries included); a search cut short keeps the highest rate that held."""
    users: int | None = Field(default=None, ge=1, le=100_000)
    """Locust users per step; default: ``2 × rate × the largest latency bound`` (at least 2), so a user waits
    twice the bound between its requests and keeps the offered rate until the replica slows past its bound."""
    margin: float = Field(default=0.1, ge=0, lt=1)
    """A knee more than this share below the previous version's (read from its scale attestation) fails."""

    @field_validator("step_duration")
    @classmethod
    def _long_enough(cls, value: float) -> float:
        if value < 2:
            raise ValueError("a scale step runs for at least 2s (the rate is counted over whole seconds)")
        return value

    @model_validator(mode="after")
    def _range(self) -> ScaleSpec:
        if self.max_rate < self.start:
            raise ValueError(f"max_rate {self.max_rate:g} is below start {self.start:g}")
        return self


class LoadTestSpec(Model):
    """A Locust load run: the user's locustfile, or one vouch writes for ``paths`` (or, with neither, for the
    service's ``GET`` http probes aimed at ``{address}``)."""

    locustfile: str | None = None
    """Your own locustfile (relative to the configuration file). It reads ``VOUCH_RATE`` (total requests per
    second, when ``rate`` is set), ``VOUCH_RATE_PER_USER`` and ``VOUCH_HOSTS`` (every replica under test,
    space-separated) from its environment if it wants to pace itself or spread its users."""
    paths: list[str] = Field(default_factory=list)
    """Requests for a generated locustfile: ``"/cart"`` (a GET) or ``"POST /orders"``. Only what is listed is
    sent: mutating methods are never added on their own."""
    users: int = Field(default=10, ge=1, le=100_000)
    """Concurrent Locust users."""
    spawn_rate: float = Field(default=10.0, gt=0)
    """Users started per second until all run."""
    rate: float | None = Field(default=None, gt=0)
    """Total requests per second to offer (each user paces itself to ``rate / users``); unset, every user sends
    as fast as the target answers."""
    duration: Duration = 30.0
    """How long the load runs, spawning included."""
    step: int | str = 0
    """The plan step that runs the load test: an index from 0 (the first step, the default) or a step's label
    as the plan writes it (``"5%"``, or ``"2"`` for the step of two pods). Other steps do not run it."""
    compare_stable: bool = False
    """Load stable's replicas too, at the same time and as hard, and judge ``max_canary_regression``."""
    thresholds: LoadThresholds = Field(default_factory=LoadThresholds)
    """The bounds the run is judged by."""
    locust_command: list[str] | None = Field(default=None, min_length=1)
    """How to start Locust; default ``[<vouch's python>, -m, locust]`` (install it with
    ``pip install 'vouch[loadtest]'``)."""
    scale: ScaleSpec | None = None
    """Also a scale test, after the load (at the same step, against one canary replica): its knee is signed as a
    test-result attestation and a knee more than ``scale.margin`` below the previous version's fails."""

    @field_validator("paths")
    @classmethod
    def _requests(cls, value: list[str]) -> list[str]:
        for text in value:
            parse_request(text)  # raises ValueError naming the accepted forms
        return value

    @field_validator("duration")
    @classmethod
    def _long_enough(cls, value: float) -> float:
        if value < 1:
            raise ValueError("a load test runs for at least 1s (Locust counts whole seconds)")
        return value

    @field_validator("step")
    @classmethod
    def _step(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError("a step index counts from 0 (the first step)")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> LoadTestSpec:
        if self.locustfile is not None and self.paths:
            raise ValueError("set either 'locustfile' (your own) or 'paths' (a generated one), not both")
        if self.thresholds.max_canary_regression and not self.compare_stable:
            raise ValueError("'thresholds.max_canary_regression' compares with stable: set 'compare_stable: true'")
        if self.scale is not None and not self.thresholds.max_latency_ms:
            raise ValueError("a scale test needs a latency bound to find the knee: set 'thresholds.max_latency_ms'")
        return self
