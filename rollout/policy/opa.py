"""An external OPA server as the policy engine, through its REST Data API, failing closed.

``POST {url}/v1/data/{path}`` with ``{"input": ...}`` answers ``{"result": ...}``;
when the rule is undefined OPA answers ``{}`` with no ``result`` at all, which
is a deny here, as are an HTTP error, a timeout, an unreachable server and a body
that is not JSON: each names what happened. A ``result`` is read exactly as the
embedded engine reads its decision (:func:`~vouch.rollout.policy.input.read_decision`).

One ``httpx.AsyncClient`` serves every decision (building one costs tens of
milliseconds of CPU for its TLS context).

Example::

    policy = OpaPolicy("http://127.0.0.1:8181", "vouch/decision", timeout=2.0)
    try:
        decision = await policy.decide(document)
    finally:
        await policy.close()
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import httpx

from vouch.rollout.policy.base import Decision
from vouch.rollout.policy.input import UNDEFINED, Answer, canonical_digest, canonical_json, failure, read_decision

_SHOWN = 200
"""Longest excerpt of an error body quoted in a denial."""


class OpaPolicy:
    """Decisions from an OPA server's ``/v1/data/{path}``.

    ``path`` is the rule's path with slashes (``vouch/decision`` for
    ``data.vouch.decision``). ``policy_digest`` is the digest of the endpoint
    and of the bundle revisions OPA reports (``provenance``), which is all a
    client can know of the policy a server ran.
    """

    def __init__(
        self,
        url: str,
        path: str,
        *,
        timeout: float = 5.0,
        full_statements: bool = True,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.path = path.strip("/")
        self.endpoint = f"{self.url}/v1/data/{self.path}"
        self.timeout = timeout
        self._full_statements = full_statements
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=timeout)

    @property
    def full_statements(self) -> bool:
        """Whether the server's policy is sent each attestation's whole statement, not only its projection."""
        return self._full_statements

    async def decide(self, input: Mapping[str, Any]) -> Decision:
        """Ask the server; never raises for what the server does (see the module docstring)."""
        start = time.perf_counter()
        try:
            text = canonical_json({"input": input})
        except (TypeError, ValueError) as exc:
            denial = f"policy input is not a JSON document: {exc}"
            return Decision(False, (denial,), "", "", time.perf_counter() - start, failed=True)
        input_digest = canonical_digest(input)
        answer, provenance = await self._ask(text)
        return Decision(
            allow=answer.allow,
            denials=answer.denials,
            failed=answer.failed,
            input_digest=input_digest,
            policy_digest=canonical_digest({"endpoint": self.endpoint, "provenance": provenance}),
            elapsed=time.perf_counter() - start,
        )

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def _ask(self, text: str) -> tuple[Answer, Any]:
        where = f"OPA at {self.endpoint}"
        try:
            response = await self._client.post(
                self.endpoint,
                content=text.encode(),
                params={"provenance": "true"},
                headers={"Content-Type": "application/json"},
                timeout=self.timeout,
            )
        except httpx.TimeoutException:
            return failure(f"{where} gave no answer within {self.timeout:g}s"), None
        except httpx.HTTPError as exc:
            return failure(f"{where} could not be asked: {type(exc).__name__}: {exc}"), None
        if response.status_code != 200:
            return failure(f"{where} answered HTTP {response.status_code}: {_error_text(response)}"), None
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return failure(f"{where} answered with a body that is not JSON ({exc}): {response.text[:_SHOWN]!r}"), None
        if not isinstance(body, dict):
            return failure(f"{where} answered with JSON that is not an object: {response.text[:_SHOWN]!r}"), None
        provenance = body.get("provenance")
        if "result" not in body:
            return failure(f"{UNDEFINED}: {where} returned no result"), provenance
        return read_decision(body["result"]), provenance


def _error_text(response: httpx.Response) -> str:
    """OPA's ``{"code", "message"}`` error, or an excerpt of whatever else came back."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and "message" in body:
        code = f"{body['code']}: " if body.get("code") else ""
        return f"{code}{body['message']}"[:_SHOWN]
    return repr(response.text[:_SHOWN]) if response.text else "(empty body)"
