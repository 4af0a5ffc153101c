"""The shared test helpers that run a real Alertmanager (and Prometheus alerting through it)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web
from support.components import alertmanager, prometheus, require_binary


@dataclass
class Webhook:
    """A real HTTP receiver of Alertmanager's webhook: every payload and its Authorization header."""

    url: str
    received: list[tuple[str | None, dict[str, Any]]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(self, alertname: str, status: str = "firing", timeout: float = 30) -> tuple[str | None, Any]:
        """The first notification carrying an alert named ``alertname`` in ``status``."""
        async with asyncio.timeout(timeout):
            while True:
                for auth, payload in self.received:
                    for alert in payload["alerts"]:
                        if alert["labels"].get("alertname") == alertname and alert["status"] == status:
                            return auth, alert
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    hook = Webhook("")

    async def receive(request: web.Request) -> web.Response:
        hook.received.append((request.headers.get("Authorization"), await request.json()))
        hook.arrived.set()
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/alerts", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    hook.url = f"http://127.0.0.1:{runner.addresses[0][1]}/alerts"
    try:
        yield hook
    finally:
        await runner.cleanup()


async def test_alertmanager_is_ready_and_stopped_afterwards(webhook: Webhook) -> None:
    with alertmanager(webhook.url) as am:
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{am.url}/-/ready")).status_code == 200
        process = am.process
    assert process.poll() is not None
    assert not am.directory.exists()


async def test_alertmanager_forwards_alerts_and_resolutions_with_the_token(webhook: Webhook) -> None:
    alert = {"labels": {"alertname": "CheckoutErrors", "service": "shop", "environment": "staging"}}
    with alertmanager(webhook.url, bearer_token="s3cret") as am:
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{am.url}/api/v2/alerts", json=[alert])
            assert response.status_code == 200
            auth, fired = await webhook.wait_for("CheckoutErrors")
            resolve = {**alert, "endsAt": "2000-01-01T00:00:00Z"}
            (await client.post(f"{am.url}/api/v2/alerts", json=[resolve])).raise_for_status()
            await webhook.wait_for("CheckoutErrors", status="resolved")
    assert auth == "Bearer s3cret"
    assert fired["labels"]["service"] == "shop"


async def test_prometheus_rules_fire_through_alertmanager(webhook: Webhook) -> None:
    rules = """
groups:
  - name: test
    rules:
      - alert: AlwaysFiring
        expr: vector(1)
        labels: {service: shop, environment: staging}
"""
    with alertmanager(webhook.url) as am, prometheus([], rules_yaml=rules, alertmanager_url=am.url):
        auth, fired = await webhook.wait_for("AlwaysFiring")
    assert auth is None
    assert (fired["labels"]["service"], fired["labels"]["environment"]) == ("shop", "staging")


def test_require_binary_skips_saying_how_to_install() -> None:
    with pytest.raises(pytest.skip.Exception, match=r"no-such-tool not installed: run `make test` as root"):
        require_binary("no-such-tool")
    assert subprocess.run([require_binary("true")], check=False).returncode == 0
