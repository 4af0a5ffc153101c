"""The tls probe against real local TLS servers: expiry threshold, chain, host name, and connection failures."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError
from support.tls import Certs, make_certs, probe_app, serve_app, server_context, silent_listener

from vouch.probes.base import PHASES, Probe, ProbeResult, Reason
from vouch.probes.settings import TlsClientSpec
from vouch.probes.tls import TlsProbe, TlsProbeSpec, host_port


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def servers(certs: Certs) -> Iterator[dict[str, str]]:
    """``host:port`` of a TLS server per kind of certificate, plus ``plain`` (no TLS at all)."""
    with contextlib.ExitStack() as stack:
        addresses = {"plain": stack.enter_context(serve_app(probe_app())).removeprefix("http://")}
        for kind in ("valid", "expired", "expiring", "wrong_host", "untrusted"):
            served = serve_app(probe_app(), ssl_context=server_context(getattr(certs, kind)))
            addresses[kind] = stack.enter_context(served).removeprefix("https://")
        yield addresses


def trusting(certs: Certs, **tls: Any) -> TlsClientSpec:
    return TlsClientSpec(ca_file=str(certs.ca_file), **tls)


async def run(target: str, **settings: Any) -> ProbeResult:
    settings.setdefault("timeout", 5)
    return await TlsProbe(TlsProbeSpec(name="cert", targets=["localhost:443"], **settings)).run(target)


def assert_sane(result: ProbeResult) -> None:
    assert set(result.phases) == set(PHASES)
    assert all(seconds >= 0 for seconds in result.phases.values())
    assert sum(result.phases.values()) <= result.duration + 1e-3
    assert result.phases["processing"] == 0.0
    assert result.success == (result.reason is None)


async def expect(reason: Reason, target: str, **settings: Any) -> ProbeResult:
    result = await run(target, **settings)
    assert result.reason is reason, result
    assert result.message
    assert_sane(result)
    return result


async def test_a_valid_certificate(servers: dict[str, str], certs: Certs) -> None:
    probe = TlsProbe(TlsProbeSpec(name="cert", targets=[servers["valid"]], tls=trusting(certs)))
    assert isinstance(probe, Probe)
    result = await probe.run(servers["valid"])
    assert result.success, result
    assert (result.kind, result.probe) == ("tls", "cert")
    assert result.tls_expiry is not None
    assert result.phases["tls"] > 0
    assert result.details["sans"] == ["localhost", "127.0.0.1", "::1"]
    assert "trustme" in result.details["issuer"]
    assert result.details["subject"]
    assert result.details["days_left"] > 365
    assert_sane(result)


async def test_a_name_with_a_port(servers: dict[str, str], certs: Certs) -> None:
    port = servers["valid"].rsplit(":", 1)[1]
    result = await run(f"localhost:{port}", tls=trusting(certs), ip_protocol="ip4")
    assert result.success, result
    assert result.phases["resolve"] > 0


async def test_expiring_within_the_threshold(servers: dict[str, str], certs: Certs) -> None:
    result = await expect(Reason.TLS_EXPIRING, servers["expiring"], tls=trusting(certs), min_days=14)
    assert 4 < result.details["days_left"] < 5.1
    assert result.tls_expiry is not None
    assert result.tls_expiry - time.time() < 6 * 86400
    assert (await run(servers["expiring"], tls=trusting(certs), min_days=3)).success


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("expired", Reason.TLS_EXPIRED), ("wrong_host", Reason.TLS_HOSTNAME), ("untrusted", Reason.TLS_UNTRUSTED)],
)
async def test_verification_failures_still_describe_the_certificate(
    servers: dict[str, str], certs: Certs, kind: str, reason: Reason
) -> None:
    result = await expect(reason, servers[kind], tls=trusting(certs))
    assert result.tls_expiry is not None  # from a second, unverified handshake
    assert "sans" in result.details


async def test_with_verify_off_only_expiry_counts(servers: dict[str, str]) -> None:
    unverified = TlsClientSpec(verify=False)
    assert (await run(servers["untrusted"], tls=unverified)).success
    assert (await run(servers["wrong_host"], tls=unverified)).success
    result = await expect(Reason.TLS_EXPIRED, servers["expired"], tls=unverified)
    assert result.details["days_left"] < 0


async def test_server_name_is_sent_and_checked(servers: dict[str, str], certs: Certs) -> None:
    assert (await run(servers["wrong_host"], tls=trusting(certs, server_name="wrong.example"))).success
    await expect(Reason.TLS_HOSTNAME, servers["valid"], tls=trusting(certs, server_name="wrong.example"))


async def test_a_server_without_tls(servers: dict[str, str]) -> None:
    await expect(Reason.TLS_HANDSHAKE, servers["plain"])


async def test_refused() -> None:
    with silent_listener() as port:
        pass  # closed again: nothing listens there now
    result = await expect(Reason.CONNECT_REFUSED, f"127.0.0.1:{port}", retries=1, retry_delay=0.01)
    assert result.attempts == 2


async def test_a_name_that_does_not_resolve() -> None:
    await expect(Reason.DNS_FAILED, "no-such-host.invalid:443")


async def test_timeout_when_the_handshake_never_completes() -> None:
    with silent_listener() as port:
        result = await expect(Reason.TIMEOUT, f"127.0.0.1:{port}", timeout=0.3)
    assert "during tls" in result.message
    assert result.phases["tls"] > 0


async def test_an_unreadable_ca_file_is_a_config_failure(servers: dict[str, str]) -> None:
    await expect(Reason.CONFIG, servers["valid"], tls=TlsClientSpec(ca_file="/nonexistent/ca.pem"))


async def test_a_target_without_a_port_is_a_config_failure() -> None:
    await expect(Reason.CONFIG, "shop.example")


def test_targets() -> None:
    assert host_port("shop.example:8443") == ("shop.example", 8443)
    assert host_port("[2001:db8::1]:443") == ("2001:db8::1", 443)
    assert host_port("https://shop.example/path") == ("shop.example", 443)
    for bad in ("shop.example", "shop.example:http", ":443"):
        with pytest.raises(ValueError, match="host:port"):
            host_port(bad)
    with pytest.raises(ValidationError):
        TlsProbeSpec(name="cert", targets=["shop.example"])
    with pytest.raises(ValidationError):
        TlsProbeSpec(name="cert", targets=["shop.example:443"], min_days=-1)
