"""Attestations kept in the cluster: one ConfigMap per document, so every replica and every restart sees them.

The ``directory`` source keeps documents on the pod's disk, which an emptyDir loses
when the pod is rescheduled and another replica never sees. This source keeps
each document in a ConfigMap of one namespace instead:

================================================  ===============================================
name                                              ``<prefix>-<64 hex digest>-<name>`` (the name
                                                  slugged plus a hash when it is not a short
                                                  lowercase DNS label); at most 253 characters
label ``vouch.dev/attestation-subject``           the digest's first 63 hex digits (the longest
                                                  label value), to list one artifact's documents
label ``app.kubernetes.io/managed-by``            ``vouch``
annotation ``vouch.dev/attestation-digest``       the full ``sha256:HEX``: the label alone cannot
                                                  tell apart two digests sharing 63 digits
data (or binaryData)                              ``{<name>.json: document}``
================================================  ===============================================

A pipeline may store its own documents the same way (``kubectl create configmap`` with
those labels and that annotation). Documents are never replaced: storing a name again
with the same bytes is a no-op, with other bytes a :class:`~vouch.core.errors.StoreError`.

Kubernetes calls used (see ``vouch.rollout.platforms.kube.rbac``): configmaps get, list,
create — in the source's namespace only.

Example::

    source = KubernetesSource(KubernetesSourceSpec(kind="kubernetes", namespace="delivery"))
    await source.put("sha256:ab12...", "deployed-staging-p1", envelope_bytes)
    found = await source.find("sha256:ab12...")
    await source.close()
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from vouch.core.durations import Duration
from vouch.core.errors import GateError, InputError, StoreError, VouchError
from vouch.core.settings import Model
from vouch.rollout.attestations.dsse import parse_digest
from vouch.rollout.attestations.model import RawAttestation
from vouch.rollout.platforms.kube.client import KubeApi, KubeApiError, RetryPolicy, connect, path
from vouch.rollout.platforms.kube.settings import DNS_LABEL

SUBJECT_LABEL = "vouch.dev/attestation-subject"
"""Label holding the first 63 hex digits of the subject digest (a label value holds at most 63)."""
DIGEST_ANNOTATION = "vouch.dev/attestation-digest"
"""Annotation holding the full ``sha256:HEX`` subject digest: what ``find`` finally matches on."""
MANAGED_BY = {"app.kubernetes.io/managed-by": "vouch"}
MAX_BYTES = 1_000_000
"""Largest document kept: a ConfigMap holds at most 1 MiB, metadata included."""

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_DNS_PART = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_PART_LIMIT = 150  # prefix (<= 30) + "-" + 64 hex + "-" + 150 stays under the 253 a name may have


class KubernetesSourceSpec(Model):
    """Attestations in ConfigMaps of one namespace: every replica and every restart of the daemon sees them."""

    kind: Literal["kubernetes"]
    namespace: str | None = Field(default=None, pattern=DNS_LABEL)
    """Namespace of the ConfigMaps; default ``$POD_NAMESPACE``, else the pod's own namespace, else ``default``."""
    context: str | None = None
    """A kubeconfig context; none means in-cluster inside a pod, else the current context."""
    kubeconfig: str | None = None
    """A kubeconfig file; default ``$KUBECONFIG`` or ``~/.kube/config`` (unused in-cluster)."""
    in_cluster: bool = False
    """Use the cluster vouch runs in (its pod's service account), whatever the context says."""
    prefix: str = Field(default="vouch-att", pattern=r"^[a-z0-9]([a-z0-9-]{0,28}[a-z0-9])?$")
    """Start of every ConfigMap's name; ``find`` reads only the ConfigMaps named with it."""
    request_timeout: Duration = 10.0
    """Longest one API request may take before it is abandoned and retried."""
    retry_deadline: Duration = 30.0
    """How long one call keeps retrying conflicts, throttling, server errors and timeouts; then a
    ``find`` cannot decide (never an allow) and a ``put`` fails."""

    def resolved_namespace(self) -> str:
        return self.namespace or own_namespace()


def own_namespace() -> str:
    """The daemon's own namespace: ``$POD_NAMESPACE``, else its service account's, else ``default``."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def data_key(name: str) -> str:
    """The key a document is kept under: its name, ending in ``.json`` like the directory source's files.

    >>> data_key("build"), data_key("tests.json")
    ('build.json', 'tests.json')
    """
    key = name if name.endswith(".json") else name + ".json"
    if not _NAME.match(key):
        raise InputError(f"{name!r} is not a usable attestation name (letters, digits, '.', '_' and '-')")
    return key


def object_name(prefix: str, subject_digest: str, name: str) -> str:
    """The ConfigMap of one document: deterministic, a valid DNS-1123 name, distinct per (digest, name).

    >>> object_name("vouch-att", "sha256:" + "ab" * 32, "build") == "vouch-att-" + "ab" * 32 + "-build"
    True
    """
    hex_digest = parse_digest(subject_digest)
    stem = data_key(name).removesuffix(".json")
    if len(stem) > _PART_LIMIT or not _DNS_PART.match(stem):
        slug = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[: _PART_LIMIT - 11].strip("-")
        hashed = hashlib.sha256(stem.encode()).hexdigest()[:10]
        stem = f"{slug}-{hashed}" if slug else hashed
    return f"{prefix}-{hex_digest}-{stem}"


class KubernetesSource:
    """ConfigMaps of one namespace through one :class:`KubeApi`, made on first use and closed by :meth:`close`.

    Pass ``api`` to use a client made elsewhere (it then belongs to this source and is closed with it).
    """

    kind = "kubernetes"

    def __init__(self, spec: KubernetesSourceSpec, *, api: KubeApi | None = None) -> None:
        self._spec = spec
        self._namespace = spec.resolved_namespace()
        self._api = api
        self._opening = asyncio.Lock()
        self._closed = False

    @property
    def namespace(self) -> str:
        return self._namespace

    async def find(self, subject_digest: str) -> list[RawAttestation]:
        hex_digest = parse_digest(subject_digest)
        digest = f"sha256:{hex_digest}"
        labels = {SUBJECT_LABEL: hex_digest[:63], **MANAGED_BY}
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        api = await self._connected(GateError)
        try:
            items = await api.list_objects(self._collection(), label_selector=selector)
        except KubeApiError as exc:
            raise GateError(f"cannot list attestations in {self._where()}: {exc}") from exc
        found: list[RawAttestation] = []
        for item in sorted(items, key=_name_of):
            if self._holds(item, labels, digest):
                found.extend(self._documents(item))
        return found

    async def put(self, subject_digest: str, name: str, data: bytes) -> str:
        hex_digest = parse_digest(subject_digest)
        key = data_key(name)
        object_ = object_name(self._spec.prefix, subject_digest, name)
        if len(data) > MAX_BYTES:
            raise StoreError(f"attestation {key} is {len(data)} bytes: a ConfigMap holds at most {MAX_BYTES}")
        body = _body(object_, key, data, hex_digest)
        where = f"kubernetes:{self._namespace}/configmaps/{object_}#{key}"
        api = await self._connected(StoreError)
        try:
            if await api.create(self._collection(), body) is not None:
                return where
            existing = await api.get(path("v1", "configmaps", self._namespace, object_))
        except KubeApiError as exc:
            raise StoreError(f"cannot store attestation {where}: {exc}") from exc
        if existing is None:
            raise StoreError(f"cannot store attestation {where}: the name is taken, yet nothing is there to read")
        if _annotation(existing) != f"sha256:{hex_digest}" or _bytes_of(existing, key) != data:
            raise StoreError(
                f"attestation {where} is already stored with other content; attestations are never replaced"
            )
        return where

    async def close(self) -> None:
        async with self._opening:
            self._closed = True
            api, self._api = self._api, None
        if api is not None:
            await asyncio.shield(api.close())

    async def _connected(self, error: type[VouchError]) -> KubeApi:
        """The client, connecting once on first use; a configuration that cannot be loaded is ``error``."""
        async with self._opening:
            if self._closed:
                raise error(f"the attestation source {self._where()} is closed")
            if self._api is None:
                spec = self._spec
                retry = RetryPolicy(request_timeout=spec.request_timeout, deadline=spec.retry_deadline)
                reconnect = functools.partial(
                    connect, context=spec.context, kubeconfig=spec.kubeconfig, in_cluster=spec.in_cluster
                )
                try:
                    self._api = KubeApi(await reconnect(), retry, reconnect=reconnect)
                except KubeApiError as exc:
                    raise error(f"cannot reach the attestation source {self._where()}: {exc.message}") from exc
            return self._api

    def _collection(self) -> str:
        return path("v1", "configmaps", self._namespace)

    def _where(self) -> str:
        return f"kubernetes:{self._namespace}/{self._spec.prefix}"

    def _holds(self, item: dict[str, Any], labels: dict[str, str], digest: str) -> bool:
        """Whether a listed ConfigMap is one of this source's for exactly ``digest`` (the server may ignore
        the selector, and the label holds only 63 of the 64 digits)."""
        metadata = item.get("metadata") or {}
        own = metadata.get("labels") or {}
        named = str(metadata.get("name") or "").startswith(self._spec.prefix + "-")
        return named and all(own.get(k) == v for k, v in labels.items()) and _annotation(item) == digest

    def _documents(self, item: dict[str, Any]) -> list[RawAttestation]:
        name = _name_of(item)
        keys = sorted({*(item.get("data") or {}), *(item.get("binaryData") or {})})
        found = []
        for key in keys:
            data = _bytes_of(item, key)
            if data is None:
                raise GateError(f"attestation {self._namespace}/{name}#{key} is not readable (bad base64)")
            found.append(RawAttestation(source=f"kubernetes:{self._namespace}/configmaps/{name}#{key}", data=data))
        return found


def _body(name: str, key: str, data: bytes, hex_digest: str) -> dict[str, Any]:
    """The ConfigMap for one document: text under ``data``, anything else base64 under ``binaryData``."""
    metadata = {
        "name": name,
        "labels": {SUBJECT_LABEL: hex_digest[:63], **MANAGED_BY},
        "annotations": {DIGEST_ANNOTATION: f"sha256:{hex_digest}"},
    }
    try:
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {key: data.decode("utf-8")}}
    except UnicodeDecodeError:
        encoded = base64.b64encode(data).decode("ascii")
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "binaryData": {key: encoded}}


def _name_of(item: dict[str, Any]) -> str:
    return str((item.get("metadata") or {}).get("name") or "")


def _annotation(item: dict[str, Any]) -> str | None:
    annotations = (item.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(DIGEST_ANNOTATION)
    return str(value).lower() if value is not None else None


def _bytes_of(item: dict[str, Any], key: str) -> bytes | None:
    """The document under ``key``: from ``data`` as UTF-8, or decoded from ``binaryData``; None when absent."""
    text = (item.get("data") or {}).get(key)
    if isinstance(text, str):
        return text.encode("utf-8")
    encoded = (item.get("binaryData") or {}).get(key)
    if not isinstance(encoded, str):
        return None
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
