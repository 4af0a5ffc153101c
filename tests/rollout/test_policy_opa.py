"""The OPA client against a local server that answers like OPA's REST Data API, and fails closed.

No OPA binary is packaged for this machine (``apt-cache policy opa`` names none), so the server
here reproduces the documented exchange: ``POST /v1/data/<path>`` with ``{"input": ...}``,
``{"result": ...}`` when the rule is defined, ``{}`` when it is not, ``{"code", "message"}`` with
an HTTP error status otherwise.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web

from vouch.rollout.policy import OpaPolicySpec, build_policy
from vouch.rollout.policy.base import PolicyEngine
from vouch.rollout.policy.input import canonical_digest
from vouch.rollout.policy.opa import OpaPolicy

PROVENANCE = {"version": "0.70.0", "bundles": {"vouch": {"revision": "r42"}}}


@dataclass
class FakeOpa:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


def answer(path: str, body: dict[str, Any]) -> web.Response:
    """What OPA would answer for the rule at ``path``."""
    document = body["input"]
    if path == "vouch/decision":
        denials = [f"step '{step}' is missing" for step in document.get("missing", [])]
        result = {"allow": not denials, "denials": denials}
        return web.json_response({"result": result, "provenance": PROVENANCE})
    if path == "vouch/undefined":
        return web.json_response({"provenance": PROVENANCE})
    if path == "vouch/v0":
        return web.json_response({"result": {"allow": False, "denials": {"no build": True}}})
    if path == "vouch/allow_with_denials":
        return web.json_response({"result": {"allow": True, "denials": ["coverage 71% < 80%"]}})
    if path == "vouch/garbage":
        return web.Response(text="<html>proxy error</html>", content_type="text/html")
    if path == "vouch/list":
        return web.json_response([1, 2])
    if path == "vouch/broken":
        error = {"code": "internal_error", "message": "1 error occurred: policy.rego:7: eval_conflict_error"}
        return web.json_response(error, status=500)
    return web.json_response({"code": "not_found", "message": "no such path"}, status=404)


@pytest.fixture
async def opa() -> AsyncIterator[FakeOpa]:
    fake = FakeOpa(url="")

    async def handle(request: web.Request) -> web.Response:
        path = request.match_info["path"]
        body = json.loads(await request.text())
        fake.requests.append(
            {"path": path, "query": dict(request.query), "content_type": request.content_type, "body": body}
        )
        if path == "vouch/slow":
            await fake.release.wait()
        if not isinstance(body, dict) or "input" not in body:
            return web.json_response({"code": "invalid_parameter", "message": "missing input"}, status=400)
        return answer(path, body)

    app = web.Application()
    app.router.add_post("/v1/data/{path:.*}", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield fake
    finally:
        fake.release.set()
        await runner.cleanup()


async def ask(
    opa: FakeOpa, path: str, document: dict[str, Any], *, timeout: float = 5.0
) -> tuple[bool, tuple[str, ...]]:
    policy = OpaPolicy(opa.url, path, timeout=timeout)
    try:
        decision = await policy.decide(document)
    finally:
        await policy.close()
    return decision.allow, decision.denials


async def test_posts_the_input_and_reads_the_decision(opa: FakeOpa) -> None:
    spec = OpaPolicySpec(kind="opa", url=opa.url + "/", path="vouch/decision", timeout=2.0)
    policy = build_policy(spec)
    assert isinstance(policy, PolicyEngine)
    document = {"environment": "staging", "missing": []}
    try:
        allowed = await policy.decide(document)
        denied = await policy.decide({"environment": "staging", "missing": ["tests", "dco"]})
    finally:
        await policy.close()
    assert (allowed.allow, allowed.denials, allowed.failed) == (True, (), False)
    assert (denied.allow, denied.denials) == (False, ("step 'tests' is missing", "step 'dco' is missing"))
    assert not denied.failed, "the policy denied: it did not fail to decide"
    assert allowed.input_digest == canonical_digest(document)
    assert allowed.policy_digest == canonical_digest(
        {"endpoint": f"{opa.url}/v1/data/vouch/decision", "provenance": PROVENANCE}
    )
    assert opa.requests[0] == {
        "path": "vouch/decision",
        "query": {"provenance": "true"},
        "content_type": "application/json",
        "body": {"input": document},
    }


async def test_an_undefined_rule_denies(opa: FakeOpa) -> None:
    allow, denials = await ask(opa, "vouch/undefined", {})
    assert not allow
    assert denials == (
        f"policy gave no decision (undefined): OPA at {opa.url}/v1/data/vouch/undefined returned no result",
    )


async def test_a_v0_style_object_of_denials_denies_naming_it(opa: FakeOpa) -> None:
    allow, denials = await ask(opa, "vouch/v0", {})
    assert not allow
    assert 'got an object {"no build":true}' in denials[0]


async def test_allow_with_denials_is_a_deny(opa: FakeOpa) -> None:
    assert await ask(opa, "vouch/allow_with_denials", {}) == (False, ("coverage 71% < 80%",))


async def test_an_http_error_denies_with_opas_message(opa: FakeOpa) -> None:
    allow, denials = await ask(opa, "vouch/broken", {})
    assert not allow
    assert denials == (
        f"OPA at {opa.url}/v1/data/vouch/broken answered HTTP 500: "
        "internal_error: 1 error occurred: policy.rego:7: eval_conflict_error",
    )
    allow, denials = await ask(opa, "nowhere", {})
    assert denials == (f"OPA at {opa.url}/v1/data/nowhere answered HTTP 404: not_found: no such path",)


async def test_a_body_that_is_not_json_or_not_an_object_denies(opa: FakeOpa) -> None:
    allow, denials = await ask(opa, "vouch/garbage", {})
    assert not allow
    assert "answered with a body that is not JSON" in denials[0]
    assert "<html>proxy error</html>" in denials[0]
    allow, denials = await ask(opa, "vouch/list", {})
    assert not allow
    assert denials[0].endswith("answered with JSON that is not an object: '[1, 2]'")


async def test_a_server_that_does_not_answer_in_time_denies(opa: FakeOpa) -> None:
    allow, denials = await ask(opa, "vouch/slow", {}, timeout=0.2)
    assert not allow
    assert denials == (f"OPA at {opa.url}/v1/data/vouch/slow gave no answer within 0.2s",)


async def test_an_unreachable_server_denies() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    policy = OpaPolicy(f"http://127.0.0.1:{port}", "vouch/decision", timeout=2.0)
    try:
        decision = await policy.decide({})
    finally:
        await policy.close()
    assert not decision.allow
    assert decision.failed
    assert decision.denials[0].startswith(f"OPA at http://127.0.0.1:{port}/v1/data/vouch/decision could not be asked: ")
    assert "ConnectError" in decision.denials[0]


async def test_an_input_that_is_not_json_denies_without_asking(opa: FakeOpa) -> None:
    allow, denials = await ask(opa, "vouch/decision", {"when": object()})
    assert not allow
    assert denials[0].startswith("policy input is not a JSON document")
    assert opa.requests == []


async def test_a_shared_client_is_used_and_left_open(opa: FakeOpa) -> None:
    async with httpx.AsyncClient() as client:
        policy = OpaPolicy(opa.url, "vouch/decision", timeout=2.0, client=client)
        assert (await policy.decide({"missing": []})).allow
        await policy.close()
        assert not client.is_closed
