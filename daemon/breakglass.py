"""Granting break-glass overrides: through the API, or by a file dropped in the overrides directory.

Either way a grant is checked the same way (:func:`check_grant`): the service must exist, the
environment must be in its chain, the gate must run there, the reason must say something and the
expiry must lie within ``max_ttl``. A grant that fails any check is refused with the reason and
nothing is kept. Accepted grants go to the store, which is what makes one override usable exactly
once, whoever reads the file, however often.

A file is identified by its name and the hash of its content: reading it again after a restart,
or from a second daemon, finds the same override (used or not) instead of a fresh one. Editing a
file is a new grant. After use the daemon renames the file to ``NAME.used`` where it can; in a
ConfigMap (read-only) the store's record of its use is what counts.

File format (YAML or JSON)::

    service: checkout
    environment: production
    gate: slo
    version: 2.4.1          # optional: only this version's promotion may use it
    reason: "INC-1234: the SLO query is broken; error rates checked by hand"
    actor: ana@example.com
    ttl: 1h                 # optional, default break_glass.default_ttl; or expires_at: RFC 3339
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from vouch.core.durations import Duration
from vouch.core.errors import InputError, NotFoundError, StoreError
from vouch.core.settings import Model
from vouch.rollout.config import EnvironmentSpec, ServiceSpec
from vouch.rollout.overrides import DEFAULT_TTL, OVERRIDABLE_GATES, Override
from vouch.rollout.state import Event, Store

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".yaml", ".yml", ".json")
MAX_FILE_BYTES = 64 * 1024


class BreakGlassSpec(Model):
    """Break-glass overrides: where files are read from, and how long a grant may last."""

    directory: str | None = None
    """Folder watched for override files (the chart mounts a ConfigMap at ``/etc/vouch/overrides``);
    a relative path resolves against the configuration file's folder. None: API and CLI only."""
    scan_interval: Duration = 5.0
    """How often the folder is read."""
    default_ttl: Duration = DEFAULT_TTL
    """How long a grant that names no expiry stays usable, from when vouch accepts it."""
    max_ttl: Duration = Field(default=24 * 3600.0, gt=0)
    """The longest expiry a grant may ask for; a longer one is refused."""


class GrantRequest(Model):
    """One override as asked for, by the API or in a file."""

    service: str
    environment: str
    gate: str
    reason: str
    version: str | None = None
    actor: str | None = None
    """Who asks (files must say; the API takes the caller's actor header when this is missing)."""
    ttl: Duration | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True)
class Scope:
    """What grants are checked against: the configured services and environments, and the limits."""

    services: Mapping[str, ServiceSpec]
    environments: Mapping[str, EnvironmentSpec]
    spec: BreakGlassSpec


def check_grant(
    request: GrantRequest, scope: Scope, *, actor: str, override_id: str, source: str, now: float
) -> Override:
    """The override ``request`` grants, or an ``InputError``/``NotFoundError`` saying what is wrong with it."""
    service = scope.services.get(request.service)
    if service is None:
        raise NotFoundError(f"service: no service {request.service!r}; known: {', '.join(sorted(scope.services))}")
    chain = [e.name for e in service.environments]
    if request.environment not in chain:
        where = f"{request.service} is not deployed to {request.environment!r}"
        raise NotFoundError(f"environment: {where}; its chain is {', '.join(chain)}")
    gates = scope.environments[request.environment].gates
    if request.gate not in OVERRIDABLE_GATES or request.gate not in gates:
        raise InputError(
            f"gate: {request.gate!r} does not run in {request.environment}; its gates are {', '.join(gates)}"
        )
    if not request.reason.strip():
        raise InputError("reason: say why the glass is broken (an incident, a ticket)")
    who = (request.actor or actor).strip()
    if not who:
        raise InputError("actor: say who breaks the glass")
    expires = _expiry(request, scope.spec, now)
    return Override(
        id=override_id,
        service=request.service,
        environment=request.environment,
        gate=request.gate,
        version=request.version,
        reason=request.reason.strip(),
        actor=who,
        created_at=now,
        expires_at=expires,
        source=source,
    )


def _expiry(request: GrantRequest, spec: BreakGlassSpec, now: float) -> float:
    if request.ttl is not None and request.expires_at is not None:
        raise InputError("ttl: give ttl or expires_at, not both")
    if request.expires_at is not None:
        if request.expires_at.tzinfo is None:
            raise InputError("expires_at: give a time zone (2026-11-27T12:00:00Z)")
        expires = request.expires_at.timestamp()
    else:
        expires = now + (request.ttl if request.ttl is not None else spec.default_ttl)
    if expires <= now:
        raise InputError("expires_at: the override would already have expired")
    if expires - now > spec.max_ttl:
        raise InputError(f"ttl: longer than break_glass.max_ttl ({spec.max_ttl:g}s); grant a shorter one")
    return expires


class OverrideFiles:
    """Reads the overrides directory into the store, refuses bad files with a reason, marks used ones."""

    def __init__(
        self,
        folder: Path,
        *,
        store: Store,
        scope: Scope,
        on_event: Callable[[Event], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._folder = folder
        self._store = store
        self._scope = scope
        self._on_event = on_event
        self._clock = clock
        self._seen: dict[str, str] = {}
        """File name -> the id (or refusal) last recorded for its content, so each is announced once."""

    async def run(self) -> None:
        while True:
            await self.scan()
            await asyncio.sleep(self._scope.spec.scan_interval)

    async def scan(self) -> list[Override]:
        """One look at the folder; returns the overrides its files grant (new or already known)."""
        found = []
        for path, data in await asyncio.to_thread(_read_files, self._folder):
            override = await self._take(path, data)
            if override is not None:
                found.append(override)
        await asyncio.to_thread(_mark_used, self._folder, [o for o in found if o.used])
        return found

    async def _take(self, path: Path, data: bytes) -> Override | None:
        digest = hashlib.sha256(data).hexdigest()[:16]
        override_id = f"file-{path.stem[:80]}-{digest}"
        now = self._clock()
        try:
            request = _parse(path, data)
            override = check_grant(
                request, self._scope, actor="", override_id=override_id, source=f"file:{path.name}", now=now
            )
        except InputError as exc:
            await self._refuse(path, override_id, str(exc), now)
            return None
        try:
            kept = await self._store.add_override(override)
        except StoreError as exc:
            log.error("could not keep override file %s: %s", path, exc)
            return None
        if self._seen.get(path.name) != override_id:
            self._seen[path.name] = override_id
            if kept == override:
                await self._emit("override.granted", f"break-glass granted by file {path.name}: {kept.scope()}", kept)
        return kept

    async def _refuse(self, path: Path, override_id: str, why: str, now: float) -> None:
        marker = f"refused:{override_id}"
        if self._seen.get(path.name) == marker:
            return
        self._seen[path.name] = marker
        message = f"break-glass file {path.name} refused: {why}"
        log.warning("%s", message)
        event = Event("override.refused", message, now, data={"file": path.name, "reason": why, "actor": "file"})
        await self._record(event)

    async def _emit(self, kind: str, message: str, override: Override) -> None:
        data: dict[str, Any] = {"override": override.to_dict(), "actor": override.actor, "service": override.service}
        data |= {"environment": override.environment, "version": override.version, "gate": override.gate}
        await self._record(Event(kind, message, self._clock(), data=data))

    async def _record(self, event: Event) -> None:
        try:
            event = await self._store.add_event(event)
        except StoreError as exc:
            log.error("could not record %s: %s", event.kind, exc)
        self._on_event(event)


def _parse(path: Path, data: bytes) -> GrantRequest:
    if len(data) > MAX_FILE_BYTES:
        raise InputError(f"{path.name} is larger than {MAX_FILE_BYTES} bytes")
    try:
        document = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"not YAML or JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InputError("the file must hold one mapping (service, environment, gate, reason, actor, ...)")
    try:
        request = GrantRequest.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<file>'}: {e['msg']}" for e in exc.errors())
        raise InputError(problems) from exc
    if not request.actor:
        raise InputError("actor: a file must say who breaks the glass")
    return request


def _read_files(folder: Path) -> list[tuple[Path, bytes]]:
    """The override files in ``folder`` (Kubernetes' ``..data`` links and hidden files left out)."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix not in FILE_SUFFIXES or not path.is_file():
            continue
        try:
            found.append((path, path.read_bytes()))
        except OSError as exc:
            log.warning("cannot read override file %s: %s", path, exc)
    return found


def _mark_used(folder: Path, used: list[Override]) -> None:
    """Rename the files of used overrides to ``NAME.used``; a read-only folder keeps them (the store knows)."""
    for override in used:
        name = override.source.removeprefix("file:")
        path = folder / name
        if not path.exists():
            continue
        try:
            path.rename(path.with_name(name + ".used"))
        except OSError:
            log.debug("override file %s is used; the folder is read-only, the store records it", path)
