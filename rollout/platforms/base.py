"""The Platform family: where versions of a service actually run.

Contract
--------
Every method is idempotent: calling it again with the same arguments after a
crash, a timeout or a retry converges to the same state and never starts a
second copy of anything. Methods return once the change is *requested* and
in force for traffic routing; readiness is read back through :meth:`observe`.

``scale`` never touches the stable version; ``promote`` makes the canary's
version the stable one at full replicas and removes the canary; ``rollback``
takes the canary out of traffic *first* (that is what makes a rollback fast),
stops it, then restores the stable version to its full replicas.

Errors: :class:`~vouch.core.errors.PlatformUnavailable` for transient trouble
(retry), :class:`~vouch.core.errors.PlatformError` for refusals.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from vouch.rollout.model import Endpoint, Observed, Target


@runtime_checkable
class Platform(Protocol):
    """Runs stable and canary versions of services and shifts traffic between them."""

    async def start(self) -> None:
        """Bring up what the platform owns (restore the last desired state)."""

    async def stop(self) -> None:
        """Stop what the platform owns; after this no process or connection of it is left."""

    async def address(self, target: Target) -> Endpoint:
        """Where clients reach the target's service (stable and canary together), e.g. for probes."""

    async def observe(self, target: Target) -> Observed:
        """Report the target's versions, desired and ready replicas and ready endpoints."""

    async def scale(self, target: Target, *, stable_replicas: int, canary_version: str, canary_replicas: int) -> None:
        """Run ``canary_replicas`` of ``canary_version`` beside ``stable_replicas`` of stable."""

    async def promote(self, target: Target, version: str) -> None:
        """Make ``version`` the stable version at the service's full replicas; remove the canary.

        With no stable version yet (a first deploy) this simply deploys ``version``.
        """

    async def rollback(self, target: Target) -> None:
        """Take the canary out of traffic and stop it, then restore stable to full replicas."""
