"""JSON over one Kubernetes API server, with timeouts and retries: the boundary to the client library.

Why ``kubernetes_asyncio`` rather than the official synchronous client in worker threads: the
daemon is one asyncio program, and a request that must be abandoned (a timeout, a promotion being
stopped) is then really cancelled — its connection closed — instead of a thread that keeps
blocking and may still land its write after the caller gave up. It runs on aiohttp, which vouch
already uses, needs no thread pool to size, and builds one independent client per kubeconfig
context, which is what multi-cluster environments need.

Objects travel as plain JSON dicts (the library's models are bypassed): vouch copies pod templates
verbatim, and a field the model does not know must survive the copy. Writes are JSON merge patches
(RFC 7386) of absolute values (``replicas: 3``, never "+1"), so repeating one after a timeout whose
answer was lost converges to the same object.

Errors: :class:`KubeApiError`, internal to the Kubernetes modules; each caller translates it into
its own :class:`~vouch.core.errors.VouchError` (the platform into ``PlatformError`` or
``PlatformUnavailable``).

Example::

    api = KubeApi(await connect(context="prod"), RetryPolicy())
    deployment = await api.get(path("apps/v1", "deployments", "shop", "checkout"))
    await api.patch(path("apps/v1", "deployments", "shop", "checkout"), {"spec": {"replicas": 3}})
    await api.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp

if TYPE_CHECKING:
    # kubernetes_asyncio loads every API model on import (a fifth of a second): only Kubernetes work imports it.
    from kubernetes_asyncio.client import ApiClient
    from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({409, 429, 500, 502, 503, 504})
"""Conflicts, throttling and server trouble: the same request may well succeed a moment later."""

MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True)
class RetryPolicy:
    """How one API call is bounded and retried."""

    request_timeout: float = 10.0
    """Longest one attempt may take."""
    initial: float = 0.2
    """First back-off; doubled after each failed attempt up to ``maximum``."""
    maximum: float = 5.0
    deadline: float = 30.0
    """No attempt starts after this long; the last error is raised instead."""


class KubeApiError(Exception):
    """A request failed: an API status (``status``), or no answer at all (``status`` is None).

    Internal to the Kubernetes modules: callers translate it into their own error type.
    """

    def __init__(self, status: int | None, reason: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{status or 'no answer'} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Transport failures, timeouts, conflicts, throttling and 5xx may pass; the rest are refusals."""
        return self.status is None or self.status in RETRYABLE_STATUS


def path(group_version: str, resource: str, namespace: str, name: str | None = None) -> str:
    """The API path of a namespaced collection or object.

    >>> path("apps/v1", "deployments", "shop", "web")
    '/apis/apps/v1/namespaces/shop/deployments/web'
    >>> path("v1", "pods", "shop")
    '/api/v1/namespaces/shop/pods'
    """
    root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    found = f"{root}/namespaces/{quote(namespace, safe='')}/{resource}"
    return f"{found}/{quote(name, safe='')}" if name is not None else found


async def connect(*, context: str | None = None, kubeconfig: str | None = None, in_cluster: bool = False) -> ApiClient:
    """A client for one cluster: in-cluster, or a kubeconfig context (see the settings module for the defaults).

    Raises :class:`KubeApiError` (status None, not retryable in practice: ``reason`` "Config")
    when the configuration cannot be loaded.
    """
    from kubernetes_asyncio import config as kube_config
    from kubernetes_asyncio.client import ApiClient, Configuration
    from kubernetes_asyncio.config.config_exception import ConfigException

    auto_in_cluster = context is None and kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ
    try:
        if in_cluster or auto_in_cluster:
            configuration = Configuration()
            kube_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return ApiClient(configuration)
        return await kube_config.new_client_from_config(
            config_file=kubeconfig,  # None: $KUBECONFIG, else ~/.kube/config
            context=context,
            persist_config=False,
        )
    except (ConfigException, OSError, ValueError, KeyError, TypeError) as exc:
        where = "in-cluster" if in_cluster or auto_in_cluster else f"context {context or '(current)'}"
        raise KubeApiError(None, "Config", f"cannot load the Kubernetes configuration ({where}): {exc}") from exc


class KubeApi:
    """Plain-JSON requests to one API server; every call is bounded and retried per :class:`RetryPolicy`.

    With ``reconnect``, an answer of 401 (credentials expired: a rotated service-account token, an
    exec plugin's short-lived token) makes one fresh client from it and tries again once.
    """

    def __init__(
        self, client: ApiClient, retry: RetryPolicy, *, reconnect: Callable[[], Awaitable[ApiClient]] | None = None
    ) -> None:
        self._client = client
        self._retry = retry
        self._reconnect = reconnect
        self._renewing = asyncio.Lock()

    async def close(self) -> None:
        await self._client.close()

    async def get(self, object_path: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            found: dict[str, Any] = await self.request("GET", object_path)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    async def list_objects(self, collection_path: str, *, label_selector: str | None = None) -> list[dict[str, Any]]:
        """The collection's items (the server may ignore the selector: callers filter again)."""
        query = [("labelSelector", label_selector)] if label_selector else None
        found = await self.request("GET", collection_path, query=query)
        items = found.get("items") if isinstance(found, dict) else None
        return [item for item in items or () if isinstance(item, dict)]

    async def create(self, collection_path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Create the object; None when one of that name already exists (so a retried create is safe)."""
        try:
            made: dict[str, Any] = await self.request("POST", collection_path, body=body, retry_conflicts=False)
        except KubeApiError as exc:
            if exc.status == 409:
                return None
            raise
        return made

    async def patch(self, object_path: str, body: dict[str, Any], *, retry_conflicts: bool = True) -> dict[str, Any]:
        """Apply a JSON merge patch; lists in it replace the object's lists whole."""
        patched: dict[str, Any] = await self.request(
            "PATCH", object_path, body=body, content_type=MERGE_PATCH, retry_conflicts=retry_conflicts
        )
        return patched

    async def request(
        self,
        method: str,
        api_path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        retry_conflicts: bool = True,
    ) -> Any:
        """One call, retried with exponential back-off while the failure is retryable and time is left."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._retry.deadline
        delay = self._retry.initial
        renewed = False
        while True:
            client = self._client
            try:
                return await self._once(client, method, api_path, body=body, query=query, content_type=content_type)
            except KubeApiError as exc:
                if exc.status == 401 and self._reconnect is not None and not renewed:
                    renewed = True
                    await self._renew(client)
                    continue
                retry = exc.retryable and (exc.status != 409 or retry_conflicts)
                wait = min(max(delay * (0.5 + random.random() / 2), exc.retry_after or 0.0), self._retry.maximum)
                if not retry or loop.time() + wait > give_up:
                    raise
                log.warning("%s %s failed, retrying in %.2fs: %s", method, api_path, wait, exc)
                await asyncio.sleep(wait)
                delay = min(delay * 2, self._retry.maximum)

    async def _renew(self, stale: ApiClient) -> None:
        """Replace ``stale`` with a fresh client (once, however many requests saw it fail)."""
        assert self._reconnect is not None
        async with self._renewing:
            if self._client is not stale:
                return
            try:
                self._client = await self._reconnect()
            except KubeApiError as exc:
                log.warning("cannot renew the Kubernetes credentials: %s", exc)
                return
        with contextlib.suppress(Exception):
            await stale.close()

    async def _once(
        self,
        client: ApiClient,
        method: str,
        api_path: str,
        *,
        body: Any,
        query: list[tuple[str, str]] | None,
        content_type: str,
    ) -> Any:
        from kubernetes_asyncio.client.exceptions import ApiException

        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            async with asyncio.timeout(self._retry.request_timeout):
                return await client.call_api(
                    api_path,
                    method,
                    query_params=query,
                    header_params=headers,
                    body=body,
                    response_types_map={200: "object", 201: "object", 202: "object"},
                    auth_settings=["BearerToken"],
                    _return_http_data_only=True,
                )
        except ApiException as exc:
            raise _api_error(exc) from exc
        except TimeoutError as exc:
            raise KubeApiError(None, "Timeout", f"no answer within {self._retry.request_timeout:g}s") from exc
        except (aiohttp.ClientError, OSError, ValueError, RuntimeError) as exc:  # RuntimeError: a closed session
            raise KubeApiError(None, type(exc).__name__, str(exc) or repr(exc)) from exc


def _api_error(exc: ApiException) -> KubeApiError:
    """The API's own Status (reason, message) when the answer carries one."""
    status = exc.status or None
    reason, message = str(exc.reason or ""), str(exc.body or "")[:500]
    retry_after = None
    headers: Mapping[str, str] = exc.headers or {}
    with contextlib.suppress(ValueError):
        retry_after = float(headers.get("Retry-After", ""))
    try:
        decoded = json.loads(exc.body) if exc.body else None
    except ValueError:
        decoded = None
    if isinstance(decoded, dict) and decoded.get("kind") == "Status":
        reason = str(decoded.get("reason") or reason)
        message = str(decoded.get("message") or message)
    return KubeApiError(status, reason, message, retry_after=retry_after)
