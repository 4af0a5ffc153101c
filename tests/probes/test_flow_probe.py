"""The flow probe against a real local shop API: variables across steps, every failure kind, secrets."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError
from support.tls import make_certs, never_answer, serve_app, serve_raw, server_context, silent_listener

from vouch.probes import flow as flow_module
from vouch.probes.base import PHASES, Probe, ProbeResult, Reason
from vouch.probes.flow import FlowProbe, FlowProbeSpec, FlowStep
from vouch.probes.flowparts import JsonExtract, Template, join_url
from vouch.probes.settings import TlsClientSpec

USER = "probe-user"
PASSWORD = "pa55-w0rd-from-env"
"""Only in the environment variable the spec names, and in the server's check."""
PASSWORD_ENV = "VOUCH_TEST_FLOW_PASSWORD"
TOKEN = "tok-7f3a9c"
FIRST_ID = 42


# --------------------------------------------------------------------------- the shop API the flows exercise

LOGINS = web.AppKey("logins", list[str])
ITEMS = web.AppKey("items", dict[int, str])
CREATE_FAILURES = web.AppKey("create_failures", list[int])


def shop_app() -> web.Application:
    """``POST /api/login`` gives a token for the right password; ``POST /api/items`` (bearer token) creates an
    item (201, id in the JSON body and its absolute URL in ``location``); ``GET /api/items/{id}`` reads it back;
    ``GET /api/items/{id}/receipt`` is plain text; ``POST /api/echo`` answers the request body as JSON;
    ``GET /api/moved`` redirects to ``/api/items/{FIRST_ID}``. ``POST /api/items?fail=N`` answers 503 the
    first N times."""
    app = web.Application()
    app[LOGINS] = []
    app[ITEMS] = {}
    app[CREATE_FAILURES] = [0]
    app.router.add_post("/api/login", _login)
    app.router.add_post("/api/items", _create)
    app.router.add_get("/api/items/{id}", _fetch)
    app.router.add_get("/api/items/{id}/receipt", _receipt)
    app.router.add_post("/api/echo", _echo)
    app.router.add_get("/api/moved", _moved)
    return app


async def _login(request: web.Request) -> web.Response:
    credentials = await request.json()
    request.app[LOGINS].append(credentials.get("user", ""))
    if credentials != {"user": USER, "password": PASSWORD}:
        return web.json_response({"error": "bad credentials"}, status=401)
    return web.json_response({"token": TOKEN, "expires_in": 300})


def _authorized(request: web.Request) -> bool:
    return request.headers.get("authorization") == f"Bearer {TOKEN}"


async def _create(request: web.Request) -> web.Response:
    if not _authorized(request):
        return web.json_response({"error": "unauthorized"}, status=401)
    failures = request.app[CREATE_FAILURES]
    if failures[0] < int(request.query.get("fail", "0")):
        failures[0] += 1
        return web.json_response({"error": "try again"}, status=503)
    item_id = FIRST_ID + len(request.app[ITEMS])
    request.app[ITEMS][item_id] = (await request.json())["name"]
    headers = {"location": str(request.url.with_path(f"/api/items/{item_id}").with_query(None))}
    return web.json_response({"id": item_id, "name": request.app[ITEMS][item_id]}, status=201, headers=headers)


async def _fetch(request: web.Request) -> web.Response:
    if not _authorized(request):
        return web.json_response({"error": "unauthorized"}, status=401)
    item_id = int(request.match_info["id"])
    name = request.app[ITEMS].get(item_id)
    if name is None:
        return web.json_response({"error": "no such item"}, status=404)
    return web.json_response({"id": item_id, "name": name, "owner": USER})


async def _receipt(request: web.Request) -> web.Response:
    return web.Response(text=f"receipt no. R-{request.match_info['id']}-OK for {USER}")


async def _echo(request: web.Request) -> web.Response:
    return web.json_response(await request.json())


async def _moved(_: web.Request) -> web.Response:
    return web.Response(status=302, headers={"location": f"/api/items/{FIRST_ID}"})


@pytest.fixture
def shop() -> Iterator[tuple[str, web.Application]]:
    """A fresh shop per test (its counters start at zero); yields the API's base URL and the app."""
    app = shop_app()
    with serve_app(app) as url:
        yield f"{url}/api", app


@pytest.fixture
def api(shop: tuple[str, web.Application]) -> str:
    return shop[0]


@pytest.fixture(autouse=True)
def password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)


# --------------------------------------------------------------------------- the flow under test


def login_step(**changes: Any) -> dict[str, Any]:
    return {
        "name": "login",
        "method": "POST",
        "url": "/login",
        "headers": {"content-type": "application/json"},
        "body": '{"user": "${user}", "password": "${password}"}',
        "extract": {"token": {"json": "$.token"}},
        **changes,
    }


def create_step(**changes: Any) -> dict[str, Any]:
    return {
        "name": "create",
        "method": "POST",
        "url": "/items",
        "headers": {"authorization": "Bearer ${token}", "content-type": "application/json"},
        "body": '{"name": "widget"}',
        "valid_status_codes": [201],
        "extract": {"id": {"json": "$.id"}, "location": {"header": "Location"}},
        **changes,
    }


def fetch_step(**changes: Any) -> dict[str, Any]:
    return {
        "name": "fetch",
        "url": "/items/${id}",
        "headers": {"authorization": "Bearer ${token}"},
        "assertions": {
            "json": [
                {"path": "$.id", "equals": FIRST_ID},
                {"path": "$.name", "equals": "widget"},
                {"path": "$.owner", "equals": USER},
            ]
        },
        **changes,
    }


def flow(*steps: dict[str, Any], **settings: Any) -> FlowProbeSpec:
    values: dict[str, Any] = {
        "kind": "flow",
        "name": "shop-order",
        "targets": ["http://127.0.0.1/api"],
        "timeout": 5,
        "variables": {"user": USER, "password": {"from_env": PASSWORD_ENV}},
        "steps": list(steps) or [login_step(), create_step(), fetch_step()],
        **settings,
    }
    return FlowProbeSpec.model_validate(values)


async def run(target: str, *steps: dict[str, Any], **settings: Any) -> ProbeResult:
    return await FlowProbe(flow(*steps, **settings)).run(target)


def assert_sane(result: ProbeResult) -> None:
    assert set(result.phases) == set(PHASES)
    assert all(seconds >= 0 for seconds in result.phases.values())
    assert sum(result.phases.values()) <= result.duration + 1e-3
    assert result.success == (result.reason is None) == (result.step is None)
    json.dumps(result.to_dict())


async def expect(reason: Reason, step: str, target: str, *steps: dict[str, Any], **settings: Any) -> ProbeResult:
    result = await run(target, *steps, **settings)
    assert result.reason is reason, result
    assert result.step == step
    assert not result.success
    assert f"step {step!r}" in result.message
    assert_sane(result)
    return result


def step_outcomes(result: ProbeResult) -> list[tuple[str, int | None, bool]]:
    return [(step["name"], step["status"], step["ok"]) for step in result.details["steps"]]


# --------------------------------------------------------------------------- success


async def test_three_steps_with_variables_across_them(shop: tuple[str, web.Application]) -> None:
    api, app = shop
    probe = FlowProbe(flow())
    assert isinstance(probe, Probe)
    result = await probe.run(api)
    assert result.success, result
    assert (result.probe, result.kind, result.target, result.attempts) == ("shop-order", "flow", api, 1)
    assert result.status_code == 200
    assert step_outcomes(result) == [("login", 200, True), ("create", 201, True), ("fetch", 200, True)]
    assert all(step["duration"] > 0 for step in result.details["steps"])
    assert result.phases["connect"] > 0
    assert result.phases["processing"] > 0
    assert app[LOGINS] == [USER]
    assert app[ITEMS] == {FIRST_ID: "widget"}
    assert_sane(result)


async def test_regex_and_header_extractions_feed_later_steps(api: str) -> None:
    follow = fetch_step(name="follow", url="${location}", extract={"owner": {"json": "$.owner"}})
    receipt = {
        "name": "receipt",
        "url": "/items/${id}/receipt",
        "extract": {"number": {"regex": r"R-(?P<num>\d+)", "group": "num"}, "whole": {"regex": "for .*", "group": 0}},
        "assertions": {"body_matches": ["^receipt"]},
    }
    check = {
        "name": "check",
        "method": "POST",
        "url": "/echo",
        "body": '{"receipt": "${number}", "whole": "${whole}", "owner": "${owner}", "literal": "$${kept}"}',
        "assertions": {
            "json": [
                {"path": "$.receipt", "equals": str(FIRST_ID)},
                {"path": "$.whole", "equals": f"for {USER}"},
                {"path": "$.owner", "equals": USER},
                {"path": "$.literal", "equals": "${kept}"},
            ]
        },
    }
    result = await run(api, login_step(), create_step(), follow, receipt, check)
    assert result.success, result
    assert [step["name"] for step in result.details["steps"]] == ["login", "create", "follow", "receipt", "check"]


async def test_https_steps_report_the_certificate_expiry(tmp_path: Any) -> None:
    certs = make_certs(tmp_path)
    with serve_app(shop_app(), ssl_context=server_context(certs.valid)) as url:
        result = await run(f"{url}/api", tls=TlsClientSpec(ca_file=str(certs.ca_file)))
    assert result.success, result
    assert result.tls_expiry is not None
    assert result.phases["tls"] > 0


async def test_retries_run_the_whole_flow_again(shop: tuple[str, web.Application]) -> None:
    api, app = shop
    result = await run(api, login_step(), create_step(url="/items?fail=1"), fetch_step(), retries=2, retry_delay=0.01)
    assert result.success, result
    assert result.attempts == 2
    assert app[LOGINS] == [USER, USER]  # the second attempt logged in again
    assert step_outcomes(result) == [("login", 200, True), ("create", 201, True), ("fetch", 200, True)]


# --------------------------------------------------------------------------- failures, each at its step


async def test_status_failure_at_step_two(api: str) -> None:
    unauthenticated = create_step(headers={"content-type": "application/json"})
    result = await expect(Reason.HTTP_STATUS, "create", api, login_step(), unauthenticated, fetch_step())
    assert result.status_code == 401
    assert "(2 of 3)" in result.message
    assert "401" in result.message
    assert step_outcomes(result) == [("login", 200, True), ("create", 401, False)]


async def test_assertion_failure_at_step_three(api: str) -> None:
    wrong = fetch_step(assertions={"json": [{"path": "$.name", "equals": "gadget"}]})
    result = await expect(Reason.JSON_MISMATCH, "fetch", api, login_step(), create_step(), wrong)
    assert result.status_code == 200
    assert '"widget", expected "gadget"' in result.message
    assert step_outcomes(result) == [("login", 200, True), ("create", 201, True), ("fetch", 200, False)]


@pytest.mark.parametrize(
    ("extractor", "words"),
    [
        ({"json": "$.session"}, "$.session selects nothing"),
        ({"json": "$.expires_in[0]"}, "selects nothing"),
        ({"header": "x-session"}, "header x-session is missing"),
        ({"regex": r"session=(\w+)"}, "does not match"),
    ],
)
async def test_extraction_failure_names_the_variable_and_the_step(
    api: str, extractor: dict[str, Any], words: str
) -> None:
    step = login_step(extract={"token": {"json": "$.token"}, "session": extractor})
    result = await expect(Reason.FLOW_EXTRACT, "login", api, step, create_step(), fetch_step())
    assert "'session'" in result.message
    assert words in result.message
    assert step_outcomes(result) == [("login", 200, False)]


async def test_extracting_from_a_body_that_is_not_json(api: str) -> None:
    receipt = {"name": "receipt", "url": "/items/7/receipt", "extract": {"total": {"json": "$.total"}}}
    result = await expect(Reason.FLOW_EXTRACT, "receipt", api, receipt)
    assert "not JSON" in result.message


async def test_timeout_in_step_two() -> None:
    with serve_app(shop_app()) as url, serve_raw(never_answer) as port:
        hanging = create_step(url=f"http://127.0.0.1:{port}/items")
        result = await expect(Reason.TIMEOUT, "create", f"{url}/api", login_step(), hanging, fetch_step(), timeout=0.5)
    assert "(2 of 3)" in result.message
    assert "during processing" in result.message
    assert result.status_code is None
    assert step_outcomes(result) == [("login", 200, True), ("create", None, False)]
    assert result.phases["processing"] > 0  # both steps' processing, up to the timeout


async def test_refused_connection(api: str) -> None:
    with silent_listener() as port:
        pass  # closed again: nothing listens there now
    refused = fetch_step(url=f"http://127.0.0.1:{port}/items/${{id}}")
    result = await expect(Reason.CONNECT_REFUSED, "fetch", api, login_step(), create_step(), refused)
    assert step_outcomes(result) == [("login", 200, True), ("create", 201, True), ("fetch", None, False)]
    first = await expect(Reason.CONNECT_REFUSED, "login", f"http://127.0.0.1:{port}/api")
    assert step_outcomes(first) == [("login", None, False)]


async def test_an_unfollowed_redirect_fails_its_step(api: str) -> None:
    moved = fetch_step(name="moved", url="/moved")
    result = await expect(
        Reason.HTTP_REDIRECT, "moved", api, login_step(), create_step(), moved, follow_redirects=False
    )
    assert result.status_code == 302
    assert (await run(api, login_step(), create_step(), moved)).success


async def test_latency_above_a_step_maximum(api: str) -> None:
    slow = create_step(max_latency=1e-6)
    result = await expect(Reason.LATENCY, "create", api, login_step(), slow)
    assert result.status_code == 201


async def test_an_internal_error_is_reported_not_raised(
    api: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("defect")

    monkeypatch.setattr(flow_module, "exchange", broken)
    result = await run(api)
    assert result.reason is Reason.INTERNAL
    assert result.step == "login"
    assert "RuntimeError" in result.message
    assert "RuntimeError" in caplog.text


# --------------------------------------------------------------------------- secrets


async def test_secrets_are_sent_but_never_shown(
    api: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    header_secret = "header-secret-0815"
    (tmp_path / "header").write_text(f"{header_secret}\n")
    # The login succeeds only with the password from the environment: it was sent.
    assert (await run(api)).success
    # An echo that an assertion quotes back: the message masks the secret values.
    echo = {
        "name": "echo",
        "method": "POST",
        "url": "/echo",
        "headers": {"x-key": {"from_file": str(tmp_path / "header")}},
        "body": '{"password": "${password}", "user": "${user}"}',
        "assertions": {"json": [{"path": "$.password", "equals": "other"}]},
    }
    result = await expect(Reason.JSON_MISMATCH, "echo", api, login_step(), echo)
    assert "***" in result.message
    spec = flow(login_step(), echo)
    for shown in (repr(result), json.dumps(result.to_dict()), caplog.text, repr(spec), spec.model_dump_json()):
        assert PASSWORD not in shown
        assert header_secret not in shown
    assert "flow probe shop-order" in caplog.text  # the failure was logged, masked


async def test_an_unset_secret_fails_the_step_that_needs_it(api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV)
    result = await expect(Reason.CONFIG, "login", api, retries=3, retry_delay=0.01)
    assert result.attempts == 1  # retrying cannot help
    assert PASSWORD_ENV in result.message
    assert "'password'" in result.message


# --------------------------------------------------------------------------- settings


def test_a_variable_used_before_it_is_extracted_is_rejected() -> None:
    with pytest.raises(ValidationError, match=r"step 'create' uses \$\{token\}, not defined before it"):
        flow(create_step(), login_step(), fetch_step())


def test_a_step_cannot_use_what_it_extracts_itself() -> None:
    with pytest.raises(ValidationError, match=r"step 'login' uses \$\{token\}"):
        flow(login_step(headers={"authorization": "Bearer ${token}"}))


def test_an_unknown_variable_is_named() -> None:
    with pytest.raises(ValidationError, match=r"uses \$\{sku\}"):
        flow(login_step(), create_step(body='{"name": "${sku}"}'))


@pytest.mark.parametrize(
    "steps",
    [
        [login_step(), login_step()],
        [login_step(url="/login/${")],
        [login_step(url="/login/${1st}")],
        [login_step(url="ftp://127.0.0.1/login")],
        [login_step(method="post")],
        [login_step(extract={"token": {"json": "$.token", "header": "x-token"}})],
        [login_step(extract={"token": {}})],
        [login_step(extract={"token": {"json": "token"}})],
        [login_step(extract={"token": {"regex": "token"}})],
        [login_step(extract={"token": {"regex": "(?P<t>.+)", "group": "x"}})],
        [login_step(extract={"1token": {"header": "x"}})],
        [login_step(valid_status_codes=["6xx"])],
        [],
    ],
)
def test_invalid_steps_are_rejected(steps: list[dict[str, Any]]) -> None:
    values: dict[str, Any] = {"name": "shop-order", "targets": ["http://127.0.0.1/api"], "steps": steps}
    with pytest.raises(ValidationError):
        FlowProbeSpec.model_validate({"variables": {"user": USER, "password": "x"}, **values})


def test_targets_must_be_http_urls() -> None:
    with pytest.raises(ValidationError):
        flow(targets=["shop.example:443"])


def test_templates() -> None:
    template = Template.parse("a ${x}-$${y} ${x}")
    assert template.names == {"x"}
    assert template.render({"x": "1"}.__getitem__) == "a 1-${y} 1"
    assert Template.parse("plain").render(lambda name: pytest.fail(name)) == "plain"


@pytest.mark.parametrize(
    ("base", "url", "joined"),
    [
        ("http://h:8/api", "/items/7", "http://h:8/api/items/7"),
        ("http://h:8/api/", "items/7?x=1", "http://h:8/api/items/7?x=1"),
        ("http://h:8", "/login", "http://h:8/login"),
        ("http://h:8/api?q=1", "", "http://h:8/api"),
        ("http://h:8/api", "?page=2", "http://h:8/api?page=2"),
        ("http://h:8/api", "https://other.example/x", "https://other.example/x"),
    ],
)
def test_join_url(base: str, url: str, joined: str) -> None:
    assert join_url(base, url) == joined


def test_settings_from_python() -> None:
    spec = FlowProbeSpec(
        name="shop",
        targets=["http://127.0.0.1/api"],
        steps=[FlowStep(name="login", url="/login", extract={"token": JsonExtract(json="$.token")})],
    )
    assert spec.kind == "flow"
    assert spec.steps[0].templates.names == frozenset()
