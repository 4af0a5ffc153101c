"""The prometheus provider against a real Prometheus scraping a real TrafficRecorder's registry.

respx shapes only what a real server cannot easily produce: a timeout and malformed answers.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import respx
from aiohttp import web
from prometheus_client import CollectorRegistry
from support.components import free_port, prometheus, serve_registry, wait_for_query

from vouch.core.errors import MetricQueryError
from vouch.rollout.config import PrometheusProviderSpec, SloSpec
from vouch.rollout.gates.slo import SloGate
from vouch.rollout.metrics.prometheus import PrometheusProvider
from vouch.rollout.model import GateContext, GatePhase, Observed, Target
from vouch.rollout.platforms.traffic import TrafficRecorder

SHOP = Target("shop", "staging")  # fixed traffic, recorded before Prometheus starts
CART = Target("cart", "staging")  # live traffic, recorded all along: 10% errors

SHOP_TOTAL = 'sum(vouch_router_requests_total{service="shop",version="2.0"})'
SHOP_ERRORS = 'sum(vouch_router_requests_total{service="shop",version="2.0",code=~"5.."})'


@dataclass(frozen=True)
class Live:
    url: str


def _live_traffic(traffic: TrafficRecorder, stop: threading.Event) -> None:
    while not stop.wait(0.02):
        for i in range(10):
            traffic.record(CART, "3.0", "canary", status=500 if i == 0 else 200, seconds=0.01)


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    """One Prometheus for the module, scraping a recorder with fixed traffic (shop) and live traffic (cart)."""
    registry = CollectorRegistry()
    traffic = TrafficRecorder(registry)
    for i in range(100):
        traffic.record(SHOP, "2.0", "canary", status=500 if i % 10 == 0 else 200, seconds=0.01)
        traffic.record(SHOP, "1.0", "stable", status=200, seconds=0.01)
    stop = threading.Event()
    generator = threading.Thread(target=_live_traffic, args=(traffic, stop), name="live-traffic", daemon=True)
    generator.start()
    try:
        with serve_registry(registry) as target, prometheus([target]) as prom:
            yield Live(prom.url)
    finally:
        stop.set()
        generator.join(timeout=5)


@pytest.fixture
async def provider(live: Live) -> AsyncIterator[PrometheusProvider]:
    provider = PrometheusProvider(PrometheusProviderSpec(kind="prometheus", url=live.url, timeout=5))
    try:
        yield provider
    finally:
        await provider.close()


async def scraped(live: Live) -> None:
    """Wait until Prometheus holds the fixed traffic (the first sample takes a few seconds)."""
    await wait_for_query(live.url, 'sum(vouch_router_requests_total{service="shop"})', lambda s: s == [({}, 200.0)])


async def test_sums_and_ratios_of_scraped_traffic(live: Live, provider: PrometheusProvider) -> None:
    await scraped(live)
    [total] = await provider.query(SHOP_TOTAL)
    [ratio] = await provider.query(f"{SHOP_ERRORS} / {SHOP_TOTAL}")
    by_code = await provider.query('sum by (code) (vouch_router_requests_total{service="shop",version="2.0"})')
    assert (total.value, total.labels) == (100.0, {})
    assert total.at == pytest.approx(time.time(), abs=60)
    assert ratio.value == pytest.approx(0.1)
    assert {s.labels["code"]: s.value for s in by_code} == {"200": 90.0, "500": 10.0}


async def test_scalars_including_nan_and_inf(live: Live, provider: PrometheusProvider) -> None:
    [count] = await provider.query(f"scalar({SHOP_TOTAL})")
    [nan] = await provider.query("0 / 0")
    [inf] = await provider.query("1 / 0")
    assert (count.value, count.labels) == (100.0, {})
    assert math.isnan(nan.value)
    assert inf.value == math.inf


async def test_the_evaluation_time_is_sent(live: Live, provider: PrometheusProvider) -> None:
    await scraped(live)
    assert await provider.query(SHOP_TOTAL, at=time.time() - 3600) == []
    [now] = await provider.query(SHOP_TOTAL, at=time.time())
    assert now.value == 100.0


async def test_rates_of_live_traffic(live: Live, provider: PrometheusProvider) -> None:
    rate = 'sum(rate(vouch_router_requests_total{service="cart",version="3.0"}[5s]))'
    errors = 'sum(rate(vouch_router_requests_total{service="cart",version="3.0",code=~"5.."}[5s]))'
    await wait_for_query(live.url, f"{errors} / {rate}", lambda s: len(s) == 1 and not math.isnan(s[0].value))
    [requests_per_second] = await provider.query(rate)
    [ratio] = await provider.query(f"{errors} / {rate}")
    assert requests_per_second.value > 0
    assert ratio.value == pytest.approx(0.1, abs=0.03)


async def test_the_slo_gate_judges_a_rendered_promql_query(live: Live, provider: PrometheusProvider) -> None:
    query = (
        'sum(rate(vouch_router_requests_total{service="{service}",environment="{environment}",'
        'version="{version}",code=~"5.."}[{window}]))'
        ' / sum(rate(vouch_router_requests_total{service="{service}",version="{version}"}[{window}]))'
    )
    await wait_for_query(live.url, 'sum(rate(vouch_router_requests_total{service="cart"}[5s])) > 0')
    observed = Observed("2.9", "3.0", stable_desired=1, stable_ready=1, canary_desired=1, canary_ready=1)
    ctx = GateContext("p1", CART, "3.0", "2.9", 0, time.time() - 10, time.time(), observed)

    def slo(bound: float) -> SloSpec:
        return SloSpec(name="error-ratio", provider="prom", query=query, window=5, max=bound)

    passing = await SloGate([slo(0.5)], {"prom": provider}).evaluate(ctx)
    failing = await SloGate([slo(0.01)], {"prom": provider}).evaluate(ctx)
    assert passing.phase is GatePhase.PASS, passing.reasons
    assert failing.phase is GatePhase.FAIL, failing.reasons
    assert 'environment="staging",version="3.0",code=~"5.."}[5s]' in str(failing.measurements[0].query)
    assert "above the maximum 0.01" in failing.reasons[0]


# --------------------------------------------------------------------------- failures a real server produces


async def test_bad_promql_carries_prometheus_own_message(provider: PrometheusProvider) -> None:
    with pytest.raises(MetricQueryError, match=r"HTTP 400, bad_data\): .*parse error") as caught:
        await provider.query("sum(rate(")
    assert "'sum(rate('" in str(caught.value)


@pytest.mark.parametrize(
    ("expr", "kind"),
    [('vouch_router_requests_total{service="shop"}[1m]', "matrix"), ('"a string"', "string")],
)
async def test_only_instant_vectors_and_scalars_are_answers(provider: PrometheusProvider, expr: str, kind: str) -> None:
    with pytest.raises(MetricQueryError, match=f"expected an instant vector or scalar from .*, got a {kind}"):
        await provider.query(expr)


async def test_a_closed_port_is_connection_refused_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    provider = PrometheusProvider(PrometheusProviderSpec(kind="prometheus", url=url))
    try:
        with pytest.raises(MetricQueryError) as caught:
            await provider.query("up")
    finally:
        await provider.close()
    assert str(caught.value) == f"cannot connect to Prometheus at {url}: connection refused"


# --------------------------------------------------------------------------- what is sent

Recorded = tuple[str, list[web.Request], list[dict[str, str]]]
"""The recording server's URL, the requests it saw and their forms."""


@pytest.fixture
async def recorder_server() -> AsyncIterator[Recorded]:
    """A real HTTP server answering like Prometheus and keeping each request and its form."""
    seen: list[web.Request] = []
    forms: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request)
        forms.append({k: str(v) for k, v in (await request.post()).items()})
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": []}})

    app = web.Application()
    app.router.add_post("/prefix/api/v1/query", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/prefix/", seen, forms
    finally:
        await runner.cleanup()


async def test_sends_form_time_headers_and_a_fresh_bearer_token(recorder_server: Recorded, tmp_path: Path) -> None:
    url, seen, forms = recorder_server
    token = tmp_path / "token"
    token.write_text("first\n")
    spec = PrometheusProviderSpec(
        kind="prometheus", url=url, headers={"X-Scope-OrgID": "team-a"}, bearer_token_file=str(token)
    )
    provider = PrometheusProvider(spec)
    try:
        assert await provider.query("up", at=1700000000.5) == []
        token.write_text("rotated")
        await provider.query("up")
    finally:
        await provider.close()
    assert forms == [{"query": "up", "time": "1700000000.500"}, {"query": "up"}]
    assert [r.headers["Authorization"] for r in seen] == ["Bearer first", "Bearer rotated"]
    assert seen[0].headers["X-Scope-OrgID"] == "team-a"


async def test_an_unreadable_token_file_is_a_query_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    spec = PrometheusProviderSpec(kind="prometheus", url="http://127.0.0.1:9", bearer_token_file=str(missing))
    provider = PrometheusProvider(spec)
    try:
        with pytest.raises(MetricQueryError, match=f"cannot read the Prometheus bearer token file {missing}"):
            await provider.query("up")
    finally:
        await provider.close()


async def test_a_shared_client_is_used_and_left_open(
    recorder_server: Recorded,
) -> None:
    url, seen, _ = recorder_server
    async with httpx.AsyncClient() as client:
        provider = PrometheusProvider(PrometheusProviderSpec(kind="prometheus", url=url), client=client)
        await provider.query("up")
        await provider.close()
        assert not client.is_closed
    assert len(seen) == 1


# --------------------------------------------------------------------------- what only respx can shape

FAKE = "http://prometheus.test"


@pytest.fixture
async def shaped() -> AsyncIterator[tuple[PrometheusProvider, respx.Route]]:
    with respx.mock(assert_all_called=False) as router:
        route = router.post(f"{FAKE}/api/v1/query")
        provider = PrometheusProvider(PrometheusProviderSpec(kind="prometheus", url=FAKE, timeout=0.5))
        try:
            yield provider, route
        finally:
            await provider.close()


async def test_a_timeout_names_the_seconds(shaped: tuple[PrometheusProvider, respx.Route]) -> None:
    provider, route = shaped
    route.side_effect = httpx.ReadTimeout("read timed out")
    with pytest.raises(MetricQueryError, match=r"^Prometheus at http://prometheus.test did not answer within 0.5s"):
        await provider.query("up")


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(200, text="<html>proxy</html>"), "HTTP 200 with a body that is not JSON: <html>proxy</html>"),
        (httpx.Response(502, text="Bad Gateway"), "HTTP 502 with a body that is not JSON: Bad Gateway"),
        (httpx.Response(200, json=[1, 2]), "JSON that is not an object"),
        (httpx.Response(200, json={"status": "success"}), "'data' is missing"),
        (
            httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": [{"value": 1}]}}),
            "malformed Prometheus answer for 'up': a value is not [time, \"number\"]",
        ),
        (
            httpx.Response(200, json={"status": "error", "errorType": "execution", "error": "too many samples"}),
            "Prometheus rejected 'up' (HTTP 200, execution): too many samples",
        ),
        (httpx.Response(200, json={"status": "pending"}), "unknown status 'pending'"),
    ],
)
async def test_malformed_answers_are_query_errors(
    shaped: tuple[PrometheusProvider, respx.Route], response: httpx.Response, message: str
) -> None:
    provider, route = shaped
    route.return_value = response
    with pytest.raises(MetricQueryError) as caught:
        await provider.query("up")
    assert message in str(caught.value)
