"""blackbox_exporter's per-prober options (``http:``, ``tcp:``, ``dns:``) turned into a vouch probe's settings.

Each converter reads one prober's section of a module and returns the
settings of the vouch probe of that kind, as plain data. What it cannot carry
over goes into the module's :class:`ModuleReport` as an :class:`Unconverted`
entry saying why; what it carries over with a change the user must know about
(a header value moved into a secret, a regular expression on DNS records
turned into an expected answer) as a :class:`Note`. The driver,
:mod:`vouch.probes.blackbox`, validates the result and renders it.

>>> report = ModuleReport("smtp")
>>> convert_tcp({"query_response": [{"expect": "^220 "}], "source_ip_address": "192.0.2.1"}, report)
{'expect': '^220 '}
>>> [(lost.option, lost.why) for lost in report.lost]
[('tcp.source_ip_address', 'vouch lets the system choose the source address')]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CONVERTERS",
    "TARGET",
    "Converter",
    "ModuleReport",
    "Note",
    "Unconverted",
    "convert_dns",
    "convert_http",
    "convert_tcp",
]

TARGET = "<TARGET>"
"""What every converted probe targets until the user says what to check."""


@dataclass(frozen=True)
class Unconverted:
    """An option of a module that vouch cannot carry over, and why."""

    module: str
    option: str
    why: str

    def to_dict(self) -> dict[str, str]:
        return {"module": self.module, "option": self.option, "why": self.why}


@dataclass(frozen=True)
class Note:
    """An option carried over with a change the user must know about."""

    module: str
    option: str
    what: str

    def to_dict(self) -> dict[str, str]:
        return {"module": self.module, "option": self.option, "what": self.what}


@dataclass
class ModuleReport:
    """What converting one module lost and changed; the option converters add to it."""

    module: str
    lost: list[Unconverted] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)

    def lose(self, option: str, why: str) -> None:
        self.lost.append(Unconverted(self.module, option, why))

    def note(self, option: str, what: str) -> None:
        self.notes.append(Note(self.module, option, what))


Converter = Callable[[Mapping[str, Any], ModuleReport], dict[str, Any]]


# --------------------------------------------------------------------------- shared option converters


def _regexes(values: Any, option: str, report: ModuleReport) -> list[str]:
    """The patterns of the list ``values`` that Python's ``re`` reads too (Go's RE2 differs in corners)."""
    items = values if isinstance(values, list) else [values]
    return [p for i, p in enumerate(items) if _regex_ok(str(p), f"{option}[{i}]", report)]


def _regex_ok(pattern: str, option: str, report: ModuleReport) -> bool:
    try:
        re.compile(pattern)
    except re.error as exc:
        hint = " (a literal '+', '*' or '?' needs a backslash)" if "nothing to repeat" in str(exc) else ""
        report.lose(option, f"{pattern!r} is not a regular expression vouch (Python) reads: {exc}{hint}")
        return False
    return True


def _tls(config: Any, option: str, report: ModuleReport) -> dict[str, Any]:
    """A ``TlsClientSpec`` as data, from blackbox_exporter's ``tls_config``."""
    if not isinstance(config, Mapping):
        report.lose(option, "not a mapping of TLS options")
        return {}
    tls: dict[str, Any] = {}
    for key, value in config.items():
        if key == "insecure_skip_verify":
            if value:
                tls["verify"] = False
        elif key in ("ca_file", "cert_file", "key_file", "server_name"):
            tls[key] = str(value)
        elif key in ("min_version", "max_version"):
            report.lose(f"{option}.{key}", "vouch uses the TLS versions Python's ssl module allows by default")
        elif key in ("ca", "cert", "key"):
            report.lose(f"{option}.{key}", f"inline PEM is not supported: write it to a file and set {key}_file")
        else:
            report.lose(f"{option}.{key}", "unknown TLS option")
    return tls


def _ip_options(section: Mapping[str, Any], prober: str, report: ModuleReport, *, preferred_kept: bool) -> None:
    if "preferred_ip_protocol" in section and not preferred_kept:
        report.lose(f"{prober}.preferred_ip_protocol", "vouch connects to the addresses in the order the system gives")
    if section.get("ip_protocol_fallback") is False:
        report.lose(f"{prober}.ip_protocol_fallback", "vouch always falls back to the other address family")
    if "source_ip_address" in section:
        report.lose(f"{prober}.source_ip_address", "vouch lets the system choose the source address")


def _leftovers(section: Mapping[str, Any], known: set[str], prober: str, report: ModuleReport) -> None:
    for key in section:
        if key not in known:
            report.lose(f"{prober}.{key}", "unknown option")


def _secret_env(module: str, what: str) -> str:
    return "VOUCH_" + re.sub(r"[^A-Z0-9]+", "_", f"{module}_{what}".upper()).strip("_")


# --------------------------------------------------------------------------- http


_HTTP_UNSUPPORTED = {
    "valid_http_versions": "vouch does not check the HTTP version of the answer",
    "fail_if_ssl": "vouch does not check how the answer came: use an http:// target",
    "fail_if_not_ssl": "vouch does not check how the answer came: use an https:// target",
    "fail_if_body_json_matches_cel": "CEL is not supported: write a JSONPath assertion (assertions.json)",
    "fail_if_body_json_not_matches_cel": "CEL is not supported: write a JSONPath assertion (assertions.json)",
    "basic_auth": "set an 'authorization' header from a secret holding 'Basic <base64 of user:password>'",
    "bearer_token_file": "the file holds only the token: set an 'authorization' header from a secret 'Bearer <token>'",
    "oauth2": "vouch does not fetch OAuth 2.0 tokens",
    "proxy_url": "vouch probes connect directly, never through a proxy",
    "no_proxy": "vouch probes connect directly, never through a proxy",
    "proxy_from_environment": "vouch probes connect directly, never through a proxy",
    "proxy_connect_header": "vouch probes connect directly, never through a proxy",
    "skip_resolve_phase_with_proxy": "vouch probes connect directly, never through a proxy",
    "use_proxy_dns": "vouch probes connect directly, never through a proxy",
    "compression": "vouch does not decompress answers: assertions see the body as sent",
    "body_size_limit": "vouch keeps max_body_bytes of a body for assertions and drops the rest instead of failing",
}
_HTTP_QUIET = {
    "enable_http2",
    "ip_protocol_fallback",
    "source_ip_address",
    "preferred_ip_protocol",
    "http_client_config",
}
_SENSITIVE = re.compile(r"authorization|cookie|token|secret|passw|api-?key", re.IGNORECASE)


def convert_http(section: Mapping[str, Any], report: ModuleReport) -> dict[str, Any]:
    """The settings of an ``http`` probe from blackbox_exporter's ``http:`` options."""
    spec: dict[str, Any] = {}
    if section.get("method"):
        spec["method"] = str(section["method"]).upper()
    headers = _http_headers(section, report)
    if headers:
        spec["headers"] = headers
    if "body" in section:
        spec["body"] = str(section["body"])
    if "body_file" in section:
        spec["body"] = {"from_file": str(section["body_file"])}
        report.note("http.body_file", "sent as a secret read from the file, with surrounding whitespace stripped")
    codes = section.get("valid_status_codes")
    if codes:
        spec["valid_status_codes"] = list(codes) if isinstance(codes, list) else [codes]
    if section.get("no_follow_redirects") is True or section.get("follow_redirects") is False:
        spec["follow_redirects"] = False
    assertions = _http_assertions(section, report)
    if assertions:
        spec["assertions"] = assertions
    if "tls_config" in section:
        tls = _tls(section["tls_config"], "http.tls_config", report)
        if tls:
            spec["tls"] = tls
    if section.get("preferred_ip_protocol") in ("ip4", "ip6"):
        spec["ip_protocol"] = section["preferred_ip_protocol"]
    _ip_options(section, "http", report, preferred_kept="ip_protocol" in spec)
    for key, why in _HTTP_UNSUPPORTED.items():
        if key in section and section[key] not in (None, False, "", [], {}):
            report.lose(f"http.{key}", why)
    known = set(_HTTP_UNSUPPORTED) | _HTTP_QUIET | _HTTP_HANDLED
    _leftovers(section, known, "http", report)
    return spec


_HTTP_HANDLED = {
    "method",
    "headers",
    "body",
    "body_file",
    "valid_status_codes",
    "no_follow_redirects",
    "follow_redirects",
    "tls_config",
    "bearer_token",
    "authorization",
    "fail_if_body_matches_regexp",
    "fail_if_body_not_matches_regexp",
    "fail_if_matches_regexp",
    "fail_if_not_matches_regexp",
    "fail_if_header_matches",
    "fail_if_header_not_matches",
}


def _http_headers(section: Mapping[str, Any], report: ModuleReport) -> dict[str, Any]:
    """Request headers; credential-looking values move into secrets read from the environment."""
    headers: dict[str, Any] = {}
    given = section.get("headers") or {}
    for name, value in given.items() if isinstance(given, Mapping) else []:
        if _SENSITIVE.search(str(name)):
            env = _secret_env(report.module, str(name))
            headers[str(name)] = {"from_env": env}
            report.note(f"http.headers.{name}", f"value moved out of the file: set the environment variable {env}")
        else:
            headers[str(name)] = str(value)
    token = section.get("bearer_token")
    auth = section.get("authorization")
    if token or (isinstance(auth, Mapping) and auth.get("credentials")):
        env = _secret_env(report.module, "authorization")
        kind = auth.get("type", "Bearer") if isinstance(auth, Mapping) else "Bearer"
        headers["Authorization"] = {"from_env": env}
        report.note("http.authorization", f"set the environment variable {env} to '{kind} <credentials>'")
    elif isinstance(auth, Mapping) and auth.get("credentials_file"):
        report.lose(
            "http.authorization.credentials_file",
            "the file holds only the credentials: set an 'authorization' header from a secret '<type> <credentials>'",
        )
    return headers


def _http_assertions(section: Mapping[str, Any], report: ModuleReport) -> dict[str, Any]:
    assertions: dict[str, Any] = {}
    must = [*section.get("fail_if_body_not_matches_regexp", []), *section.get("fail_if_not_matches_regexp", [])]
    must_not = [*section.get("fail_if_body_matches_regexp", []), *section.get("fail_if_matches_regexp", [])]
    if must:
        assertions["body_matches"] = _regexes(must, "http.fail_if_body_not_matches_regexp", report)
    if must_not:
        assertions["body_not_matches"] = _regexes(must_not, "http.fail_if_body_matches_regexp", report)
    headers: list[dict[str, Any]] = []
    for i, rule in enumerate(section.get("fail_if_header_not_matches") or []):
        option = f"http.fail_if_header_not_matches[{i}]"
        if not isinstance(rule, Mapping) or "header" not in rule or "regexp" not in rule:
            report.lose(option, "needs 'header' and 'regexp'")
        elif rule.get("allow_missing"):
            report.lose(option, "vouch fails a required header that is missing (allow_missing is not supported)")
        elif _regex_ok(str(rule["regexp"]), option + ".regexp", report):
            headers.append({"name": str(rule["header"]), "matches": str(rule["regexp"])})
    for i, _rule in enumerate(section.get("fail_if_header_matches") or []):
        report.lose(
            f"http.fail_if_header_matches[{i}]",
            "vouch's header assertions require a match or the header's absence; they cannot forbid a value",
        )
    if headers:
        assertions["headers"] = headers
    return {key: value for key, value in assertions.items() if value}


# --------------------------------------------------------------------------- tcp


def convert_tcp(section: Mapping[str, Any], report: ModuleReport) -> dict[str, Any]:
    """The settings of a ``tcp`` probe from blackbox_exporter's ``tcp:`` options."""
    spec: dict[str, Any] = {}
    steps = section.get("query_response") or []
    spec.update(_query_response(steps if isinstance(steps, list) else [], report))
    if section.get("tls"):
        spec["tls"] = _tls(section.get("tls_config") or {}, "tcp.tls_config", report)
    elif section.get("tls_config") and not any(isinstance(s, Mapping) and s.get("starttls") for s in steps):
        report.note("tcp.tls_config", "left out: without 'tls: true' blackbox_exporter does not use it either")
    _ip_options(section, "tcp", report, preferred_kept=False)
    _leftovers(section, {"query_response", "tls", "tls_config", *_IP_KEYS}, "tcp", report)
    return spec


_IP_KEYS = {"preferred_ip_protocol", "ip_protocol_fallback", "source_ip_address"}


def _query_response(steps: list[Any], report: ModuleReport) -> dict[str, Any]:
    """``send`` and ``expect`` from blackbox_exporter's steps: the sends before the first expect, then it.

    blackbox_exporter ends every ``send`` with a newline and matches ``expect``
    line by line; vouch sends bytes as given (so the newline is written out)
    and searches ``expect`` over what arrived, with ``^`` and ``$`` at lines.
    """
    sends: list[str] = []
    expect: str | None = None
    for i, step in enumerate(steps):
        option = f"tcp.query_response[{i}]"
        if not isinstance(step, Mapping):
            report.lose(option, "not a mapping")
            continue
        if step.get("labels"):
            report.lose(option + ".labels", "vouch exports no probe_expect_info labels")
        if step.get("starttls"):
            report.lose(option + ".starttls", "STARTTLS is not supported: this and later steps are left out")
            break
        if expect is not None:
            for key in ("expect", "send"):
                if key in step:
                    report.lose(f"{option}.{key}", "vouch's tcp probe sends once, then expects once")
            continue
        if "expect" in step:
            if "send" in step:
                report.lose(option + ".send", "a send after an expect: vouch's tcp probe sends once, then expects")
            if not _regex_ok(str(step["expect"]), option + ".expect", report):
                report.note(option, "without its expect the probe only checks that the port accepts")
                break
            expect = str(step["expect"])
        elif "send" in step:
            sends.append(str(step["send"]).replace("\\", "\\\\") + "\n")
    spec: dict[str, Any] = {}
    if sends:
        spec["send"] = "".join(sends)
    if expect is not None:
        spec["expect"] = expect
    return spec


# --------------------------------------------------------------------------- dns


_DNS_TYPES = {"A", "AAAA", "CNAME", "MX", "TXT", "NS", "SRV", "SOA", "PTR"}
_REGEX_META = re.compile(r"[*+?\[\](){}|^$\\]")


def convert_dns(section: Mapping[str, Any], report: ModuleReport) -> dict[str, Any]:
    """The settings of a ``dns`` probe; blackbox_exporter's target (the server) becomes ``server``."""
    spec: dict[str, Any] = {"server": TARGET}
    name = section.get("query_name")
    if not name:
        report.lose("dns.query_name", "missing: the probe's target must be the name to ask about")
    spec["targets"] = [str(name) if name else TARGET]
    record_type = str(section.get("query_type", "ANY")).upper()
    if record_type in _DNS_TYPES:
        spec["record_type"] = record_type
    else:
        report.lose("dns.query_type", f"{record_type}: vouch asks for one of {', '.join(sorted(_DNS_TYPES))}; A used")
        spec["record_type"] = record_type = "A"
    if str(section.get("query_class", "IN")).upper() != "IN":
        report.lose("dns.query_class", "vouch asks in class IN only")
    if str(section.get("transport_protocol", "udp")).lower() == "tcp":
        spec["transport"] = "tcp"
    if section.get("recursion_desired") is False:
        spec["recursion_desired"] = False
    if section.get("dns_over_tls"):
        report.lose("dns.dns_over_tls", "vouch does not speak DNS over TLS")
    _dns_rcodes(section.get("valid_rcodes"), spec, report)
    _dns_answers(section.get("validate_answer_rrs"), spec, record_type, report)
    for key in ("validate_authority_rrs", "validate_additional_rrs"):
        if section.get(key):
            report.lose(f"dns.{key}", "vouch judges the answer section only")
    _ip_options(section, "dns", report, preferred_kept=False)
    known = {"query_name", "query_type", "query_class", "transport_protocol", "recursion_desired", "dns_over_tls"}
    known |= {"tls_config", "valid_rcodes", "validate_answer_rrs", "validate_authority_rrs", "validate_additional_rrs"}
    _leftovers(section, known | _IP_KEYS, "dns", report)
    return spec


def _dns_rcodes(rcodes: Any, spec: dict[str, Any], report: ModuleReport) -> None:
    codes = [str(code).upper() for code in (rcodes if isinstance(rcodes, list) else [rcodes] if rcodes else [])]
    if not codes or codes == ["NOERROR"]:
        return
    chosen = "NOERROR" if "NOERROR" in codes else codes[0]
    if chosen != "NOERROR":
        spec["expect_rcode"] = chosen
    if len(codes) > 1:
        others = ", ".join(code for code in codes if code != chosen)
        report.lose("dns.valid_rcodes", f"vouch accepts one response code: {chosen} kept, {others} left out")


def _dns_answers(rules: Any, spec: dict[str, Any], record_type: str, report: ModuleReport) -> None:
    """Expected answers from regular expressions that are plain records; the others are reported."""
    if not isinstance(rules, Mapping):
        return
    for key in ("fail_if_matches_regexp", "fail_if_all_match_regexp"):
        if rules.get(key):
            report.lose(f"dns.validate_answer_rrs.{key}", "vouch cannot forbid records, only expect them")
    for key, match in (("fail_if_none_matches_regexp", "all"), ("fail_if_not_matches_regexp", "exact")):
        patterns = rules.get(key) or []
        values = [_record_value(str(p), record_type) for p in patterns]
        option = f"dns.validate_answer_rrs.{key}"
        if not patterns:
            continue
        if None in values or (match == "exact" and len(set(values)) > 1) or "expect_answers" in spec:
            report.lose(option, "regular expressions on records are not supported: list expect_answers instead")
            continue
        spec["expect_answers"] = list(dict.fromkeys(v for v in values if v))
        spec["match"] = match
        report.note(option, f"read as expected answers {spec['expect_answers']} (match: {match}), compared whole")
    for key in (
        set(rules)
        - {"fail_if_matches_regexp", "fail_if_all_match_regexp"}
        - {
            "fail_if_none_matches_regexp",
            "fail_if_not_matches_regexp",
        }
    ):
        report.lose(f"dns.validate_answer_rrs.{key}", "unknown option")


def _record_value(pattern: str, record_type: str) -> str | None:
    """The record data a plain pattern spells out (``name.\\t300\\tIN\\tA\\t192\\.0\\.2\\.1`` or just the data)."""
    text = pattern.removeprefix("^").removesuffix("$")
    fields = re.split(r"\t|\\t", text)
    if len(fields) == 5:
        if fields[3].upper() != record_type:
            return None
        data = fields[4]
    elif len(fields) == 1:
        data = fields[0]
    else:
        return None
    data = re.sub(r"\\([.\-:/])", r"\1", data)
    return None if not data or _REGEX_META.search(data) else data


CONVERTERS: dict[str, Converter] = {"http": convert_http, "tcp": convert_tcp, "dns": convert_dns}
"""The option converter of each prober vouch has a probe kind for."""
