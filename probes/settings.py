"""Settings every probe kind shares: schedule, retries, when it counts as failing, TLS, secrets.

Each kind's own settings (``HttpProbeSpec`` in ``http.py`` and so on) derive
from :class:`ProbeSpec` and add a ``kind`` literal; ``vouch.probes.registry``
joins them into one discriminated union.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, model_validator

from vouch.core.durations import Duration
from vouch.core.errors import ConfigError, Problem
from vouch.core.settings import Model


class Secret(Model):
    """A value kept out of configuration files, logs and metrics: read from the environment or a file."""

    from_env: str | None = None
    """Name of an environment variable holding the value."""
    from_file: str | None = None
    """A file holding the value (surrounding whitespace is stripped)."""

    @model_validator(mode="after")
    def _one_source(self) -> Secret:
        if (self.from_env is None) == (self.from_file is None):
            raise ValueError("a secret sets exactly one of 'from_env' or 'from_file'")
        return self

    def reveal(self) -> str:
        """The secret's value; a ConfigError naming (only) where it was looked for when it is missing."""
        if self.from_env is not None:
            value = os.environ.get(self.from_env)
            if not value:
                raise ConfigError([Problem("<environment>", None, self.from_env, "secret variable is not set")])
            return value
        assert self.from_file is not None
        try:
            return Path(self.from_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                [Problem(self.from_file, None, "from_file", f"cannot read secret: {exc.strerror}")]
            ) from exc


class TlsClientSpec(Model):
    """How a probe speaks TLS to its target."""

    verify: bool = True
    """Check the certificate chain and host name. Turning this off still records the expiry."""
    ca_file: str | None = None
    """PEM bundle of CAs to trust instead of the system's."""
    cert_file: str | None = None
    """Client certificate (PEM), for targets that require one."""
    key_file: str | None = None
    """Private key of the client certificate (PEM)."""
    server_name: str | None = None
    """Name sent in SNI and checked against the certificate, if not the target's host."""


class FailingPolicy(Model):
    """When a probe counts as *failing* (alerting-worthy) rather than having failed once."""

    consecutive: int = Field(default=3, ge=1)
    """Failing after this many failed runs in a row."""
    of_last: int | None = Field(default=None, ge=1)
    """Also failing when ``failures`` of the last ``of_last`` runs failed (flapping targets)."""
    failures: int | None = Field(default=None, ge=1)
    """With ``of_last``: how many failures among them make the probe failing."""

    @model_validator(mode="after")
    def _window(self) -> FailingPolicy:
        if (self.of_last is None) != (self.failures is None):
            raise ValueError("'of_last' and 'failures' go together")
        if self.of_last is not None and self.failures is not None and self.failures > self.of_last:
            raise ValueError("'failures' cannot exceed 'of_last'")
        return self


class ProbeSpec(Model):
    """What every probe has: a name, targets, a schedule and a failing policy."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    """Unique among probes; the ``probe`` label of its metrics."""
    targets: list[str] = Field(min_length=1)
    """What to check: URLs for http and flow, ``host:port`` for tcp and tls, names for dns."""
    interval: Duration = Field(default=60.0, ge=10.0, le=3600.0)
    """Time between runs (10 s to 1 h; 1 to 5 minutes is typical)."""
    timeout: Duration = Field(default=10.0, gt=0)
    """Longest one run may take, retries included; must be below the interval."""
    retries: int = Field(default=0, ge=0, le=5)
    """Extra attempts within one run before it counts as failed."""
    retry_delay: Duration = 1.0
    """Wait between attempts within a run."""
    failing_interval: Duration | None = Field(default=None, ge=1.0)
    """A faster interval while the probe is failing, to notice recovery sooner."""
    failing: FailingPolicy = Field(default_factory=FailingPolicy)
    """When the probe counts as failing."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Extra labels, typically ``service`` and ``environment``; exported with every metric."""

    @model_validator(mode="after")
    def _timeout_below_interval(self) -> ProbeSpec:
        if self.timeout >= self.interval:
            raise ValueError(f"timeout ({self.timeout:g}s) must be below the interval ({self.interval:g}s)")
        return self
