"""Marks the leader's own pod, so the chart's Service sends API calls and Alertmanager's webhooks to it.

Every healthy replica is *ready* (a follower is a useful standby, and a Deployment whose
followers never became ready could never finish a rolling update); only the leader acts. The
Service therefore selects ``vouch.dev/leader: "true"`` besides the usual labels, and this task keeps
that label true on the leader's pod and ``"false"`` on the others'. The label only routes
traffic: it is not what keeps two daemons from acting (the Lease does, and a follower answers
mutating API calls with 503), so a stale label costs at most a retried request.

Kubernetes calls used (see ``vouch.rollout.platforms.kube.rbac``): pods patch, in the daemon's
own namespace.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from vouch.rollout.platforms.kube.client import KubeApi, KubeApiError, path

log = logging.getLogger(__name__)

LEADER_LABEL = "vouch.dev/leader"


class Election(Protocol):
    """What the label follows (``LeaderElector`` provides it)."""

    @property
    def is_leader(self) -> bool: ...

    async def wait_elected(self) -> None: ...

    async def wait_deposed(self) -> None: ...


class LeaderLabel:
    """Keeps :data:`LEADER_LABEL` on pod ``pod`` in ``namespace`` equal to whether this daemon leads."""

    def __init__(self, api: KubeApi, *, pod: str, namespace: str, retry: float = 2.0) -> None:
        self._api = api
        self._path = path("v1", "pods", namespace, pod)
        self._retry = retry
        self.pod = pod

    async def run(self, election: Election) -> None:
        """Follow the election until cancelled; on the way out mark the pod a follower (best effort)."""
        try:
            await self._set(False)
            while True:
                await election.wait_elected()
                await self._set(True, while_=lambda: election.is_leader)
                await election.wait_deposed()
                await self._set(False, while_=lambda: not election.is_leader)
        finally:
            await asyncio.shield(self._last_word())

    async def _set(self, leading: bool, *, while_: Callable[[], bool] = lambda: True) -> None:
        """Patch the label, retrying until it lands or the election moved on (then the caller patches again)."""
        wanted = {"metadata": {"labels": {LEADER_LABEL: "true" if leading else "false"}}}
        while while_():
            try:
                await self._api.patch(self._path, wanted)
            except KubeApiError as exc:
                log.warning("could not mark pod %s %s: %s", self.pod, "leader" if leading else "follower", exc)
                await asyncio.sleep(self._retry)
            else:
                log.info("pod %s marked %s", self.pod, "leader" if leading else "follower")
                return

    async def _last_word(self) -> None:
        try:
            async with asyncio.timeout(self._retry):
                await self._api.patch(self._path, {"metadata": {"labels": {LEADER_LABEL: "false"}}})
        except (KubeApiError, TimeoutError) as exc:
            log.info("could not mark pod %s a follower on the way out: %s", self.pod, exc)
