"""The third pass over a configuration: references between its parts.

Each part may be valid alone and still not fit the rest: a service's chain
names an environment nobody defined, an SLO asks a provider that does not
exist, two routers want one port. These checks run on whatever validated, part
by part (:func:`parts_of_raw`), so they still report when other parts are
broken: the user sees every problem of a file in one run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from vouch.daemon.config import DaemonSpec, Loc, ProbeWatchSpec, VouchConfig, dotted, quoted, split_host_port
from vouch.loadtests.scale import most_steps
from vouch.loadtests.settings import LoadTestSpec
from vouch.probes.registry import ProbeDefinition
from vouch.rollout.config import (
    AnalysisSpec,
    BuiltinProviderSpec,
    EnvironmentSpec,
    PlanSpec,
    PlatformSpec,
    ProviderSpec,
    ServiceSpec,
    SloSpec,
)
from vouch.rollout.gates import GATE_KINDS
from vouch.rollout.gates.loadtest import inconclusive_runs, requests_from_probes, resolve_step
from vouch.rollout.metrics.template import PLACEHOLDERS

_T = TypeVar("_T")


@dataclass(frozen=True)
class _Stage:
    """One entry of a service's chain, as far as it could be read."""

    index: int
    name: str | None
    port: int


@dataclass(frozen=True)
class _ServiceView:
    """What the reference checks need of a service; of a broken one, whatever still reads."""

    chain: tuple[_Stage, ...]
    slos: tuple[tuple[int, SloSpec], ...]
    has_command: bool
    has_slos: bool
    has_probes: bool = False
    has_image: bool = False
    performance_critical: bool = False
    has_loadtest: bool = False
    loadtest: LoadTestSpec | None = None
    """The load test's settings when they validated (``has_loadtest`` says whether any were written)."""
    probe_requests: bool = False
    """Whether GET http probes give a generated locustfile something to send."""

    @classmethod
    def of(cls, spec: ServiceSpec) -> _ServiceView:
        return cls(
            chain=tuple(_Stage(i, env.name, env.port) for i, env in enumerate(spec.environments)),
            slos=tuple(enumerate(spec.slos)),
            has_command=spec.command is not None,
            has_slos=bool(spec.slos),
            has_probes=bool(spec.probes),
            has_image=spec.image is not None and "{version}" in spec.image,
            performance_critical=spec.performance_critical,
            has_loadtest=spec.loadtest is not None,
            loadtest=spec.loadtest,
            probe_requests=bool(requests_from_probes(spec.probes)),
        )

    @classmethod
    def of_raw(cls, raw: dict[str, Any]) -> _ServiceView:
        chain = raw.get("environments")
        slos = raw.get("slos")
        probes = raw.get("probes")
        return cls(
            chain=tuple(
                _Stage(i, _of_type(env.get("name"), str), _port(env.get("port")))
                for i, env in enumerate(chain if isinstance(chain, list) else [])
                if isinstance(env, dict)
            ),
            slos=_valid_items(SloSpec.model_validate, slos),
            has_command=raw.get("command") is not None,
            has_slos=bool(slos),
            has_probes=bool(raw.get("probes")),
            has_image=isinstance(raw.get("image"), str) and "{version}" in raw["image"],
            performance_critical=raw.get("performance_critical") is True,
            has_loadtest=raw.get("loadtest") is not None,
            loadtest=_valid(LoadTestSpec.model_validate, raw.get("loadtest")),
            probe_requests=bool(requests_from_probes([p for _, p in _valid_items(_PROBE.validate_python, probes)])),
        )


@dataclass(frozen=True)
class _EnvironmentView:
    """The gates of an environment, as far as they could be read."""

    gates: tuple[tuple[int, str], ...]
    allow_load_tests: bool = False
    steps: tuple[str, ...] | None = None
    """The plan's step labels, when the plan validated."""
    analysis: AnalysisSpec | None = None

    @classmethod
    def of(cls, spec: EnvironmentSpec) -> _EnvironmentView:
        steps = tuple(step.label for step in spec.plan.steps)
        return cls(tuple(enumerate(spec.gates)), spec.allow_load_tests, steps, spec.analysis)

    @classmethod
    def of_raw(cls, raw: object) -> _EnvironmentView:
        if not isinstance(raw, dict):
            return cls(())
        gates = raw.get("gates", _DEFAULT_GATES)
        plan = _valid(PlanSpec.model_validate, raw.get("plan", {}))
        return cls(
            tuple((i, g) for i, g in enumerate(gates if isinstance(gates, list) else []) if isinstance(g, str)),
            allow_load_tests=raw.get("allow_load_tests") is True,
            steps=tuple(step.label for step in plan.steps) if plan is not None else None,
            analysis=_valid(AnalysisSpec.model_validate, raw.get("analysis", {})),
        )


_DEFAULT_GATES: list[str] = EnvironmentSpec().gates


@dataclass(frozen=True)
class Parts:
    """What validated, part by part; a ``None`` map could not be read at all (its checks are skipped)."""

    daemon: DaemonSpec | None
    platform: PlatformSpec | None
    providers: Mapping[str, ProviderSpec | None] | None
    services: Mapping[str, _ServiceView]
    environments: Mapping[str, _EnvironmentView] | None
    probe_watch: ProbeWatchSpec | None = None

    @classmethod
    def of(cls, config: VouchConfig) -> Parts:
        return cls(
            daemon=config.daemon,
            platform=config.platform,
            providers=dict(config.metric_providers),
            services={name: _ServiceView.of(spec) for name, spec in config.services.items()},
            environments={name: _EnvironmentView.of(spec) for name, spec in config.environments.items()},
            probe_watch=config.probe_watch,
        )


_PROVIDER: TypeAdapter[ProviderSpec] = TypeAdapter(ProviderSpec)
_PROBE: TypeAdapter[ProbeDefinition] = TypeAdapter(ProbeDefinition)
_PLATFORM: TypeAdapter[PlatformSpec] = TypeAdapter(PlatformSpec)


def _valid(validate: Callable[[object], _T], value: object) -> _T | None:
    try:
        return validate(value)
    except ValidationError:
        return None


def _valid_items(validate: Callable[[object], _T], values: object) -> tuple[tuple[int, _T], ...]:
    if not isinstance(values, list):
        return ()
    checked = ((i, _valid(validate, value)) for i, value in enumerate(values))
    return tuple((i, item) for i, item in checked if item is not None)


def _of_type(value: object, kind: type[_T]) -> _T | None:
    return value if isinstance(value, kind) else None


def _port(value: object) -> int:
    """A port as written, or 0 (none) when it is not one; the models report why."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 65535 else 0


def parts_of_raw(data: dict[str, Any]) -> Parts:
    """Read each part alone, so reference checks still run when other parts are broken."""
    raw_providers = data.get("metric_providers", {})
    providers: dict[str, ProviderSpec | None] | None = None
    if isinstance(raw_providers, dict):
        providers = {str(k): _valid(_PROVIDER.validate_python, v) for k, v in raw_providers.items()}
        providers.setdefault("builtin", BuiltinProviderSpec())
    raw_services = data.get("services")
    services: dict[str, _ServiceView] = {}
    if isinstance(raw_services, dict):
        services = {str(k): _ServiceView.of_raw(v) for k, v in raw_services.items() if isinstance(v, dict)}
    raw_envs = data.get("environments")
    environments = None
    if isinstance(raw_envs, dict) and raw_envs:
        environments = {str(k): _EnvironmentView.of_raw(v) for k, v in raw_envs.items()}
    return Parts(
        daemon=_valid(DaemonSpec.model_validate, data.get("daemon", {})),
        platform=_valid(_PLATFORM.validate_python, data.get("platform", {})),
        providers=providers,
        services=services,
        environments=environments,
        probe_watch=_valid(ProbeWatchSpec.model_validate, data["probe_watch"]) if data.get("probe_watch") else None,
    )


def references(parts: Parts) -> Iterator[tuple[Loc, str]]:
    """Every reference problem of ``parts``, as (field path, message); lines are the caller's to add."""
    yield from _check_chains(parts)
    yield from _check_slos(parts)
    yield from _check_slo_gates(parts)
    yield from _check_gates(parts)
    yield from _check_load_tests(parts)
    yield from _check_platform(parts)
    yield from _check_ports(parts)
    yield from _check_probe_watch(parts)


def _check_probe_watch(parts: Parts) -> Iterator[tuple[Loc, str]]:
    """Meta-monitoring asks Prometheus: its provider must be one."""
    if parts.probe_watch is None or parts.providers is None:
        return
    name = parts.probe_watch.provider
    provider = parts.providers.get(name)
    if provider is None:
        yield ("probe_watch", "provider"), f"unknown provider {name!r}; defined: {quoted(parts.providers)}"
    elif provider.kind != "prometheus":
        yield (
            ("probe_watch", "provider"),
            f"provider {name!r} is of kind {provider.kind!r}; probe_watch needs a prometheus one",
        )


def _check_chains(parts: Parts) -> Iterator[tuple[Loc, str]]:
    for name, spec in parts.services.items():
        first: dict[str, int] = {}
        for stage in spec.chain:
            if stage.name is None:
                continue
            loc: Loc = ("services", name, "environments", stage.index, "name")
            if parts.environments is not None and stage.name not in parts.environments:
                yield loc, f"unknown environment {stage.name!r}; defined: {quoted(parts.environments)}"
            if stage.name in first:
                yield loc, f"environment {stage.name!r} is already in the chain at environments[{first[stage.name]}]"
            first.setdefault(stage.name, stage.index)


def _check_slos(parts: Parts) -> Iterator[tuple[Loc, str]]:
    for name, spec in parts.services.items():
        for i, slo in spec.slos:
            loc: Loc = ("services", name, "slos", i)
            if parts.providers is not None and slo.provider not in parts.providers:
                yield (*loc, "provider"), f"unknown provider {slo.provider!r}; defined: {quoted(parts.providers)}"
            provider = parts.providers.get(slo.provider) if parts.providers is not None else None
            if slo.metric is not None and provider is not None and provider.kind != "builtin":
                yield (
                    (*loc, "metric"),
                    (
                        f"'metric' needs a builtin provider, but {slo.provider!r} is of kind {provider.kind!r}; "
                        "write a 'query' in its language instead"
                    ),
                )
            for placeholder in re.findall(r"\{([A-Za-z_]+)\}", slo.query or ""):
                if placeholder not in PLACEHOLDERS:
                    known = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
                    yield (*loc, "query"), f"unknown placeholder {{{placeholder}}}; known: {known}"


def _check_slo_gates(parts: Parts) -> Iterator[tuple[Loc, str]]:
    """A service promoted where the ``slo`` or ``probes`` gate runs must give it something to judge."""
    for name, spec in parts.services.items():
        for gate, has, field in (("slo", spec.has_slos, "slos"), ("probes", spec.has_probes, "probes")):
            if has:
                continue
            for stage in spec.chain:
                env = (parts.environments or {}).get(stage.name or "")
                if env is not None and any(g == gate for _, g in env.gates):
                    message = f"environment {stage.name!r} gates on {gate!r} but service {name!r} defines no {field}"
                    yield ("services", name, field), message


def _check_gates(parts: Parts) -> Iterator[tuple[Loc, str]]:
    for name, env in (parts.environments or {}).items():
        for i, gate in env.gates:
            if gate not in GATE_KINDS:
                yield ("environments", name, "gates", i), f"unknown gate {gate!r}; known gates: {quoted(GATE_KINDS)}"


def _check_load_tests(parts: Parts) -> Iterator[tuple[Loc, str]]:
    """Load only where allowed, and only with settings that can run where the gate is listed."""
    for name, env in (parts.environments or {}).items():
        for i, gate in env.gates:
            if gate == "loadtest" and "prod" in name.lower() and not env.allow_load_tests:
                yield (
                    ("environments", name, "gates", i),
                    f"environment {name!r} looks like production: the 'loadtest' gate puts load on it only with "
                    "'allow_load_tests: true'",
                )
    for name, spec in parts.services.items():
        loaded = _loading_environments(parts, spec) if spec.performance_critical else []
        if not loaded:
            continue
        if not spec.has_loadtest:
            first = loaded[0][0]
            message = (
                f"performance-critical service {name!r} has no loadtest settings, but {first!r} gates on 'loadtest'"
            )
            yield ("services", name, "loadtest"), message
            continue
        load = spec.loadtest
        if load is None:
            continue  # invalid settings: their own problems are reported
        if load.locustfile is None and not load.paths and not spec.probe_requests:
            yield (
                ("services", name, "loadtest"),
                "nothing to load: set 'paths' or 'locustfile', or give the service GET http probes aimed at {address}",
            )
        for env_name, env in loaded:
            yield from _check_load_timing(name, load, env_name, env)


def _loading_environments(parts: Parts, spec: _ServiceView) -> list[tuple[str, _EnvironmentView]]:
    """The environments of ``spec``'s chain that run the ``loadtest`` gate."""
    found = []
    for stage in spec.chain:
        env = (parts.environments or {}).get(stage.name or "")
        if stage.name and env is not None and any(g == "loadtest" for _, g in env.gates):
            found.append((stage.name, env))
    return found


SCALE_STEP_OVERHEAD = 1.5
"""Seconds each scale-test step adds to its run time: starting Locust and reading its results."""


def _check_load_timing(
    name: str, load: LoadTestSpec, env_name: str, env: _EnvironmentView
) -> Iterator[tuple[Loc, str]]:
    """The step exists in the environment's plan, and its analysis tolerates the runs the load takes."""
    if env.steps is not None:
        try:
            resolve_step(load.step, env.steps)
        except ValueError as exc:
            yield ("services", name, "loadtest", "step"), f"in environment {env_name!r}: {exc}"
    analysis = env.analysis
    if analysis is not None:
        # A scale test follows a passing load run: budget its worst case (each step plus Locust's start-up).
        scaled = most_steps(load.scale) * (load.scale.step_duration + SCALE_STEP_OVERHEAD) if load.scale else 0.0
        runs_for = load.duration + scaled
        needed = inconclusive_runs(runs_for, analysis.interval)
        if needed > analysis.inconclusive_limit:
            yield (
                ("environments", env_name, "analysis", "inconclusive_limit"),
                f"the load test of {name!r} runs up to {runs_for:g}s: with analysis every {analysis.interval:g}s about "
                f"{needed} analysis runs are inconclusive while it runs, more than inconclusive_limit "
                f"{analysis.inconclusive_limit}; raise the limit to {needed} or the interval to at least "
                f"{round(runs_for) + 10}s",
            )


def _check_platform(parts: Parts) -> Iterator[tuple[Loc, str]]:
    if parts.platform is None:
        return
    if parts.platform.kind == "kubernetes":
        for name, spec in parts.services.items():
            if not spec.has_image:
                yield ("services", name, "image"), "the kubernetes platform runs 'image' (with '{version}' as its tag)"
        return
    for name, spec in parts.services.items():
        if not spec.has_command:
            yield (
                ("services", name, "command"),
                (
                    "the local platform starts every replica from 'command'; add one, "
                    "e.g. [python, -m, myapp, --port, '{port}']"
                ),
            )


def _check_ports(parts: Parts) -> Iterator[tuple[Loc, str]]:
    """Routers of the local platform each bind their port: two on one port cannot both start."""
    listen = split_host_port(parts.daemon.listen)[1] if parts.daemon is not None else None
    taken: dict[int, Loc] = {}
    for name, spec in parts.services.items():
        for stage in spec.chain:
            loc: Loc = ("services", name, "environments", stage.index, "port")
            if stage.port == 0:
                continue
            if stage.port == listen:
                yield loc, f"port {stage.port} is the daemon's own (daemon.listen)"
            elif stage.port in taken:
                yield loc, f"port {stage.port} is already used by {dotted(taken[stage.port])}"
            taken.setdefault(stage.port, loc)
