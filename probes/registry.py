"""Probe kinds by name: the settings union configuration files use, and ``build_probe``."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from vouch.core.settings import Model
from vouch.probes.base import Probe
from vouch.probes.dns import DnsProbe, DnsProbeSpec
from vouch.probes.flow import FlowProbe, FlowProbeSpec
from vouch.probes.http import HttpProbe, HttpProbeSpec
from vouch.probes.tcp import TcpProbe, TcpProbeSpec
from vouch.probes.tls import TlsProbe, TlsProbeSpec
from vouch.probes.tlsinfo import TlsContexts

ProbeDefinition = Annotated[
    HttpProbeSpec | TcpProbeSpec | DnsProbeSpec | TlsProbeSpec | FlowProbeSpec,
    Field(discriminator="kind"),
]
"""One probe's settings; ``kind`` picks the model (an unknown kind is an error naming the known ones)."""

PROBE_KINDS: tuple[str, ...] = ("http", "tcp", "dns", "tls", "flow")


class ProbeFile(Model):
    """A file of probe definitions, as ``vouch probe run`` reads it."""

    probes: list[ProbeDefinition] = Field(min_length=1)
    """The probes, each with its own name, kind, targets and schedule."""


def build_probe(spec: ProbeDefinition, *, contexts: TlsContexts | None = None) -> Probe:
    """The probe ``spec`` describes, ready to run many times.

    Pass one ``contexts`` to every probe of a process: loading CA bundles into TLS
    contexts is the expensive part of a TLS connection, and they are shared by settings.

    >>> build_probe(TcpProbeSpec(kind="tcp", name="db", targets=["127.0.0.1:5432"])).kind
    'tcp'
    """
    if isinstance(spec, HttpProbeSpec):
        return HttpProbe(spec, contexts=contexts)
    if isinstance(spec, TcpProbeSpec):
        return TcpProbe(spec)
    if isinstance(spec, DnsProbeSpec):
        return DnsProbe(spec)
    if isinstance(spec, TlsProbeSpec):
        return TlsProbe(spec, contexts=contexts)
    if isinstance(spec, FlowProbeSpec):
        return FlowProbe(spec, contexts=contexts)
    raise TypeError(f"no probe for {type(spec).__name__}; known kinds: {', '.join(PROBE_KINDS)}")
