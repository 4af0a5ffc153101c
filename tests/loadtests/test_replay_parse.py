"""Access-log readers: combined, JSON lines and HAR, good records and bad ones, format detection."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from vouch.loadtests.errors import AccessLogError
from vouch.loadtests.replay.combined import parse_combined_line, read_combined
from vouch.loadtests.replay.har import read_har
from vouch.loadtests.replay.jsonlines import JsonFields, parse_json_line, read_json_lines
from vouch.loadtests.replay.parse import detect_format, read_log

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
T0 = 1730811730.0
"""05/Nov/2024:14:02:10 +0100, the first second of examples/access.log."""

# --------------------------------------------------------------------------- combined

COMBINED_GOOD = [
    pytest.param(
        '10.1.1.11 - - [05/Nov/2024:14:02:10 +0100] "GET /search?q=a HTTP/1.1" 200 91 "https://shop.example/" "curl/8"',
        (T0, "GET", "/search?q=a", 200, (("Referer", "https://shop.example/"), ("User-Agent", "curl/8"))),
        id="combined",
    ),
    pytest.param(
        '10.1.1.11 - alice [05/Nov/2024:13:02:10 +0000] "HEAD / HTTP/1.0" 200 0',
        (T0, "HEAD", "/", 200, ()),
        id="common (no referer, no agent)",
    ),
    pytest.param(
        '10.1.1.11 - - [05/Nov/2024:14:02:10.250 +0100] "GET /a HTTP/1.1" 200 1 "-" "-" 0.004 "10.0.0.9:80"',
        (T0 + 0.25, "GET", "/a", 200, ()),
        id="fractional seconds and trailing nginx fields",
    ),
    pytest.param(
        r'10.1.1.11 - - [05/Nov/2024:14:02:10 +0100] "GET /q?s=\x22x\x22 HTTP/1.1" 404 1 "-" "say \"hi\""',
        (T0, "GET", '/q?s="x"', 404, (("User-Agent", 'say "hi"'),)),
        id="nginx and apache escapes",
    ),
    pytest.param(
        '10.1.1.11 - - [05/Nov/2024:14:02:10 +0100] "GET http://shop.example:8080/p/1?x=2 HTTP/1.1" - 0 "-" "-"',
        (T0, "GET", "/p/1?x=2", None, ()),
        id="absolute URL through a proxy, no status",
    ),
    pytest.param(
        '10.1.1.11 - - [05/Nov/2024:08:02:10 -0500] "delete /cart/items/3 HTTP/2.0" 204 0 "-" "app"',
        (T0, "DELETE", "/cart/items/3", 204, (("User-Agent", "app"),)),
        id="negative zone, lower-case method",
    ),
]


@pytest.mark.parametrize(("line", "expected"), COMBINED_GOOD)
def test_combined_lines_are_read(line: str, expected: tuple[Any, ...]) -> None:
    r = parse_combined_line(line, line_number=7)
    assert (r.at, r.method, r.path, r.status, r.headers) == expected
    assert r.line == 7
    assert r.body is None


COMBINED_BAD = [
    pytest.param("just some text", "not in combined", id="not a log line"),
    pytest.param('1.2.3.4 - - [05/Nov/2024:14:02:10 +0100] "-" 408 0 "-" "-"', "no request line", id="no request"),
    pytest.param(
        r'1.2.3.4 - - [05/Nov/2024:14:02:10 +0100] "\x16\x03\x01\x00\xCA\x01" 400 157 "-" "-"',
        "no request line",
        id="TLS handshake on a plain port",
    ),
    pytest.param('1.2.3.4 - - [05/Nox/2024:14:02:10 +0100] "GET / HTTP/1.1" 200 1 "-" "-"', "time", id="bad month"),
    pytest.param('1.2.3.4 - - [2024-11-05T14:02:10] "GET / HTTP/1.1" 200 1 "-" "-"', "time", id="ISO time"),
    pytest.param('1.2.3.4 - - [05/Nov/2024:14:02:10 +0100] "GET shop HTTP/1.1" 200 1', "absolute URL", id="no path"),
]


@pytest.mark.parametrize(("line", "why"), COMBINED_BAD)
def test_bad_combined_lines_name_file_and_line(line: str, why: str) -> None:
    good = COMBINED_GOOD[0].values[0]
    with pytest.raises(AccessLogError, match=rf"^access\.log:3: .*{why}") as caught:
        read_combined([good, "", line, good], file="access.log")
    assert "--skip-bad" in str(caught.value)


def test_skip_bad_counts_and_names_the_skipped() -> None:
    good = COMBINED_GOOD[0].values[0]
    lines = [good, "nonsense one", good, "", "nonsense two", good]
    log = read_combined(lines, file="access.log", skip_bad=True)
    assert [r.line for r in log.requests] == [1, 3, 6]
    assert log.skipped == 2
    assert log.first_skipped == (
        "access.log:2: not in combined or common log format",
        "access.log:5: not in combined or common log format",
    )


# --------------------------------------------------------------------------- JSON lines

JSON_GOOD = [
    pytest.param(
        {"time": "2024-11-05T13:02:10Z", "method": "GET", "path": "/a?b=1", "status": 200},
        JsonFields(),
        (T0, "GET", "/a?b=1", 200, (), None),
        id="defaults, ISO time",
    ),
    pytest.param(
        {"ts": T0 * 1000, "request": "POST /orders HTTP/1.1", "status": "201", "body": '{"id": 1}'},
        JsonFields(),
        (T0, "POST", "/orders", 201, (), b'{"id": 1}'),
        id="epoch ms, request line, string status, body",
    ),
    pytest.param(
        {"@timestamp": "05/Nov/2024:14:02:10 +0100", "http": {"request": {"method": "get"}}, "url": {"path": "/x"}},
        JsonFields(),
        (T0, "GET", "/x", None, (), None),
        id="nested ECS-style names, nginx time",
    ),
    pytest.param(
        {"when": T0, "verb": "GET", "target": "https://shop.example/p?q=1", "code": 304},
        JsonFields().with_overrides({"time": "when", "path": "target", "status": "code"}),
        (T0, "GET", "/p?q=1", 304, (), None),
        id="configured field names, absolute URL",
    ),
    pytest.param(
        {"time": T0, "method": "GET", "uri": "/", "headers": {"User-Agent": "app", "Cookie": "s=1", "Host": "h"}},
        JsonFields(),
        (T0, "GET", "/", None, (("User-Agent", "app"),), None),
        id="headers object: credentials and Host dropped",
    ),
    pytest.param(
        {"time": T0, "method": "GET", "uri": "/", "headers": [["Accept", "a"], ["Accept", "b"]]},
        JsonFields(),
        (T0, "GET", "/", None, (("Accept", "a"), ("Accept", "b")), None),
        id="headers as pairs",
    ),
]


@pytest.mark.parametrize(("record", "fields", "expected"), JSON_GOOD)
def test_json_lines_are_read(record: dict[str, Any], fields: JsonFields, expected: tuple[Any, ...]) -> None:
    r = parse_json_line(json.dumps(record), line_number=2, fields=fields)
    assert (r.at, r.method, r.path, r.status, r.headers, r.body) == expected


JSON_BAD = [
    pytest.param('{"time": 1, "method": "GET"', "not JSON", id="truncated"),
    pytest.param('["GET", "/"]', "not a JSON object", id="array"),
    pytest.param('{"method": "GET", "path": "/"}', "no time: none of the fields time, timestamp", id="no time"),
    pytest.param('{"time": 1, "path": "/"}', "no method", id="no method"),
    pytest.param('{"time": 1, "method": "G T", "path": "/"}', "not a method", id="bad method"),
    pytest.param('{"time": true, "method": "GET", "path": "/"}', "not a time", id="time is a boolean"),
    pytest.param('{"time": "yesterday", "method": "GET", "path": "/"}', "time", id="time is words"),
    pytest.param('{"time": 1, "method": "GET", "path": "/", "headers": 3}', "headers", id="headers a number"),
]


@pytest.mark.parametrize(("line", "why"), JSON_BAD)
def test_bad_json_lines_name_file_and_line(line: str, why: str) -> None:
    good = json.dumps({"time": T0, "method": "GET", "path": "/"})
    with pytest.raises(AccessLogError, match=rf"^app\.jsonl:2: .*{why}"):
        read_json_lines([good, line], file="app.jsonl")
    log = read_json_lines([good, line, good], file="app.jsonl", skip_bad=True)
    assert (len(log.requests), log.skipped) == (2, 1)


def test_unknown_json_field_override_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown JSON log field tiem; known: body, headers"):
        JsonFields().with_overrides({"tiem": "ts"})


def test_credentials_travel_only_when_asked() -> None:
    line = json.dumps({"time": T0, "method": "GET", "path": "/", "headers": {"Authorization": "Bearer t"}})
    assert parse_json_line(line, line_number=1).headers == ()
    kept = parse_json_line(line, line_number=1, keep_credentials=True)
    assert kept.headers == (("Authorization", "Bearer t"),)


# --------------------------------------------------------------------------- HAR


def har(*entries: Any) -> dict[str, Any]:
    return {"log": {"version": "1.2", "entries": list(entries)}}


def har_entry(method: str = "GET", url: str = "https://shop.example/a", **extra: Any) -> dict[str, Any]:
    request = {"method": method, "url": url, "headers": [{"name": ":authority", "value": "shop.example"}]}
    request.update(extra)
    return {"startedDateTime": "2024-11-05T13:02:10.500Z", "request": request, "response": {"status": 200}}


def test_har_entries_are_read() -> None:
    body = base64.b64encode(b"\x00\x01binary").decode()
    log = read_har(
        har(
            har_entry(),
            har_entry("post", "http://h/p?x=1", postData={"mimeType": "text/plain", "text": "hello"}),
            har_entry("PUT", "http://h/b", postData={"text": body, "encoding": "base64"}),
        ),
        file="s.har",
    )
    assert [(r.at, r.method, r.path, r.body, r.line) for r in log.requests] == [
        (T0 + 0.5, "GET", "/a", None, 1),
        (T0 + 0.5, "POST", "/p?x=1", b"hello", 2),
        (T0 + 0.5, "PUT", "/b", b"\x00\x01binary", 3),
    ]
    assert all(r.headers == () and r.status == 200 for r in log.requests)  # the pseudo-header is dropped


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        pytest.param({"startedDateTime": "2024-11-05T13:02:10Z"}, "no request object", id="no request"),
        pytest.param(har_entry("G E T"), "request.method is not a method", id="bad method"),
        pytest.param(har_entry(url="shop"), "not a path or an absolute URL", id="bad url"),
        pytest.param({**har_entry(), "startedDateTime": "noon"}, "not ISO 8601", id="bad time"),
        pytest.param(har_entry(headers={"a": "b"}), "headers is not a list", id="headers an object"),
        pytest.param(har_entry(postData={"text": "!!", "encoding": "base64"}), "not base64", id="bad base64"),
    ],
)
def test_bad_har_entries_name_file_and_entry(entry: dict[str, Any], why: str) -> None:
    with pytest.raises(AccessLogError, match=rf"^s\.har: entry 2: .*{why}"):
        read_har(har(har_entry(), entry), file="s.har")
    assert read_har(har(har_entry(), entry), file="s.har", skip_bad=True).skipped == 1


def test_a_document_that_is_not_a_har_is_an_error_even_when_skipping() -> None:
    with pytest.raises(AccessLogError, match=r"not a HAR archive: no log\.entries list"):
        read_har({"log": {}}, file="s.har", skip_bad=True)


# --------------------------------------------------------------------------- files and formats


@pytest.mark.parametrize(
    ("name", "head", "expected"),
    [
        ("a.har", "", "har"),
        ("a.jsonl", "", "jsonl"),
        ("a.ndjson.gz", "", "jsonl"),
        ("a.json", '{\n  "log": {"version": "1.2"', "har"),
        ("a.log", '{"time": 1}', "jsonl"),
        ("access.log.1", '1.2.3.4 - - [05/Nov/2024:14:02:10 +0100] "GET / HTTP/1.1" 200 1', "combined"),
    ],
)
def test_format_detection(name: str, head: str, expected: str) -> None:
    assert detect_format(Path(name), head) == expected


def test_read_log_detects_reads_gzip_and_obeys_an_explicit_format(tmp_path: Path) -> None:
    line = json.dumps({"time": T0, "method": "GET", "path": "/z"})
    plain = tmp_path / "app.log"
    plain.write_text(line + "\n\n" + line + "\n")
    packed = tmp_path / "app.log.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    for path in (plain, packed):
        log = read_log(path)
        assert (log.format, [r.line for r in log.requests]) == ("jsonl", [1, 3])
    with pytest.raises(AccessLogError, match=r"app\.log:1: not in combined"):
        read_log(plain, format="combined")
    with pytest.raises(AccessLogError, match="unknown log format 'w3c'; known: combined, jsonl, har"):
        read_log(plain, format="w3c")


def test_unreadable_logs_are_errors_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(AccessLogError, match=r"missing\.log: cannot read: No such file"):
        read_log(tmp_path / "missing.log")
    broken = tmp_path / "broken.har"
    broken.write_text('{"log": {"entries": [\n{"startedDateTime": ,}]}}')
    with pytest.raises(AccessLogError, match=r"broken\.har:2: not a HAR archive"):
        read_log(broken)
    truncated = tmp_path / "cut.log.gz"
    packed = gzip.compress(b"".join(f'{{"time": {i}, "method": "GET", "path": "/{i}"}}\n'.encode() for i in range(500)))
    truncated.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(AccessLogError, match=r"cut\.log\.gz: cannot read: Compressed file ended"):
        read_log(truncated, skip_bad=True)


def test_the_shipped_examples_read_cleanly() -> None:
    log = read_log(EXAMPLES / "access.log")
    assert (log.format, len(log.requests), log.skipped) == ("combined", 200, 0)
    assert 15 <= log.requests[-1].at - log.requests[0].at <= 25
    assert {r.method for r in log.requests} >= {"GET", "HEAD", "POST", "PUT", "DELETE"}
    har_log = read_log(EXAMPLES / "access.har")
    assert har_log.format == "har"
    assert har_log.skipped == 0
    assert len(har_log.requests) >= 5
    names = {name.lower() for r in har_log.requests for name, _ in r.headers}
    assert "user-agent" in names
    assert not names & {"cookie", "authorization", ":authority"}
