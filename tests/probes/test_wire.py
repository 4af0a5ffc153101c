"""The HTTP/1.1 wire layer against real local servers: answers, phases, redirects, limits, failures, retries."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from support.tls import (
    BIG_BODY_BYTES,
    OK_DOCUMENT,
    Certs,
    answer_bytes,
    close_at_once,
    make_certs,
    probe_app,
    serve_app,
    serve_raw,
    server_context,
    silent_listener,
)

from vouch.probes.attempts import Timings, attempt_within
from vouch.probes.base import PHASES, ProbeFailure, Reason
from vouch.probes.settings import TlsClientSpec
from vouch.probes.tlsinfo import TlsContexts, verify_failure
from vouch.probes.wire import WireAnswer, WireRequest, connect, exchange


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


async def fetch(
    url: str, *, tls: TlsClientSpec | None = None, max_body: int = 1 << 20, **options: Any
) -> tuple[WireAnswer, Timings]:
    """One exchange with ``WireRequest(url, **options)``; returns the answer and its timings."""
    timings = Timings()
    request = WireRequest(url, **options)
    answer = await exchange(request, tls=tls, contexts=TlsContexts(), max_body=max_body, timings=timings)
    return answer, timings


async def failure_of(url: str, **options: Any) -> ProbeFailure:
    with pytest.raises(ProbeFailure) as caught:
        await fetch(url, **options)
    return caught.value


# --------------------------------------------------------------------------- answers and phases


async def test_a_plain_answer_with_its_phases(http_url: str) -> None:
    answer, timings = await fetch(f"{http_url}/ok")
    assert answer.status_code == 200
    assert answer.json() == OK_DOCUMENT
    assert answer.header("X-Served-By") == "vouch-test"
    assert answer.http_version == "1.1"
    assert answer.tls is None
    assert answer.tls_expiry is None
    assert set(timings.phases) == set(PHASES)
    assert timings.phases["resolve"] == 0.0  # an IP literal is not resolved
    assert timings.phases["tls"] == 0.0
    assert timings.phases["connect"] > 0
    assert timings.phases["processing"] > 0
    assert sum(timings.phases.values()) <= answer.elapsed + 1e-3
    assert timings.current is None


async def test_a_name_is_resolved_and_timed(http_url: str) -> None:
    port = http_url.rsplit(":", 1)[1]
    answer, timings = await fetch(f"http://localhost:{port}/ok", ip_protocol="ip4")
    assert answer.status_code == 200
    assert timings.phases["resolve"] > 0


async def test_https_records_the_session_and_the_expiry(https_url: str, certs: Certs) -> None:
    answer, timings = await fetch(f"{https_url}/ok", tls=TlsClientSpec(ca_file=str(certs.ca_file)))
    assert answer.status_code == 200
    assert timings.phases["tls"] > 0
    assert answer.tls is not None
    assert answer.tls.leaf is not None
    assert "127.0.0.1" in answer.tls.leaf.sans
    leaf = x509.load_pem_x509_certificate(certs.valid.cert_chain_pems[0].bytes())
    assert answer.tls_expiry == leaf.not_valid_after_utc.timestamp()


async def test_the_body_is_kept_up_to_the_limit_and_the_rest_drained(http_url: str) -> None:
    answer, _ = await fetch(f"{http_url}/big", max_body=1000)
    assert answer.status_code == 200
    assert len(answer.body) == 1000
    assert answer.truncated
    whole, _ = await fetch(f"{http_url}/big", max_body=BIG_BODY_BYTES)
    assert len(whole.body) == BIG_BODY_BYTES
    assert not whole.truncated


async def test_a_post_sends_its_body_and_headers(http_url: str) -> None:
    answer, _ = await fetch(f"{http_url}/echo", method="POST", headers=(("x-trace", "abc"),), body=b'{"sku": "A-1"}')
    echoed = answer.json()
    assert echoed["method"] == "POST"
    assert echoed["body"] == '{"sku": "A-1"}'
    assert echoed["headers"]["x-trace"] == "abc"
    assert echoed["headers"]["connection"] == "close"


# --------------------------------------------------------------------------- redirects


async def test_redirects_are_followed_each_on_a_new_connection(http_url: str) -> None:
    answer, _ = await fetch(f"{http_url}/redirect/2")
    assert answer.status_code == 200
    assert answer.redirects == 3
    assert answer.url == f"{http_url}/ok"


async def test_an_unfollowed_redirect_is_returned_as_is(http_url: str) -> None:
    answer, _ = await fetch(f"{http_url}/redirect/0", follow_redirects=False)
    assert answer.status_code == 302
    assert answer.header("location") == "/ok"
    assert answer.redirects == 0


async def test_too_many_redirects_fail(http_url: str) -> None:
    failure = await failure_of(f"{http_url}/redirect/5", max_redirects=2)
    assert failure.reason is Reason.HTTP_REDIRECT
    assert "more than 2 redirects" in failure.message


async def test_see_other_turns_a_post_into_a_get(http_url: str) -> None:
    answer, _ = await fetch(f"{http_url}/see-other", method="POST", body=b"payload")
    assert answer.json()["method"] == "GET"
    assert answer.json()["body"] == ""


async def test_credentials_do_not_follow_a_redirect_to_another_host(http_url: str) -> None:
    port = http_url.rsplit(":", 1)[1]
    headers = (("authorization", "Bearer token"), ("x-keep", "yes"))
    same, _ = await fetch(f"{http_url}/goto?to=/echo", headers=headers)
    assert same.json()["headers"]["authorization"] == "Bearer token"
    other, _ = await fetch(f"{http_url}/goto?to=http://localhost:{port}/echo", headers=headers)
    assert "authorization" not in other.json()["headers"]
    assert other.json()["headers"]["x-keep"] == "yes"


# --------------------------------------------------------------------------- failures


async def test_refused(http_url: str) -> None:
    with silent_listener() as port:
        pass  # the port is free again: nothing listens there now
    failure = await failure_of(f"http://127.0.0.1:{port}/")
    assert failure.reason is Reason.CONNECT_REFUSED
    assert failure.phases["connect"] > 0


async def test_a_name_that_does_not_resolve() -> None:
    failure = await failure_of("http://no-such-host.invalid/")
    assert failure.reason is Reason.DNS_FAILED
    assert "no-such-host.invalid" in failure.message


async def test_closed_without_an_answer() -> None:
    with serve_raw(close_at_once) as port:
        failure = await failure_of(f"http://127.0.0.1:{port}/")
    assert failure.reason is Reason.CONNECT_FAILED


@pytest.mark.parametrize(
    "reply",
    [b"SSH-2.0-OpenSSH_9.2\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", b"HTTP/1.1 abc\r\n\r\n"],
    ids=["not-http", "short-body", "bad-status"],
)
async def test_malformed_answers_are_protocol_errors(reply: bytes) -> None:
    with serve_raw(answer_bytes(reply)) as port:
        failure = await failure_of(f"http://127.0.0.1:{port}/")
    assert failure.reason is Reason.PROTOCOL


async def test_an_invalid_header_is_a_config_error_that_does_not_quote_it(http_url: str) -> None:
    failure = await failure_of(f"{http_url}/ok", headers=(("authorization", "secret\r\nvalue"),))
    assert failure.reason is Reason.CONFIG
    assert "secret" not in failure.message


@pytest.mark.parametrize(
    ("leaf", "reason"),
    [("expired", Reason.TLS_EXPIRED), ("wrong_host", Reason.TLS_HOSTNAME), ("untrusted", Reason.TLS_UNTRUSTED)],
)
async def test_certificate_failures(certs: Certs, leaf: str, reason: Reason) -> None:
    with serve_app(probe_app(), ssl_context=server_context(getattr(certs, leaf))) as url:
        failure = await failure_of(f"{url}/ok", tls=TlsClientSpec(ca_file=str(certs.ca_file)))
    assert failure.reason is reason
    assert failure.phases["tls"] > 0


async def test_tls_to_a_plain_server_is_a_handshake_failure(http_url: str) -> None:
    failure = await failure_of(http_url.replace("http://", "https://") + "/ok")
    assert failure.reason is Reason.TLS_HANDSHAKE


async def test_unreadable_tls_files_are_a_config_error(https_url: str, tmp_path: Path) -> None:
    failure = await failure_of(https_url, tls=TlsClientSpec(ca_file=str(tmp_path / "missing.pem")))
    assert failure.reason is Reason.CONFIG
    assert "missing.pem" in failure.message


async def test_a_cancelled_exchange_keeps_the_phases_measured_so_far() -> None:
    timings = Timings()
    with silent_listener() as port:
        request = WireRequest(f"http://127.0.0.1:{port}/")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await exchange(request, tls=None, contexts=TlsContexts(), timings=timings)
    assert timings.phases["connect"] > 0
    assert timings.phases["processing"] > 0
    assert timings.current == "processing"


# --------------------------------------------------------------------------- TLS contexts and verify codes


def test_contexts_are_shared_per_settings(certs: Certs) -> None:
    contexts = TlsContexts()
    first = contexts.context(TlsClientSpec(ca_file=str(certs.ca_file)))
    assert contexts.context(TlsClientSpec(ca_file=str(certs.ca_file))) is first
    unverified = contexts.context(TlsClientSpec(verify=False))
    assert unverified is not first
    assert unverified.verify_mode == ssl.CERT_NONE
    assert not unverified.check_hostname


async def test_with_verify_off_the_expiry_is_still_recorded(certs: Certs) -> None:
    with serve_app(probe_app(), ssl_context=server_context(certs.untrusted)) as url:
        answer, _ = await fetch(f"{url}/ok", tls=TlsClientSpec(verify=False))
    assert answer.status_code == 200
    assert answer.tls_expiry is not None


async def test_connect_without_http(https_url: str, certs: Certs) -> None:
    host, port = https_url.removeprefix("https://").split(":")
    timings = Timings()
    tls = TlsClientSpec(ca_file=str(certs.ca_file), server_name="localhost")
    conn = await connect(host, int(port), tls=tls, contexts=TlsContexts(), timings=timings)
    conn.close()
    assert conn.tls is not None
    assert conn.tls.version is not None
    assert timings.phases["tls"] > 0


def test_verify_codes_map_to_reasons() -> None:
    def error(code: int) -> ssl.SSLCertVerificationError:
        exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
        exc.verify_code = code
        exc.verify_message = f"code {code}"
        return exc

    assert verify_failure(error(10)) == (Reason.TLS_EXPIRED, "code 10")
    assert verify_failure(error(9))[0] is Reason.TLS_EXPIRED
    assert verify_failure(error(62))[0] is Reason.TLS_HOSTNAME
    assert verify_failure(error(64))[0] is Reason.TLS_HOSTNAME
    assert verify_failure(error(20))[0] is Reason.TLS_UNTRUSTED
    assert verify_failure(error(19))[0] is Reason.TLS_UNTRUSTED


# --------------------------------------------------------------------------- attempts, retries and the run timeout


class Script:
    """An attempt that fails with the given reasons in turn, then succeeds; counts its calls."""

    def __init__(self, *reasons: Reason) -> None:
        self.reasons = list(reasons)
        self.calls = 0

    async def __call__(self, timings: Timings) -> tuple[str | None, ProbeFailure | None]:
        self.calls += 1
        timings.add("connect", 0.001)
        if self.reasons:
            raise ProbeFailure(self.reasons.pop(0), "scripted")
        return "answer", None


async def test_retries_until_success_and_counts_attempts() -> None:
    script = Script(Reason.CONNECT_REFUSED, Reason.HTTP_STATUS)
    run = await attempt_within(script, timeout=5, retries=2, retry_delay=0)
    assert (run.value, run.failure, run.attempts) == ("answer", None, 3)
    assert run.phases["connect"] == pytest.approx(0.001)  # the last attempt's phases only


async def test_the_last_failure_stands_when_retries_run_out() -> None:
    run = await attempt_within(Script(*[Reason.CONNECT_REFUSED] * 5), timeout=5, retries=1, retry_delay=0)
    assert run.attempts == 2
    assert run.failure is not None
    assert run.failure.reason is Reason.CONNECT_REFUSED


async def test_config_errors_are_not_retried() -> None:
    script = Script(Reason.CONFIG)
    run = await attempt_within(script, timeout=5, retries=3, retry_delay=0)
    assert script.calls == 1
    assert run.failure is not None
    assert run.failure.reason is Reason.CONFIG


async def test_a_retry_that_cannot_fit_in_the_timeout_is_not_made() -> None:
    script = Script(Reason.CONNECT_FAILED, Reason.CONNECT_FAILED)
    run = await attempt_within(script, timeout=0.5, retries=3, retry_delay=10)
    assert script.calls == 1
    assert run.failure is not None
    assert run.failure.reason is Reason.CONNECT_FAILED


async def test_the_timeout_bounds_the_whole_run() -> None:
    stalled = asyncio.Event()

    async def hang(timings: Timings) -> tuple[str | None, ProbeFailure | None]:
        timings.current = "processing"
        timings.add("connect", 0.002)
        stalled.set()
        await asyncio.Event().wait()
        return None, None

    run = await attempt_within(hang, timeout=0.1, retries=0, retry_delay=0)
    assert stalled.is_set()
    assert run.failure is not None
    assert run.failure.reason is Reason.TIMEOUT
    assert "during processing" in run.failure.message
    assert run.phases["connect"] == pytest.approx(0.002)
