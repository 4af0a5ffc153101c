"""vouch's configuration file: the root model and the public ways to load and check it.

A configuration is judged in three passes, and every problem of every pass is
reported at once, each with its file, line and field path (``services.checkout.
environments[1].port``), because fixing one error per run is how people learn to
hate a tool:

1. YAML: syntax errors, and duplicate keys (PyYAML would silently keep the last);
2. the models: types, ranges and unknown fields (with a "did you mean");
3. references between parts: environments, providers, gate kinds, ports.

This module holds the models and the entry points; :mod:`vouch.daemon.configload`
reads the text (passes 1 and 2, with lines) and :mod:`vouch.daemon.configcheck`
checks the references (pass 3). Both build on the models here, so the entry
points import them when called rather than at import time.

>>> config = parse_config('''
... services:
...   web:
...     command: [python, -m, http.server, "{port}"]
...     environments: [{name: prod}]
... environments:
...   prod: {gates: [alarms]}
... ''')
>>> config.host_port()
('127.0.0.1', 8470)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, StringConstraints, field_validator

from vouch.core.durations import Duration
from vouch.core.errors import ConfigError, NotFoundError, Problem
from vouch.core.settings import Model
from vouch.daemon.audit.settings import AuditSpec
from vouch.daemon.breakglass import BreakGlassSpec
from vouch.daemon.leader import LeaderElectionSpec
from vouch.daemon.notify.settings import NotificationsSpec
from vouch.daemon.preview.kubeobjects import KubePreviewsSpec
from vouch.daemon.store.kubernetes import KubernetesStoreSpec
from vouch.probes.registry import ProbeDefinition
from vouch.rollout.attestations.sources import SourceSpec
from vouch.rollout.attestations.verify import TrustSpec
from vouch.rollout.config import (
    NAME_PATTERN,
    BuiltinProviderSpec,
    EnvironmentSpec,
    LocalPlatformSpec,
    PlatformSpec,
    ProviderSpec,
    ServiceSpec,
)
from vouch.rollout.loadtest_kube import KubernetesLoadRunnerSpec

Loc = tuple[str | int, ...]
"""A field path: mapping keys as strings, list positions as integers."""

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


def split_host_port(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[::1]:8470`` for IPv6); raise ``ValueError`` saying what is wrong.

    >>> split_host_port("0.0.0.0:8470")
    ('0.0.0.0', 8470)
    """
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host:
        raise ValueError(f"{value!r} is not host:port; write e.g. '127.0.0.1:8470'")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: the port must be a number from 1 to 65535")
    return host, int(port)


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def dotted(loc: Loc) -> str:
    """A field path as problems name it, so every pass writes the same path the same way.

    >>> dotted(("services", "web", "environments", 1, "port"))
    'services.web.environments[1].port'
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def quoted(names: Iterable[object]) -> str:
    """The known choices in a message, so a wrong name always comes with the right ones.

    >>> quoted({"staging": 1, "production": 2})
    "'staging', 'production'"
    """
    return ", ".join(repr(n) for n in names) or "none"


class SqliteStoreSpec(Model):
    """State in an SQLite file under ``state_dir`` (the embedded default)."""

    kind: Literal["sqlite"] = "sqlite"


StoreSpec = Annotated[SqliteStoreSpec | KubernetesStoreSpec, Field(discriminator="kind")]
"""Where the daemon keeps its state, chosen by ``kind``."""


class DaemonSpec(Model):
    """The daemon process itself: where it listens, keeps its state and finds its API token."""

    listen: str = "127.0.0.1:8470"
    """``host:port`` of the HTTP API (and ``/metrics``); use ``0.0.0.0:8470`` to listen on every address."""
    state_dir: str = ".vouch"
    """Folder of the state store; a relative path resolves against the configuration file's folder."""
    token_file: str | None = None
    """File holding the API bearer token (made on first start if missing); default ``<state_dir>/token``.
    A relative path resolves against the configuration file's folder."""
    token_env: str = Field(default="VOUCH_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Environment variable that, when set, holds the API token and wins over ``token_file``."""
    max_body_bytes: int = Field(default=1048576, ge=1)
    """Largest request body the API accepts; larger ones are refused with 413."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Least severe log records written."""
    store: StoreSpec = Field(default_factory=SqliteStoreSpec)
    """Where state is kept: ``sqlite`` (a file under ``state_dir``) or ``kubernetes`` (ConfigMaps, so a
    rescheduled pod or a new leader continues every promotion)."""
    leader_election: LeaderElectionSpec = Field(default_factory=LeaderElectionSpec)
    """With several replicas: only the holder of a coordination.k8s.io Lease acts."""

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_host_port(value)
        return value


class AttestationsSpec(Model):
    """Where release attestations are found, whom to trust, and the key vouch signs its own with."""

    source: SourceSpec | None = None
    """Where attestations are found (default: a ``directory`` under the state folder, ``attestations/``)."""
    trust: TrustSpec = Field(default_factory=TrustSpec)
    """Local public keys (with a threshold) and Sigstore identities trusted to sign attestations."""
    signing_key: str | None = None
    """vouch's own private key (PEM): when set, each environment a release held in is signed as a
    ``deployed`` attestation the next environment's policy can require."""


class ProbeWatchSpec(Model):
    """Meta-monitoring: check in Prometheus that every probe's series are fresh and report success."""

    provider: str
    """A ``prometheus`` provider (under ``metric_providers``) that scrapes this daemon's ``/metrics``."""
    interval: Duration = 60.0
    """Time between checks."""
    stale_after: Duration | None = None
    """A probe's series older than this count as stale; default: twice its interval plus a minute."""


def _default_providers() -> dict[str, ProviderSpec]:
    return {"builtin": BuiltinProviderSpec()}


class VouchConfig(Model):
    """A vouch configuration: the daemon, metric providers, the platform, services and environments.

    Load it with :func:`load_config`, which also checks the references between parts;
    ``model_validate`` alone checks each part but not how they fit together.
    """

    daemon: DaemonSpec = Field(default_factory=DaemonSpec)
    """The daemon process: API address, state folder, token."""
    metric_providers: dict[str, ProviderSpec] = Field(default_factory=_default_providers)
    """Where SLO measurements come from, by name; ``builtin`` (the local router's own metrics) is always
    defined unless this map defines that name itself."""
    platform: PlatformSpec = Field(default_factory=LocalPlatformSpec)
    """Where replicas run: ``local`` processes behind a weighted router (the default)."""
    services: dict[Name, ServiceSpec] = Field(min_length=1)
    """The services vouch rolls out, by name (lowercase letters, digits and ``-``)."""
    environments: dict[Name, EnvironmentSpec] = Field(min_length=1)
    """The stages services move through, by name, each with its plan, gates and limits."""
    probes: list[ProbeDefinition] = Field(default_factory=list)
    """Synthetic probes of fixed targets (a public URL, a database port), on their own schedules; label
    them with ``service`` and ``environment``. Probes aimed at a service's replicas go under the service."""
    probe_watch: ProbeWatchSpec | None = None
    """Check in Prometheus that every probe's series are fresh (meta-monitoring)."""
    attestations: AttestationsSpec = Field(default_factory=AttestationsSpec)
    """The ``attestations`` gate: where attestations are found and whom to trust."""
    break_glass: BreakGlassSpec = Field(default_factory=BreakGlassSpec)
    """One-time, expiring overrides of a gate: the folder they may be dropped in, and their limits."""
    audit: AuditSpec = Field(default_factory=AuditSpec)
    """The tamper-evident audit log of every transition, decision, override, configuration load and
    API change, with its actor."""
    previews: KubePreviewsSpec = Field(default_factory=KubePreviewsSpec)
    """Previews on Kubernetes (``vouch preview up --platform kubernetes``): the image the mocks run,
    resources, how long to wait for them to be available and to go."""
    loadtest_runner: KubernetesLoadRunnerSpec | None = None
    """Where the ``loadtest`` gate's Locust runs: unset, a subprocess next to the daemon; ``{kind:
    kubernetes, namespace, templates_dir, workers, image}``, a master Job and worker Jobs in the cluster
    (the chart sets this with ``loadtest.enabled``)."""
    notifications: NotificationsSpec = Field(default_factory=NotificationsSpec)
    """Where events are told: Slack (one threaded message per release), webhooks, the log; and routes
    saying which events go where (security, the escalation chain, the team's channel)."""

    @field_validator("probes")
    @classmethod
    def _fixed_targets(cls, value: list[ProbeDefinition]) -> list[ProbeDefinition]:
        names = [p.name for p in value]
        if len(set(names)) != len(names):
            raise ValueError(f"probe names must be unique: {names}")
        for probe in value:
            if any("{address}" in target for target in probe.targets):
                raise ValueError(f"probe {probe.name!r}: '{{address}}' is for probes under a service")
        return value

    _source: Path | None = PrivateAttr(default=None)

    @field_validator("metric_providers")
    @classmethod
    def _with_builtin(cls, value: dict[str, ProviderSpec]) -> dict[str, ProviderSpec]:
        return value if "builtin" in value else {**value, "builtin": BuiltinProviderSpec()}

    @property
    def source(self) -> Path | None:
        """The file this configuration was read from, if any."""
        return self._source

    def resolve(self, value: str) -> Path:
        """``value`` as a path; a relative one is taken against the configuration file's folder."""
        path = Path(value).expanduser()
        if path.is_absolute():
            return path
        base = self._source.parent if self._source is not None else Path.cwd()
        return base / path

    def state_path(self) -> Path:
        """The state folder, relative paths taken against the configuration file's folder."""
        return self.resolve(self.daemon.state_dir)

    def token_path(self) -> Path:
        """The API token file: ``token_file``, or ``<state_dir>/token``."""
        if self.daemon.token_file is None:
            return self.state_path() / "token"
        return self.resolve(self.daemon.token_file)

    def host_port(self) -> tuple[str, int]:
        """The API's listen address as ``(host, port)``."""
        return split_host_port(self.daemon.listen)

    def service(self, name: str) -> ServiceSpec:
        """The service called ``name``; :class:`NotFoundError` naming the known ones otherwise."""
        if name not in self.services:
            raise NotFoundError(f"unknown service {name!r}; known: {quoted(self.services)}")
        return self.services[name]

    def environment(self, name: str) -> EnvironmentSpec:
        """The environment called ``name``; :class:`NotFoundError` naming the known ones otherwise."""
        if name not in self.environments:
            raise NotFoundError(f"unknown environment {name!r}; known: {quoted(self.environments)}")
        return self.environments[name]


def config_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a configuration file, for editors and CI."""
    schema = VouchConfig.model_json_schema()
    schema.pop("title", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "vouch configuration",
        **schema,
    }


def load_config(path: str | Path) -> VouchConfig:
    """Read and check the configuration at ``path``; :class:`ConfigError` lists every problem found."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(file, None, "", "no such file")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(file, None, "", f"not UTF-8 text: {exc.reason}")]) from exc
    except OSError as exc:
        raise ConfigError([Problem(file, None, "", f"cannot read: {exc.strerror or exc}")]) from exc
    return _parse(text, file=file, source=Path(path).resolve())


def parse_config(text: str, *, source: str = "<string>") -> VouchConfig:
    """Check a configuration given as text, exactly as :func:`load_config` does.

    ``source`` names the text in problems. Unless it is a placeholder such as
    ``<string>``, it is taken as the file's path, so relative paths resolve
    against its folder; otherwise they resolve against the working directory.
    """
    origin = None if source.startswith("<") else Path(source).resolve()
    return _parse(text, file=source, source=origin)


def check_config(config: VouchConfig, *, file: str = "<config>") -> list[Problem]:
    """The reference problems of an already validated configuration (no lines: there is no file)."""
    from vouch.daemon.configcheck import Parts, references  # builds on the models above

    return [Problem(file, None, dotted(loc), message) for loc, message in references(Parts.of(config))]


def _parse(text: str, *, file: str, source: Path | None) -> VouchConfig:
    from vouch.daemon.configload import validate_text  # builds on the models above

    config = validate_text(text, file=file)
    config._source = source
    return config
