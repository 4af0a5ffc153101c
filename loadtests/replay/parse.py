"""Read an access log of any supported format: nginx/Apache combined, JSON lines or HAR 1.2.

The format comes from ``format`` when given, else from the extension (``.har``, ``.jsonl``,
``.ndjson``), else from the content (a JSON object opening with ``"log"`` is a HAR, other JSON
objects are JSON lines, anything else is combined). Logs compressed with gzip (``access.log.1.gz``)
are read as they are.

Example::

    log = read_log(Path("examples/access.log"))
    print(log.format, len(log.requests), log.skipped)
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import IO

from vouch.loadtests.errors import AccessLogError
from vouch.loadtests.replay.combined import read_combined
from vouch.loadtests.replay.har import read_har
from vouch.loadtests.replay.jsonlines import JsonFields, read_json_lines
from vouch.loadtests.replay.record import ParsedLog

FORMATS = ("combined", "jsonl", "har")
"""The formats :func:`read_log` reads, by the names ``--format`` takes."""

_HAR_START = re.compile(r'\{\s*"log"\s*:')


def detect_format(path: Path, head: str) -> str:
    """The format of a log named ``path`` whose first characters are ``head``.

    >>> detect_format(Path("a.log"), '{"log": {"entries": []}}'), detect_format(Path("a.log.gz"), '{"ts": 1}')
    ('har', 'jsonl')
    >>> detect_format(Path("access.log"), '10.0.0.1 - - [10/Oct/2024:13:55:36 +0000] "GET / HTTP/1.1" 200 1')
    'combined'
    """
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    extension = suffixes[-1] if suffixes else ""
    if extension == ".har":
        return "har"
    if extension in (".jsonl", ".ndjson"):
        return "jsonl"
    text = head.lstrip()
    if text.startswith("{"):
        return "har" if _HAR_START.match(text) else "jsonl"
    return "combined"


def _open(path: Path) -> IO[str]:
    """The log as text; bytes that are not UTF-8 are kept visible (``\\xff``) rather than failing the read."""
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="backslashreplace")
    return path.open(encoding="utf-8", errors="backslashreplace", newline="")


def read_log(
    path: Path,
    *,
    format: str | None = None,
    skip_bad: bool = False,
    keep_credentials: bool = False,
    fields: JsonFields | None = None,
) -> ParsedLog:
    """Every request in the log at ``path``, in file order.

    A bad record raises :class:`AccessLogError` naming the file and line (or HAR entry); with
    ``skip_bad`` it is left out and counted. ``keep_credentials`` carries ``Cookie``,
    ``Authorization`` and the like into the replay, acting as the people who made the requests.
    """
    if format is not None and format not in FORMATS:
        raise AccessLogError(f"{path}: unknown log format {format!r}; known: {', '.join(FORMATS)}")
    try:
        with _open(path) as stream:
            if format is None:
                head = stream.read(4096)
                stream.seek(0)
                format = detect_format(path, head)
            return _read(
                stream,
                file=str(path),
                format=format,
                skip_bad=skip_bad,
                keep_credentials=keep_credentials,
                fields=fields or JsonFields(),
            )
    except (OSError, EOFError) as exc:  # missing, unreadable, a truncated gzip member
        raise AccessLogError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from exc


def _read(
    stream: IO[str], *, file: str, format: str, skip_bad: bool, keep_credentials: bool, fields: JsonFields
) -> ParsedLog:
    if format == "har":
        try:
            document = json.load(stream)
        except json.JSONDecodeError as exc:
            raise AccessLogError(f"{file}:{exc.lineno}: not a HAR archive: {exc.msg}") from exc
        return read_har(document, file=file, skip_bad=skip_bad, keep_credentials=keep_credentials)
    lines = (line.rstrip("\r\n") for line in stream)
    if format == "jsonl":
        return read_json_lines(lines, file=file, fields=fields, skip_bad=skip_bad, keep_credentials=keep_credentials)
    return read_combined(lines, file=file, skip_bad=skip_bad, keep_credentials=keep_credentials)
