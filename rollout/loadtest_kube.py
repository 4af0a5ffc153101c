"""Locust on Kubernetes: a master Job and worker Jobs per load run, made from the templates the chart ships.

The :class:`~vouch.loadtests.model.LoadRunner` for load bigger than one process of the daemon's pod
should make, or load that must come from inside the cluster. Each run gets an id and four objects in
the load-test namespace, all labelled ``vouch.dev/loadtest-run=<id>``:

1. the master Job (``locust --master --headless --json …``), created first: the others name it as
   their owner, so if vouch dies mid-run the master's ``ttlSecondsAfterFinished`` (after its
   ``activeDeadlineSeconds``) takes the whole run with it;
2. a ConfigMap with the locustfile (and ``endpoints.json`` beside it, for a generated one), and
   ``vouch_failure_report.py``, which the templates give Locust after the locustfile;
3. the Service the workers reach the master through;
4. the worker Job (``locust --worker``, ``workers`` pods).

The runner polls the Jobs until the master's has finished, reads the master pod's log (``pods/log``),
which ends with Locust's JSON statistics and a line of the most frequent failures, and reduces them
with the same parser as the subprocess runner (:func:`vouch.loadtests.stats.parse_stats`): the same
counts, and the failure messages that runner reads from its failures CSV. It deletes what it created
(propagation ``Background``, so the pods go too) whether the run succeeded, failed or was cancelled,
shielded from a second cancellation. A failed Job (or one past its deadline) is a
:class:`LoadTestError` carrying the Job's reason and the end of its pod's log, and is recorded as a
Kubernetes Event on the master Job.

Where the setting lives: this runner is chosen for the whole daemon (where load generators run is the
operator's concern, the same for every service; a service's :class:`~vouch.loadtests.settings.LoadTestSpec`
says only how hard and how long), as ``loadtest_runner: {kind: kubernetes, namespace, templates_dir, …}``
in the configuration; the Helm chart writes it with ``loadtest.enabled``.

Example::

    runner = await connect_runner(KubernetesLoadRunnerSpec(namespace="loadtests", templates_dir="/etc/vouch/loadtest"))
    loads = LoadTests(registry=registry, runner=lambda _spec: runner)
    ...
    await runner.aclose()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from vouch.core.durations import Duration
from vouch.core.settings import Model
from vouch.loadtests.errors import LoadTestError
from vouch.loadtests.locust import run_time
from vouch.loadtests.locustfiles import ENDPOINTS_FILE
from vouch.loadtests.model import LoadPlan, LoadResult, Progress
from vouch.loadtests.stats import failures_from_output, parse_stats, stats_from_output
from vouch.rollout.platforms.kube.client import KubeApi, KubeApiError, RetryPolicy, connect, path
from vouch.rollout.platforms.kube.loadjobs import ROLE_LABEL, RUN_LABEL, LoadJobTemplates
from vouch.rollout.platforms.kube.settings import DNS_LABEL

log = logging.getLogger(__name__)

Json = dict[str, Any]

DEFAULT_IMAGE = "locustio/locust:2.47.0"
"""The Locust image of the master and the workers: the Locust vouch is tested with."""
CONTAINER = "locust"
"""The container of the master pod whose log holds the statistics (the templates must keep the name)."""
_LOGS_READ = 5
"""Most pod logs read to explain one failed Job."""

FAILURE_REPORT = "vouch_failure_report.py"
"""The ConfigMap's file that prints the run's most frequent failures after the statistics
(``vouch/loadtests/failure_report.py.tmpl``); the templates name it after the locustfile."""

MAX_LOCUSTFILE_BYTES = 900_000
"""A ConfigMap holds at most 1 MiB; the locustfile and its requests must fit with room to spare."""
ResourceKind = Literal["requests", "limits"]


def _default_resources() -> dict[ResourceKind, dict[str, str]]:
    return {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}


class KubernetesLoadRunnerSpec(Model):
    """Load tests run as a Locust master Job plus worker Jobs in one namespace of a cluster."""

    kind: Literal["kubernetes"] = "kubernetes"
    namespace: str = Field(pattern=DNS_LABEL)
    """Where the Jobs, their Service and the locustfile's ConfigMap are made (vouch needs the chart's
    ``loadtest`` permissions there). The targets must be reachable from its pods."""
    templates_dir: str
    """The folder holding ``master-job.yaml``, ``worker-job.yaml`` and ``master-service.yaml`` (the chart
    mounts its own at ``/etc/vouch/loadtest``); read at every run, so an edit needs no restart."""
    image: str = DEFAULT_IMAGE
    """The Locust image of the master and the workers; the locustfile runs with its Python and packages."""
    workers: int = Field(default=2, ge=1, le=1000)
    """Worker pods per run; each takes an equal share of the users."""
    resources: dict[ResourceKind, dict[str, str]] = Field(default_factory=_default_resources)
    """Requests and limits of each Locust container (master and workers)."""
    start_timeout: Duration = 120.0
    """How long the master waits for all its workers to connect (scheduling, image pulls) before it fails."""
    overrun: Duration = 60.0
    """Time allowed past start and run time for Locust to stop and report, before the Jobs' deadline."""
    keep_finished: Duration = 600.0
    """``ttlSecondsAfterFinished`` of the Jobs: the cluster removes a run vouch could not delete itself."""
    poll_interval: Duration = Field(default=2.0, gt=0)
    """Time between two looks at the Jobs."""
    context: str | None = None
    """A kubeconfig context naming the cluster; none: in-cluster inside a pod, else the current context."""
    kubeconfig: str | None = None
    """A kubeconfig file; default ``$KUBECONFIG`` or ``~/.kube/config`` (unused in-cluster)."""

    def deadline(self, duration: float) -> int:
        """``activeDeadlineSeconds`` of a run of ``duration``: waiting for workers, the load, then reporting."""
        return math.ceil(self.start_timeout + run_time(duration) + self.overrun)


@dataclass(frozen=True)
class RunManifests:
    """Every object of one run, in the order the runner creates them."""

    run: str
    master: Json
    locustfile: Json
    service: Json
    workers: Json

    def ordered(self) -> tuple[Json, ...]:
        return (self.master, self.locustfile, self.service, self.workers)


def manifests(plan: LoadPlan, spec: KubernetesLoadRunnerSpec, templates: LoadJobTemplates, *, run: str) -> RunManifests:
    """The objects of run ``run`` of ``plan``: the templates filled (see :mod:`~vouch.rollout.platforms.kube.loadjobs`)
    plus the locustfile's ConfigMap."""
    name = f"vouch-loadtest-{run}"
    configmap = f"{name}-locustfile"
    values: dict[str, Any] = {
        "run": run,
        "name": name,
        "namespace": spec.namespace,
        "image": spec.image,
        "target": plan.target,
        "users": str(plan.users),
        "spawn_rate": f"{plan.spawn_rate:g}",
        "run_time": f"{run_time(plan.duration)}s",
        "workers": spec.workers,
        "start_timeout": math.ceil(spec.start_timeout),
        "deadline": spec.deadline(plan.duration),
        "ttl": math.ceil(spec.keep_finished),
        "resources": {k: dict(v) for k, v in spec.resources.items()},
        "locustfile_configmap": configmap,
        "env": [{"name": key, "value": value} for key, value in locust_environment(plan).items()],
        "tag_args": ["--tags", *plan.tags] if plan.tags else [],
    }
    objects = templates.render(values)
    locustfile = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap,
            "namespace": spec.namespace,
            "labels": {"app.kubernetes.io/managed-by": "vouch", RUN_LABEL: run},
        },
        "data": locustfile_data(plan.locustfile),
    }
    return RunManifests(run, objects.master, locustfile, objects.service, objects.workers)


def locust_environment(plan: LoadPlan) -> dict[str, str]:
    """What the locustfile reads from its environment (as the subprocess runner sets it), and nothing of vouch's."""
    env = {"VOUCH_TARGET": plan.target, "VOUCH_USERS": str(plan.users)}
    if plan.rate is not None:
        env["VOUCH_RATE"] = f"{plan.rate:g}"
        env["VOUCH_RATE_PER_USER"] = repr(plan.rate / plan.users)
    env.update(plan.env)
    return env


def _failure_report() -> str:
    return resources.files("vouch.loadtests").joinpath("failure_report.py.tmpl").read_text(encoding="utf-8")


def locustfile_data(locustfile: Path) -> dict[str, str]:
    """The ConfigMap's files: the locustfile as ``locustfile.py``, the requests of a generated one beside it,
    and the failure report (:data:`FAILURE_REPORT`)."""
    try:
        data = {"locustfile.py": locustfile.read_text(encoding="utf-8"), FAILURE_REPORT: _failure_report()}
        requests = locustfile.with_name(ENDPOINTS_FILE)
        if requests.is_file():
            data[ENDPOINTS_FILE] = requests.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LoadTestError(f"cannot read the locustfile {locustfile}: {exc}") from exc
    size = sum(len(text.encode()) for text in data.values())
    if size > MAX_LOCUSTFILE_BYTES:
        raise LoadTestError(f"the locustfile {locustfile} and its requests are {size} bytes; a ConfigMap holds < 1 MiB")
    return data


class KubernetesLocustRunner:
    """Runs load plans as Locust Jobs through ``api``; one instance may run many plans, also at once."""

    runner = "locust-kubernetes"

    def __init__(self, api: KubeApi, spec: KubernetesLoadRunnerSpec) -> None:
        self._api = api
        self._spec = spec

    async def aclose(self) -> None:
        await self._api.close()

    async def run(self, plan: LoadPlan, *, on_progress: Callable[[Progress], None] | None = None) -> LoadResult:
        """Run ``plan`` to its end in the cluster; see the module docstring and :class:`LoadRunner`."""
        _check(plan)
        templates = LoadJobTemplates.load(Path(self._spec.templates_dir))
        made = manifests(plan, self._spec, templates, run=secrets.token_hex(4))
        created: list[Json] = []
        try:
            await self._create(made, created)
            await self._wait(made, plan, on_progress)
            return await self._result(made, plan)
        except LoadTestError as exc:
            if created:
                await self._event(made.master, str(exc))
            raise
        finally:
            await asyncio.shield(self._delete(created))

    # ------------------------------------------------------------------ steps of a run

    async def _create(self, made: RunManifests, created: list[Json]) -> None:
        """Create the master Job, then the rest owned by it (so the cluster collects them with it)."""
        owner: Json | None = None
        for manifest in made.ordered():
            body = manifest if owner is None else _owned(manifest, owner)
            kind, name = manifest["kind"], _name(manifest)
            with _translated(f"cannot create {kind} {name} in namespace {self._spec.namespace}"):
                collection = _collection(manifest, self._spec.namespace)
                made_now = await self._api.create(collection, body)
                # None: it exists already, a retried create whose first answer was lost
                found = made_now or await self._api.get(f"{collection}/{name}")
            created.append(manifest)
            if owner is None:
                owner = found or {}

    async def _wait(self, made: RunManifests, plan: LoadPlan, on_progress: Callable[[Progress], None] | None) -> None:
        """Poll the Jobs until the master's has finished; a failed Job or one past the deadline is an error."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        limit = self._spec.deadline(plan.duration) + 2 * self._spec.poll_interval
        while True:
            for role, job in (("master", made.master), ("worker", made.workers)):
                status = await self._job_status(job)
                failed = _failure(status)
                if failed is not None:
                    raise LoadTestError(await self._failure_text(made, role, _name(job), failed))
                if role == "master" and _complete(status):
                    return
            elapsed = loop.time() - started
            if elapsed > limit:
                raise LoadTestError(
                    f"the load run {made.run} did not finish within {limit:g}s (workers may not have been scheduled: "
                    f"look at the pods labelled {RUN_LABEL}={made.run} in namespace {self._spec.namespace})"
                )
            if on_progress is not None:
                on_progress(Progress(elapsed=elapsed, duration=plan.duration))
            await asyncio.sleep(self._spec.poll_interval)

    async def _result(self, made: RunManifests, plan: LoadPlan) -> LoadResult:
        """Read the statistics the master printed as the last thing in its log."""
        pod = await self._pod(made.run, "master", prefer="Succeeded")
        if pod is None:
            raise LoadTestError(f"the master Job {_name(made.master)} finished, but its pod is gone: no statistics")
        text = await self._log(_name(pod))
        return parse_stats(
            stats_from_output(text),
            errors=failures_from_output(text),
            target=plan.target,
            users=plan.users,
            ramp=plan.users / plan.spawn_rate,
            runner=self.runner,
            tool_version=_image_version(self._spec.image),
            data={
                "namespace": self._spec.namespace,
                "run": made.run,
                "jobs": [_name(made.master), _name(made.workers)],
                "image": self._spec.image,
                "workers": self._spec.workers,
                "run_time": run_time(plan.duration),
                "rate": plan.rate,
            },
        )

    async def _delete(self, created: list[Json]) -> None:
        """Delete what this run created, newest first; best effort (the Jobs' TTL is the safety net)."""
        for manifest in reversed(created):
            where = f"{_collection(manifest, self._spec.namespace)}/{_name(manifest)}"
            try:
                await self._api.request("DELETE", where, query=[("propagationPolicy", "Background")])
            except KubeApiError as exc:
                if exc.status != 404:
                    log.warning("cannot delete %s %s: %s", manifest["kind"], _name(manifest), exc)

    # ------------------------------------------------------------------ reading

    async def _job_status(self, job: Json) -> Json:
        name = _name(job)
        with _translated(f"cannot read Job {name} in namespace {self._spec.namespace}"):
            found = await self._api.get(path("batch/v1", "jobs", self._spec.namespace, name))
        if found is None:
            raise LoadTestError(f"Job {name} in namespace {self._spec.namespace} disappeared during the load run")
        status = found.get("status")
        return status if isinstance(status, dict) else {}

    async def _pod(self, run: str, role: str, *, prefer: str) -> Json | None:
        """The run's newest pod of ``role``, one in phase ``prefer`` first."""
        mine = await self._pods(run, role)
        return max(mine, key=lambda p: (_phase(p) == prefer, p["metadata"].get("creationTimestamp", "")), default=None)

    async def _pods(self, run: str, role: str) -> list[Json]:
        """The run's pods of ``role`` (checked here too: the server may ignore the selector)."""
        wanted = {RUN_LABEL: run, ROLE_LABEL: role}
        selector = ",".join(f"{k}={v}" for k, v in wanted.items())
        with _translated(f"cannot list the pods of load run {run}"):
            pods = await self._api.list_objects(path("v1", "pods", self._spec.namespace), label_selector=selector)
        return [p for p in pods if wanted.items() <= (p.get("metadata", {}).get("labels") or {}).items()]

    async def _log(self, pod: str) -> str:
        where = f"{path('v1', 'pods', self._spec.namespace, pod)}/log"
        with _translated(f"cannot read the log of pod {pod}"):
            found = await self._api.request("GET", where, query=[("container", CONTAINER)])
        # The client decodes a log that happens to be JSON alone; give the parser the text back.
        return found if isinstance(found, str) else _json_text(found)

    async def _failure_text(self, made: RunManifests, role: str, job: str, failed: tuple[str, str]) -> str:
        reason, message = failed
        text = f"the {role} Job {job} failed: {reason}" + (f" ({message})" if message else "")
        with contextlib.suppress(LoadTestError):
            # The pod that failed first says why; the Job's other pods were then stopped, often before
            # they printed anything, and show Failed too: the first failed pod with something in its log.
            ranked = sorted(await self._pods(made.run, role), key=_failure_order)
            for pod in ranked[:_LOGS_READ]:
                log = await self._log(_name(pod))
                if log.strip():
                    return f"{text}; the log of pod {_name(pod)} ends: {_last_lines(log)}"
            if ranked:
                text += f"; the log of pod {_name(ranked[0])} is empty"
        return text

    async def _event(self, master: Json, message: str) -> None:
        """Record the failure on the master Job, where ``kubectl describe`` shows it; best effort."""
        name, namespace = _name(master), self._spec.namespace
        now = datetime.now(UTC).isoformat(timespec="seconds")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{time.time_ns():x}", "namespace": namespace},
            "involvedObject": {"apiVersion": "batch/v1", "kind": "Job", "name": name, "namespace": namespace},
            "reason": "LoadTestFailed",
            "message": message[:1024],
            "type": "Warning",
            "source": {"component": "vouch"},
            "reportingComponent": "vouch",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._api.create(path("v1", "events", namespace), event)
        except KubeApiError as exc:
            log.warning("cannot record the failure of load run %s as an Event: %s", name, exc)


async def connect_runner(spec: KubernetesLoadRunnerSpec, *, retry: RetryPolicy | None = None) -> KubernetesLocustRunner:
    """A runner with its own client for the cluster ``spec`` names; close it with ``aclose()``."""

    async def client() -> Any:
        return await connect(context=spec.context, kubeconfig=spec.kubeconfig)

    try:
        api = KubeApi(await client(), retry or RetryPolicy(), reconnect=client)
    except KubeApiError as exc:
        raise LoadTestError(f"cannot reach the cluster for load tests: {exc}") from exc
    return KubernetesLocustRunner(api, spec)


# --------------------------------------------------------------------------- helpers


def _check(plan: LoadPlan) -> None:
    """Refuse a plan Locust cannot run, before anything is created."""
    if plan.users < 1 or plan.spawn_rate <= 0 or not math.isfinite(plan.duration) or plan.duration <= 0:
        raise LoadTestError(
            f"a load run needs users >= 1, a positive spawn rate and duration (got users={plan.users}, "
            f"spawn_rate={plan.spawn_rate}, duration={plan.duration})"
        )
    if plan.rate is not None and not plan.rate > 0:
        raise LoadTestError(f"the target rate must be positive, got {plan.rate}")
    if not plan.locustfile.is_file():
        raise LoadTestError(f"no locustfile at {plan.locustfile}")


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    """API failures (after the client's retries) become :class:`LoadTestError`, with a hint on refusals."""
    try:
        yield
    except KubeApiError as exc:
        hint = " (does vouch have the chart's loadtest permissions in that namespace?)" if exc.status == 403 else ""
        raise LoadTestError(f"{action}: {exc}{hint}") from exc


def _owned(manifest: Json, owner: Json) -> Json:
    """``manifest`` owned by the master Job (without its uid, as the API server gave none, left unowned)."""
    uid = (owner.get("metadata") or {}).get("uid")
    if not uid:
        return manifest
    reference = {"apiVersion": "batch/v1", "kind": "Job", "name": _name(owner), "uid": uid}
    metadata = {**manifest.get("metadata", {}), "ownerReferences": [reference]}
    return {**manifest, "metadata": metadata}


def _collection(manifest: Json, namespace: str) -> str:
    group_version = str(manifest["apiVersion"])
    resource = {"Job": "jobs", "ConfigMap": "configmaps", "Service": "services"}[str(manifest["kind"])]
    return path(group_version, resource, namespace)


def _name(obj: Json) -> str:
    return str((obj.get("metadata") or {}).get("name"))


def _condition(status: Json, kind: str) -> Json | None:
    for condition in status.get("conditions") or ():
        if isinstance(condition, dict) and condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def _complete(status: Json) -> bool:
    return _condition(status, "Complete") is not None


def _failure(status: Json) -> tuple[str, str] | None:
    """(reason, message) of a Job that failed or is failing (``FailureTarget``: its pods are being stopped)."""
    condition = _condition(status, "Failed") or _condition(status, "FailureTarget")
    if condition is None:
        return None
    return str(condition.get("reason") or "Failed"), str(condition.get("message") or "")


def _failure_order(pod: Json) -> tuple[bool, str, str]:
    """Failed pods first, the one that finished first first (then the oldest)."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
    finished = str(((statuses[0].get("state") or {}).get("terminated") or {}).get("finishedAt") or "~")
    return _phase(pod) != "Failed", finished, str(pod.get("metadata", {}).get("creationTimestamp", ""))


def _phase(pod: Json) -> str:
    status = pod.get("status")
    return str(status.get("phase")) if isinstance(status, dict) else ""


def _image_version(image: str) -> str | None:
    """``locustio/locust:2.31.0`` -> ``2.31.0``; a digest or an unversioned tag says nothing.

    >>> _image_version("registry:5000/locustio/locust:2.31.0"), _image_version("locust@sha256:0a1b")
    ('2.31.0', None)
    """
    if "@" in image:
        return None
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    return tag if tag[:1].isdigit() else None


def _json_text(value: object) -> str:
    return json.dumps(value)


def _last_lines(text: str, count: int = 8) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:]) if lines else "(empty)"
