"""Locust as Kubernetes Jobs, for real: the chart's templates, kmock's API server, and a kubelet running Locust."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import pytest
from kubernetes_asyncio.client import ApiClient, Configuration
from support.demo import eventually, free_port
from support.kmockserver import Fault, KubeServer
from support.kubejobs import jobs_server, run_kubelet
from support.loadtarget import locust_children

from vouch.loadtests.errors import LoadTestError
from vouch.loadtests.locustfiles import generated_locustfile, parse_request
from vouch.loadtests.model import LoadPlan, Progress
from vouch.loadtests.stats import stats_from_output
from vouch.rollout.loadtest_kube import KubernetesLoadRunnerSpec, KubernetesLocustRunner, manifests
from vouch.rollout.platforms.kube.client import KubeApi, RetryPolicy
from vouch.rollout.platforms.kube.loadjobs import LoadJobTemplates, fill
from vouch.rollout.platforms.kube.rbac import RULES

TEMPLATES = Path(__file__).resolve().parents[2] / "helm" / "vouch" / "files" / "locust"
NAMESPACE = "loadtests"
QUICK = RetryPolicy(request_timeout=5.0, initial=0.01, maximum=0.05, deadline=2.0)
KINDS = {"jobs": "batch/v1/jobs", "configmaps": "v1/configmaps", "services": "v1/services", "pods": "v1/pods"}


def spec(**changes: Any) -> KubernetesLoadRunnerSpec:
    values: dict[str, Any] = {
        "namespace": NAMESPACE,
        "templates_dir": str(TEMPLATES),
        "workers": 2,
        "poll_interval": 0.05,
        "start_timeout": 30,
        "overrun": 30,
    }
    return KubernetesLoadRunnerSpec(**{**values, **changes})


@contextlib.asynccontextmanager
async def runner_for(server: KubeServer, **changes: Any) -> AsyncIterator[KubernetesLocustRunner]:
    runner = KubernetesLocustRunner(KubeApi(ApiClient(Configuration(host=server.url)), QUICK), spec(**changes))
    try:
        yield runner
    finally:
        await runner.aclose()


@dataclass
class Target:
    url: str
    seen: Counter[str] = field(default_factory=Counter)


@contextlib.asynccontextmanager
async def counting_target(*, failing: str | None = None) -> AsyncIterator[Target]:
    """An HTTP server on 127.0.0.1 that counts each ``METHOD path`` it answered: 503 for ``failing``, else 200."""
    port = free_port()
    target = Target(f"http://127.0.0.1:{port}")

    async def answer(request: aiohttp.web.Request) -> aiohttp.web.Response:
        name = f"{request.method} {request.path_qs}"
        target.seen[name] += 1
        return aiohttp.web.Response(status=503 if name == failing else 200, text="ok")

    app = aiohttp.web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield target
    finally:
        await runner.cleanup()


def plan(target: str, locustfile: Path, **changes: Any) -> LoadPlan:
    values: dict[str, Any] = {"users": 4, "spawn_rate": 100.0, "duration": 2.0}
    values.update(changes)
    return LoadPlan(target=target, locustfile=locustfile, **values)


def left_over(server: KubeServer) -> list[tuple[str, str]]:
    """The run's objects still in the emulator (Events are kept on purpose)."""
    return [
        (resource.plural, name)
        for (resource, namespace, name), obj in server.objects.items()
        if resource.plural in KINDS and namespace == NAMESPACE and not obj.deleted
    ]


def deleted_in_background(server: KubeServer) -> set[tuple[str, str]]:
    found = set()
    for request in server.requests("DELETE"):
        assert request.params.get("propagationPolicy") == "Background"
        assert request.resource is not None
        found.add((request.resource.plural, str(request.name)))
    return found


# --------------------------------------------------------------------------- end to end


async def test_a_distributed_run_measures_what_the_target_saw(tmp_path: Path) -> None:
    progress: list[Progress] = []
    async with counting_target() as target, jobs_server() as server, run_kubelet(server, tmp_path) as kubelet:
        requests = [parse_request("/cart"), parse_request("POST /orders")]
        with generated_locustfile(requests) as locustfile:
            async with runner_for(server) as runner:
                result = await runner.run(plan(target.url, locustfile, rate=40.0), on_progress=progress.append)
        await eventually(lambda: not left_over(server), what="the run's objects deleted")
        await eventually(lambda: all(p.returncode is not None for _, _, p in kubelet.started), what="Locust ended")
        assert sorted(job.rsplit("-", 1)[1] for job, _, _ in kubelet.started) == ["master", "workers", "workers"]
        assert [p.returncode for _, _, p in kubelet.started] == [0, 0, 0]
        deleted = deleted_in_background(server)
        creates = {(r.data["kind"], r.data["metadata"]["name"]): r.data for r in server.requests("POST")}
    assert not locust_children()
    # Locust's counts, gathered by the master from both workers, are what the target answered (but for
    # requests in flight when the users were stopped: at most one per user)
    assert result.runner == "locust-kubernetes"
    assert result.tool_version == "2.47.0"
    assert {e.name for e in result.endpoints} == set(target.seen) == {"GET /cart", "POST /orders"}
    for endpoint in result.endpoints:
        assert 0 <= target.seen[endpoint.name] - endpoint.requests <= 4, endpoint
    assert 0 <= sum(target.seen.values()) - result.requests <= 4
    assert result.requests > 20
    assert (result.failures, result.errors) == (0, ())
    assert result.requests <= 200, "paced at 40 rps for 2 s: VOUCH_RATE_PER_USER reached the workers"
    assert result.latency.p50 is not None
    assert progress
    run = result.data["run"]
    assert result.data["jobs"] == [f"vouch-loadtest-{run}-master", f"vouch-loadtest-{run}-workers"]
    # everything it made is gone, the pods with their Jobs; the rest was owned by the master Job meanwhile
    name = f"vouch-loadtest-{run}"
    assert deleted == {
        ("jobs", f"{name}-master"),
        ("jobs", f"{name}-workers"),
        ("services", f"{name}-master"),
        ("configmaps", f"{name}-locustfile"),
    }
    master = creates["Job", f"{name}-master"]
    assert "ownerReferences" not in master["metadata"]
    others = ("ConfigMap", f"{name}-locustfile"), ("Service", f"{name}-master"), ("Job", f"{name}-workers")
    for owned in (creates[key] for key in others):
        (owner,) = owned["metadata"]["ownerReferences"]
        assert owner == {"apiVersion": "batch/v1", "kind": "Job", "name": master["metadata"]["name"],
                         "uid": master["metadata"]["uid"]}  # fmt: skip


async def test_failed_requests_come_back_with_the_messages_the_workers_saw(tmp_path: Path) -> None:
    requests = [parse_request("/cart"), parse_request("POST /orders")]
    with generated_locustfile(requests) as locustfile:
        async with (
            counting_target(failing="POST /orders") as target,
            jobs_server() as server,
            run_kubelet(server, tmp_path),
            runner_for(server) as runner,
        ):
            result = await runner.run(plan(target.url, locustfile, rate=40.0))
    failed = {e.name: e.failures for e in result.endpoints}
    assert failed["GET /cart"] == 0
    assert 0 < failed["POST /orders"] <= target.seen["POST /orders"]
    # what the subprocess runner reads from its failures CSV, gathered here by the master from both workers
    assert len(result.errors) == 1
    assert result.errors[0].startswith("POST /orders: ")
    assert "503" in result.errors[0]


async def test_a_failing_job_is_a_load_test_error_with_its_reason_and_an_event(tmp_path: Path) -> None:
    locustfile = tmp_path / "broken.py"
    locustfile.write_text("raise RuntimeError('this locustfile is broken on purpose')\n")
    async with jobs_server() as server, run_kubelet(server, tmp_path / "pods"):
        async with runner_for(server) as runner:
            with pytest.raises(LoadTestError, match="BackoffLimitExceeded") as failed:
                await runner.run(plan("http://127.0.0.1:9", locustfile))
        assert "broken on purpose" in str(failed.value), "the end of the pod's log says why"
        await eventually(lambda: not left_over(server), what="the run's objects and pods deleted")
        events = [obj.raw for (r, _, _), obj in server.objects.items() if r.plural == "events" and not obj.deleted]
        used = {
            (r.resource.group, f"{r.resource.plural}/{r.subresource}" if r.subresource else r.resource.plural, _verb(r))
            for r in server.requests()
            if r.resource is not None
        }
    (event,) = events
    assert event["type"] == "Warning"
    assert event["reason"] == "LoadTestFailed"
    assert event["involvedObject"]["kind"] == "Job"
    assert event["involvedObject"]["name"].endswith("-master")
    assert "BackoffLimitExceeded" in event["message"]
    # a failed run makes every call the runner can make: exactly what RULES grant the load tests
    granted = {(rule.api_group, rule.resource, v) for rule in RULES if rule.used_by == "loadtest" for v in rule.verbs}
    assert used == granted
    assert {rule.scope for rule in RULES if rule.used_by == "loadtest"} == {"namespace"}


async def test_cancelling_a_run_deletes_what_it_created(tmp_path: Path) -> None:
    async with counting_target() as target, jobs_server() as server, run_kubelet(server, tmp_path) as kubelet:
        with generated_locustfile([parse_request("/")]) as locustfile:
            async with runner_for(server) as runner:
                task = asyncio.create_task(runner.run(plan(target.url, locustfile, duration=120.0, rate=20.0)))
                await eventually(lambda: kubelet.running("worker"), what="a worker running")
                await eventually(lambda: sum(target.seen.values()) > 0, what="load on the target")
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
        await eventually(lambda: not left_over(server), what="the run's objects and pods deleted")
        await eventually(lambda: all(p.returncode is not None for _, _, p in kubelet.started), what="Locust stopped")
        assert len(deleted_in_background(server)) == 4
    assert not locust_children()


async def test_a_run_that_never_finishes_fails_at_its_deadline(tmp_path: Path) -> None:
    """No kubelet: the Jobs never start. The runner gives up after the deadline it gave the Jobs."""
    (tmp_path / "locustfile.py").write_text("from locust import User\n")
    async with jobs_server() as server:
        async with runner_for(server, start_timeout=0.5, overrun=0.5) as runner:
            with pytest.raises(LoadTestError, match="did not finish within"):
                await runner.run(plan("http://127.0.0.1:9", tmp_path / "locustfile.py", duration=1.0))
        assert left_over(server) == []
        jobs = [r.data for r in server.requests("POST", "jobs")]
    assert [job["spec"]["activeDeadlineSeconds"] for job in jobs] == [2, 2], "start, run and stop, rounded up"


async def test_a_refused_call_cleans_up_and_says_what_permission_is_missing(tmp_path: Path) -> None:
    (tmp_path / "locustfile.py").write_text("from locust import User\n")
    async with jobs_server() as server:
        server.fail(Fault("POST", "services", status=403, times=None))
        async with runner_for(server) as runner:
            with pytest.raises(LoadTestError, match=r"cannot create Service .* loadtest permissions"):
                await runner.run(plan("http://127.0.0.1:9", tmp_path / "locustfile.py"))
        assert left_over(server) == []
        assert {plural for plural, _ in deleted_in_background(server)} == {"jobs", "configmaps"}


# --------------------------------------------------------------------------- manifests


def test_every_placeholder_of_the_shipped_templates_is_filled(tmp_path: Path) -> None:
    with generated_locustfile([parse_request("/")]) as locustfile:
        made = manifests(
            plan("http://10.0.0.7:8080", locustfile, rate=50.0, tags=("checkout",), env={"VOUCH_HOSTS": "a b"}),
            spec(),
            LoadJobTemplates.load(TEMPLATES),
            run="0a1b2c3d",
        )
    assert "${" not in repr(made)
    master = made.master["spec"]["template"]["spec"]["containers"][0]
    workers = made.workers["spec"]["template"]["spec"]["containers"][0]
    assert {"--users=4", "--expect-workers=2"} <= set(master["args"])
    assert [master["args"][-2:], workers["args"][-2:]] == [["--tags", "checkout"]] * 2
    assert made.workers["spec"]["parallelism"] == made.workers["spec"]["completions"] == 2
    assert made.master["spec"]["activeDeadlineSeconds"] == 30 + 2 + 30
    env = {e["name"]: e["value"] for e in workers["env"]}
    assert (env["VOUCH_HOSTS"], env["VOUCH_RATE_PER_USER"], env["PYTHONUNBUFFERED"]) == ("a b", "12.5", "1")
    assert f"--master-host={made.service['metadata']['name']}" in workers["args"]
    assert set(made.locustfile["data"]) == {"locustfile.py", "endpoints.json", "vouch_failure_report.py"}
    for obj in (made.master, made.workers, made.service, made.locustfile):
        assert obj["metadata"]["labels"]["vouch.dev/loadtest-run"] == "0a1b2c3d"
        assert obj["metadata"]["namespace"] == NAMESPACE


def test_values_never_change_a_templates_structure() -> None:
    hostile = "http://x\n  evil: true\n- ${run}"
    filled = fill({"args": ["--host=${target}"], "host": "${target}"}, {"target": hostile, "run": "r"})
    assert filled == {"args": [f"--host={hostile}"], "host": hostile}


def test_an_unknown_placeholder_is_named() -> None:
    known = r"unknown placeholder \$\{replicas\} in a load-test template; known: \$\{run\}"
    with pytest.raises(LoadTestError, match=known):
        fill({"spec": {"replicas": "${replicas}"}}, {"run": "r"})


def test_a_template_of_the_wrong_kind_is_refused(tmp_path: Path) -> None:
    for name in ("master-job.yaml", "worker-job.yaml", "master-service.yaml"):
        (tmp_path / name).write_text((TEMPLATES / name).read_text())
    (tmp_path / "master-service.yaml").write_text("apiVersion: batch/v1\nkind: Job\n")
    with pytest.raises(LoadTestError, match=r"master-service\.yaml must be one v1 Service"):
        LoadJobTemplates.load(tmp_path)
    with pytest.raises(LoadTestError, match="cannot read the load-test template"):
        LoadJobTemplates.load(tmp_path / "missing")


def test_statistics_are_read_from_output_around_them() -> None:
    text = '[2026-01-01] warning: slow\n[\n    {"name": "GET /", "num_requests": 1}\n]\n[x] trailing note\n'
    assert stats_from_output(text) == [{"name": "GET /", "num_requests": 1}]
    with pytest.raises(LoadTestError, match=r"no JSON statistics; its output ends: Traceback .* boom"):
        stats_from_output("Traceback (most recent call last):\nRuntimeError: boom\n")


# --------------------------------------------------------------------------- helpers


def _verb(request: Any) -> str:
    method = str(request.method.value).upper()
    if method == "GET":
        return "get" if request.name is not None else "list"
    return {"POST": "create", "DELETE": "delete", "PATCH": "patch"}[method]
