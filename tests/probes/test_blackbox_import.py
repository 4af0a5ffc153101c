"""``import-blackbox``: blackbox_exporter module files converted into vouch probe definitions.

The main fixture is the modules file Debian ships with prometheus-blackbox-exporter
(read from /etc/prometheus/blackbox.yml when installed, else the copy below); the
converted tcp and dns probes are then run against real servers to show they mean
what the modules meant.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.dnsserver import DnsServer, running_dnsmasq

from vouch.core.errors import ConfigError
from vouch.probes.base import Reason
from vouch.probes.blackbox import Conversion, convert_blackbox, go_duration, render_conversion
from vouch.probes.blackboxopts import TARGET
from vouch.probes.dns import DnsProbe, DnsProbeSpec
from vouch.probes.registry import ProbeFile
from vouch.probes.tcp import TcpProbe, TcpProbeSpec

DEBIAN_BLACKBOX_YML = """\
modules:
  http_2xx:
    prober: http
  http_post_2xx:
    prober: http
    http:
      method: POST
  tcp_connect:
    prober: tcp
  pop3s_banner:
    prober: tcp
    tcp:
      query_response:
      - expect: "^+OK"
      tls: true
      tls_config:
        insecure_skip_verify: false
  grpc:
    prober: grpc
    grpc:
      tls: true
      preferred_ip_protocol: "ip4"
  grpc_plain:
    prober: grpc
    grpc:
      tls: false
      service: "service1"
  ssh_banner:
    prober: tcp
    tcp:
      query_response:
      - expect: "^SSH-2.0-"
      - send: "SSH-2.0-blackbox-ssh-check"
  irc_banner:
    prober: tcp
    tcp:
      query_response:
      - send: "NICK prober"
      - send: "USER prober prober prober :prober"
      - expect: "PING :([^ ]+)"
        send: "PONG ${1}"
      - expect: "^:[^ ]+ 001"
  icmp:
    prober: icmp
  icmp_ttl5:
    prober: icmp
    timeout: 5s
    icmp:
      ttl: 5
"""
"""The modules file of Debian's prometheus-blackbox-exporter package (bookworm)."""

RICH = r"""
modules:
  api_json:
    prober: http
    timeout: 5s
    http:
      method: post
      valid_status_codes: [200, 201]
      headers:
        Content-Type: application/json
        Authorization: Bearer abc123
      body: '{"ping": true}'
      no_follow_redirects: true
      preferred_ip_protocol: ip4
      fail_if_body_not_matches_regexp: ['"status":\s*"ok"']
      fail_if_body_matches_regexp: ['(?i)error']
      fail_if_header_not_matches:
        - {header: Content-Type, regexp: '^application/json'}
        - {header: X-Cache, regexp: HIT, allow_missing: true}
      fail_if_header_matches:
        - {header: Server, regexp: 'nginx/1\.1[0-7]'}
      fail_if_body_json_matches_cel: 'body.status != "ok"'
      tls_config: {insecure_skip_verify: true, ca_file: /etc/ssl/ca.pem, min_version: TLS12}
      basic_auth: {username: u, password: p}
      proxy_url: http://proxy:3128
      enable_http2: false
      frobnicate: 1
  dns_a:
    prober: dns
    timeout: 1m30s
    dns:
      query_name: ok.test
      query_type: A
      transport_protocol: tcp
      valid_rcodes: [NOERROR]
      validate_answer_rrs:
        fail_if_not_matches_regexp: ["ok.test.\t0\tIN\tA\t192\\.0\\.2\\.10"]
      validate_authority_rrs:
        fail_if_matches_regexp: [".*"]
  dns_any:
    prober: dns
    dns:
      query_name: example.com
      dns_over_tls: true
      valid_rcodes: [NXDOMAIN, SERVFAIL]
  "odd name!":
    prober: tcp
    tcp:
      query_response:
        - send: "EHLO prober"
        - starttls: true
        - expect: "^250"
  websocket:
    prober: websocket
"""


def debian_modules() -> str:
    shipped = Path("/etc/prometheus/blackbox.yml")
    return shipped.read_text() if shipped.exists() else DEBIAN_BLACKBOX_YML


def lost(conversion: Conversion) -> dict[tuple[str, str], str]:
    return {(u.module, u.option): u.why for u in conversion.unconverted}


def probe(conversion: Conversion, name: str) -> dict[str, Any]:
    [found] = [p for p in conversion.probes if p["name"] == name]
    return found


def test_debian_file_converts_what_vouch_can_probe() -> None:
    conversion = convert_blackbox(debian_modules(), source="blackbox.yml")
    names = [p["name"] for p in conversion.probes]
    assert names == ["http_2xx", "http_post_2xx", "tcp_connect", "pop3s_banner", "ssh_banner", "irc_banner"]
    assert conversion.origins == tuple(names)
    assert all(p["targets"] == [TARGET] for p in conversion.probes)
    assert probe(conversion, "http_post_2xx") == {
        "name": "http_post_2xx",
        "kind": "http",
        "targets": [TARGET],
        "method": "POST",
    }
    assert probe(conversion, "ssh_banner")["expect"] == "^SSH-2.0-"
    gone = lost(conversion)
    for module in ("grpc", "grpc_plain", "icmp", "icmp_ttl5"):
        assert (module, "prober") in gone
    assert "ICMP" in gone[("icmp", "prober")]
    assert ("ssh_banner", "tcp.query_response[1].send") in gone


def test_a_regex_python_cannot_read_is_reported_not_kept() -> None:
    conversion = convert_blackbox(debian_modules(), source="blackbox.yml")
    pop3s = probe(conversion, "pop3s_banner")
    assert pop3s["tls"] == {}
    assert "expect" not in pop3s
    why = lost(conversion)[("pop3s_banner", "tcp.query_response[0].expect")]
    assert "'^+OK'" in why
    assert "needs a backslash" in why
    assert any(n.module == "pop3s_banner" and "only checks that the port accepts" in n.what for n in conversion.notes)


def test_sends_before_the_first_expect_are_joined_with_blackbox_newlines() -> None:
    conversion = convert_blackbox(debian_modules(), source="blackbox.yml")
    irc = probe(conversion, "irc_banner")
    assert irc["send"] == "NICK prober\nUSER prober prober prober :prober\n"
    assert irc["expect"] == "PING :([^ ]+)"
    gone = lost(conversion)
    assert ("irc_banner", "tcp.query_response[2].send") in gone
    assert ("irc_banner", "tcp.query_response[3].expect") in gone


def test_rendered_yaml_is_the_probes_and_validates_once_targets_are_filled() -> None:
    conversion = convert_blackbox(debian_modules(), source="blackbox.yml")
    text = render_conversion(conversion)
    assert text.startswith("# vouch probe definitions converted from blackbox_exporter modules in blackbox.yml.")
    assert "# NOT CARRIED OVER tcp.query_response[0].expect:" in text
    assert "#   icmp: prober:" in text
    document = yaml.safe_load(text)
    assert document == {"probes": [dict(p) for p in conversion.probes]}
    stand_ins = {"http": "https://shop.example/healthz", "tcp": "shop.example:443"}
    for item in document["probes"]:
        item["targets"] = [stand_ins[item["kind"]]]
    assert len(ProbeFile.model_validate(document).probes) == 6


def test_rendered_yaml_with_the_placeholder_fails_validation_loudly() -> None:
    document = yaml.safe_load(render_conversion(convert_blackbox(debian_modules(), source="b.yml")))
    with pytest.raises(ValueError, match="<TARGET>"):
        ProbeFile.model_validate(document)


def test_http_options_carried_and_lost() -> None:
    conversion = convert_blackbox(RICH, source="rich.yml")
    api = probe(conversion, "api_json")
    assert api["method"] == "POST"
    assert api["timeout"] == "5s"
    assert api["valid_status_codes"] == [200, 201]
    assert api["follow_redirects"] is False
    assert api["ip_protocol"] == "ip4"
    assert api["headers"] == {
        "Content-Type": "application/json",
        "Authorization": {"from_env": "VOUCH_API_JSON_AUTHORIZATION"},
    }
    assert "abc123" not in render_conversion(conversion)
    assert api["assertions"] == {
        "body_matches": ['"status":\\s*"ok"'],
        "body_not_matches": ["(?i)error"],
        "headers": [{"name": "Content-Type", "matches": "^application/json"}],
    }
    assert api["tls"] == {"verify": False, "ca_file": "/etc/ssl/ca.pem"}
    gone = {option for module, option in lost(conversion) if module == "api_json"}
    assert gone == {
        "http.fail_if_header_not_matches[1]",
        "http.fail_if_header_matches[0]",
        "http.fail_if_body_json_matches_cel",
        "http.tls_config.min_version",
        "http.basic_auth",
        "http.proxy_url",
        "http.frobnicate",
    }


def test_dns_options_carried_and_lost() -> None:
    conversion = convert_blackbox(RICH, source="rich.yml")
    dns_a = probe(conversion, "dns_a")
    assert dns_a["targets"] == ["ok.test"]
    assert dns_a["server"] == TARGET
    assert (dns_a["record_type"], dns_a["transport"]) == ("A", "tcp")
    assert (dns_a["expect_answers"], dns_a["match"]) == (["192.0.2.10"], "exact")
    assert (dns_a["timeout"], dns_a["interval"]) == ("90s", "3m")
    dns_any = probe(conversion, "dns_any")
    assert dns_any["record_type"] == "A"
    assert dns_any["expect_rcode"] == "NXDOMAIN"
    gone = lost(conversion)
    assert ("dns_a", "dns.validate_authority_rrs") in gone
    assert ("dns_any", "dns.query_type") in gone
    assert ("dns_any", "dns.dns_over_tls") in gone
    assert "SERVFAIL left out" in gone[("dns_any", "dns.valid_rcodes")]


def test_odd_names_unknown_probers_and_starttls() -> None:
    conversion = convert_blackbox(RICH, source="rich.yml")
    odd = probe(conversion, "odd-name")
    assert odd["send"] == "EHLO prober\n"
    assert "expect" not in odd
    gone = lost(conversion)
    assert ("odd name!", "tcp.query_response[1].starttls") in gone
    assert "unknown prober 'websocket'" in gone[("websocket", "prober")]
    assert any(n.module == "odd name!" and n.option == "name" for n in conversion.notes)
    assert conversion.to_dict()["unconverted"][0].keys() == {"module", "option", "why"}


def test_not_a_modules_file() -> None:
    with pytest.raises(ConfigError, match="no 'modules:' mapping"):
        convert_blackbox("scrape_configs: []", source="prometheus.yml")
    with pytest.raises(ConfigError) as caught:
        convert_blackbox("modules:\n  a: [\n", source="broken.yml")
    assert caught.value.problems[0].file == "broken.yml"
    assert caught.value.problems[0].line is not None


def test_go_durations() -> None:
    assert go_duration("1m30s") == 90.0
    assert go_duration("1d") == 86400.0
    assert go_duration("1.5s") == 1.5
    assert go_duration("5") is None
    assert go_duration(3) == 3.0


# --- the converted probes mean what the modules meant ------------------------------------------


@asynccontextmanager
async def irc_like_server() -> AsyncIterator[str]:
    """Answers 'PING :<token>' once it has read the two lines the irc_banner module sends."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            seen.append(await reader.readline())
            seen.append(await reader.readline())
            if seen[-2:] == [b"NICK prober\n", b"USER prober prober prober :prober\n"]:
                writer.write(b"PING :abc123\r\n")
            else:
                writer.write(b"ERROR :unexpected greeting\r\n")
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def test_converted_tcp_probe_speaks_as_blackbox_did() -> None:
    irc = dict(probe(convert_blackbox(debian_modules(), source="blackbox.yml"), "irc_banner"))
    async with irc_like_server() as target:
        irc["targets"] = [target]
        result = await TcpProbe(TcpProbeSpec.model_validate(irc)).run(target)
        irc["expect"] = "^never"
        miss = await TcpProbe(TcpProbeSpec.model_validate(irc)).run(target)
    assert result.success, result.message
    assert miss.reason is Reason.EXPECT_MISMATCH


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    with running_dnsmasq(tmp_path_factory.mktemp("dnsmasq") / "dnsmasq.log") as server:
        yield server


async def test_converted_dns_probe_asks_the_server_blackbox_targeted(dnsmasq: DnsServer) -> None:
    dns_a = dict(probe(convert_blackbox(RICH, source="rich.yml"), "dns_a"))
    dns_a["server"] = dnsmasq.address
    dns_a["timeout"] = "2s"
    dns_a.pop("interval")
    spec = DnsProbeSpec.model_validate(dns_a)
    result = await DnsProbe(spec).run(spec.targets[0])
    assert result.success, result.message
    wrong = await DnsProbe(spec.model_copy(update={"expect_answers": ["192.0.2.11"]})).run(spec.targets[0])
    assert wrong.reason is Reason.DNS_ANSWER_MISMATCH
