"""A stand-in for the Job controller and the kubelet that really runs Locust, over kmock's stored objects.

kmock stores Jobs but runs nothing. :class:`JobKubelet`, ticking every few milliseconds, does for each
Job what a cluster would, simplified, and with the pods' containers as local processes:

* it starts ``parallelism`` pods (up to ``completions``) from the Job's pod template, each one as a
  local process of the container's command line: ``locust`` is this Python's ``python -m locust``,
  each mounted ConfigMap is written to a folder of the pod's own and its mount path in the arguments
  points there (a pod whose ConfigMap does not exist yet waits, as a kubelet does);
* networking is Locust's and local: ``--master-bind-port`` is bound on a free port of 127.0.0.1, and a
  worker's ``--master-host``/``--master-port`` are resolved through the Service of that name (its port,
  its selector, the pod it selects and that pod's named container port) to that port; a worker whose
  master cannot be resolved yet waits;
* a process's stdout and stderr are the pod's log, served at ``/api/v1/namespaces/N/pods/P/log``;
* pods and Jobs get ``status`` as the API shows them: a pod's phase and exit code, a Job's counts and
  its ``Complete`` or ``Failed`` condition (``BackoffLimitExceeded`` past ``backoffLimit``,
  ``DeadlineExceeded`` past ``activeDeadlineSeconds``, the running pods then stopped);
* a deleted Job's processes are stopped and its pods deleted (the Background propagation's effect).

The emulator here also stamps a ``uid`` on every object it creates, as the API server does.

    async with jobs_server() as server, run_kubelet(server, tmp_path) as kubelet:
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
from support.demo import free_port
from support.kmockserver import RESOURCES, FaultyEmulator, KubeServer

JOBS = "batch/v1/jobs"


@attrs.define(kw_only=True)
class JobsEmulator(FaultyEmulator):
    """The emulator with uids on created objects and pod logs from files (see the module docstring)."""

    logs: dict[tuple[str, str], Path] = attrs.field(factory=dict)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            request.data.setdefault("metadata", {}).setdefault("uid", str(uuid.uuid4()))
        return await super()._handle(request)

    def serve_log(self, request: kmock.Request) -> bytes:
        found = self.logs.get((str(request.namespace), str(request.name)))
        if found is None:
            raise kmock.KubernetesError(
                status=400, reason="BadRequest", message=f'container in pod "{request.name}" is waiting to start'
            )
        return found.read_bytes()


@contextlib.asynccontextmanager
async def jobs_server() -> AsyncIterator[KubeServer]:
    """An emulator on 127.0.0.1 that knows Jobs and serves pod logs; stopped on exit."""
    async with JobsEmulator() as emulator, kmock.Server(emulator, host="127.0.0.1") as server:
        for resource in (*RESOURCES, JOBS):
            emulator.resources[resource] = {}
        emulator["get", kmock.resource("v1/pods"), kmock.subresource("log")] << emulator.serve_log
        yield KubeServer(emulator, str(server.url).rstrip("/"))


@dataclass
class _Pod:
    name: str
    process: asyncio.subprocess.Process


@dataclass
class _Job:
    namespace: str
    name: str
    started: float
    pods: list[_Pod] = field(default_factory=list)
    finished: bool = False


@dataclass
class JobKubelet:
    server: KubeServer
    folder: Path
    tick: float = 0.02
    jobs: dict[tuple[str, str], _Job] = field(default_factory=dict)
    ports: dict[tuple[str, str], dict[int, int]] = field(default_factory=dict)
    """Per pod (namespace, name): its container port -> the local port it is bound to."""
    started: list[tuple[str, str, asyncio.subprocess.Process]] = field(default_factory=list)
    """Every pod's process started so far, with its Job's and its own name (finished ones too)."""

    @property
    def emulator(self) -> JobsEmulator:
        assert isinstance(self.server.emulator, JobsEmulator)
        return self.server.emulator

    def running(self, role: str) -> bool:
        """Whether a process of a pod labelled ``vouch.dev/loadtest-role=role`` runs."""
        for job in self.jobs.values():
            for pod in job.pods:
                labels = self._object("v1/pods", job.namespace, pod.name).get("metadata", {}).get("labels", {})
                if labels.get("vouch.dev/loadtest-role") == role and pod.process.returncode is None:
                    return True
        return False

    async def run(self) -> None:
        while True:
            await self.step()
            await asyncio.sleep(self.tick)

    async def step(self) -> None:
        now = asyncio.get_running_loop().time()
        for (resource, namespace, name), obj in list(self.emulator.objects.items()):
            if resource.plural == "jobs" and not obj.deleted and namespace and (namespace, name) not in self.jobs:
                self.jobs[namespace, name] = _Job(namespace, name, now)
        for key, job in list(self.jobs.items()):
            if not self._object(JOBS, job.namespace, job.name):
                await self._collect(job)
                del self.jobs[key]
            elif not job.finished:
                await self._advance(job, now)

    async def stop(self) -> None:
        for job in self.jobs.values():
            await self._stop_pods(job)
        for _, _, process in self.started:
            if process.returncode is None:
                _signal(process.pid, signal.SIGKILL)
                await process.wait()

    # ------------------------------------------------------------------ the Job controller

    async def _advance(self, job: _Job, now: float) -> None:
        spec = self._object(JOBS, job.namespace, job.name)["spec"]
        completions, parallelism = spec.get("completions", 1), spec.get("parallelism", 1)
        self._update_pods(job)
        codes = [pod.process.returncode for pod in job.pods]
        active = codes.count(None)
        succeeded = codes.count(0)
        failed = len(codes) - active - succeeded
        condition = None
        if failed > spec.get("backoffLimit", 6):
            condition = ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        elif "activeDeadlineSeconds" in spec and now - job.started > spec["activeDeadlineSeconds"]:
            condition = ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
        elif succeeded >= completions:
            condition = ("Complete", "", "")
        if condition is not None:
            job.finished = True
            await self._stop_pods(job)
            self._update_pods(job)
            self._set_status(job, active=0, succeeded=succeeded, failed=failed, condition=condition)
            return
        while active < parallelism and succeeded + active < completions and await self._start(job, spec):
            active += 1
        self._set_status(job, active=active, succeeded=succeeded, failed=failed, condition=None)

    def _set_status(
        self, job: _Job, *, active: int, succeeded: int, failed: int, condition: tuple[str, str, str] | None
    ) -> None:
        status: dict[str, Any] = {"active": active, "succeeded": succeeded, "failed": failed}
        if condition is not None:
            kind, reason, message = condition
            status["conditions"] = [{"type": kind, "status": "True", "reason": reason, "message": message}]
        stored = self.emulator.objects[JOBS, job.namespace, job.name]
        if stored.raw.get("status") != status:
            stored.patch({"status": status})

    def _update_pods(self, job: _Job) -> None:
        for pod in job.pods:
            code = pod.process.returncode
            stored = self.emulator.objects["v1/pods", job.namespace, pod.name]
            if code is None or stored.deleted or stored.raw["status"]["phase"] != "Running":
                continue
            finished = datetime.now(UTC).isoformat(timespec="microseconds")
            state = {
                "terminated": {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "finishedAt": finished,
                }
            }
            stored.patch(
                {
                    "status": {
                        "phase": "Succeeded" if code == 0 else "Failed",
                        "containerStatuses": [{"name": "locust", "ready": False, "state": state}],
                    }
                }
            )

    async def _collect(self, job: _Job) -> None:
        """The Job is gone: stop its pods' processes and delete the pods."""
        await self._stop_pods(job)
        for pod in job.pods:
            stored = self.emulator.objects["v1/pods", job.namespace, pod.name]
            if not stored.deleted:
                stored.delete()
            self.emulator.logs.pop((job.namespace, pod.name), None)

    async def _stop_pods(self, job: _Job) -> None:
        """SIGTERM every pod at once, as the kubelet would, then SIGKILL what is left after a short grace."""
        running = [pod for pod in job.pods if pod.process.returncode is None]
        for pod in running:
            _signal(pod.process.pid, signal.SIGTERM)
        if running:
            await asyncio.wait({asyncio.ensure_future(pod.process.wait()) for pod in running}, timeout=3)
        for pod in job.pods:
            _signal(pod.process.pid, signal.SIGKILL)
        for pod in running:
            await pod.process.wait()

    # ------------------------------------------------------------------ the kubelet

    async def _start(self, job: _Job, spec: dict[str, Any]) -> bool:
        """Start one pod of ``job`` if its volumes and its master can be found; False to try again later."""
        template = spec["template"]
        (container,) = template["spec"]["containers"]
        name = f"{job.name}-{secrets.token_hex(3)}"
        home = self.folder / job.namespace / name
        mounts = self._mounts(job.namespace, template["spec"], container, home)
        if mounts is None:
            return False
        ports = {p["containerPort"]: free_port() for p in container.get("ports", [])}
        argv = self._argv(job.namespace, container, mounts, ports)
        if argv is None:
            return False
        env = {**os.environ, **{e["name"]: e["value"] for e in container.get("env", [])}}
        home.mkdir(parents=True, exist_ok=True)
        log = home / "log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                cwd=home, env=env, start_new_session=True,
            )  # fmt: skip
        labels = {**template["metadata"]["labels"], "job-name": job.name, "batch.kubernetes.io/job-name": job.name}
        self.emulator.objects["v1/pods", job.namespace, name] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": job.namespace,
                "labels": labels,
                "creationTimestamp": datetime.now(UTC).isoformat(timespec="microseconds"),
            },
            "spec": template["spec"],
            "status": {"phase": "Running", "podIP": "127.0.0.1"},
        }
        self.emulator.logs[job.namespace, name] = log
        self.ports[job.namespace, name] = ports
        job.pods.append(_Pod(name, process))
        self.started.append((job.name, name, process))
        return True

    def _mounts(
        self, namespace: str, pod_spec: dict[str, Any], container: dict[str, Any], home: Path
    ) -> dict[str, Path] | None:
        """Mount path -> local folder; None while a ConfigMap it mounts does not exist."""
        volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
        found: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            local = home / "volumes" / mount["name"]
            if "configMap" in volume:
                configmap = self._object("v1/configmaps", namespace, volume["configMap"]["name"])
                if not configmap:
                    return None
                local.mkdir(parents=True, exist_ok=True)
                for key, text in configmap.get("data", {}).items():
                    (local / key).write_text(text, encoding="utf-8")
            else:
                local.mkdir(parents=True, exist_ok=True)
            found[mount["mountPath"].rstrip("/")] = local
        return found

    def _argv(
        self, namespace: str, container: dict[str, Any], mounts: dict[str, Path], ports: dict[int, int]
    ) -> list[str] | None:
        """The local command line of ``container``; None while the master it connects to cannot be resolved."""
        if container.get("command") != ["locust"]:
            raise AssertionError(f"this kubelet runs the locust command only, not {container.get('command')}")
        args = [_remount(arg, mounts) for arg in container.get("args", [])]
        options = _options(args)
        if "--master-bind-port" in options:
            args = _replace(args, "--master-bind-port", str(ports[int(options["--master-bind-port"])]))
            args.append("--master-bind-host=127.0.0.1")
        if "--master-host" in options:
            local = self._resolve(namespace, options["--master-host"], int(options.get("--master-port", "5557")))
            if local is None:
                return None
            args = _replace(_replace(args, "--master-host", "127.0.0.1"), "--master-port", str(local))
        return [sys.executable, "-m", "locust", *args]

    def _resolve(self, namespace: str, host: str, port: int) -> int | None:
        """The local port behind Service ``host``'s ``port``: its selector, the pod it selects, the target port."""
        service = self._object("v1/services", namespace, host)
        if not service:
            return None
        (entry,) = [p for p in service["spec"]["ports"] if p["port"] == port]
        selector = service["spec"]["selector"]
        for (resource, ns, name), obj in self.emulator.objects.items():
            pod = obj.raw
            if resource.plural != "pods" or ns != namespace or obj.deleted or pod["status"]["phase"] != "Running":
                continue
            if not selector.items() <= pod["metadata"]["labels"].items():
                continue
            target = entry.get("targetPort", port)
            if isinstance(target, str):
                declared = [p for c in pod["spec"]["containers"] for p in c.get("ports", []) if p.get("name") == target]
                target = declared[0]["containerPort"] if declared else None
            return self.ports.get((namespace, name), {}).get(target) if target is not None else None
        return None

    def _object(self, resource: str, namespace: str, name: str) -> dict[str, Any]:
        try:
            found = self.emulator.objects[resource, namespace, name]
        except KeyError:
            return {}
        return {} if found.deleted else dict(found.raw)


def _options(args: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in args if arg.startswith("--") and "=" in arg)


def _replace(args: list[str], option: str, value: str) -> list[str]:
    return [f"{option}={value}" if arg.startswith(f"{option}=") else arg for arg in args]


def _remount(arg: str, mounts: dict[str, Path]) -> str:
    """``--locustfile=/etc/locust/x.py,/etc/locust/y.py`` -> the same files in the local folders of the volumes
    mounted there (each of a comma-separated list)."""
    option, equals, value = arg.rpartition("=") if arg.startswith("--") else ("", "", arg)
    return f"{option}{equals}" + ",".join(_local(path, mounts) for path in value.split(","))


def _local(path: str, mounts: dict[str, Path]) -> str:
    for mount_path in sorted(mounts, key=len, reverse=True):
        if path.startswith(f"{mount_path}/"):
            return f"{mounts[mount_path]}{path[len(mount_path) :]}"
    return path


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@contextlib.asynccontextmanager
async def run_kubelet(server: KubeServer, folder: Path, **options: Any) -> AsyncIterator[JobKubelet]:
    """Run a :class:`JobKubelet` over ``server`` for the block's duration; every process it started is stopped."""
    kubelet = JobKubelet(server, folder, **options)
    task = asyncio.create_task(kubelet.run(), name="jobkubelet")
    try:
        yield kubelet
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.shield(kubelet.stop())
