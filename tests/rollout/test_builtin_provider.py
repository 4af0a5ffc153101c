"""The builtin provider: its expression language over a real TrafficRecorder, with a fake clock."""

from __future__ import annotations

import pytest

from vouch.core.errors import ConfigError, MetricQueryError
from vouch.rollout.config import BuiltinProviderSpec, PrometheusProviderSpec
from vouch.rollout.metrics import PROVIDER_KINDS, build_providers
from vouch.rollout.metrics.builtin import BuiltinProvider, parse
from vouch.rollout.metrics.prometheus import PrometheusProvider
from vouch.rollout.metrics.template import promql_duration, render
from vouch.rollout.model import Target
from vouch.rollout.platforms.traffic import TrafficRecorder

SHOP = Target("shop", "staging")
NOW = 10_000.0
LABELS = 'service="shop",environment="staging",version="2.0"'


def recorder() -> TrafficRecorder:
    """90 good requests at 10 ms and 10 errors at 400 ms to 2.0, in the 10 seconds before NOW."""
    traffic = TrafficRecorder()
    for i in range(100):
        status, seconds = (500, 0.4) if i % 10 == 0 else (200, 0.01)
        traffic.record(SHOP, "2.0", "canary", status=status, seconds=seconds, now=NOW - 9 + i // 10)
    return traffic


@pytest.fixture
def provider() -> BuiltinProvider:
    return BuiltinProvider(recorder(), clock=lambda: NOW)


async def test_error_ratio_counts_5xx_over_the_window(provider: BuiltinProvider) -> None:
    [sample] = await provider.query(f"error_ratio{{{LABELS}}}[30s]")
    assert sample.value == pytest.approx(0.1)
    assert sample.labels == {"service": "shop", "environment": "staging", "version": "2.0"}
    assert sample.at == NOW


async def test_requests_and_rate_follow_the_window(provider: BuiltinProvider) -> None:
    [total] = await provider.query(f"requests{{{LABELS}}}[30s]")
    [recent] = await provider.query(f"requests{{{LABELS}}}[5s]")
    [rate] = await provider.query(f"request_rate{{{LABELS}}}[20s]")
    assert (total.value, recent.value) == (100, 50)
    assert rate.value == pytest.approx(100 / 20)


async def test_latency_quantile_interpolates_within_buckets(provider: BuiltinProvider) -> None:
    [median] = await provider.query(f"latency_quantile(0.5){{{LABELS}}}[1m]")
    [p99] = await provider.query(f"latency_quantile(0.99){{{LABELS}}}[1m]")
    assert 0.005 < median.value <= 0.01
    assert 0.25 < p99.value <= 0.5


async def test_at_overrides_the_clock(provider: BuiltinProvider) -> None:
    assert await provider.query(f"requests{{{LABELS}}}[5s]", at=NOW + 100) == []
    [later] = await provider.query(f"requests{{{LABELS}}}[5s]", at=NOW + 3)
    assert (later.value, later.at) == (20, NOW + 3)


async def test_no_requests_is_no_data_not_zero(provider: BuiltinProvider) -> None:
    other = 'service="shop",environment="staging",version="3.0"'
    for fn in ("error_ratio", "request_rate", "requests", "latency_quantile(0.9)"):
        assert await provider.query(f"{fn}{{{other}}}[30s]") == []


async def test_label_order_and_spacing_are_free(provider: BuiltinProvider) -> None:
    [sample] = await provider.query(' requests { version = "2.0" , service="shop",environment="staging", } [ 1m ] ')
    assert sample.value == 100


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("error_ratio", "cannot parse"),
        (f"errors{{{LABELS}}}[30s]", "unknown function 'errors'; known: error_ratio"),
        (f"latency_quantile{{{LABELS}}}[30s]", "needs a quantile"),
        (f"latency_quantile(1.5){{{LABELS}}}[30s]", "between 0 and 1"),
        (f"latency_quantile(high){{{LABELS}}}[30s]", "'high' is not a number"),
        (f"requests(2){{{LABELS}}}[30s]", "takes no argument"),
        ('requests{service="shop",version="2.0"}[30s]', "missing label(s) environment"),
        (f'requests{{{LABELS},pod="a"}}[30s]', "unknown label 'pod'"),
        ('requests{service="shop",service="x",environment="e",version="v"}[30s]', "'service' is given twice"),
        ('requests{service=~"shop",environment="e",version="v"}[30s]', "only exact matches (=)"),
        ('requests{service=shop,environment="e",version="v"}[30s]', "cannot parse label matchers"),
        ('requests{service="shop" environment="e",version="v"}[30s]', "expected ','"),
        (f"requests{{{LABELS}}}[soon]", "window [soon]"),
        (f"requests{{{LABELS}}}[0s]", "longer than zero"),
        (f"requests{{{LABELS}}}", "cannot parse"),
    ],
)
async def test_malformed_expressions_say_what_is_wrong(provider: BuiltinProvider, expr: str, message: str) -> None:
    with pytest.raises(MetricQueryError, match="builtin: ") as caught:
        await provider.query(expr)
    assert message in str(caught.value)


def test_parse_unescapes_quoted_values() -> None:
    parsed = parse(r'requests{service="a",environment="b",version="v\"1"}[500ms]')
    assert (parsed.version, parsed.window) == ('v"1', 0.5)


# --------------------------------------------------------------------------- templates and registry


def test_render_replaces_only_our_placeholders_and_keeps_promql_braces() -> None:
    query = (
        'sum(rate(http_requests_total{job="{service}",env="{environment}",version="{version}",code=~"5.."}[{window}]))'
        ' / sum(rate(http_requests_total{job="{service}",version="{version}"}[{window}])) {other} {0}'
    )
    rendered = render(query, {"service": "shop", "environment": "prod", "version": "2.0", "window": "1m"})
    assert rendered == (
        'sum(rate(http_requests_total{job="shop",env="prod",version="2.0",code=~"5.."}[1m]))'
        ' / sum(rate(http_requests_total{job="shop",version="2.0"}[1m])) {other} {0}'
    )


def test_render_refuses_a_query_with_a_hole() -> None:
    with pytest.raises(ValueError, match=r"\{stable_version\}"):
        render('x{version="{stable_version}"}', {"version": "1"})


@pytest.mark.parametrize(
    ("seconds", "text"), [(30, "30s"), (120, "2m"), (90, "90s"), (1.5, "1500ms"), (0.25, "250ms"), (7200, "2h")]
)
def test_promql_duration(seconds: float, text: str) -> None:
    assert promql_duration(seconds) == text


def test_promql_duration_rejects_zero() -> None:
    with pytest.raises(ValueError, match="positive"):
        promql_duration(0)


async def test_build_providers_by_kind() -> None:
    spec = PrometheusProviderSpec(kind="prometheus", url="http://127.0.0.1:9")
    providers = build_providers({"local": BuiltinProviderSpec(), "prom": spec}, traffic=TrafficRecorder())
    try:
        assert isinstance(providers["local"], BuiltinProvider)
        assert isinstance(providers["prom"], PrometheusProvider)
        assert {p.kind for p in providers.values()} == set(PROVIDER_KINDS)
    finally:
        for provider in providers.values():
            await provider.close()


def test_build_providers_names_the_known_kinds_for_an_unknown_one() -> None:
    class Graphite:
        kind = "graphite"

    with pytest.raises(ConfigError, match="unknown metric provider kind 'graphite'; known kinds: builtin, prometheus"):
        build_providers({"g": Graphite()}, traffic=TrafficRecorder())  # type: ignore[dict-item]
