"""The ``dns`` probe: one query, judged on its response code and its answers.

The target is the name to ask about (for ``PTR`` an IP address works too). The
query goes to ``server`` when one is named, or through the system resolver
(``/etc/resolv.conf``) otherwise. The ``resolve`` phase is the query's round
trip. Answers are compared after normalisation: names lose their trailing dot
and case, addresses are compared as addresses, TXT strings are joined and
unquoted, and an MX or SRV expectation may name just the host.

Example::

    probe = DnsProbe(DnsProbeSpec(name="mx", targets=["example.com"], record_type="MX",
                                  expect_answers=["mail.example.com"]))
    result = await probe.run("example.com")
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Literal

import dns.asyncbackend
import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.inet
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.reversename
from pydantic import Field, field_validator, model_validator

from vouch.probes.base import ProbeFailure, ProbeResult, Reason
from vouch.probes.settings import ProbeSpec
from vouch.probes.tcp import Attempt, resolve, run_attempts, split_host_port

RecordType = Literal["A", "AAAA", "CNAME", "MX", "TXT", "NS", "SRV", "SOA", "PTR"]


class DnsProbeSpec(ProbeSpec):
    """A name resolves as it should: the right response code and, when listed, the right records."""

    kind: Literal["dns"] = "dns"
    """Selects this probe kind."""
    record_type: RecordType = "A"
    """The record type asked for."""
    server: str | None = None
    """``host:port`` (port 53 when left out) of the server to ask; none asks the system resolver."""
    transport: Literal["udp", "tcp"] = "udp"
    """How the query travels; over UDP a truncated answer is retried over TCP, as resolvers do."""
    expect_answers: list[str] = Field(default_factory=list)
    """Records that must be in the answer, as text (``192.0.2.1``, ``mail.example.com``, ``10 mx.example.``)."""
    match: Literal["all", "any", "exact"] = "all"
    """How ``expect_answers`` is judged: ``all`` — every expected record is present (others may be too);
    ``any`` — at least one is present; ``exact`` — the answer holds exactly the expected records."""
    expect_rcode: str = "NOERROR"
    """The response code that counts as success (``NXDOMAIN`` checks that a name does *not* exist). With
    ``NOERROR`` an answer without records of the asked type fails with ``dns_no_answer``."""
    recursion_desired: bool = True
    """Set the RD flag; turn off to check what an authoritative server itself holds."""

    @field_validator("server")
    @classmethod
    def _server_is_host_port(cls, server: str | None) -> str | None:
        if server is not None:
            split_host_port(server, default_port=53)
        return server

    @field_validator("expect_rcode")
    @classmethod
    def _known_rcode(cls, rcode: str) -> str:
        try:
            dns.rcode.from_text(rcode.upper())
        except dns.rcode.UnknownRcode:
            raise ValueError(f"unknown DNS response code {rcode!r} (e.g. NOERROR, NXDOMAIN, SERVFAIL)") from None
        return rcode.upper()

    @model_validator(mode="after")
    def _answers_need_noerror(self) -> DnsProbeSpec:
        if self.expect_answers and self.expect_rcode != "NOERROR":
            raise ValueError("'expect_answers' only makes sense with expect_rcode NOERROR")
        return self


class DnsProbe:
    """Asks about each target as :class:`DnsProbeSpec` says; see the module docstring.

    ``resolver`` replaces the system resolver (read from ``/etc/resolv.conf`` on
    first use otherwise); it is used only when the spec names no server.
    """

    kind = "dns"

    def __init__(self, spec: DnsProbeSpec, *, resolver: dns.asyncresolver.Resolver | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self._resolver = resolver
        self._rdtype = dns.rdatatype.from_text(spec.record_type)
        self._server = split_host_port(spec.server, default_port=53) if spec.server else None

    async def run(self, target: str) -> ProbeResult:
        """Query ``target`` and judge the response; never raises (see ``probes.base``)."""
        return await run_attempts(self.spec, self.kind, target, self._attempt)

    async def close(self) -> None:
        """Nothing to release: each query uses its own socket."""

    async def _attempt(self, target: str, record: Attempt) -> None:
        qname = self._qname(target)
        where = "the system resolver" if self._server is None else self.spec.server
        record.details.update(server=where, transport=self.spec.transport, question=f"{qname} {self.spec.record_type}")
        if self._server is None:
            response = await self._ask_resolver(qname, record)
        else:
            response = await self._ask_server(qname, record)
        self._judge(qname, response, record)

    def _qname(self, target: str) -> dns.name.Name:
        try:
            if self.spec.record_type == "PTR":
                try:
                    return dns.reversename.from_address(target)
                except (ValueError, dns.exception.SyntaxError):
                    pass
            return dns.name.from_text(target)
        except dns.exception.DNSException as exc:
            raise ProbeFailure(Reason.CONFIG, f"{target!r} is not a DNS name: {exc}") from None

    async def _ask_server(self, qname: dns.name.Name, record: Attempt) -> dns.message.Message:
        assert self._server is not None
        host, port = self._server
        query = dns.message.make_query(qname, self._rdtype)
        if not self.spec.recursion_desired:
            query.flags &= ~dns.flags.RD
        address = (await resolve(host, port, record))[0]
        label = self.spec.server
        record.waiting_for = f"waiting for {label} to answer over {self.spec.transport}"
        with record.phase("resolve"):
            try:
                if self.spec.transport == "tcp":
                    return await dns.asyncquery.tcp(query, address, port=port)
                return await _udp(query, address, port)
            except ConnectionRefusedError as exc:
                raise ProbeFailure(Reason.CONNECT_REFUSED, f"{label} refused the {self.spec.transport} query") from exc
            except OSError as exc:
                raise ProbeFailure(Reason.CONNECT_FAILED, f"cannot reach {label}: {exc.strerror or exc}") from exc
            except (dns.exception.FormError, dns.exception.DNSException, EOFError) as exc:
                raise ProbeFailure(Reason.PROTOCOL, f"{label} sent an invalid answer: {exc}") from exc

    async def _ask_resolver(self, qname: dns.name.Name, record: Attempt) -> dns.message.Message:
        resolver = self._system_resolver()
        record.waiting_for = "waiting for the system resolver"
        with record.phase("resolve"):
            try:
                answer = await resolver.resolve(
                    qname, self._rdtype, tcp=self.spec.transport == "tcp", raise_on_no_answer=False, search=False
                )
            except dns.resolver.NXDOMAIN as exc:
                return _nxdomain_response(qname, self._rdtype, exc)
            except dns.resolver.NoNameservers as exc:
                return _failed_resolution(exc)
            except dns.resolver.LifetimeTimeout as exc:
                raise ProbeFailure(Reason.TIMEOUT, f"the system resolver did not answer: {exc}") from exc
            except dns.exception.DNSException as exc:
                raise ProbeFailure(Reason.PROTOCOL, f"the system resolver failed: {exc}") from exc
        assert answer.response is not None
        return answer.response

    def _system_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            try:
                self._resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration as exc:
                raise ProbeFailure(Reason.CONFIG, f"no system resolver is configured: {exc}") from exc
            self._resolver.lifetime = self.spec.timeout
        self._resolver.flags = dns.flags.RD if self.spec.recursion_desired else 0
        return self._resolver

    def _judge(self, qname: dns.name.Name, response: dns.message.Message, record: Attempt) -> None:
        rcode = dns.rcode.to_text(response.rcode())
        question = f"{qname} {self.spec.record_type}"
        answers = _answers(response, self._rdtype)
        record.details.update(rcode=rcode, answers=[text for text, _ in answers])
        if rcode != self.spec.expect_rcode:
            raise ProbeFailure(Reason.DNS_RCODE, f"{rcode} for {question} (expected {self.spec.expect_rcode})")
        if rcode != "NOERROR":
            return
        if not answers:
            raise ProbeFailure(Reason.DNS_NO_ANSWER, f"NOERROR but no {self.spec.record_type} records for {qname}")
        if self.spec.expect_answers:
            problem = mismatch(answers, self.spec.expect_answers, match=self.spec.match, rdtype=self._rdtype)
            if problem:
                raise ProbeFailure(Reason.DNS_ANSWER_MISMATCH, f"{question}: {problem}")


async def _udp(query: dns.message.Message, address: str, port: int) -> dns.message.Message:
    """Ask over a *connected* UDP socket, so a closed port is refused at once rather than timing out;
    a truncated answer is asked again over TCP."""
    backend = dns.asyncbackend.get_default_backend()
    family = dns.inet.af_for_address(address)
    connected = backend.make_socket(family, socket.SOCK_DGRAM, 0, None, (address, port))  # type: ignore[no-untyped-call]
    async with await connected as sock:
        response, _ = await dns.asyncquery.udp_with_fallback(query, address, port=port, udp_sock=sock)
    return response


def _answers(response: dns.message.Message, rdtype: dns.rdatatype.RdataType) -> list[tuple[str, set[str]]]:
    """Each record of the asked type: its text, and the normalised forms an expectation may match."""
    found: list[tuple[str, set[str]]] = []
    for rrset in response.answer:
        if rrset.rdtype == rdtype and rrset.rdclass == dns.rdataclass.IN:
            found.extend((_text(rdata), _forms(rdata)) for rdata in rrset)
    return found


def _text(rdata: dns.rdata.Rdata) -> str:
    if rdata.rdtype == dns.rdatatype.TXT:
        return "".join(part.decode(errors="replace") for part in rdata.strings)  # type: ignore[attr-defined]
    return normalise(rdata.to_text(), rdata.rdtype)


def _forms(rdata: dns.rdata.Rdata) -> set[str]:
    text = _text(rdata)
    forms = {text}
    if rdata.rdtype in (dns.rdatatype.MX, dns.rdatatype.SRV, dns.rdatatype.SOA):
        host = rdata.exchange if rdata.rdtype == dns.rdatatype.MX else rdata.target  # type: ignore[attr-defined]
        if rdata.rdtype == dns.rdatatype.SOA:
            host = rdata.mname  # type: ignore[attr-defined]
        forms.add(normalise(host.to_text(), dns.rdatatype.NS))
    return forms


def normalise(text: str, rdtype: dns.rdatatype.RdataType) -> str:
    """``text`` as answers are compared: addresses canonical, names lower-case without the final dot.

    >>> normalise("Mail.Example.COM.", dns.rdatatype.MX)
    'mail.example.com'
    >>> normalise("2001:DB8:0::1", dns.rdatatype.AAAA)
    '2001:db8::1'
    """
    text = " ".join(text.split())
    if rdtype == dns.rdatatype.TXT:
        return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text
    if rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        try:
            return ipaddress.ip_address(text).compressed
        except ValueError:
            return text
    return " ".join(word.rstrip(".").lower() if word != "." else word for word in text.split(" "))


def mismatch(
    answers: list[tuple[str, set[str]]], expected: Iterable[str], *, match: str, rdtype: dns.rdatatype.RdataType
) -> str:
    """Why ``answers`` fail ``expected`` under ``match`` (see ``DnsProbeSpec.match``); empty when they pass."""
    wanted = [normalise(item, rdtype) for item in expected]
    present = [item for item in wanted if any(item in forms for _, forms in answers)]
    missing = [item for item in wanted if item not in present]
    got = sorted(text for text, _ in answers)
    if match == "any" and not present:
        return f"none of the expected answers {wanted} in {got}"
    if match in ("all", "exact") and missing:
        return f"expected {wanted}, got {got}; missing {missing}"
    extra = [text for text, forms in answers if not forms & set(wanted)]
    if match == "exact" and extra:
        return f"expected exactly {wanted}, got {got}; unexpected {sorted(extra)}"
    return ""


def _nxdomain_response(
    qname: dns.name.Name, rdtype: dns.rdatatype.RdataType, exc: dns.resolver.NXDOMAIN
) -> dns.message.Message:
    """The NXDOMAIN response the resolver raised about (or a stand-in carrying its code)."""
    response = exc.kwargs.get("responses", {}).get(qname)
    if isinstance(response, dns.message.Message):
        return response
    stand_in = dns.message.make_response(dns.message.make_query(qname, rdtype))
    stand_in.set_rcode(dns.rcode.NXDOMAIN)
    return stand_in


def _failed_resolution(exc: dns.resolver.NoNameservers) -> dns.message.Message:
    """The error response a nameserver gave, so its code is judged; otherwise why none could be asked."""
    errors = exc.kwargs.get("errors") or []
    for error in errors:
        response = error[-1] if isinstance(error, tuple) else None
        if isinstance(response, dns.message.Message):
            return response
    causes = [error[3] for error in errors if isinstance(error, tuple) and len(error) > 3]
    if causes and all(isinstance(cause, ConnectionRefusedError) for cause in causes):
        raise ProbeFailure(Reason.CONNECT_REFUSED, "every nameserver of the system resolver refused the query")
    raise ProbeFailure(Reason.CONNECT_FAILED, f"the system resolver could not ask any nameserver: {exc}")
