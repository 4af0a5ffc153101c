"""Metric providers (see ``base.MetricProvider``) and the one registry that builds them by ``kind``.

>>> from vouch.rollout.config import BuiltinProviderSpec
>>> from vouch.rollout.platforms.traffic import TrafficRecorder
>>> sorted(build_providers({"local": BuiltinProviderSpec()}, traffic=TrafficRecorder()))
['local']
"""

from __future__ import annotations

from collections.abc import Mapping

from vouch.core.errors import ConfigError, Problem
from vouch.rollout.config import BuiltinProviderSpec, PrometheusProviderSpec, ProviderSpec
from vouch.rollout.metrics.base import MetricProvider
from vouch.rollout.metrics.builtin import BuiltinProvider
from vouch.rollout.metrics.prometheus import PrometheusProvider
from vouch.rollout.platforms.traffic import TrafficRecorder

PROVIDER_KINDS: tuple[str, ...] = ("builtin", "prometheus")
"""Provider kinds a ``metric_providers`` entry may name."""


def build_providers(specs: Mapping[str, ProviderSpec], *, traffic: TrafficRecorder) -> dict[str, MetricProvider]:
    """One provider per named spec. ``traffic`` feeds every ``builtin`` provider.

    An unknown kind is a :class:`ConfigError` naming the known kinds (settings
    validation normally rejects it first). The caller owns the providers and
    closes them with ``close()``.
    """
    problems = [
        Problem(
            file="configuration",
            line=None,
            path=f"metric_providers.{name}.kind",
            message=f"unknown metric provider kind {getattr(spec, 'kind', None)!r}; "
            f"known kinds: {', '.join(PROVIDER_KINDS)}",
        )
        for name, spec in specs.items()
        if not isinstance(spec, BuiltinProviderSpec | PrometheusProviderSpec)
    ]
    if problems:
        raise ConfigError(problems)
    providers: dict[str, MetricProvider] = {}
    for name, spec in specs.items():
        if isinstance(spec, PrometheusProviderSpec):
            providers[name] = PrometheusProvider(spec)
        else:
            providers[name] = BuiltinProvider(traffic)
    return providers
