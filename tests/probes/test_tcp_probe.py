"""The tcp probe against small servers started here on 127.0.0.1: banner, echo, silent, reset, TLS (trustme)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from pydantic import ValidationError

from vouch.probes.base import Probe, ProbeFailure, ProbeResult, Reason
from vouch.probes.settings import ProbeSpec
from vouch.probes.tcp import Attempt, TcpProbe, TcpProbeSpec, run_attempts

trustme = pytest.importorskip("trustme", reason="trustme not installed: pip install -e '.[test]'")

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def serve(handler: Handler, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """Run ``handler`` for each connection on 127.0.0.1; yields ``host:port``."""

    handlers: set[asyncio.Task[None]] = set()

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(guarded, "127.0.0.1", 0, ssl=tls)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def banner_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 mail.test ESMTP ready\r\n")
    await writer.drain()


async def echo_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    line = await reader.readline()
    writer.write(b"you said: " + line)
    await writer.drain()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # until the probe hangs up


async def chatter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"x" * 4096)
    await writer.drain()
    await reader.read()


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def spec(**fields: Any) -> TcpProbeSpec:
    fields.setdefault("timeout", 3.0)
    return TcpProbeSpec(name="tcp-check", targets=["127.0.0.1:1"], **fields)


async def probe_once(target: str, **fields: Any) -> ProbeResult:
    probe = TcpProbe(spec(**fields))
    try:
        return await probe.run(target)
    finally:
        await probe.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_connect_only() -> None:
    async with serve(silent) as target:
        result = await probe_once(target)
    assert result.success, result.message
    assert result.kind == "tcp"
    assert set(result.phases) == {"resolve", "connect"}
    assert result.details["address"] == target
    assert result.tls_expiry is None


async def test_expect_matches_a_banner_line() -> None:
    async with serve(banner_then_close) as target:
        result = await probe_once(target, expect="^220 ")
    assert result.success, result.message
    assert "220 mail.test" in result.details["received"]


async def test_send_with_escapes_and_expect_the_echo() -> None:
    async with serve(echo_once) as target:
        result = await probe_once(target, send=r"PING\r\n", expect=r"^you said: PING\r$")
    assert result.success, result.message


async def test_expect_mismatch_quotes_what_was_received() -> None:
    async with serve(banner_then_close) as target:
        result = await probe_once(target, expect="^SSH-2.0-")
    assert not result.success
    assert result.reason is Reason.EXPECT_MISMATCH
    assert "220 mail.test ESMTP ready" in result.message
    assert "closed" in result.message


async def test_expect_gives_up_at_the_read_limit() -> None:
    async with serve(chatter) as target:
        result = await probe_once(target, expect="never", max_read=100)
    assert result.reason is Reason.EXPECT_MISMATCH
    assert "read limit" in result.message
    assert "x" * 100 in result.message


async def test_a_silent_server_times_out_naming_what_was_awaited() -> None:
    async with serve(silent) as target:
        result = await probe_once(target, expect="^220", timeout=0.5)
    assert not result.success
    assert result.reason is Reason.TIMEOUT
    assert "processing" in result.message
    assert "'^220'" in result.message
    assert {"resolve", "connect", "processing"} <= set(result.phases)


async def test_closed_port_is_refused_after_every_retry() -> None:
    result = await probe_once(f"127.0.0.1:{closed_port()}", retries=2, retry_delay=0.01)
    assert result.reason is Reason.CONNECT_REFUSED
    assert result.attempts == 3


async def test_a_retry_that_no_longer_fits_is_not_started() -> None:
    result = await probe_once(f"127.0.0.1:{closed_port()}", retries=5, retry_delay=5.0, timeout=1.0)
    assert result.reason is Reason.CONNECT_REFUSED
    assert result.attempts == 1


async def test_a_reset_connection_fails_to_connect() -> None:
    async with serve(reset) as target:
        result = await probe_once(target, expect="anything")
    assert result.reason is Reason.CONNECT_FAILED
    assert "broke" in result.message


async def test_an_unresolvable_name() -> None:
    result = await probe_once("nonexistent.invalid:25")
    assert result.reason is Reason.DNS_FAILED
    over_long = await probe_once(("a" * 64) + ".invalid:25")
    assert over_long.reason is Reason.DNS_FAILED


async def test_a_secret_is_sent_but_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TCP_PROBE_TOKEN", r"s3cr3t-token\r\n")
    async with serve(echo_once) as target:
        result = await probe_once(target, send={"from_env": "TCP_PROBE_TOKEN"}, expect="^never$")
    assert result.reason is Reason.EXPECT_MISMATCH
    assert "s3cr3t-token" not in repr(result)
    assert "you said: <secret>" in result.message


async def test_a_missing_secret_is_a_config_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TCP_PROBE_TOKEN", raising=False)
    async with serve(echo_once) as target:
        result = await probe_once(target, send={"from_env": "TCP_PROBE_TOKEN"})
    assert result.reason is Reason.CONFIG
    assert "TCP_PROBE_TOKEN" in result.message


async def test_a_defect_is_an_internal_error_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(target: str, record: Attempt) -> None:
        raise RuntimeError("bug")

    settings = ProbeSpec(name="broken", targets=["x:1"], timeout=1.0)
    with caplog.at_level(logging.ERROR, logger="vouch.probes.tcp"):
        result = await run_attempts(settings, "tcp", "x:1", broken)
    assert result.reason is Reason.INTERNAL
    assert "RuntimeError" in result.message
    assert any("broken" in record.getMessage() for record in caplog.records)


async def test_phases_measured_before_a_failure_are_kept() -> None:
    async def fails_in_processing(target: str, record: Attempt) -> None:
        with record.phase("connect"):
            pass
        raise ProbeFailure(Reason.EXPECT_MISMATCH, "no", phases={"processing": 0.25})

    settings = ProbeSpec(name="p", targets=["x:1"], timeout=1.0)
    result = await run_attempts(settings, "tcp", "x:1", fails_in_processing)
    assert set(result.phases) == {"connect", "processing"}
    assert result.phases["processing"] == 0.25


def test_settings_reject_what_cannot_work() -> None:
    with pytest.raises(ValidationError, match="not 'host:port'"):
        TcpProbeSpec(name="t", targets=["no-port"])
    with pytest.raises(ValidationError, match="not 'host:port'"):
        TcpProbeSpec(name="t", targets=["::1:53"])
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        TcpProbeSpec(name="t", targets=["db:5432"], expect="^+OK")
    assert TcpProbeSpec(name="t", targets=["[::1]:53"]).targets == ["[::1]:53"]


# --- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> Any:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: Any, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(cert: Any, *, client_ca: Any = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    if client_ca is not None:
        client_ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def not_after(cert: Any) -> float:
    leaf = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    return leaf.not_valid_after_utc.timestamp()


async def test_tls_banner_with_a_trusted_certificate(ca: Any, ca_file: str) -> None:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    async with serve(banner_then_close, tls=server_context(cert)) as target:
        result = await probe_once(target, tls={"ca_file": ca_file}, expect="^220 ")
    assert result.success, result.message
    assert set(result.phases) == {"resolve", "connect", "tls", "processing"}
    assert result.tls_expiry == not_after(cert)
    assert result.details["tls_version"].startswith("TLS")


async def test_tls_untrusted(ca: Any, tmp_path: Path) -> None:
    cert = ca.issue_cert("127.0.0.1")
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    async with serve(banner_then_close, tls=server_context(cert)) as target:
        result = await probe_once(target, tls={"ca_file": str(stranger)})
    assert result.reason is Reason.TLS_UNTRUSTED
    assert "certificate of 127.0.0.1 rejected" in result.message


async def test_tls_untrusted_is_still_measured_with_verification_off(ca: Any, tmp_path: Path) -> None:
    cert = ca.issue_cert("127.0.0.1")
    async with serve(banner_then_close, tls=server_context(cert)) as target:
        result = await probe_once(target, tls={"verify": False}, expect="^220 ")
    assert result.success, result.message
    assert result.tls_expiry == not_after(cert)


async def test_tls_expired(ca: Any, ca_file: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    cert = ca.issue_cert(
        "127.0.0.1", not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1)
    )
    async with serve(banner_then_close, tls=server_context(cert)) as target:
        result = await probe_once(target, tls={"ca_file": ca_file})
    assert result.reason is Reason.TLS_EXPIRED
    assert "expired" in result.message


async def test_tls_wrong_host(ca: Any, ca_file: str) -> None:
    cert = ca.issue_cert("other.example")
    async with serve(banner_then_close, tls=server_context(cert)) as target:
        result = await probe_once(target, tls={"ca_file": ca_file})
        named = await probe_once(target, tls={"ca_file": ca_file, "server_name": "other.example"}, expect="^220")
    assert result.reason is Reason.TLS_HOSTNAME
    assert named.success, named.message


async def test_tls_against_a_plaintext_server_fails_the_handshake(ca_file: str) -> None:
    async with serve(banner_then_close) as target:
        result = await probe_once(target, tls={"ca_file": ca_file})
    assert result.reason is Reason.TLS_HANDSHAKE
    assert "TLS handshake with 127.0.0.1 failed" in result.message


async def test_tls_client_certificate(ca: Any, ca_file: str, tmp_path: Path) -> None:
    server = server_context(ca.issue_cert("127.0.0.1"), client_ca=ca)
    client = ca.issue_cert("prober@test")
    cert_file, key_file = tmp_path / "client.pem", tmp_path / "client.key"
    client.cert_chain_pems[0].write_to_path(str(cert_file))
    client.private_key_pem.write_to_path(str(key_file))
    async with serve(banner_then_close, tls=server) as target:
        result = await probe_once(
            target, tls={"ca_file": ca_file, "cert_file": str(cert_file), "key_file": str(key_file)}, expect="^220"
        )
        anonymous = await probe_once(target, tls={"ca_file": ca_file}, expect="^220")
    assert result.success, result.message
    assert not anonymous.success
    # TLS 1.3: the client's handshake completes before the server checks for a certificate, so
    # the refusal shows as the server dropping the connection (a close or a reset, by timing).
    assert anonymous.reason in (Reason.EXPECT_MISMATCH, Reason.CONNECT_FAILED), anonymous.message


async def test_unreadable_tls_files_are_a_config_failure(tmp_path: Path) -> None:
    async with serve(silent) as target:
        result = await probe_once(target, tls={"ca_file": str(tmp_path / "missing.pem")})
    assert result.reason is Reason.CONFIG


def test_the_probe_meets_the_protocol() -> None:
    assert isinstance(TcpProbe(spec()), Probe)
