"""The nginx/Apache "combined" access log format (and "common", its shorter parent).

``$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer"
"$http_user_agent"``; anything after the user agent (``$request_time``, upstream fields) is ignored.
Times have a one-second resolution, with fractional seconds accepted when a log has them. nginx
writes a line when a request *ends*, so lines are not quite in start order: the schedule sorts them.

>>> line = '10.0.0.1 - - [10/Oct/2024:13:55:36 +0000] "GET /cart?id=7 HTTP/1.1" 200 12 "-" "curl/8.5"'
>>> r = parse_combined_line(line, line_number=1)
>>> (r.method, r.path, r.status, r.headers)
('GET', '/cart?id=7', 200, (('User-Agent', 'curl/8.5'),))
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

from vouch.loadtests.replay.record import BadRecords, LoggedRequest, ParsedLog, path_of, safe_headers

LINE = re.compile(
    r"^\S+ \S+ \S+ \[(?P<time>[^\]]+)\] "
    r'"(?P<request>(?:[^"\\]|\\.)*)" (?P<status>\d{3}|-) (?:\d+|-)'
    r'(?: "(?P<referer>(?:[^"\\]|\\.)*)" "(?P<agent>(?:[^"\\]|\\.)*)")?(?:\s.*)?$'
)
TIME = re.compile(
    r"^(?P<day>\d{1,2})/(?P<month>[A-Za-z]{3})/(?P<year>\d{4}):(?P<h>\d{2}):(?P<m>\d{2}):(?P<s>\d{2}(?:\.\d+)?)"
    r" (?P<sign>[+-])(?P<zh>\d{2})(?P<zm>\d{2})$"
)
MONTHS = {
    name: i
    for i, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1
    )
}
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|.)")


def parse_time_local(text: str) -> float:
    """``10/Oct/2024:13:55:36 +0200`` as seconds since the epoch (month names in English, whatever the locale).

    >>> parse_time_local("01/Jan/1970:00:00:01.5 +0000")
    1.5
    """
    match = TIME.match(text.strip())
    if match is None or match["month"].lower() not in MONTHS:
        raise ValueError(f"not a [day/Mon/year:hh:mm:ss +zone] time: {text!r}")
    seconds = float(match["s"])
    offset = timedelta(hours=int(match["zh"]), minutes=int(match["zm"]))
    zone = timezone(offset if match["sign"] == "+" else -offset)
    moment = datetime(
        int(match["year"]), MONTHS[match["month"].lower()], int(match["day"]), int(match["h"]), int(match["m"]), 0
    )
    return moment.replace(tzinfo=zone).timestamp() + seconds


def unescape(text: str) -> str:
    r"""Undo the log's escaping: nginx writes ``\x22``, Apache ``\"``; both write ``\\``.

    >>> unescape(r'/q?s=\x22a\x22&t=\"b\"')
    '/q?s="a"&t="b"'
    """

    def one(match: re.Match[str]) -> str:
        code = match[1]
        return chr(int(code[1:], 16)) if len(code) == 3 and code[0] == "x" else code

    return _ESCAPE.sub(one, text)


def parse_combined_line(line: str, *, line_number: int, keep_credentials: bool = False) -> LoggedRequest:
    """One log line as a request; ``ValueError`` says why a line is not one."""
    match = LINE.match(line.rstrip("\r\n"))
    if match is None:
        raise ValueError("not in combined or common log format")
    request = unescape(match["request"]).split(" ")
    if len(request) not in (2, 3) or not request[0].isalpha() or not request[1]:
        raise ValueError(f"no request line: {match['request'][:80]!r}")
    headers = []
    for name, group in (("Referer", "referer"), ("User-Agent", "agent")):
        value = match[group]
        if value and value != "-":
            headers.append((name, unescape(value)))
    status = match["status"]
    return LoggedRequest(
        at=parse_time_local(match["time"]),
        method=request[0].upper(),
        path=path_of(request[1]),
        headers=safe_headers(headers, keep_credentials=keep_credentials),
        status=int(status) if status != "-" else None,
        line=line_number,
    )


def read_combined(
    lines: Iterable[str], *, file: str, skip_bad: bool = False, keep_credentials: bool = False
) -> ParsedLog:
    """Every request of a combined (or common) format log; blank lines are not records."""
    bad = BadRecords(file, skip_bad=skip_bad)
    found = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            found.append(parse_combined_line(line, line_number=number, keep_credentials=keep_credentials))
        except ValueError as exc:
            bad.bad(number, str(exc))
    return bad.result("combined", found)
