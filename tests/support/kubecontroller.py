"""A small stand-in for the Deployment controller and the kubelet, over kmock's stored objects.

kmock stores objects but runs no controllers. This one, ticking every few milliseconds, does what a
cluster would do for Deployments, simplified:

* each Deployment gets ``spec.replicas`` pods of its current template (a pod records the template's
  hash, like ``pod-template-hash``); pods of an older template are removed as soon as enough new ones
  are ready (a rolling update that never dips below the desired count), surplus pods right away;
* a removed pod is first *terminating* (``deletionTimestamp``, not ready) for ``terminate_delay``;
* a new pod gets an IP at once and turns Ready after ``ready_delay`` — unless its image's tag was
  marked with :meth:`KubeController.fail_version`, then it never does (a crash-looping release;
  pods ready before the mark stay ready);
* each Deployment's ``status`` (replicas, readyReplicas, updatedReplicas) is kept up to date.

It writes the emulator's objects directly (as an in-process component would), so faults scripted for
the API server never hit it and its writes are not counted as API requests.

    async with kube_server() as server, run_controller(server.emulator) as controller:
        controller.fail_version("2.0.0")
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import kmock

OWNER = "kubecontroller/deployment"
HASH = "pod-template-hash"


@dataclass
class _PodTimes:
    ready_at: float
    gone_at: float | None = None


@dataclass
class KubeController:
    emulator: kmock.KubernetesEmulator
    ready_delay: float = 0.03
    terminate_delay: float = 0.03
    tick: float = 0.01
    failing: set[str] = field(default_factory=set)
    _times: dict[tuple[str, str], _PodTimes] = field(default_factory=dict)
    _ips: int = 0
    _serial: int = 0

    def fail_version(self, version: str) -> None:
        """New pods whose image tag is ``version`` never become ready."""
        self.failing.add(version)

    def heal_version(self, version: str) -> None:
        self.failing.discard(version)

    async def run(self) -> None:
        while True:
            self.step(asyncio.get_running_loop().time())
            await asyncio.sleep(self.tick)

    # ------------------------------------------------------------------ one pass

    def step(self, now: float) -> None:
        for (resource, namespace, name), obj in list(self.emulator.objects.items()):
            if resource.plural == "deployments" and not obj.deleted and namespace is not None:
                self._reconcile(namespace, name, obj.raw, now)
        self._kubelet(now)

    def _pods(self, namespace: str, owner: str) -> list[tuple[str, dict[str, Any]]]:
        found = []
        for (resource, ns, name), obj in self.emulator.objects.items():
            if resource.plural == "pods" and ns == namespace and not obj.deleted:
                pod = obj.raw
                if pod.get("metadata", {}).get("annotations", {}).get(OWNER) == owner:
                    found.append((name, pod))
        return sorted(found)

    def _reconcile(self, namespace: str, name: str, deployment: dict[str, Any], now: float) -> None:
        spec = deployment.get("spec", {})
        desired = spec.get("replicas", 1)
        template = spec.get("template", {})
        current = hashlib.sha1(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        pods = [(n, p) for n, p in self._pods(namespace, name) if not p["metadata"].get("deletionTimestamp")]
        new = [(n, p) for n, p in pods if p["metadata"]["labels"].get(HASH) == current]
        old = [(n, p) for n, p in pods if p["metadata"]["labels"].get(HASH) != current]
        for _ in range(desired - len(new)):
            self._create_pod(namespace, name, template, current, now)
        for pod_name, _ in new[desired:]:
            self._terminate(namespace, pod_name, now)
        ready_new = sum(1 for _, p in new[:desired] if _ready(p))
        keep_old = max(0, desired - ready_new)
        for pod_name, _ in sorted(old, key=lambda item: _ready(item[1]), reverse=True)[keep_old:]:
            self._terminate(namespace, pod_name, now)
        status = {
            "replicas": len(pods),
            "readyReplicas": sum(1 for _, p in pods if _ready(p)),
            "updatedReplicas": len(new),
        }
        if deployment.get("status") != status:
            self.emulator.objects["apps/v1/deployments", namespace, name].patch({"status": status})

    def _create_pod(self, namespace: str, owner: str, template: dict[str, Any], current: str, now: float) -> None:
        self._serial += 1
        self._ips += 1
        name = f"{owner}-{current[:5]}-{self._serial}"
        metadata = copy.deepcopy(template.get("metadata", {}))
        labels = {**metadata.get("labels", {}), HASH: current}
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {**metadata, "name": name, "namespace": namespace, "labels": labels},
            "spec": copy.deepcopy(template.get("spec", {})),
            "status": {
                "phase": "Running",
                "podIP": f"10.0.{self._ips // 250}.{self._ips % 250 + 1}",
                "conditions": [{"type": "Ready", "status": "False"}],
            },
        }
        pod["metadata"].setdefault("annotations", {})[OWNER] = owner
        self.emulator.objects["v1/pods", namespace, name] = pod
        self._times[namespace, name] = _PodTimes(ready_at=now + self.ready_delay)

    def _terminate(self, namespace: str, name: str, now: float) -> None:
        times = self._times.setdefault((namespace, name), _PodTimes(ready_at=now))
        if times.gone_at is None:
            times.gone_at = now + self.terminate_delay
            self.emulator.objects["v1/pods", namespace, name].patch(
                {
                    "metadata": {"deletionTimestamp": "now"},
                    "status": {"conditions": [{"type": "Ready", "status": "False"}]},
                }
            )

    def _kubelet(self, now: float) -> None:
        for (namespace, name), times in list(self._times.items()):
            obj = self.emulator.objects["v1/pods", namespace, name]
            if obj.deleted:
                continue
            pod = obj.raw
            if times.gone_at is not None:
                if now >= times.gone_at:
                    obj.delete()
                    del self._times[namespace, name]
                continue
            if not _ready(pod) and now >= times.ready_at and not (_tags(pod) & self.failing):
                obj.patch({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return not pod["metadata"].get("deletionTimestamp") and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
    )


def _tags(pod: dict[str, Any]) -> set[str]:
    images = [c.get("image", "") for c in pod.get("spec", {}).get("containers", [])]
    return {image.rsplit(":", 1)[-1] for image in images if ":" in image}


@asynccontextmanager
async def run_controller(emulator: kmock.KubernetesEmulator, **options: Any) -> AsyncIterator[KubeController]:
    """Run a controller over ``emulator`` for the block's duration."""
    controller = KubeController(emulator, **options)
    task = asyncio.create_task(controller.run(), name="kubecontroller")
    try:
        yield controller
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
