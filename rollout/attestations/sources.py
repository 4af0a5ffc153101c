"""Where attestations are found and kept: one Protocol, ``directory`` and ``http`` (``kubernetes``: .kubesource).

Rekor v2 can no longer be searched by artifact digest, so vouch keeps the
bundles itself, indexed by the digest of the artifact they are about. A
source only finds and stores bytes; it never judges them (see :mod:`.verify`).

Example::

    source = build_source(DirectorySourceSpec(path="/var/lib/vouch/attestations"))
    for raw in await source.find("sha256:ab12..."):
        ...
    await source.close()
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import httpx
from pydantic import Discriminator, Field, Tag

from vouch.core.durations import Duration
from vouch.core.errors import ConfigError, GateError, InputError, Problem, StoreError, VouchError
from vouch.core.settings import Model
from vouch.rollout.attestations.dsse import parse_digest
from vouch.rollout.attestations.kubesource import KubernetesSource, KubernetesSourceSpec
from vouch.rollout.attestations.model import RawAttestation

SOURCE_KINDS: tuple[str, ...] = ("directory", "http", "kubernetes")
"""Source kinds an ``attestations.source`` setting may name."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_SNIPPET = 200


@runtime_checkable
class AttestationSource(Protocol):
    """Finds the documents stored for an artifact digest, and stores new ones.

    ``find`` returns every document kept for ``subject_digest`` (``sha256:HEX``),
    an empty list when there are none; a source that cannot answer raises
    :class:`~vouch.core.errors.GateError` (the gate then cannot decide, which
    is never an allow). ``put`` stores one document under ``name`` and returns
    where it went.
    """

    async def find(self, subject_digest: str) -> list[RawAttestation]:
        """Every document stored for ``subject_digest``."""

    async def put(self, subject_digest: str, name: str, data: bytes) -> str:
        """Store ``data`` for ``subject_digest`` as ``name``; return its location."""

    async def close(self) -> None:
        """Release connections."""


class DirectorySourceSpec(Model):
    """Attestations in a folder: one sub-folder per artifact digest (``sha256-HEX/``) holding ``*.json`` files."""

    kind: Literal["directory"] = "directory"
    path: str = Field(min_length=1)
    """The folder; vouch creates sub-folders in it as it stores its own attestations."""


class HttpSourceSpec(Model):
    """Attestations served over HTTP: ``GET`` the URL (``{digest}`` replaced) for a JSON list of documents."""

    kind: Literal["http"]
    url: str = Field(pattern=r"^https?://.*\{(digest|hex)\}")
    """URL template: ``{digest}`` becomes ``sha256:HEX``, ``{hex}`` the bare hex digest."""
    timeout: Duration = 10.0
    """Per-request timeout; a slower answer means the gate cannot decide (never an allow)."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra HTTP headers, e.g. an authorization header."""


def _source_kind(value: Any) -> str:
    """The ``kind`` of a source setting; ``directory``, the embedded default, when it names none."""
    kind = value.get("kind", "directory") if isinstance(value, dict) else getattr(value, "kind", "directory")
    return str(kind)


SourceSpec = Annotated[
    Annotated[DirectorySourceSpec, Tag("directory")]
    | Annotated[HttpSourceSpec, Tag("http")]
    | Annotated[KubernetesSourceSpec, Tag("kubernetes")],
    Discriminator(_source_kind),
]
"""A source setting, chosen by ``kind``; an unknown kind is an error naming the known ones."""


def build_source(spec: DirectorySourceSpec | HttpSourceSpec | KubernetesSourceSpec) -> AttestationSource:
    """The source a spec describes; an unknown kind is a :class:`ConfigError` naming the known ones."""
    if isinstance(spec, DirectorySourceSpec):
        return DirectorySource(Path(spec.path))
    if isinstance(spec, HttpSourceSpec):
        return HttpSource(spec.url, timeout=spec.timeout, headers=spec.headers)
    if isinstance(spec, KubernetesSourceSpec):
        return KubernetesSource(spec)
    kind = getattr(spec, "kind", None)
    message = f"unknown attestation source kind {kind!r}; known kinds: {', '.join(SOURCE_KINDS)}"
    raise ConfigError([Problem("configuration", None, "attestations.source.kind", message)])


def folder_name(subject_digest: str) -> str:
    """The sub-folder for an artifact digest: ``sha256-HEX`` (a colon is not portable in file names).

    >>> folder_name("sha256:" + "ab" * 32) == "sha256-" + "ab" * 32
    True
    """
    return "sha256-" + parse_digest(subject_digest)


class DirectorySource:
    """The embedded default: ``ROOT/sha256-HEX/*.json``, read in name order, written atomically."""

    kind = "directory"

    def __init__(self, root: Path) -> None:
        self._root = root

    @property
    def root(self) -> Path:
        return self._root

    async def find(self, subject_digest: str) -> list[RawAttestation]:
        folder = self._root / folder_name(subject_digest)
        return await asyncio.to_thread(_read_folder, folder)

    async def put(self, subject_digest: str, name: str, data: bytes) -> str:
        folder = self._root / folder_name(subject_digest)
        file_name = name if name.endswith(".json") else name + ".json"
        if not _NAME.match(file_name):
            raise InputError(f"{name!r} is not a usable attestation name (letters, digits, '.', '_' and '-')")
        return await asyncio.to_thread(_write_atomically, folder / file_name, data)

    async def close(self) -> None:
        return None


def _read_folder(folder: Path) -> list[RawAttestation]:
    try:
        paths = sorted(p for p in folder.iterdir() if p.suffix == ".json" and p.is_file())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise GateError(f"cannot list attestations in {folder}: {exc.strerror or exc}") from exc
    found = []
    for path in paths:
        try:
            found.append(RawAttestation(source=str(path), data=path.read_bytes()))
        except FileNotFoundError:
            continue  # removed between listing and reading
        except OSError as exc:
            raise GateError(f"cannot read attestation {path}: {exc.strerror or exc}") from exc
    return found


def _write_atomically(path: Path, data: bytes) -> str:
    """Write through a temporary file in the same folder and rename it: readers see all or nothing."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise StoreError(f"cannot store attestation {path}: {exc.strerror or exc}") from exc
    return str(path)


class HttpSource:
    """Attestations from an HTTP service, through one shared :class:`httpx.AsyncClient`.

    ``GET`` on the URL template answers 200 with a JSON list of documents (or a
    single document), or 404 when there are none. ``put`` ``POST``s the
    document to the same URL with ``?name=NAME``. Pass ``client`` to share a
    client with the rest of the daemon (it is then not closed here).
    """

    kind = "http"

    def __init__(
        self,
        url_template: str,
        *,
        timeout: float = 10.0,
        headers: dict[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._template = url_template
        self._headers = dict(headers or {})
        self._timeout = timeout
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=timeout)

    def url_for(self, subject_digest: str) -> str:
        hex_digest = parse_digest(subject_digest)
        return self._template.replace("{digest}", f"sha256:{hex_digest}").replace("{hex}", hex_digest)

    async def find(self, subject_digest: str) -> list[RawAttestation]:
        url = self.url_for(subject_digest)
        response = await self._request("GET", url)
        if response.status_code == 404:
            return []
        if response.status_code != 200:
            raise GateError(f"attestation source {url} answered HTTP {response.status_code}: {_snippet(response)}")
        try:
            body = json.loads(response.content)
        except ValueError as exc:
            raise GateError(f"attestation source {url} answered non-JSON: {_snippet(response)}") from exc
        if isinstance(body, dict):
            return [RawAttestation(source=url, data=response.content)]
        if not isinstance(body, list) or not all(isinstance(item, dict) for item in body):
            raise GateError(f"attestation source {url} answered neither a document nor a list of documents")
        return [RawAttestation(source=f"{url}#{index}", data=_canonical(item)) for index, item in enumerate(body)]

    async def put(self, subject_digest: str, name: str, data: bytes) -> str:
        url = self.url_for(subject_digest)
        headers = {"content-type": "application/json"}
        response = await self._request(
            "POST", url, error=StoreError, params={"name": name}, content=data, headers=headers
        )
        if response.status_code not in (200, 201, 202, 204):
            raise StoreError(f"attestation source {url} refused the document: HTTP {response.status_code}")
        return str(response.headers.get("location", f"{url}?name={name}"))

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def _request(
        self, method: str, url: str, *, error: type[VouchError] = GateError, **kwargs: Any
    ) -> httpx.Response:
        """One request with the configured headers and timeout; transport failures become ``error``."""
        headers = {**self._headers, **kwargs.pop("headers", {})}
        try:
            return await self._client.request(method, url, headers=headers, timeout=self._timeout, **kwargs)
        except httpx.TimeoutException as exc:
            raise error(f"attestation source {url} did not answer within {self._timeout:g}s") from exc
        except httpx.HTTPError as exc:
            raise error(f"attestation source {url} unreachable: {type(exc).__name__}: {exc}") from exc


def _canonical(document: Any) -> bytes:
    """One document of a list, re-serialised deterministically so its digest is stable across fetches."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _snippet(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:_SNIPPET] + ("..." if len(text) > _SNIPPET else "")
