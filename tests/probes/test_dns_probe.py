"""The dns probe against a real dnsmasq on 127.0.0.1 (see support/dnsserver.py for the zone it serves)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any, cast

import dns.asyncresolver
import dns.nameserver
import pytest
from pydantic import ValidationError
from support.dnsserver import DnsServer, running_dnsmasq, silent_udp_port

from vouch.probes.base import Probe, Reason
from vouch.probes.dns import DnsProbe, DnsProbeSpec


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    with running_dnsmasq(tmp_path_factory.mktemp("dnsmasq") / "dnsmasq.log") as server:
        yield server


def spec(server: str | None, **fields: Any) -> DnsProbeSpec:
    fields.setdefault("timeout", 2.0)
    return DnsProbeSpec(name="dns-check", targets=["ok.test"], server=server, **fields)


async def probe_once(server: str | None, target: str, **fields: Any) -> Any:
    probe = DnsProbe(spec(server, **fields))
    try:
        return await probe.run(target)
    finally:
        await probe.close()


async def test_a_record_as_expected(dnsmasq: DnsServer) -> None:
    result = await probe_once(dnsmasq.address, "ok.test", expect_answers=["192.0.2.10"])
    assert result.success, result.message
    assert result.reason is None
    assert result.kind == "dns"
    assert result.details["answers"] == ["192.0.2.10"]
    assert result.details["rcode"] == "NOERROR"
    assert set(result.phases) == {"resolve"}
    assert result.attempts == 1


async def test_aaaa_is_compared_as_an_address(dnsmasq: DnsServer) -> None:
    result = await probe_once(dnsmasq.address, "ok.test", record_type="AAAA", expect_answers=["2001:DB8:0:0::10"])
    assert result.success, result.message
    assert result.details["answers"] == ["2001:db8::10"]


async def test_txt_strings_unquoted_and_all_present(dnsmasq: DnsServer) -> None:
    result = await probe_once(
        dnsmasq.address, "txt.test", record_type="TXT", expect_answers=['"v=spf1 -all"', "hello world"], match="exact"
    )
    assert result.success, result.message
    assert sorted(result.details["answers"]) == ["hello world", "v=spf1 -all"]


async def test_mx_matches_with_or_without_preference_and_trailing_dot(dnsmasq: DnsServer) -> None:
    for expected in ("10 mail.ok.test.", "MAIL.ok.test", "mail.ok.test."):
        result = await probe_once(dnsmasq.address, "ok.test", record_type="MX", expect_answers=[expected])
        assert result.success, (expected, result.message)


async def test_srv_and_ptr_and_cname(dnsmasq: DnsServer) -> None:
    srv = await probe_once(dnsmasq.address, "_http._tcp.ok.test", record_type="SRV", expect_answers=["0 5 80 ok.test"])
    assert srv.success, srv.message
    ptr = await probe_once(dnsmasq.address, "192.0.2.10", record_type="PTR", expect_answers=["ok.test"])
    assert ptr.success, ptr.message
    assert ptr.details["question"] == "10.2.0.192.in-addr.arpa. PTR"
    cname = await probe_once(dnsmasq.address, "www.test", record_type="CNAME", expect_answers=["ok.test"])
    assert cname.success, cname.message


async def test_an_a_query_through_a_cname_judges_the_addresses(dnsmasq: DnsServer) -> None:
    result = await probe_once(dnsmasq.address, "www.test", expect_answers=["192.0.2.10"], match="exact")
    assert result.success, result.message
    assert result.details["answers"] == ["192.0.2.10"]


async def test_tcp_transport(dnsmasq: DnsServer) -> None:
    result = await probe_once(dnsmasq.address, "multi.test", transport="tcp", expect_answers=["192.0.2.31"])
    assert result.success, result.message
    assert result.details["transport"] == "tcp"


async def test_nxdomain_is_an_rcode_failure_naming_the_code(dnsmasq: DnsServer) -> None:
    result = await probe_once(dnsmasq.address, "nope.test")
    assert not result.success
    assert result.reason is Reason.DNS_RCODE
    assert "NXDOMAIN" in result.message
    assert "expected NOERROR" in result.message


async def test_expected_nxdomain_passes_and_unexpected_noerror_fails(dnsmasq: DnsServer) -> None:
    gone = await probe_once(dnsmasq.address, "nope.test", expect_rcode="nxdomain")
    assert gone.success, gone.message
    present = await probe_once(dnsmasq.address, "ok.test", expect_rcode="NXDOMAIN")
    assert present.reason is Reason.DNS_RCODE
    assert "NOERROR" in present.message


async def test_refused_outside_the_zone(dnsmasq: DnsServer) -> None:
    result = await probe_once(dnsmasq.address, "example.com")
    assert result.reason is Reason.DNS_RCODE
    assert "REFUSED" in result.message


async def test_noerror_without_records_is_no_answer(dnsmasq: DnsServer) -> None:
    result = await probe_once(dnsmasq.address, "v4only.test", record_type="AAAA")
    assert not result.success
    assert result.reason is Reason.DNS_NO_ANSWER
    assert result.details["answers"] == []


async def test_mismatch_lists_expected_and_got(dnsmasq: DnsServer) -> None:
    result = await probe_once(dnsmasq.address, "multi.test", expect_answers=["192.0.2.30", "192.0.2.99"])
    assert result.reason is Reason.DNS_ANSWER_MISMATCH
    assert "192.0.2.99" in result.message
    assert "192.0.2.31" in result.message


async def test_match_modes(dnsmasq: DnsServer) -> None:
    partly = ["192.0.2.30", "192.0.2.99"]
    assert (await probe_once(dnsmasq.address, "multi.test", expect_answers=partly, match="any")).success
    none = await probe_once(dnsmasq.address, "multi.test", expect_answers=["192.0.2.98"], match="any")
    assert none.reason is Reason.DNS_ANSWER_MISMATCH
    subset = await probe_once(dnsmasq.address, "multi.test", expect_answers=["192.0.2.30"], match="exact")
    assert subset.reason is Reason.DNS_ANSWER_MISMATCH
    assert "unexpected ['192.0.2.31']" in subset.message
    assert (await probe_once(dnsmasq.address, "multi.test", expect_answers=["192.0.2.30"], match="all")).success


async def test_timeout_when_the_server_never_answers() -> None:
    with silent_udp_port() as silent:
        result = await probe_once(silent.address, "ok.test", timeout=0.5)
    assert not result.success
    assert result.reason is Reason.TIMEOUT
    assert "resolve" in result.message


async def test_retries_within_the_run_before_timing_out() -> None:
    with silent_udp_port() as silent:
        result = await probe_once(silent.address, "ok.test", timeout=0.6, retries=2, retry_delay=0.05)
    assert result.reason is Reason.TIMEOUT
    assert result.attempts == 1  # the single attempt used the whole run's time: no room to retry


async def test_tcp_transport_to_a_closed_port_is_refused() -> None:
    port = closed_port()
    result = await probe_once(f"127.0.0.1:{port}", "ok.test", transport="tcp", retries=1, retry_delay=0.01)
    assert result.reason is Reason.CONNECT_REFUSED
    assert result.attempts == 2


async def test_the_resolver_path_against_the_same_server(dnsmasq: DnsServer) -> None:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(dnsmasq.host, dnsmasq.port)]
    probe = DnsProbe(spec(None, expect_answers=["192.0.2.10"]), resolver=resolver)
    ok = await probe.run("ok.test")
    assert ok.success, ok.message
    assert ok.details["server"] == "the system resolver"
    missing = await probe.run("nope.test")
    assert missing.reason is Reason.DNS_RCODE
    assert "NXDOMAIN" in missing.message
    refused = await probe.run("example.com")
    assert refused.reason is Reason.DNS_RCODE
    assert "REFUSED" in refused.message
    empty = await DnsProbe(spec(None, record_type="AAAA"), resolver=resolver).run("v4only.test")
    assert empty.reason is Reason.DNS_NO_ANSWER
    assert isinstance(probe, Probe)


def test_settings_reject_what_cannot_work() -> None:
    with pytest.raises(ValidationError, match="unknown DNS response code"):
        spec(None, expect_rcode="NOPE")
    with pytest.raises(ValidationError, match="expect_rcode NOERROR"):
        spec(None, expect_rcode="NXDOMAIN", expect_answers=["192.0.2.1"])
    with pytest.raises(ValidationError, match="not 'host:port'"):
        spec("127.0.0.1:99999")
    with pytest.raises(ValidationError):
        spec(None, record_type="ANY")


def closed_port() -> int:
    """A TCP port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_udp_to_a_closed_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    result = await probe_once(f"127.0.0.1:{port}", "ok.test", timeout=1.0)
    assert result.reason is Reason.CONNECT_REFUSED, result.message


class _Garbler(asyncio.DatagramProtocol):
    """Answers every query with a header that fits and a body that is not DNS."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00garbage", addr)


async def test_an_answer_that_is_not_dns_is_a_protocol_error() -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Garbler, local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        result = await probe_once(f"127.0.0.1:{port}", "ok.test")
    finally:
        transport.close()
    assert result.reason is Reason.PROTOCOL
    assert "invalid answer" in result.message


async def test_a_target_that_is_not_a_name_is_a_config_failure(dnsmasq: DnsServer) -> None:
    result = await probe_once(dnsmasq.address, "bad..name", retries=2)
    assert result.reason is Reason.CONFIG
    assert result.attempts == 1


async def test_a_server_name_that_does_not_resolve() -> None:
    result = await probe_once("nonexistent.invalid:53", "ok.test")
    assert result.reason is Reason.DNS_FAILED
