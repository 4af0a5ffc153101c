"""The HTTP API served for real on 127.0.0.1, in front of a fake Controller and Store."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from support.api_fakes import NOW, TOKEN, FakeController, serving

from vouch.core.errors import AuthError
from vouch.daemon.api import build_app
from vouch.daemon.metrics import DaemonMetrics
from vouch.rollout.model import GatePhase, Measurement, Verdict
from vouch.rollout.state import Event, Phase, StepRecord, VerdictRecord

MAX_BODY = 4096
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclasses.dataclass
class Api:
    url: str
    controller: FakeController
    http: httpx.AsyncClient

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**AUTH, **kwargs.pop("headers", {})}
        return await self.http.request(method, path, headers=headers, **kwargs)


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    controller = FakeController()
    registry = CollectorRegistry()
    metrics = DaemonMetrics(registry)
    metrics.reset([])
    app = build_app(controller, token=TOKEN, registry=registry, max_body_bytes=MAX_BODY)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        yield Api(url, controller, http)


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) <= {"code", "message", "field"}
    return error


async def submit(api: Api, **body: Any) -> dict[str, Any]:
    response = await api.call("POST", "/api/v1/promotions", json=body)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


# --------------------------------------------------------------------------- success paths


async def test_submit_creates_a_release_and_answers_with_its_promotions(api: Api) -> None:
    response = await api.call("POST", "/api/v1/promotions", json={"service": "checkout", "version": "2.4.1"})
    assert response.status_code == 201
    data = response.json()
    assert data["release"]["service"] == "checkout"
    assert data["release"]["environments"] == ["staging", "production"]
    assert data["release"]["phase"] == "Progressing"
    assert [p["environment"] for p in data["promotions"]] == ["staging"]
    assert data["promotions"][0]["phase"] == "Pending"
    assert response.headers["location"] == f"/api/v1/releases/{data['release']['id']}"
    assert api.controller.actors == ["api"]


async def test_submit_to_one_environment(api: Api) -> None:
    data = await submit(api, service="checkout", version="2.4.1", environment="production")
    assert data["release"]["environments"] == ["production"]
    assert data["promotions"][0]["environment"] == "production"


async def test_actor_header_is_sanitised_and_bounded(api: Api) -> None:
    await api.call(
        "POST",
        "/api/v1/promotions",
        json={"service": "checkout", "version": "1"},
        headers={"X-Vouch-Actor": "alice <script>\t;rm"},
    )
    await api.call(
        "POST",
        "/api/v1/promotions",
        json={"service": "search", "version": "1"},
        headers={"X-Vouch-Actor": "b" * 200},
    )
    assert api.controller.actors == ["alice _script_ _rm", "b" * 64]


async def test_list_promotions_filters(api: Api) -> None:
    await submit(api, service="checkout", version="1", environment="staging")
    second = await submit(api, service="checkout", version="1", environment="production")
    await submit(api, service="search", version="9")
    listed = (await api.call("GET", "/api/v1/promotions")).json()["promotions"]
    assert len(listed) == 3
    by_service = await api.call("GET", "/api/v1/promotions", params={"service": "checkout"})
    assert {p["environment"] for p in by_service.json()["promotions"]} == {"staging", "production"}
    by_env = await api.call("GET", "/api/v1/promotions", params={"service": "checkout", "environment": "production"})
    assert [p["id"] for p in by_env.json()["promotions"]] == [second["promotions"][0]["id"]]
    by_release = await api.call("GET", "/api/v1/promotions", params={"release": second["release"]["id"]})
    assert [p["id"] for p in by_release.json()["promotions"]] == [second["promotions"][0]["id"]]
    limited = await api.call("GET", "/api/v1/promotions", params={"limit": "1"})
    assert len(limited.json()["promotions"]) == 1


async def test_list_promotions_active_filter(api: Api) -> None:
    data = await submit(api, service="search", version="9")
    pid = data["promotions"][0]["id"]
    store = api.controller.store
    store.promotions[pid] = dataclasses.replace(store.promotions[pid], phase=Phase.SUCCEEDED)
    await submit(api, service="checkout", version="1")
    active = await api.call("GET", "/api/v1/promotions", params={"active": "true"})
    done = await api.call("GET", "/api/v1/promotions", params={"active": "false"})
    assert [p["service"] for p in active.json()["promotions"]] == ["checkout"]
    assert [p["id"] for p in done.json()["promotions"]] == [pid]


async def test_get_promotion_with_steps_verdicts_and_events(api: Api) -> None:
    data = await submit(api, service="checkout", version="2")
    pid = data["promotions"][0]["id"]
    store = api.controller.store
    await store.save_step(
        StepRecord(pid, 0, "1", canary_replicas=1, stable_replicas=3, started_at=NOW, completed_at=NOW + 5)
    )
    verdict = Verdict(
        "slo",
        GatePhase.INCONCLUSIVE,
        reasons=("no data",),
        measurements=(Measurement("error_rate", math.nan, threshold="< 0.01"),),
    )
    await store.add_verdicts([VerdictRecord(pid, step=0, run=1, at=NOW + 3, verdict=verdict)])
    await store.add_event(Event("step", "step 1 done", NOW + 5, promotion_id=pid, data={"step": 0}))
    await store.add_event(Event("other", "elsewhere", NOW + 6, promotion_id="pro-x"))
    response = await api.call("GET", f"/api/v1/promotions/{pid}")
    assert response.status_code == 200
    body = response.json()
    assert body["promotion"]["id"] == pid
    assert body["steps"] == [
        {
            "promotion_id": pid,
            "index": 0,
            "label": "1",
            "canary_replicas": 1,
            "stable_replicas": 3,
            "started_at": NOW,
            "ready_at": None,
            "analysis_started_at": None,
            "completed_at": NOW + 5,
            "outcome": None,
        }
    ]
    [record] = body["verdicts"]
    assert record["verdict"]["phase"] == "Inconclusive"
    assert record["verdict"]["measurements"][0]["value"] is None  # NaN is not JSON
    assert [e["message"] for e in body["events"]] == ["step 1 done"]
    assert body["events"][0]["data"] == {"step": 0}


async def test_abort_with_and_without_reason(api: Api) -> None:
    first = (await submit(api, service="checkout", version="2"))["promotions"][0]["id"]
    second = (await submit(api, service="search", version="2"))["promotions"][0]["id"]
    response = await api.call(
        "POST", f"/api/v1/promotions/{first}/abort", json={"reason": "bad smell"}, headers={"X-Vouch-Actor": "bob"}
    )
    assert response.status_code == 200
    promotion = response.json()["promotion"]
    assert promotion["phase"] == "Aborting"
    assert promotion["abort"]["reason"] == "bad smell"
    assert promotion["abort"]["actor"] == "bob"
    bare = await api.call("POST", f"/api/v1/promotions/{second}/abort")
    assert bare.status_code == 200
    assert bare.json()["promotion"]["abort"]["reason"] == "aborted by api"


async def test_releases_list_and_get(api: Api) -> None:
    data = await submit(api, service="checkout", version="3")
    await submit(api, service="search", version="3")
    listed = await api.call("GET", "/api/v1/releases", params={"service": "checkout"})
    assert [r["id"] for r in listed.json()["releases"]] == [data["release"]["id"]]
    one = await api.call("GET", f"/api/v1/releases/{data['release']['id']}")
    assert one.status_code == 200
    assert one.json()["release"] == data["release"]
    assert one.json()["promotions"] == data["promotions"]


async def test_events_after_and_filters(api: Api) -> None:
    store = api.controller.store
    for i in range(5):
        await store.add_event(Event("tick", f"event {i}", NOW + i, promotion_id="p1", release_id="r1"))
    await store.add_event(Event("tick", "other", NOW, promotion_id="p2", release_id="r2"))
    after = await api.call("GET", "/api/v1/events", params={"after": "3"})
    assert [e["id"] for e in after.json()["events"]] == [4, 5, 6]
    by_promotion = await api.call("GET", "/api/v1/events", params={"promotion": "p2"})
    assert [e["message"] for e in by_promotion.json()["events"]] == ["other"]
    by_release = await api.call("GET", "/api/v1/events", params={"release": "r1", "limit": "2"})
    assert [e["message"] for e in by_release.json()["events"]] == ["event 0", "event 1"]


async def test_alerts_webhook_matches_and_lists(api: Api) -> None:
    data = await submit(api, service="checkout", version="4")
    payload = {
        "version": "4",
        "status": "firing",
        "receiver": "vouch",
        "groupKey": '{}:{alertname="HighErrorRate"}',
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "HighErrorRate", "service": "checkout", "environment": "staging"},
                "annotations": {"summary": "5xx above 1%"},
                "fingerprint": "abc",
            },
            {
                "status": "firing",
                "labels": {"alertname": "Other", "service": "unrelated", "environment": "staging"},
                "fingerprint": "def",
            },
        ],
    }
    response = await api.call("POST", "/api/v1/alerts", json=payload)
    assert response.status_code == 200
    assert response.json() == {"received": 2, "matched": [data["promotions"][0]["id"]]}
    listed = (await api.call("GET", "/api/v1/alerts", params={"limit": "1"})).json()["alerts"]
    assert len(listed) == 1
    assert listed[0]["fingerprint"] == "def"
    everything = (await api.call("GET", "/api/v1/alerts")).json()["alerts"]
    assert {a["fingerprint"] for a in everything} == {"abc", "def"}
    assert next(a for a in everything if a["fingerprint"] == "abc")["matched"] == [data["promotions"][0]["id"]]


async def test_public_routes_need_no_token(api: Api) -> None:
    metrics = await api.http.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'vouch_promotions{phase="Pending"} 0.0' in metrics.text
    health = await api.http.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})


async def test_readyz_follows_the_controller(api: Api) -> None:
    api.controller.is_ready = False
    response = await api.http.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "not ready"}
    api.controller.is_ready = True
    response = await api.http.get("/readyz")
    assert response.status_code == 200


# --------------------------------------------------------------------------- authentication


async def test_missing_token_is_401_with_a_challenge(api: Api) -> None:
    response = await api.http.get("/api/v1/promotions")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert error_of(response)["code"] == "unauthorized"


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}x", "Bearer wrong", f"Basic {TOKEN}", "Bearer", f"Bearer{TOKEN}"])
async def test_wrong_token_is_401(api: Api, header: str) -> None:
    response = await api.http.post(
        "/api/v1/promotions", json={"service": "checkout", "version": "1"}, headers={"Authorization": header}
    )
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"
    assert api.controller.actors == []  # nothing reached the controller


async def test_unknown_api_route_needs_the_token_before_saying_404(api: Api) -> None:
    anonymous = await api.http.get("/api/v1/secrets")
    assert anonymous.status_code == 401
    known = await api.call("GET", "/api/v1/secrets")
    assert known.status_code == 404
    assert error_of(known)["code"] == "not_found"


def test_an_empty_token_is_refused() -> None:
    with pytest.raises(AuthError, match="empty"):
        build_app(FakeController(), token="", registry=CollectorRegistry())


# --------------------------------------------------------------------------- errors


async def test_unknown_route_is_json_404(api: Api) -> None:
    response = await api.http.get("/nope")
    assert response.status_code == 404
    assert error_of(response) == {"code": "not_found", "message": "no route for GET /nope"}


async def test_wrong_method_is_json_405(api: Api) -> None:
    response = await api.call("DELETE", "/api/v1/promotions")
    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"
    assert "POST" in response.headers["allow"]
    metrics = await api.http.post("/metrics")
    assert metrics.status_code == 405
    assert error_of(metrics)["code"] == "method_not_allowed"


async def test_malformed_json_is_400_with_line_and_column(api: Api) -> None:
    response = await api.call(
        "POST",
        "/api/v1/promotions",
        content=b'{"service": "checkout",\n "version": }',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "bad_json"
    assert "line 2, column 13" in error["message"]


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"\xff\xfe{}", "UTF-8"), (b"", "empty"), (b'{"service": NaN}', "NaN"), (b"[" * 100_000, "JSON")],
)
async def test_other_bad_bodies_are_400(api: Api, content: bytes, needle: str) -> None:
    response = await api.call(
        "POST",
        "/api/v1/promotions",
        content=content,
        headers={"Content-Type": "application/json"},
    )
    # 100 000 nested arrays exceed the 4 KiB limit; everything else is judged as JSON
    expected = 413 if len(content) > MAX_BODY else 400
    assert response.status_code == expected
    if expected == 400:
        assert error_of(response)["code"] == "bad_json"
        assert needle in error_of(response)["message"]


async def test_deeply_nested_json_is_400_not_500() -> None:
    controller = FakeController()
    app = build_app(controller, token=TOKEN, registry=CollectorRegistry(), max_body_bytes=1 << 20)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, headers=AUTH) as http:
        response = await http.post(
            "/api/v1/alerts", content=b"[" * 200_000, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400
    assert error_of(response)["code"] == "bad_json"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"service": "checkout", "version": "1", "colour": "blue"}, "colour"),
        ({"service": "checkout"}, "version"),
        ({"service": 5, "version": "1"}, "service"),
        ({"service": "checkout", "version": "1", "environment": ["staging"]}, "environment"),
        ({"service": "", "version": "1"}, "service"),
    ],
)
async def test_invalid_fields_are_422_naming_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    response = await api.call("POST", "/api/v1/promotions", json=body)
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "invalid"
    assert error["field"] == field
    assert field in error["message"]
    assert api.controller.actors == []


@pytest.mark.parametrize(("body", "kind"), [(b"[1, 2]", "an array"), (b'"text"', "str"), (b"null", "null")])
async def test_a_body_that_is_not_an_object_is_422(api: Api, body: bytes, kind: str) -> None:
    response = await api.call("POST", "/api/v1/promotions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "invalid"
    assert kind in error["message"]


async def test_abort_body_is_validated_too(api: Api) -> None:
    pid = (await submit(api, service="checkout", version="2"))["promotions"][0]["id"]
    response = await api.call("POST", f"/api/v1/promotions/{pid}/abort", json={"why": "x"})
    assert response.status_code == 422
    assert error_of(response)["field"] == "why"


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/api/v1/promotions", {"active": "maybe"}, "active"),
        ("/api/v1/promotions", {"limit": "0"}, "limit"),
        ("/api/v1/promotions", {"limit": "ten"}, "limit"),
        ("/api/v1/promotions", {"servce": "checkout"}, "servce"),
        ("/api/v1/events", {"after": "-1"}, "after"),
        ("/api/v1/releases", {"limit": "100000"}, "limit"),
        ("/api/v1/alerts", {"limit": "x"}, "limit"),
    ],
)
async def test_bad_query_parameters_are_422(api: Api, path: str, params: dict[str, str], field: str) -> None:
    response = await api.call("GET", path, params=params)
    assert response.status_code == 422
    assert error_of(response)["field"] == field


async def test_a_repeated_query_parameter_is_422(api: Api) -> None:
    response = await api.call("GET", "/api/v1/promotions?service=a&service=b")
    assert response.status_code == 422
    assert error_of(response)["field"] == "service"


async def test_wrong_content_type_is_415(api: Api) -> None:
    response = await api.call(
        "POST",
        "/api/v1/promotions",
        content=b'{"service": "checkout", "version": "1"}',
        headers={"Content-Type": "text/plain"},
    )
    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_media_type"


async def test_oversized_body_with_content_length_is_413(api: Api) -> None:
    body = b'{"service": "' + b"x" * MAX_BODY + b'", "version": "1"}'
    response = await api.call("POST", "/api/v1/promotions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert error_of(response)["code"] == "too_large"
    assert api.controller.actors == []


async def test_oversized_chunked_body_is_413(api: Api) -> None:
    sent: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"service": "'
        for _ in range(8):
            sent.append(1)
            yield b"x" * 1024
        yield b'", "version": "1"}'

    response = await api.call(
        "POST", "/api/v1/promotions", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413
    assert error_of(response)["code"] == "too_large"
    assert api.controller.actors == []


async def test_a_body_just_under_the_limit_is_read(api: Api) -> None:
    padding = MAX_BODY - len(b'{"service": "checkout", "version": "1", "environment": ""}') - 1
    body = b'{"service": "checkout", "version": "1", "environment": "' + b"s" * padding + b'"}'
    assert len(body) < MAX_BODY
    response = await api.call("POST", "/api/v1/promotions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422  # read and validated: the environment name is too long
    assert error_of(response)["field"] == "environment"


async def test_controller_errors_map_to_statuses(api: Api) -> None:
    unknown = await api.call("POST", "/api/v1/promotions", json={"service": "nope", "version": "1"})
    assert (unknown.status_code, error_of(unknown)["code"]) == (404, "not_found")
    assert "nope" in error_of(unknown)["message"]
    await submit(api, service="search", version="1")
    conflict = await api.call("POST", "/api/v1/promotions", json={"service": "search", "version": "2"})
    assert (conflict.status_code, error_of(conflict)["code"]) == (409, "conflict")
    bad = await api.call("POST", "/api/v1/promotions", json={"service": "checkout", "version": "-1"})
    assert (bad.status_code, error_of(bad)["code"]) == (400, "bad_input")
    missing = await api.call("GET", "/api/v1/promotions/pro-404")
    assert missing.status_code == 404
    missing_release = await api.call("GET", "/api/v1/releases/rel-404")
    assert missing_release.status_code == 404
    abort_missing = await api.call("POST", "/api/v1/promotions/pro-404/abort")
    assert abort_missing.status_code == 404


async def test_aborting_twice_is_409(api: Api) -> None:
    pid = (await submit(api, service="checkout", version="2"))["promotions"][0]["id"]
    assert (await api.call("POST", f"/api/v1/promotions/{pid}/abort")).status_code == 200
    again = await api.call("POST", f"/api/v1/promotions/{pid}/abort")
    assert again.status_code == 409
    assert error_of(again)["code"] == "conflict"


async def test_malformed_alert_payload_is_400_naming_the_path(api: Api) -> None:
    response = await api.call("POST", "/api/v1/alerts", json={"alerts": [{"labels": "x"}]})
    assert response.status_code == 400
    assert "alerts[0].labels" in error_of(response)["message"]


async def test_unexpected_exception_is_a_generic_500_and_logged(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="vouch.daemon.api"):
        response = await api.call("POST", "/api/v1/promotions", json={"service": "boom", "version": "1"})
    assert response.status_code == 500
    error = error_of(response)
    assert error["code"] == "internal"
    assert "secret" not in response.text
    [record] = [r for r in caplog.records if r.name == "vouch.daemon.api"]
    assert record.exc_info is not None
    assert "secret internal detail" in str(record.exc_info[1])


async def test_the_server_keeps_serving_after_a_burst_of_bad_requests(api: Api) -> None:
    json_type = {"Content-Type": "application/json"}
    bad = [
        api.http.get("/api/v1/promotions"),
        api.call("POST", "/api/v1/promotions", content=b"{", headers=json_type),
        api.call("POST", "/api/v1/promotions", content=b"[]", headers=json_type),
        api.call("POST", "/api/v1/promotions", content=b"x" * (MAX_BODY * 4), headers=json_type),
        api.call("POST", "/api/v1/promotions", json={"service": "boom", "version": "1"}),
        api.call("PUT", "/healthz"),
        api.call("GET", "/api/v1/promotions", params={"limit": "-5"}),
    ] * 5
    statuses = {r.status_code for r in await asyncio.gather(*bad)}
    assert statuses == {401, 400, 422, 413, 500, 405}
    host, port = api.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"\x16\x03\x01 not http at all\r\n\r\n")
    await writer.drain()
    assert await reader.read(1024)  # aiohttp answers 400 and closes
    writer.close()
    await writer.wait_closed()
    data = await submit(api, service="checkout", version="5")
    assert data["release"]["version"] == "5"
