"""One request read from an access log, and what every log reader shares: which headers travel, bad lines.

A replay sends logged requests to another host, so what it carries over is decided here, once:
credentials (``Cookie``, ``Authorization`` and the like) stay behind unless the caller asks for them by
the loud name ``keep_credentials``, and headers that describe the original connection (``Host``,
``Content-Length``, ``Connection``, HTTP/2 pseudo-headers) always do, because the replay makes its own.

>>> safe_headers([("Host", "shop.example"), ("User-Agent", "curl/8"), ("Cookie", "sid=1")])
(('User-Agent', 'curl/8'),)
>>> safe_headers([("Cookie", "sid=1")], keep_credentials=True)
(('Cookie', 'sid=1'),)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from vouch.loadtests.errors import AccessLogError

CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "x-auth-token",
        "x-csrf-token",
        "x-xsrf-token",
        "x-amz-security-token",
    }
)
"""Headers that carry someone's identity: replaying them would act as that person."""

CONNECTION_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
    }
)
"""Headers about the original connection: the replay's own connection sets them."""


@dataclass(frozen=True)
class LoggedRequest:
    """One request as a log recorded it, ready to be replayed against another host."""

    at: float
    """When it was made, in seconds since the epoch (only differences between requests matter)."""
    method: str
    """Upper case, as sent: ``GET``, ``POST``."""
    path: str
    """Path and query (``/search?q=shoes``), never a scheme or host: the replay picks the host."""
    headers: tuple[tuple[str, str], ...] = ()
    """Only the safe ones (see :func:`safe_headers`), in logged order."""
    body: bytes | None = None
    status: int | None = None
    """The status the log recorded, when it did: a replay expects no worse."""
    line: int = 0
    """Where it came from: the line of a line-based log, the entry number (from 1) of a HAR."""


@dataclass(frozen=True)
class ParsedLog:
    """Everything a log reader returns: the requests in file order and how many records were skipped."""

    file: str
    format: str
    requests: tuple[LoggedRequest, ...]
    skipped: int = 0
    """Bad records left out with ``skip_bad`` (otherwise the first one is an error)."""
    first_skipped: tuple[str, ...] = ()
    """The first few skipped records' ``FILE:LINE: why``, so people can see what was wrong."""


def safe_headers(headers: Iterable[tuple[str, str]], *, keep_credentials: bool = False) -> tuple[tuple[str, str], ...]:
    """The headers a replay may send: no connection headers, no pseudo-headers, no credentials unless asked."""
    kept = []
    for name, value in headers:
        lower = name.strip().lower()
        if not lower or lower.startswith(":") or lower in CONNECTION_HEADERS:
            continue
        if lower in CREDENTIAL_HEADERS and not keep_credentials:
            continue
        kept.append((name.strip(), value))
    return tuple(kept)


def path_of(target: str) -> str:
    """Path and query of a logged request target, which may be a full URL (HAR, proxies, JSON logs).

    >>> path_of("https://shop.example:8443/cart?id=7#top")
    '/cart?id=7'
    >>> path_of("/cart")
    '/cart'
    """
    if target.startswith("/"):
        return target.split("#", 1)[0]
    parts = urlsplit(target)
    if not parts.scheme or not parts.netloc:
        raise ValueError(f"not a path or an absolute URL: {target[:80]!r}")
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path


class BadRecords:
    """Either raises on the first bad record or counts them (``skip_bad``): one policy for every reader."""

    KEEP = 5
    """How many skipped records are named in the result."""

    def __init__(self, file: Path | str, *, skip_bad: bool) -> None:
        self.file = str(file)
        self.skip_bad = skip_bad
        self.count = 0
        self.first: list[str] = []

    def bad(self, line: int, why: str, *, unit: str = "line") -> None:
        """Record one bad record; raises :class:`AccessLogError` unless bad records are skipped."""
        where = f"{self.file}:{line}" if unit == "line" else f"{self.file}: {unit} {line}"
        message = f"{where}: {why}"
        if not self.skip_bad:
            raise AccessLogError(f"{message} (--skip-bad leaves such records out and counts them)")
        self.count += 1
        if len(self.first) < self.KEEP:
            self.first.append(message)

    def result(self, format: str, requests: Iterable[LoggedRequest]) -> ParsedLog:
        return ParsedLog(
            file=self.file,
            format=format,
            requests=tuple(requests),
            skipped=self.count,
            first_skipped=tuple(self.first),
        )
