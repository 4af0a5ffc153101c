"""The one error tree of vouch.

Every error vouch raises on purpose derives from :class:`VouchError`. Whether
trying again can help is part of the type (``retryable``), so callers decide on
retries by class, never by parsing messages. Third-party errors are translated
at the boundary with ``raise ... from exc`` so the cause stays visible.

    VouchError
    ├── ConfigError            bad configuration; carries every Problem found
    ├── InputError             a request or argument that cannot be served as given
    │   ├── NotFoundError      names a service, environment or promotion that does not exist
    │   └── ConflictError      would break an invariant (a second active promotion, ...)
    ├── AuthError              missing or wrong credentials
    ├── NotLeaderError         this replica follows; another one acts (retryable)
    ├── StoreError             the state store failed; nothing is acted on without it
    ├── PlatformError          the platform refused or failed an operation
    │   └── PlatformUnavailable    transient: try again (retryable)
    ├── MetricQueryError       a metric query failed; becomes INCONCLUSIVE data, never a pass
    └── GateError              a gate could not evaluate; becomes INCONCLUSIVE data
"""

from __future__ import annotations

from dataclasses import dataclass


class VouchError(Exception):
    """Base of every error vouch raises on purpose."""

    retryable: bool = False


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration file, located precisely.

    ``path`` is the field path inside the document, such as
    ``services.checkout.replicas``; ``line`` is 1-based, or ``None`` when the
    problem concerns a field that is missing altogether and has no line.
    """

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        field = f" {self.path}:" if self.path else ""
        return f"{where}:{field} {self.message}"


class ConfigError(VouchError):
    """The configuration is invalid; ``problems`` lists every one found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class InputError(VouchError):
    """A request or argument that cannot be served as given."""


class NotFoundError(InputError):
    """The request names something that does not exist."""


class ConflictError(InputError):
    """The request would break an invariant, such as one active promotion per environment."""


class AuthError(VouchError):
    """Credentials are missing or wrong."""


class NotLeaderError(VouchError):
    """This daemon replica is a follower: it serves reads, but only the leader acts. Try again."""

    retryable = True

    def __init__(self, leader: str | None) -> None:
        self.leader = leader
        held = f"the leader is {leader}" if leader else "no leader is elected right now"
        super().__init__(f"this replica does not lead ({held}); retry in a moment")


class StoreError(VouchError):
    """The state store failed. Nothing may be acted on without a record of it."""


class PlatformError(VouchError):
    """The platform refused or failed an operation."""


class PlatformUnavailable(PlatformError):
    """The platform failed in a way that may pass; the operation is safe to retry."""

    retryable = True


class MetricQueryError(VouchError):
    """A metric query failed. Gates turn it into an INCONCLUSIVE verdict, never a pass."""

    retryable = True


class GateError(VouchError):
    """A gate could not evaluate. Becomes INCONCLUSIVE data."""

    retryable = True
