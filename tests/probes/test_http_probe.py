"""The http probe against real local HTTP(S) servers: every reason it can report, secrets, retries, timeout."""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError
from support.tls import (
    Certs,
    answer_bytes,
    close_at_once,
    make_certs,
    never_answer,
    probe_app,
    serve_app,
    serve_raw,
    server_context,
    silent_listener,
)

from vouch.probes import http as http_module
from vouch.probes.assertions import HeaderAssertion, JsonAssertion, ResponseAssertions
from vouch.probes.base import PHASES, Probe, ProbeResult, Reason
from vouch.probes.http import HttpProbe, HttpProbeSpec
from vouch.probes.settings import Secret, TlsClientSpec

TOKEN = "s3cr3t-t0ken-value"
BODY_SECRET = "body-secret-4711"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    with serve_app(probe_app()) as url:
        yield url


@pytest.fixture(scope="module")
def https_url(certs: Certs) -> Iterator[str]:
    with serve_app(probe_app(), ssl_context=server_context(certs.valid)) as url:
        yield url


def spec(**settings: Any) -> HttpProbeSpec:
    settings.setdefault("timeout", 5)
    return HttpProbeSpec(name="shop", targets=["http://127.0.0.1/"], **settings)


async def run(url: str, **settings: Any) -> ProbeResult:
    return await HttpProbe(spec(**settings)).run(url)


def assert_sane(result: ProbeResult) -> None:
    assert set(result.phases) == set(PHASES)
    assert all(seconds >= 0 for seconds in result.phases.values())
    assert sum(result.phases.values()) <= result.duration + 1e-3
    assert result.success == (result.reason is None)


async def expect(reason: Reason, url: str, **settings: Any) -> ProbeResult:
    result = await run(url, **settings)
    assert result.reason is reason, result
    assert not result.success
    assert result.message
    assert_sane(result)
    return result


# --------------------------------------------------------------------------- success


async def test_a_healthy_target(http_url: str) -> None:
    probe = HttpProbe(spec())
    assert isinstance(probe, Probe)
    result = await probe.run(f"{http_url}/ok")
    assert result.success
    assert (result.probe, result.kind, result.target) == ("shop", "http", f"{http_url}/ok")
    assert result.status_code == 200
    assert result.attempts == 1
    assert result.tls_expiry is None
    assert result.details["body_bytes"] > 0
    assert_sane(result)
    json.dumps(result.to_dict())


async def test_https_with_a_trusted_certificate(https_url: str, certs: Certs) -> None:
    result = await run(f"{https_url}/ok", tls=TlsClientSpec(ca_file=str(certs.ca_file)))
    assert result.success, result
    assert result.tls_expiry is not None
    assert result.phases["tls"] > 0
    assert_sane(result)


async def test_verify_off_accepts_an_untrusted_certificate_and_still_reports_expiry(certs: Certs) -> None:
    with serve_app(probe_app(), ssl_context=server_context(certs.untrusted)) as url:
        result = await run(f"{url}/ok", tls=TlsClientSpec(verify=False))
    assert result.success
    assert result.tls_expiry is not None


async def test_a_client_certificate_is_presented(certs: Certs) -> None:
    context = server_context(certs.valid, client_ca=certs.ca, max_version=ssl.TLSVersion.TLSv1_2)
    with serve_app(probe_app(), ssl_context=context) as url:
        tls = TlsClientSpec(ca_file=str(certs.ca_file), cert_file=str(certs.client_file))
        assert (await run(f"{url}/ok", tls=tls)).success
        await expect(Reason.TLS_HANDSHAKE, f"{url}/ok", tls=TlsClientSpec(ca_file=str(certs.ca_file)))


async def test_accepted_status_codes_and_classes(http_url: str) -> None:
    assert (await run(f"{http_url}/status/404", valid_status_codes=[404])).success
    assert (await run(f"{http_url}/status/503", valid_status_codes=["2xx", "5xx"])).success
    result = await expect(Reason.HTTP_STATUS, f"{http_url}/status/404", valid_status_codes=["2xx", 410])
    assert result.status_code == 404
    assert "404" in result.message


async def test_a_post_with_a_body(http_url: str) -> None:
    checks = ResponseAssertions(
        json=[JsonAssertion(path="$.method", equals="POST"), JsonAssertion(path="$.body", equals="hello")]
    )
    assert (await run(f"{http_url}/echo", method="POST", body="hello", assertions=checks)).success


# --------------------------------------------------------------------------- connection failures


async def test_dns_failure() -> None:
    await expect(Reason.DNS_FAILED, "http://no-such-host.invalid/")


async def test_refused() -> None:
    with silent_listener() as port:
        pass  # closed again: nothing listens there now
    await expect(Reason.CONNECT_REFUSED, f"http://127.0.0.1:{port}/")


async def test_closed_without_an_answer() -> None:
    with serve_raw(close_at_once) as port:
        await expect(Reason.CONNECT_FAILED, f"http://127.0.0.1:{port}/")


async def test_a_malformed_answer() -> None:
    with serve_raw(answer_bytes(b"HTTP/1.1 200 OK\r\nbroken header line\r\n\r\n")) as port:
        await expect(Reason.PROTOCOL, f"http://127.0.0.1:{port}/")


async def test_timeout_when_the_server_accepts_but_never_answers() -> None:
    with serve_raw(never_answer) as port:
        result = await expect(Reason.TIMEOUT, f"http://127.0.0.1:{port}/", timeout=0.3)
    assert result.phases["connect"] > 0
    assert result.phases["processing"] > 0  # measured up to the timeout
    assert "during processing" in result.message
    assert result.status_code is None


async def test_timeout_during_the_tls_handshake() -> None:
    with silent_listener() as port:
        result = await expect(Reason.TIMEOUT, f"https://127.0.0.1:{port}/", timeout=0.3)
    assert "during tls" in result.message


# --------------------------------------------------------------------------- TLS failures


@pytest.mark.parametrize(
    ("leaf", "reason"),
    [("expired", Reason.TLS_EXPIRED), ("wrong_host", Reason.TLS_HOSTNAME), ("untrusted", Reason.TLS_UNTRUSTED)],
)
async def test_certificate_problems(certs: Certs, leaf: str, reason: Reason) -> None:
    with serve_app(probe_app(), ssl_context=server_context(getattr(certs, leaf))) as url:
        result = await expect(reason, f"{url}/ok", tls=TlsClientSpec(ca_file=str(certs.ca_file)))
    assert result.phases["tls"] > 0


async def test_server_name_decides_the_host_name_check(certs: Certs) -> None:
    with serve_app(probe_app(), ssl_context=server_context(certs.wrong_host)) as url:
        tls = TlsClientSpec(ca_file=str(certs.ca_file), server_name="wrong.example")
        assert (await run(f"{url}/ok", tls=tls)).success


async def test_https_to_a_plain_http_server(http_url: str) -> None:
    await expect(Reason.TLS_HANDSHAKE, http_url.replace("http://", "https://") + "/ok")


# --------------------------------------------------------------------------- redirects


async def test_redirects_followed(http_url: str) -> None:
    result = await run(f"{http_url}/redirect/2")
    assert result.success
    assert result.details["redirects"] == 3
    assert result.details["url"] == f"{http_url}/ok"


async def test_redirect_refused(http_url: str) -> None:
    result = await expect(Reason.HTTP_REDIRECT, f"{http_url}/redirect/0", follow_redirects=False)
    assert result.status_code == 302
    assert (await run(f"{http_url}/redirect/0", follow_redirects=False, valid_status_codes=[302])).success


async def test_too_many_redirects(http_url: str) -> None:
    await expect(Reason.HTTP_REDIRECT, f"{http_url}/redirect/5", max_redirects=3)


# --------------------------------------------------------------------------- assertions


async def test_json_assertions_that_hold(http_url: str) -> None:
    checks = ResponseAssertions(
        json=[
            JsonAssertion(path="$.status", equals="ok"),
            JsonAssertion(path="$.version", matches=r"^1\.\d+\.\d+$"),
            JsonAssertion(path="$.items[?@.sku == 'A-1'].count", equals=3),
            JsonAssertion(path="$.items[*].price", gt=0, le=10),
            JsonAssertion(path="$.items[*].count", ge=0),
            JsonAssertion(path="$.owner", equals=None),
            JsonAssertion(path="$.missing", exists=False),
            JsonAssertion(path="$.items", exists=True),
        ],
        headers=[HeaderAssertion(name="X-Served-By", matches="vouch"), HeaderAssertion(name="x-debug", absent=True)],
    )
    assert (await run(f"{http_url}/ok", assertions=checks)).success


@pytest.mark.parametrize(
    ("check", "words"),
    [
        (JsonAssertion(path="$.status", equals="degraded"), '"ok", expected "degraded"'),
        (JsonAssertion(path="$.items[*].count", gt=0), "expected > 0"),
        (JsonAssertion(path="$.items[0].count", lt=3), "expected < 3"),
        (JsonAssertion(path="$.status", ge=1), "not a number"),
        (JsonAssertion(path="$.version", matches="^2"), "does not match"),
        (JsonAssertion(path="$.missing", exists=True), "selects nothing"),
        (JsonAssertion(path="$.status", exists=False), "must select nothing"),
        (JsonAssertion(path="$.owner", equals=0), "null, expected 0"),
    ],
)
async def test_json_assertions_that_fail(http_url: str, check: JsonAssertion, words: str) -> None:
    result = await expect(Reason.JSON_MISMATCH, f"{http_url}/ok", assertions=ResponseAssertions(json=[check]))
    assert check.path in result.message
    assert words in result.message


async def test_a_body_that_is_not_json(http_url: str) -> None:
    checks = ResponseAssertions(json=[JsonAssertion(path="$.status", exists=True)])
    result = await expect(Reason.JSON_MISMATCH, f"{http_url}/text", assertions=checks)
    assert "not JSON" in result.message


async def test_body_regular_expressions(http_url: str) -> None:
    assert (await run(f"{http_url}/text", assertions={"body_matches": [r"welcome\b"]})).success
    await expect(Reason.BODY_MISMATCH, f"{http_url}/text", assertions={"body_matches": ["goodbye"]})
    result = await expect(Reason.BODY_MISMATCH, f"{http_url}/text", assertions={"body_not_matches": ["shop$"]})
    assert "forbidden" in result.message


@pytest.mark.parametrize(
    "check",
    [
        HeaderAssertion(name="x-served-by", matches="^nginx"),
        HeaderAssertion(name="x-missing", matches="."),
        HeaderAssertion(name="content-type", absent=True),
    ],
)
async def test_header_assertions_that_fail(http_url: str, check: HeaderAssertion) -> None:
    await expect(Reason.HEADER_MISMATCH, f"{http_url}/ok", assertions=ResponseAssertions(headers=[check]))


async def test_latency_above_the_maximum(http_url: str) -> None:
    result = await expect(Reason.LATENCY, f"{http_url}/ok", max_latency=1e-6)
    assert result.status_code == 200


# --------------------------------------------------------------------------- retries


async def test_retries_until_the_target_recovers(http_url: str) -> None:
    result = await run(f"{http_url}/flaky/recovers?fail=2", retries=2, retry_delay=0.01)
    assert result.success
    assert result.attempts == 3


async def test_retries_exhausted(http_url: str) -> None:
    result = await expect(Reason.HTTP_STATUS, f"{http_url}/flaky/exhausted?fail=5", retries=1, retry_delay=0.01)
    assert result.attempts == 2
    assert result.status_code == 503


async def test_retries_on_connection_failures_count_attempts() -> None:
    with silent_listener() as port:
        pass
    result = await expect(Reason.CONNECT_REFUSED, f"http://127.0.0.1:{port}/", retries=2, retry_delay=0.01)
    assert result.attempts == 3


# --------------------------------------------------------------------------- secrets and configuration


async def test_secrets_are_sent_but_never_shown(
    http_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("VOUCH_TEST_TOKEN", TOKEN)
    (tmp_path / "body").write_text(f"{BODY_SECRET}\n")
    secret_settings: dict[str, Any] = {
        "method": "POST",
        "headers": {"authorization": Secret(from_env="VOUCH_TEST_TOKEN"), "x-plain": "visible"},
        "body": Secret(from_file=str(tmp_path / "body")),
    }
    sent = ResponseAssertions(
        json=[
            JsonAssertion(path="$.headers.authorization", matches="^s3cr3t"),
            JsonAssertion(path="$.body", matches="^body-secret"),
            JsonAssertion(path="$.headers['x-plain']", equals="visible"),
        ]
    )
    assert (await run(f"{http_url}/echo", assertions=sent, **secret_settings)).success
    # A failing assertion that would quote the echoed secret: the value is masked.
    quoting = ResponseAssertions(json=[JsonAssertion(path="$.headers.authorization", equals="other")])
    result = await expect(Reason.JSON_MISMATCH, f"{http_url}/echo", assertions=quoting, **secret_settings)
    assert "***" in result.message
    probe_spec = spec(**secret_settings)
    for shown in (
        repr(result),
        json.dumps(result.to_dict()),
        caplog.text,
        repr(probe_spec),
        probe_spec.model_dump_json(),
    ):
        assert TOKEN not in shown
        assert BODY_SECRET not in shown


async def test_an_unset_secret_is_a_config_failure(http_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOUCH_TEST_MISSING", raising=False)
    headers = {"authorization": Secret(from_env="VOUCH_TEST_MISSING")}
    result = await expect(Reason.CONFIG, f"{http_url}/ok", headers=headers, retries=3, retry_delay=0.01)
    assert result.attempts == 1  # retrying cannot help
    assert "VOUCH_TEST_MISSING" in result.message


async def test_a_target_that_is_not_a_url_is_a_config_failure() -> None:
    await expect(Reason.CONFIG, "ftp://127.0.0.1/file")


async def test_an_internal_error_is_reported_not_raised(
    http_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("defect")

    monkeypatch.setattr(http_module, "exchange", broken)
    result = await run(f"{http_url}/ok")
    assert result.reason is Reason.INTERNAL
    assert "RuntimeError" in result.message
    assert "RuntimeError" in caplog.text


@pytest.mark.parametrize(
    "settings",
    [
        {"targets": ["shop.example:443"]},
        {"valid_status_codes": ["6xx"]},
        {"valid_status_codes": [99]},
        {"valid_status_codes": []},
        {"method": "get"},
        {"assertions": {"json": [{"path": "status", "exists": True}]}},
        {"assertions": {"json": [{"path": "$.status"}]}},
        {"assertions": {"headers": [{"name": "x", "matches": "a", "absent": True}]}},
        {"assertions": {"body_matches": ["("]}},
        {"timeout": 60, "interval": 30},
    ],
)
def test_invalid_settings_are_rejected(settings: dict[str, Any]) -> None:
    values: dict[str, Any] = {"name": "shop", "targets": ["http://127.0.0.1/"], **settings}
    with pytest.raises(ValidationError):
        HttpProbeSpec.model_validate(values)


def test_settings_from_configuration() -> None:
    loaded = HttpProbeSpec.model_validate(
        {
            "kind": "http",
            "name": "shop",
            "targets": ["https://shop.example/healthz"],
            "headers": {"authorization": {"from_env": "TOKEN"}},
            "valid_status_codes": ["2xx", "304"],
            "max_latency": "500ms",
            "assertions": {"json": [{"path": "$.status", "equals": "ok"}], "body_not_matches": ["error"]},
        }
    )
    assert loaded.valid_status_codes == ["2xx", 304]
    assert loaded.max_latency == 0.5
    assert isinstance(loaded.headers["authorization"], Secret)
