"""Alertmanager's webhook: parsing as sent, matching to promotions, and the book of firing alerts."""

from __future__ import annotations

import copy
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import httpx
import pytest

from vouch.core.errors import InputError
from vouch.rollout.alarms import (
    Alert,
    AlertBook,
    AlertmanagerWebhook,
    fingerprint_of,
    matches,
    parse_webhook,
)
from vouch.rollout.config import AlarmSpec

# Captured from Alertmanager 0.25.0 (webhook_config with send_resolved: true), byte for byte.
FIRING = r"""{"receiver":"vouch","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"HighErrorRate","environment":"staging","service":"checkout","severity":"critical"},"annotations":{"summary":"canary error ratio above 10%"},"startsAt":"2026-11-26T21:47:06.782473338Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://127.0.0.1:9090/graph?g0.expr=x","fingerprint":"352216852a0fe019"}],"groupLabels":{"environment":"staging","service":"checkout"},"commonLabels":{"alertname":"HighErrorRate","environment":"staging","service":"checkout","severity":"critical"},"commonAnnotations":{"summary":"canary error ratio above 10%"},"externalURL":"http://vm:18998","version":"4","groupKey":"{}:{environment=\"staging\", service=\"checkout\"}","truncatedAlerts":0}"""  # noqa: E501
RESOLVED = r"""{"receiver":"vouch","status":"resolved","alerts":[{"status":"resolved","labels":{"alertname":"HighErrorRate","environment":"staging","service":"checkout","severity":"critical"},"annotations":{"summary":"canary error ratio above 10%"},"startsAt":"2026-11-26T21:47:06.782473338Z","endsAt":"2026-11-26T21:47:06.882869Z","generatorURL":"","fingerprint":"352216852a0fe019"}],"groupLabels":{"environment":"staging","service":"checkout"},"commonLabels":{"alertname":"HighErrorRate","environment":"staging","service":"checkout","severity":"critical"},"commonAnnotations":{"summary":"canary error ratio above 10%"},"externalURL":"http://vm:18998","version":"4","groupKey":"{}:{environment=\"staging\", service=\"checkout\"}","truncatedAlerts":0}"""  # noqa: E501

DEFAULT = AlarmSpec()


def firing_body() -> dict[str, Any]:
    return json.loads(FIRING)  # type: ignore[no-any-return]


def refused(data: object) -> str:
    with pytest.raises(InputError) as caught:
        parse_webhook(data)
    return str(caught.value)


def webhook(*alerts: dict[str, Any]) -> AlertmanagerWebhook:
    return parse_webhook({"version": "4", "status": "firing", "alerts": list(alerts)})


def alert(
    status: str,
    *,
    starts: str,
    ends: str = "0001-01-01T00:00:00Z",
    fingerprint: str = "fp1",
    **labels: str,
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "HighErrorRate", "service": "checkout", "environment": "staging", **labels},
        "annotations": {},
        "startsAt": starts,
        "endsAt": ends,
        "generatorURL": "",
        "fingerprint": fingerprint,
    }


# --------------------------------------------------------------------------- parsing


def test_real_firing_payload_parses() -> None:
    hook = parse_webhook(json.loads(FIRING))
    assert hook.version == "4"
    assert hook.status == "firing"
    assert hook.receiver == "vouch"
    assert hook.group_key == '{}:{environment="staging", service="checkout"}'
    assert hook.truncated_alerts == 0
    assert hook.group_labels == {"environment": "staging", "service": "checkout"}
    assert hook.common_labels["severity"] == "critical"
    assert hook.common_annotations == {"summary": "canary error ratio above 10%"}
    assert hook.external_url == "http://vm:18998"
    [only] = hook.alerts
    assert only.fingerprint == "352216852a0fe019"
    assert only.generator_url == "http://127.0.0.1:9090/graph?g0.expr=x"

    book_alert = Alert.from_webhook(only)
    assert book_alert.firing
    assert book_alert.name == "HighErrorRate"
    assert book_alert.summary == "canary error ratio above 10%"
    # nanoseconds are cut to microseconds; Go's zero time means "no end yet"
    assert book_alert.starts_at == datetime(2026, 11, 26, 21, 47, 6, 782473, tzinfo=UTC).timestamp()
    assert book_alert.ends_at is None


def test_real_resolved_payload_parses() -> None:
    [only] = parse_webhook(json.loads(RESOLVED)).alerts
    resolved = Alert.from_webhook(only)
    assert resolved.status == "resolved"
    assert resolved.ends_at == datetime(2026, 11, 26, 21, 47, 6, 882869, tzinfo=UTC).timestamp()
    assert resolved.generator_url == ""


def test_unknown_fields_are_accepted_and_ignored() -> None:
    body = firing_body()
    body["orgId"] = 1
    body["futureField"] = {"nested": [1, 2]}
    body["alerts"][0]["silenceURL"] = "http://am/silence"
    body["alerts"][0]["values"] = {"B": 44.2}
    hook = parse_webhook(body)
    assert hook.alerts[0].labels["alertname"] == "HighErrorRate"
    assert "orgId" not in hook.model_dump()


def test_version_3_is_refused() -> None:
    body = firing_body()
    body["version"] = "3"
    message = refused(body)
    assert "version: expected '4', got \"3\"" in message


def test_missing_version_is_refused() -> None:
    body = firing_body()
    del body["version"]
    assert "version: required field is missing" in refused(body)


def test_alerts_not_a_list_is_refused_with_its_path() -> None:
    body = firing_body()
    body["alerts"] = {"status": "firing"}
    assert "alerts: expected a list, got an object" in refused(body)


def test_label_with_a_number_is_refused_with_its_path() -> None:
    body = firing_body()
    body["alerts"][0]["labels"]["replicas"] = 3
    message = refused(body)
    assert 'alerts[0].labels: expected an object of strings ("replicas" is a number)' in message


def test_missing_alert_status_is_refused_with_its_path() -> None:
    body = firing_body()
    second = copy.deepcopy(body["alerts"][0])
    del second["status"]
    body["alerts"].append(second)
    message = refused(body)
    assert "alerts[1].status: required field is missing" in message
    assert "alerts[0]" not in message


def test_unknown_alert_status_is_refused() -> None:
    body = firing_body()
    body["alerts"][0]["status"] = "pending"
    assert "alerts[0].status: expected 'firing' or 'resolved', got \"pending\"" in refused(body)


def test_every_problem_is_named() -> None:
    body = firing_body()
    body["version"] = "3"
    body["alerts"][0]["labels"] = "service=checkout"
    message = refused(body)
    assert "version:" in message
    assert "alerts[0].labels: expected an object of strings, got a string" in message


def test_a_body_that_is_not_an_object_is_refused() -> None:
    assert "body: expected an object, got a list" in refused([1, 2])


def test_a_flood_of_problems_is_summarised() -> None:
    bad: list[dict[str, object]] = [{"labels": {}} for _ in range(30)]
    message = refused({"version": "4", "alerts": bad})
    assert "alerts[0].status: required field is missing" in message
    assert "alerts[29]" not in message
    assert "and 20 more" in message


def test_null_annotations_are_empty_but_null_labels_are_refused() -> None:
    body = firing_body()
    body["alerts"][0]["annotations"] = None
    assert parse_webhook(body).alerts[0].annotations == {}
    body["alerts"][0]["labels"] = None
    assert "alerts[0].labels: expected an object of strings, got null" in refused(body)


# --------------------------------------------------------------------------- alerts


def test_summary_falls_back_to_description_then_message() -> None:
    base = Alert.from_webhook(parse_webhook(json.loads(FIRING)).alerts[0])
    described = Alert(**{**base.__dict__, "annotations": {"description": "d", "message": "m"}})
    messaged = Alert(**{**base.__dict__, "annotations": {"summary": "  ", "message": "m"}})
    silent = Alert(**{**base.__dict__, "annotations": {}, "labels": {"service": "checkout"}})
    assert described.summary == "d"
    assert messaged.summary == "m"
    assert silent.summary == ""
    assert silent.name == "unnamed"


def test_missing_fingerprint_is_computed_stably_from_labels() -> None:
    first = firing_body()
    del first["alerts"][0]["fingerprint"]
    second = firing_body()
    second["alerts"][0].pop("fingerprint")
    second["alerts"][0]["labels"] = dict(reversed(list(second["alerts"][0]["labels"].items())))
    a = Alert.from_webhook(parse_webhook(first).alerts[0])
    b = Alert.from_webhook(parse_webhook(second).alerts[0])
    assert a.fingerprint == b.fingerprint == fingerprint_of(a.labels)
    assert len(a.fingerprint) == 16
    int(a.fingerprint, 16)
    assert fingerprint_of({**a.labels, "severity": "warning"}) != a.fingerprint


# --------------------------------------------------------------------------- matching

PROMOTION = {"service": "checkout", "environment": "staging", "version": "2.4.1"}


def test_default_labels_match_service_and_environment() -> None:
    labels = {"alertname": "X", "service": "checkout", "environment": "staging"}
    assert matches(labels, **PROMOTION, spec=DEFAULT)
    assert not matches({**labels, "environment": "production"}, **PROMOTION, spec=DEFAULT)
    assert not matches({**labels, "service": "cart"}, **PROMOTION, spec=DEFAULT)


def test_a_missing_label_never_matches() -> None:
    assert not matches({"service": "checkout"}, **PROMOTION, spec=DEFAULT)
    assert not matches({}, **PROMOTION, spec=AlarmSpec(match_labels=["service"]))


def test_version_label_matches_only_the_canary_version() -> None:
    spec = AlarmSpec(match_labels=["service", "environment", "version"])
    labels = {"service": "checkout", "environment": "staging"}
    assert matches({**labels, "version": "2.4.1"}, **PROMOTION, spec=spec)
    assert not matches({**labels, "version": "2.4.0"}, **PROMOTION, spec=spec)
    assert not matches(labels, **PROMOTION, spec=spec)


def test_extra_matchers_must_all_be_present_and_equal() -> None:
    spec = AlarmSpec(matchers={"severity": "critical", "team": "payments"})
    labels = {"service": "checkout", "environment": "staging", "severity": "critical"}
    assert matches({**labels, "team": "payments"}, **PROMOTION, spec=spec)
    assert not matches(labels, **PROMOTION, spec=spec)
    assert not matches({**labels, "team": "search"}, **PROMOTION, spec=spec)


# --------------------------------------------------------------------------- the book

T1 = "2026-01-01T10:00:00Z"
T1_END = "2026-01-01T10:05:00Z"
T2 = "2026-01-01T10:10:00Z"


def test_firing_then_resolved_lifecycle() -> None:
    book = AlertBook()
    firing, resolved = book.update(webhook(alert("firing", starts=T1)))
    assert [a.fingerprint for a in firing] == ["fp1"]
    assert resolved == []
    assert [a.fingerprint for a in book.firing()] == ["fp1"]

    firing, resolved = book.update(webhook(alert("firing", starts=T1)))  # Alertmanager repeats
    assert [a.fingerprint for a in firing] == ["fp1"]
    assert len(book) == 1

    firing, resolved = book.update(webhook(alert("resolved", starts=T1, ends=T1_END)))
    assert firing == []
    assert [a.status for a in resolved] == ["resolved"]
    assert book.firing() == []


def test_a_late_resolve_of_an_older_instance_keeps_the_newer_firing() -> None:
    book = AlertBook()
    book.update(webhook(alert("firing", starts=T1)))
    book.update(webhook(alert("firing", starts=T2)))  # fired again; the resolve of T1 is still in flight
    firing, resolved = book.update(webhook(alert("resolved", starts=T1, ends=T1_END)))
    assert (firing, resolved) == ([], [])
    [still] = book.firing()
    assert still.starts_at == datetime(2026, 1, 1, 10, 10, tzinfo=UTC).timestamp()


def test_a_late_firing_of_a_resolved_instance_is_ignored() -> None:
    book = AlertBook()
    book.update(webhook(alert("resolved", starts=T1, ends=T1_END)))
    assert book.update(webhook(alert("firing", starts=T1))) == ([], [])
    assert book.firing() == []
    firing, _ = book.update(webhook(alert("firing", starts=T2)))  # a genuinely new instance
    assert len(firing) == 1
    assert len(book) == 1


def test_an_older_firing_does_not_replace_a_newer_one() -> None:
    book = AlertBook()
    book.update(webhook(alert("firing", starts=T2)))
    assert book.update(webhook(alert("firing", starts=T1))) == ([], [])
    assert book.firing()[0].starts_at == datetime(2026, 1, 1, 10, 10, tzinfo=UTC).timestamp()


def test_resolved_memory_is_bounded() -> None:
    book = AlertBook(remember_resolved=1)
    book.update(webhook(alert("resolved", starts=T1, ends=T1_END, fingerprint="a")))
    book.update(webhook(alert("resolved", starts=T1, ends=T1_END, fingerprint="b")))
    # "a" was forgotten, so its late firing counts again (fails closed); "b" is still remembered
    assert len(book.update(webhook(alert("firing", starts=T1, fingerprint="a")))[0]) == 1
    assert book.update(webhook(alert("firing", starts=T1, fingerprint="b")))[0] == []


def test_firing_for_keeps_only_the_promotions_alerts() -> None:
    book = AlertBook()
    book.update(
        webhook(
            alert("firing", starts=T1, fingerprint="ours"),
            alert("firing", starts=T1, fingerprint="prod", environment="production"),
            alert("firing", starts=T1, fingerprint="cart", service="cart"),
        )
    )
    assert len(book) == 3
    found = book.firing_for(service="checkout", environment="staging", version="2.4.1", spec=DEFAULT)
    assert [a.fingerprint for a in found] == ["ours"]


# --------------------------------------------------------------------------- against a real Alertmanager


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def receiver() -> Iterator[tuple[int, Queue[bytes]]]:
    """A webhook endpoint on loopback that hands every body it receives to a queue."""
    bodies: Queue[bytes] = Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.put(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1]), bodies
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def alertmanager(tmp_path: Path, receiver: tuple[int, Queue[bytes]]) -> Iterator[str]:
    binary = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
    if not Path(binary).exists():
        pytest.skip(f"Alertmanager not installed: {binary}")
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        "route:\n  receiver: vouch\n  group_by: [service, environment]\n"
        "  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\n"
        "receivers:\n  - name: vouch\n    webhook_configs:\n"
        f"      - url: http://127.0.0.1:{receiver[0]}/api/v1/alerts\n        send_resolved: true\n"
    )
    url = f"http://127.0.0.1:{_free_port()}"
    log = (tmp_path / "alertmanager.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address={url.removeprefix('http://')}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (tmp_path / "alertmanager.log").read_text()
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "Alertmanager did not become ready"
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _next_body(bodies: Queue[bytes]) -> object:
    try:
        return json.loads(bodies.get(timeout=20))
    except Empty:
        pytest.fail("Alertmanager sent no webhook within 20 s")


def test_what_a_real_alertmanager_sends_parses_and_drives_the_book(
    alertmanager: str, receiver: tuple[int, Queue[bytes]]
) -> None:
    labels = {"alertname": "HighErrorRate", "service": "checkout", "environment": "staging"}
    annotations = {"summary": "canary error ratio above 10%"}
    httpx.post(f"{alertmanager}/api/v2/alerts", json=[{"labels": labels, "annotations": annotations}])

    book = AlertBook()
    firing, _ = book.update(parse_webhook(_next_body(receiver[1])))
    [found] = book.firing_for(service="checkout", environment="staging", version="2.4.1", spec=DEFAULT)
    assert found == firing[0]
    assert found.summary == "canary error ratio above 10%"
    assert found.ends_at is None
    assert found.starts_at is not None

    ended = datetime.now(UTC).isoformat()
    httpx.post(
        f"{alertmanager}/api/v2/alerts",
        json=[{"labels": labels, "annotations": annotations, "endsAt": ended}],
    )
    _, resolved = book.update(parse_webhook(_next_body(receiver[1])))
    assert [a.fingerprint for a in resolved] == [found.fingerprint]
    assert book.firing() == []


def test_a_book_restored_from_records_knows_what_still_fires() -> None:
    labels = {"alertname": "HighErrorRate", "service": "checkout", "environment": "staging"}
    other = {"alertname": "Down", "service": "cart", "environment": "staging"}
    book = AlertBook()
    book.restore(
        [
            Alert("firing", labels, {}, None, None, "fp-1"),
            Alert("firing", other, {}, None, None, "fp-2"),
            Alert("resolved", other, {}, None, None, "fp-2"),
        ]
    )
    assert [a.fingerprint for a in book.firing()] == ["fp-1"]
