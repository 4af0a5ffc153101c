"""``vouch probe import-blackbox``: blackbox_exporter modules turned into vouch probe definitions.

A blackbox_exporter module says *how* to probe; Prometheus' scrape
configuration says *what* (the targets) and *how often*. So each converted
probe gets the placeholder target ``<TARGET>`` (for dns, the placeholder is the
``server``: blackbox_exporter's dns target is the server to ask, vouch's is the
name asked about) and vouch's default interval.

Nothing is dropped silently: every option that cannot be carried over is an
:class:`Unconverted` entry saying why, and every option carried over with a
change the user must know about (a header value moved into a secret, a regular
expression on DNS records turned into an expected answer) is a :class:`Note`.
This module drives the conversion, validates and renders it; the converters
of each prober's options are in :mod:`vouch.probes.blackboxopts`.

Example::

    conversion = convert_blackbox(Path("blackbox.yml").read_text(), source="blackbox.yml")
    print(render_conversion(conversion))
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from vouch.core.durations import format_duration
from vouch.core.errors import ConfigError, Problem
from vouch.probes.blackboxopts import CONVERTERS, TARGET, ModuleReport, Note, Unconverted

STAND_INS = {"http": "http://example.invalid/", "tcp": "example.invalid:1", "dns": "example.invalid"}
"""Targets of the right form, used only to validate converted probes (``<TARGET>`` is not one)."""
TARGET_FORMS = {
    "http": "a URL such as https://host/path",
    "tcp": "host:port",
    "dns": "the DNS server to ask, host or host:port (the probe's target is the name asked about)",
}


@dataclass(frozen=True)
class Conversion:
    """The probe definitions made from one modules file, and what did not survive the trip."""

    source: str
    probes: tuple[dict[str, Any], ...]
    """Probe definitions as a ``probes:`` list holds them (plain data, ready for YAML)."""
    unconverted: tuple[Unconverted, ...]
    notes: tuple[Note, ...] = ()
    origins: tuple[str, ...] = ()
    """The module each probe came from, in the order of ``probes``."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "probes": [dict(p) for p in self.probes],
            "unconverted": [u.to_dict() for u in self.unconverted],
            "notes": [n.to_dict() for n in self.notes],
        }


_NOT_PROBED = {
    "icmp": "vouch has no ICMP probe (it needs raw sockets); a tcp probe to a port the host serves checks reachability",
    "grpc": "vouch has no gRPC health-check probe; a tcp probe (with tls) checks that the port answers",
}
_SECTIONS = ("http", "tcp", "dns", "icmp", "grpc")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|w|y)")
_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
    "y": 31536000.0,
}


def convert_blackbox(text: str, *, source: str) -> Conversion:
    """Convert the blackbox_exporter modules file ``text`` (read from ``source``, named in errors).

    Raises :class:`ConfigError` when ``text`` is not a modules file at all;
    anything inside a module that cannot be converted is reported instead.

    >>> conv = convert_blackbox("modules: {ping: {prober: icmp}, web: {prober: http}}", source="bb.yml")
    >>> [p["name"] for p in conv.probes], [u.module for u in conv.unconverted]
    (['web'], ['ping'])
    """
    modules = _modules(text, source)
    probes: list[dict[str, Any]] = []
    origins: list[str] = []
    lost: list[Unconverted] = []
    notes: list[Note] = []
    taken: set[str] = set()
    for name, module in modules.items():
        report = ModuleReport(str(name))
        probe = _convert_module(report, module, taken)
        if probe is not None:
            probes.append(probe)
            origins.append(report.module)
            taken.add(probe["name"])
        lost.extend(report.lost)
        notes.extend(report.notes)
    return Conversion(source, tuple(probes), tuple(lost), tuple(notes), tuple(origins))


def _modules(text: str, source: str) -> Mapping[Any, Any]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([Problem(source, line, "", f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from exc
    if not isinstance(document, Mapping) or not isinstance(document.get("modules"), Mapping):
        raise ConfigError([Problem(source, None, "modules", "not a blackbox_exporter file: no 'modules:' mapping")])
    modules: Mapping[Any, Any] = document["modules"]
    return modules


def _convert_module(report: ModuleReport, module: Any, taken: set[str]) -> dict[str, Any] | None:
    if not isinstance(module, Mapping):
        report.lose("*", "the module is not a mapping of options")
        return None
    prober = module.get("prober")
    if prober not in CONVERTERS:
        why = _NOT_PROBED.get(str(prober), f"unknown prober {prober!r}: vouch probes http, tcp and dns")
        report.lose("prober", why)
        return None
    probe: dict[str, Any] = {"name": _probe_name(report, taken), "kind": prober, "targets": [TARGET]}
    _timeout(module.get("timeout"), probe, report)
    section = module.get(prober) or {}
    if not isinstance(section, Mapping):
        report.lose(prober, "not a mapping of options")
        section = {}
    probe.update(CONVERTERS[prober](section, report))
    for key in module:
        if key not in ("prober", "timeout", prober):
            why = "settings of another prober, unused by this module" if key in _SECTIONS else "unknown option"
            report.lose(str(key), why)
    return _validated(probe, report)


def _probe_name(report: ModuleReport, taken: set[str]) -> str:
    name = report.module
    if not _NAME.match(name):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-_.")[:120] or "module"
    base, n = name, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    if name != report.module:
        report.note("name", f"renamed to {name!r} (probe names are letters, digits, '_', '.', '-', and unique)")
    return name


def _timeout(value: Any, probe: dict[str, Any], report: ModuleReport) -> None:
    if value is None:
        return
    seconds = go_duration(value)
    if seconds is None or seconds <= 0:
        report.lose("timeout", f"{value!r} is not a duration vouch understands; vouch's default (10s) applies")
        return
    probe["timeout"] = format_duration(seconds)
    if seconds >= 60:
        probe["interval"] = format_duration(min(3600.0, max(120.0, seconds * 2)))
        report.note("interval", f"set to {probe['interval']}: a probe's timeout must be below its interval")


def go_duration(value: Any) -> float | None:
    """Seconds in a Go / Prometheus duration (``1m30s``, ``500ms``, ``1d``), or ``None``.

    >>> go_duration("1m30s"), go_duration("250ms"), go_duration("soon")
    (90.0, 0.25, None)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    pos, seconds = 0, 0.0
    for match in _GO_DURATION.finditer(text):
        if match.start() != pos:
            return None
        seconds += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    return seconds if text and pos == len(text) else None


def _validated(probe: dict[str, Any], report: ModuleReport) -> dict[str, Any] | None:
    """``probe`` once its kind's settings accept it; an option they reject is reported and left out."""
    model = _spec_model(probe["kind"])
    for _ in range(len(probe) + 1):
        trial = dict(probe)
        if probe["kind"] == "dns":
            trial["server"] = STAND_INS["dns"]
        else:
            trial["targets"] = [STAND_INS[probe["kind"]]]
        try:
            model.model_validate(trial)
        except ValidationError as exc:
            error = exc.errors()[0]
            top = str(error["loc"][0]) if error["loc"] else ""
            if top in ("", "name", "kind", "targets") or top not in probe:
                report.lose("*", f"vouch rejects the converted probe: {error['msg']}")
                return None
            report.lose(".".join(str(part) for part in error["loc"]), f"vouch rejects it: {error['msg']}")
            del probe[top]
            continue
        return probe
    return None


def _spec_model(kind: str) -> type[BaseModel]:
    from vouch.probes.dns import DnsProbeSpec
    from vouch.probes.http import HttpProbeSpec
    from vouch.probes.tcp import TcpProbeSpec

    models: dict[str, type[BaseModel]] = {"http": HttpProbeSpec, "tcp": TcpProbeSpec, "dns": DnsProbeSpec}
    return models[kind]


def render_conversion(conversion: Conversion) -> str:
    """The converted probes as annotated YAML: a ``probes:`` list, each probe preceded by what it lost."""
    lines = [
        f"# vouch probe definitions converted from blackbox_exporter modules in {conversion.source}.",
        f"# Modules name no targets: replace every {TARGET!r} with what to check:",
        *(f"#   {kind}: {form}" for kind, form in TARGET_FORMS.items()),
        "# How often to probe was Prometheus' scrape interval; vouch's default interval (60s) applies.",
    ]
    if conversion.unconverted:
        lines.append(f"# {len(conversion.unconverted)} option(s) could not be carried over: see the comments below.")
    lines.append("probes:" if conversion.probes else "probes: []")
    for probe, module in zip(conversion.probes, conversion.origins, strict=True):
        lines.append("")
        lines.extend(_comments(conversion, module))
        dumped = yaml.dump([probe], Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
        lines.extend("  " + line for line in dumped.splitlines())
    dropped = [u for u in conversion.unconverted if u.module not in conversion.origins]
    if dropped:
        lines.extend(["", "# Modules not converted:"])
        lines.extend(_one_line(f"#   {u.module}: {u.option}: {u.why}") for u in dropped)
    return "\n".join(lines) + "\n"


class _Dumper(yaml.SafeDumper):
    """Writes strings holding line breaks double-quoted (``"NICK prober\\n"``), as people write them."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if "\n" in value or "\r" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _comments(conversion: Conversion, module: str) -> list[str]:
    lines = [f"# module {module}"]
    lines.extend(f"# NOT CARRIED OVER {u.option}: {u.why}" for u in conversion.unconverted if u.module == module)
    lines.extend(f"# NOTE {n.option}: {n.what}" for n in conversion.notes if n.module == module)
    return ["  " + _one_line(line) for line in lines]


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")
