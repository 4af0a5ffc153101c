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
from vouch.rollout.config import (
    BuiltinProviderSpec,
    EnvironmentSpec,
    PlatformSpec,
    ProviderSpec,
    ServiceSpec,
    SloSpec,
)
from vouch.rollout.gates import GATE_KINDS
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

    @classmethod
    def of(cls, spec: ServiceSpec) -> _ServiceView:
        return cls(
            chain=tuple(_Stage(i, env.name, env.port) for i, env in enumerate(spec.environments)),
            slos=tuple(enumerate(spec.slos)),
            has_command=spec.command is not None,
            has_slos=bool(spec.slos),
            has_probes=bool(spec.probes),
            has_image=spec.image is not None and "{version}" in spec.image,
        )

    @classmethod
    def of_raw(cls, raw: dict[str, Any]) -> _ServiceView:
        chain = raw.get("environments")
        slos = raw.get("slos")
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
        )


@dataclass(frozen=True)
class _EnvironmentView:
    """The gates of an environment, as far as they could be read."""

    gates: tuple[tuple[int, str], ...]

    @classmethod
    def of(cls, spec: EnvironmentSpec) -> _EnvironmentView:
        return cls(tuple(enumerate(spec.gates)))

    @classmethod
    def of_raw(cls, raw: object) -> _EnvironmentView:
        gates = raw.get("gates", _DEFAULT_GATES) if isinstance(raw, dict) else []
        return cls(tuple((i, g) for i, g in enumerate(gates if isinstance(gates, list) else []) if isinstance(g, str)))


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
