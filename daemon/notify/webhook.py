"""A generic webhook: each notice POSTed as JSON, signed so the receiver can trust it came from vouch.

The signature covers the timestamp and the exact body bytes:
``X-Vouch-Signature: sha256=HEX(HMAC-SHA256(secret, timestamp + "." + body))``
with ``X-Vouch-Timestamp`` in whole seconds, so a receiver can refuse stale or
replayed deliveries. Any answer other than 2xx is a failure the dispatcher
retries.

>>> signature("k", "1700000000", b"{}")
'sha256=c6ef4734033cee2367414a0939385eca0397754aa7a59716da7463a9298b5146'
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable

import httpx

from vouch.daemon.notify.base import Notice, NotifyError
from vouch.daemon.notify.settings import WebhookNotifierSpec

TIMESTAMP_HEADER = "X-Vouch-Timestamp"
SIGNATURE_HEADER = "X-Vouch-Signature"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The value of ``X-Vouch-Signature`` for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(secret: str, *, timestamp: str, body: bytes, header: str) -> bool:
    """What a receiver written in Python checks (in constant time)."""
    return hmac.compare_digest(signature(secret, timestamp, body), header)


def body_of(notice: Notice) -> bytes:
    """The JSON body: the notice's fields, keys sorted, compact."""
    return json.dumps(notice.to_dict(), sort_keys=True, separators=(",", ":"), default=str).encode()


class WebhookNotifier:
    """POSTs notices to one URL over a client of its own, kept open for the daemon's life."""

    def __init__(
        self,
        spec: WebhookNotifierSpec,
        *,
        secret: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = spec.name
        self._spec = spec
        self._secret = secret
        self._clock = clock
        self._client = httpx.AsyncClient(timeout=spec.timeout, follow_redirects=False)

    async def send(self, notice: Notice) -> None:
        body = body_of(notice)
        headers = {"Content-Type": "application/json", "User-Agent": "vouch-notify"}
        if self._secret is not None:
            timestamp = str(int(self._clock()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = signature(self._secret, timestamp, body)
        try:
            response = await self._client.post(self._spec.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise NotifyError(f"webhook {self.name}: {type(exc).__name__}: {exc}") from exc
        if not response.is_success:
            raise NotifyError(f"webhook {self.name}: HTTP {response.status_code} from {self._spec.url}")

    async def close(self) -> None:
        await self._client.aclose()
