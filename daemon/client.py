"""The CLI's client of the daemon's HTTP API: one method per route, errors in vouch's own tree.

Synchronous on purpose: the CLI makes one request at a time. Every failure
leaves as a :class:`~vouch.core.errors.VouchError` whose message tells the
user what to do next; httpx's exceptions never escape.

    with VouchClient("http://127.0.0.1:8080", token) as client:
        release = client.submit("checkout", "2.4.1", environment="staging")
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from vouch.core.errors import AuthError, ConflictError, InputError, NotFoundError, VouchError

ACTOR_HEADER = "X-Vouch-Actor"


class DaemonUnreachable(VouchError):
    """The daemon did not answer, or failed while answering; trying again later may help."""

    retryable = True


def _start_hint(base_url: str) -> str:
    return f"is `vouch daemon` running at {base_url}? start it with `vouch daemon --config FILE`"


def _error_of(response: httpx.Response) -> tuple[str, str | None]:
    """The API's ``{"error": {"message", "field"}}``, or the raw text when it is not that."""
    try:
        body = response.json()
        error = body["error"]
        message, field = str(error["message"]), error.get("field")
        return message, str(field) if field is not None else None
    except (ValueError, KeyError, TypeError):
        return (response.text.strip()[:200] or response.reason_phrase), None


def _not_leader(response: httpx.Response) -> bool:
    """A follower's refusal: another replica leads (or is being elected); the same request will succeed there."""
    if response.status_code != 503:
        return False
    try:
        return bool(response.json()["error"]["code"] == "not_leader")
    except (ValueError, KeyError, TypeError):
        return False


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(max(float(response.headers.get("Retry-After", "1")), 0.1), 5.0)
    except ValueError:
        return 1.0


def _query(**params: object) -> dict[str, str]:
    """Query parameters without the unset ones; booleans as the API spells them."""
    out: dict[str, str] = {}
    for name, value in params.items():
        if value is None:
            continue
        out[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def _segment(value: str) -> str:
    if not value:
        raise InputError("an id must not be empty")
    return quote(value, safe="")


class VouchClient:
    """A connection to one daemon. Use it as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        actor: str | None = None,
        leader_wait: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``leader_wait``: how long a request answered "not the leader" (a failover under way) is retried."""
        try:
            url = httpx.URL(base_url)
        except httpx.InvalidURL as exc:
            raise InputError(f"{base_url!r} is not a URL: {exc}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise InputError(f"the daemon's URL must look like http://HOST:PORT, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._leader_wait = leader_wait
        self._sleep = sleep
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if actor:
            headers[ACTOR_HEADER] = actor
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> VouchClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ----------------------------------------------------------------- the exchange

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: object = None,
        expect_json: bool = True,
    ) -> Any:
        response = self._exchange(method, path, params=params, body=body)
        give_up = time.monotonic() + self._leader_wait
        while _not_leader(response) and time.monotonic() < give_up:
            self._sleep(_retry_after(response))
            response = self._exchange(method, path, params=params, body=body)
        if response.is_error:
            self._raise_for(response)
        if not expect_json:
            return response.text
        try:
            return response.json()
        except ValueError as exc:
            raise DaemonUnreachable(
                f"{self.base_url} answered {method} {path} with something other than JSON; {_start_hint(self.base_url)}"
            ) from exc

    def _exchange(self, method: str, path: str, *, params: Mapping[str, str] | None, body: object) -> httpx.Response:
        try:
            return self._http.request(method, path, params=params, json=body)
        except httpx.TimeoutException as exc:
            raise DaemonUnreachable(
                f"the vouch daemon at {self.base_url} did not answer within {self._timeout:g}s; "
                f"{_start_hint(self.base_url)}"
            ) from exc
        except httpx.TransportError as exc:
            raise DaemonUnreachable(
                f"cannot reach the vouch daemon at {self.base_url} ({exc or type(exc).__name__}); "
                f"{_start_hint(self.base_url)}"
            ) from exc

    def _raise_for(self, response: httpx.Response) -> None:
        message, field = _error_of(response)
        status = response.status_code
        if status == 401:
            raise AuthError(
                f"the daemon at {self.base_url} refused the token ({message}); use the token the daemon "
                "printed or wrote to its token file: --token, $VOUCH_TOKEN or --token-file"
            )
        if status == 404:
            raise NotFoundError(message)
        if status == 409:
            raise ConflictError(message)
        if status < 500:
            raise InputError(f"{field}: {message}" if field and field not in message else message)
        raise DaemonUnreachable(
            f"the vouch daemon at {self.base_url} failed (HTTP {status}: {message}); "
            "see the daemon's log, then try again"
        )

    # ----------------------------------------------------------------- the routes

    def submit(
        self,
        service: str,
        version: str,
        *,
        environment: str | None = None,
        artifact: Mapping[str, str] | None = None,
        commit: Mapping[str, str | None] | None = None,
    ) -> dict[str, Any]:
        """Starts a release; ``environment`` None runs the service's whole chain."""
        body: dict[str, Any] = {"service": service, "version": version}
        if environment is not None:
            body["environment"] = environment
        if artifact is not None:
            body["artifact"] = dict(artifact)
        if commit is not None:
            body["commit"] = {k: v for k, v in commit.items() if v is not None}
        result: dict[str, Any] = self._request("POST", "/api/v1/promotions", body=body)
        return result

    def list_promotions(
        self,
        *,
        service: str | None = None,
        environment: str | None = None,
        active: bool | None = None,
        release: str | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        params = _query(service=service, environment=environment, active=active, release=release, limit=limit)
        result: dict[str, Any] = self._request("GET", "/api/v1/promotions", params=params)
        return result

    def get_promotion(self, promotion_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", f"/api/v1/promotions/{_segment(promotion_id)}")
        return result

    def abort(self, promotion_id: str, *, reason: str | None = None) -> dict[str, Any]:
        body = {"reason": reason} if reason is not None else {}
        path = f"/api/v1/promotions/{_segment(promotion_id)}/abort"
        result: dict[str, Any] = self._request("POST", path, body=body)
        return result

    def list_releases(
        self, *, service: str | None = None, active: bool | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        params = _query(service=service, active=active, limit=limit)
        result: dict[str, Any] = self._request("GET", "/api/v1/releases", params=params)
        return result

    def get_release(self, release_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", f"/api/v1/releases/{_segment(release_id)}")
        return result

    def events(
        self,
        *,
        after: int | None = None,
        promotion: str | None = None,
        release: str | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        params = _query(after=after, promotion=promotion, release=release, limit=limit)
        result: dict[str, Any] = self._request("GET", "/api/v1/events", params=params)
        return result

    def send_alerts(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Posts an Alertmanager webhook payload (version 4), as Alertmanager would."""
        result: dict[str, Any] = self._request("POST", "/api/v1/alerts", body=dict(payload))
        return result

    def list_alerts(self, *, limit: int | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/api/v1/alerts", params=_query(limit=limit))
        return result

    def grant_override(
        self,
        service: str,
        *,
        environment: str,
        gate: str,
        reason: str,
        version: str | None = None,
        ttl: str | None = None,
    ) -> dict[str, Any]:
        """Grant a break-glass override of ``gate``; the actor is this client's. Returns ``{"override": ...}``."""
        body = {"service": service, "environment": environment, "gate": gate, "reason": reason}
        body |= {k: v for k, v in (("version", version), ("ttl", ttl)) if v is not None}
        result: dict[str, Any] = self._request("POST", "/api/v1/overrides", body=body)
        return result

    def list_overrides(
        self, *, service: str | None = None, environment: str | None = None, used: bool | None = None
    ) -> dict[str, Any]:
        params = _query(service=service, environment=environment, used=used)
        result: dict[str, Any] = self._request("GET", "/api/v1/overrides", params=params)
        return result

    def notify_pr(
        self,
        repo: str,
        number: int,
        *,
        step: str,
        status: str,
        url: str | None = None,
        message: str | None = None,
    ) -> dict[str, Any]:
        """Report one step of a pull request's pipeline; the daemon threads it under the PR's chat message."""
        body: dict[str, Any] = {"repo": repo, "number": number, "step": step, "status": status}
        body |= {k: v for k, v in (("url", url), ("message", message)) if v is not None}
        result: dict[str, Any] = self._request("POST", "/api/v1/notify/pr", body=body)
        return result

    def health(self) -> dict[str, Any]:
        """``/healthz``: the daemon process answers."""
        result: dict[str, Any] = self._request("GET", "/healthz")
        return result

    def ready(self) -> bool:
        """``/readyz``: the daemon answers and can act on requests."""
        try:
            self._request("GET", "/readyz")
        except DaemonUnreachable:
            return False
        return True


RELEASE_CLOSING_EVENTS = frozenset({"release.succeeded", "release.failed"})
"""The event the daemon writes just after it saves a release's final phase."""


def follow_release(
    client: VouchClient,
    release_id: str,
    *,
    on_event: Callable[[dict[str, Any]], None],
    on_poll: Callable[[dict[str, Any]], None] | None = None,
    poll: float = 0.25,
    grace: float = 2.0,
) -> dict[str, Any]:
    """Stream a release's events to ``on_event`` until it ends; return the release and its promotions.

    The release is read before its events, so once it reads as finished every event before its end is
    on record, except perhaps the closing one, written just after the phase: the stream goes on until
    that shows, or for ``grace`` seconds (a daemon stopped between the two writes never writes it).
    ``on_poll`` sees each reading of the release and its promotions, to act while it runs.
    """
    after = 0
    closed = False
    ended_at: float | None = None
    while True:
        got = client.get_release(release_id)
        if on_poll is not None:
            on_poll(got)
        for event in client.events(release=release_id, after=after)["events"]:
            on_event(event)
            after = max(after, event["id"])
            closed = closed or event["kind"] in RELEASE_CLOSING_EVENTS
        if got["release"]["phase"] != "Progressing":
            ended_at = time.monotonic() if ended_at is None else ended_at
            if closed or time.monotonic() - ended_at >= grace:
                return {"release": got["release"], "promotions": got["promotions"]}
        time.sleep(poll)
