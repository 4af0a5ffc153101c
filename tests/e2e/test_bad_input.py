"""Bad input loses nothing: a burst of malformed, refused and unauthorised requests against a live daemon.

One promotion is in flight (its first analysis is minutes away, so it holds
still) while every kind of bad request arrives at once, several times over.
Each must get a JSON error of the API's shape with the status that names the
fault; afterwards the daemon answers, the promotion stands where it stood,
nothing recorded before is gone, nothing new was made from bad input, and
the log holds no traceback. The refused alert payloads are firing alerts
that match the promotion: had any been half-read and acted on, the
promotion would have been rolled back. A valid one does roll it back, at
the end, to prove it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.daemon import Daemon, local_config, running, wait_for

from vouch.daemon.client import VouchClient

pytestmark = pytest.mark.e2e

MAX_BODY = 4096
REPEAT = 4
"""Every bad request is sent this many times, all at once."""

LABELS = {"alertname": "ShopBurning", "service": "shop", "environment": "staging"}


def alert(*, status: str = "firing", labels: object = None, **extra: Any) -> dict[str, Any]:
    """An Alertmanager webhook (version 4) with one alert, matching the promotion unless told otherwise."""
    one = {"status": status, "labels": LABELS if labels is None else labels, "annotations": {}, **extra}
    return {"version": "4", "status": status, "receiver": "vouch", "groupLabels": {}, "alerts": [one]}


@dataclass(frozen=True)
class Bad:
    """One bad request and the answer it must get."""

    name: str
    method: str
    path: str
    status: int
    mentions: tuple[str, ...] = ()
    body: bytes | None = None
    json_body: object = None
    headers: dict[str, str] | None = None
    token: str | None = "valid"
    chunked: bool = False
    """Send the body in pieces with no Content-Length, so only counting its bytes can find it too large."""


def bad_requests(*, active_id: str, finished_id: str) -> list[Bad]:
    submit, alerts = "/api/v1/promotions", "/api/v1/alerts"
    oversized = alert(annotations={"summary": "x" * (2 * MAX_BODY)})
    return [
        Bad("unknown service", "POST", submit, 404, ("'nope'", "shop"), json_body={"service": "nope", "version": "v9"}),
        Bad(
            "unknown environment",
            "POST",
            submit,
            404,
            ("'moon'", "staging"),
            json_body={"service": "shop", "version": "v9", "environment": "moon"},
        ),
        Bad("duplicate promotion", "POST", submit, 409, (active_id,), json_body={"service": "shop", "version": "v9"}),
        Bad("malformed JSON", "POST", submit, 400, ("malformed JSON",), body=b'{"service": "shop", "version": '),
        Bad("JSON array", "POST", submit, 422, ("array",), body=b'["shop", "v9"]'),
        Bad(
            "unknown field",
            "POST",
            submit,
            422,
            ("colour",),
            json_body={"service": "shop", "version": "v9", "colour": "red"},
        ),
        Bad("wrong JSON type", "POST", submit, 422, ("version",), json_body={"service": "shop", "version": 9}),
        Bad("empty body", "POST", submit, 400, ("empty",), body=b""),
        Bad("NaN", "POST", submit, 400, ("NaN",), body=b'{"service": "shop", "version": NaN}'),
        Bad("not UTF-8", "POST", submit, 400, ("UTF-8",), body=b'{"service": "\xff\xfe"}'),
        Bad("nested too deeply", "POST", submit, 400, ("deeply",), body=b"[" * 2000),
        Bad(
            "not JSON at all",
            "POST",
            submit,
            415,
            ("application/json",),
            body=b"service=shop",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        Bad("oversized alert", "POST", alerts, 413, (str(MAX_BODY),), json_body=oversized),
        Bad(
            "oversized chunked alert",
            "POST",
            alerts,
            413,
            (str(MAX_BODY),),
            json_body=oversized,
            chunked=True,
        ),
        Bad(
            "alert version 3",
            "POST",
            alerts,
            400,
            ("version: expected",),
            json_body={**alert(), "version": "3"},
        ),
        Bad(
            "alert labels not strings",
            "POST",
            alerts,
            400,
            ("alerts[0].labels",),
            json_body=alert(labels={**LABELS, "severity": 3}),
        ),
        Bad("alert without alerts", "POST", alerts, 400, ("alerts: required",), json_body={"version": "4"}),
        Bad("bad query", "GET", "/api/v1/promotions?limit=many", 422, ("limit",)),
        Bad("unknown query parameter", "GET", "/api/v1/events?colour=red", 422, ("colour",)),
        Bad("abort unknown promotion", "POST", f"{submit}/p-nope/abort", 404, ("p-nope",)),
        Bad("abort finished promotion", "POST", f"{submit}/{finished_id}/abort", 409, (finished_id, "Succeeded")),
        Bad("wrong method", "DELETE", submit, 405, ("DELETE",)),
        Bad("missing token", "GET", submit, 401, ("missing bearer token",), token=None),
        Bad("wrong token", "GET", submit, 401, ("wrong bearer token",), token="nope"),
        Bad("wrong token on abort", "POST", f"{submit}/{active_id}/abort", 401, ("wrong",), token="nope"),
        Bad("unknown API route", "GET", "/api/v1/nothing-here", 404, ("/api/v1/nothing-here",)),
        Bad("unknown API route without token", "GET", "/api/v1/nothing-here", 401, ("token",), token=None),
        Bad("unknown route", "GET", "/nothing-here", 404, ("/nothing-here",), token=None),
    ]


@dataclass(frozen=True)
class Records:
    """What the daemon has on record, as its API lists it."""

    releases: dict[str, dict[str, Any]]
    promotions: dict[str, dict[str, Any]]
    events: dict[int, dict[str, Any]]
    alerts: int

    @classmethod
    def of(cls, client: VouchClient) -> Records:
        return cls(
            releases={r["id"]: r for r in client.list_releases(limit=1000)["releases"]},
            promotions={p["id"]: p for p in client.list_promotions(limit=1000)["promotions"]},
            events={e["id"]: e for e in client.events(limit=5000)["events"]},
            alerts=len(client.list_alerts(limit=1000)["alerts"]),
        )


@pytest.fixture
def in_flight(tmp_path: Path) -> Iterator[tuple[Daemon, VouchClient, str, str]]:
    """A daemon whose promotion of v2 to staging is in flight, waiting minutes for its first analysis.

    Yields the daemon, a client, the id of that promotion and of v1's, which has finished.
    """
    state = tmp_path / "state"
    config = local_config(state, interval="300s", deadline="600s")
    config["daemon"]["max_body_bytes"] = MAX_BODY
    with running(config, state) as (daemon, client):
        first = client.submit("shop", "v1")["release"]
        wait_for(lambda: client.get_release(first["id"])["release"]["phase"] == "Succeeded", what="v1 deployed")
        promotion_id = client.submit("shop", "v2")["release"]["promotion_ids"][0]
        wait_for(
            lambda: client.get_promotion(promotion_id)["promotion"]["step_phase"] == "analysing",
            what="v2 to wait for its first analysis",
        )
        yield daemon, client, promotion_id, first["promotion_ids"][0]


async def send(http: httpx.AsyncClient, bad: Bad, token: str) -> tuple[Bad, httpx.Response]:
    headers = dict(bad.headers or {})
    if bad.token is not None:
        headers["Authorization"] = f"Bearer {token if bad.token == 'valid' else bad.token}"
    if bad.json_body is not None:
        headers.setdefault("Content-Type", "application/json")
        content = json.dumps(bad.json_body).encode()
    else:
        content = bad.body
    if content is not None:
        headers.setdefault("Content-Type", "application/json")
    if bad.chunked and content is not None:
        return bad, await http.request(bad.method, bad.path, content=_pieces(content), headers=headers)
    return bad, await http.request(bad.method, bad.path, content=content, headers=headers)


async def _pieces(content: bytes, size: int = 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(content), size):
        yield content[start : start + size]


def check_answer(bad: Bad, response: httpx.Response) -> None:
    where = f"{bad.name}: {response.status_code} {response.text[:300]}"
    assert response.status_code == bad.status, where
    assert response.headers["Content-Type"].startswith("application/json"), where
    error = response.json()["error"]
    assert isinstance(error["code"], str), where
    assert error["code"], where
    assert isinstance(error["message"], str), where
    for text in bad.mentions:
        assert text in error["message"], where


def _stable(promotion: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(promotion[k] for k in ("phase", "step", "step_phase", "version", "stable_version", "abort"))


async def test_a_burst_of_bad_requests_loses_nothing(in_flight: tuple[Daemon, VouchClient, str, str]) -> None:
    daemon, client, promotion_id, finished_id = in_flight
    token = (daemon.state / "token").read_text().strip()
    before = Records.of(client)
    active_before = client.get_promotion(promotion_id)["promotion"]

    burst = bad_requests(active_id=promotion_id, finished_id=finished_id) * REPEAT
    async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as http:
        answers = await asyncio.gather(*(send(http, bad, token) for bad in burst))
        for bad, response in answers:
            check_answer(bad, response)

        health = await http.get("/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})

    after = Records.of(client)
    active_after = client.get_promotion(promotion_id)["promotion"]
    assert active_after["phase"] == "Progressing"
    assert _stable(active_after) == _stable(active_before), "the promotion in flight is where it was"
    assert [p["id"] for p in client.list_promotions(active=True)["promotions"]] == [promotion_id]

    assert after.releases == before.releases, "bad input made or changed no release"
    assert after.promotions.keys() == before.promotions.keys(), "bad input made no promotion"
    assert all(after.promotions[k] == v for k, v in before.promotions.items() if k != promotion_id)
    assert before.events.items() <= after.events.items(), "every event on record is still there, unchanged"
    assert after.alerts == before.alerts, "no refused alert was recorded"

    resolved = client.send_alerts(
        alert(status="resolved", startsAt="2026-01-01T00:00:00Z", endsAt="2026-01-01T00:05:00Z")
    )
    assert resolved == {"received": 1, "matched": []}
    assert client.get_promotion(promotion_id)["promotion"]["phase"] == "Progressing"

    firing = client.send_alerts(alert())
    assert firing["matched"] == [promotion_id], "the labels the refused alerts carried do match the promotion"
    wait_for(
        lambda: client.get_promotion(promotion_id)["promotion"]["phase"] == "RolledBack",
        what="the valid alarm to roll the promotion back",
    )
    log = daemon.log()
    assert "Traceback" not in log
    assert "unexpected error serving" not in log
