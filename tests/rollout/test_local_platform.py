"""The local platform with real processes: demo replicas, real HTTP through the router, real signals."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from support.demo import DEMO_MODULE, demo_children, demo_command, demo_service, eventually, free_port, is_alive

from vouch.core.errors import PlatformError
from vouch.rollout.config import LocalPlatformSpec, ReadinessSpec, ServiceEnvironment, ServiceSpec
from vouch.rollout.model import Target
from vouch.rollout.platforms.base import Platform
from vouch.rollout.platforms.local import LocalPlatform
from vouch.rollout.platforms.local_state import STATE_FILE, ChildRecord, load_state, save_state
from vouch.rollout.platforms.processes import Replica, ReplicaSpec, proc_start_time
from vouch.rollout.platforms.traffic import TrafficRecorder

T = Target("shop", "staging")
CHILD_SCRIPT = Path(__file__).parent.parent / "support" / "local_platform_child.py"


@dataclass
class Rig:
    platform: LocalPlatform
    traffic: TrafficRecorder
    registry: CollectorRegistry
    state_dir: Path
    seen: set[int] = field(default_factory=set)

    def pids(self, track: str) -> list[int]:
        found = self.platform.replica_pids(T)[track]
        self.seen.update(found)
        return found

    async def settled(self, stable: int, canary: int = 0) -> None:
        async def check() -> bool:
            observed = await self.platform.observe(T)
            return (observed.stable_ready, observed.canary_ready) == (stable, canary)

        await eventually(check, what=f"{stable} stable and {canary} canary replicas ready")
        self.pids("stable")
        self.pids("canary")


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(service: ServiceSpec | None = None, *, state_dir: Path | None = None, **spec: object) -> Rig:
        registry = CollectorRegistry()
        traffic = TrafficRecorder(registry)
        state_dir = state_dir or tmp_path / "state"
        platform = LocalPlatform(
            LocalPlatformSpec(**spec),
            {"shop": service or demo_service(replicas=3)},
            state_dir=state_dir,
            traffic=traffic,
            registry=registry,
        )
        made.append(Rig(platform, traffic, registry, state_dir))
        return made[-1]

    try:
        yield make
    finally:
        for each in made:
            await each.platform.stop()
        assert demo_children() == []
        assert not [pid for each in made for pid in each.seen if is_alive(pid)]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def log_text(path: Path) -> str:
    return path.read_text()


def proc_file(pid: int, name: str) -> list[str]:
    return Path(f"/proc/{pid}/{name}").read_text().split("\0")


async def versions(http: aiohttp.ClientSession, url: str, count: int) -> list[str]:
    found = []
    for i in range(count):
        async with http.get(f"{url}/r/{i}") as response:
            found.append((await response.json())["version"])
    return found


async def test_first_promote_deploys_the_version_behind_the_router(rig, http) -> None:
    r = rig()
    assert isinstance(r.platform, Platform)
    await r.platform.start()
    await r.platform.start()  # idempotent
    before = await r.platform.observe(T)
    assert (before.stable_version, before.stable_desired) == (None, 0)
    async with http.get(r.platform.router_endpoint(T).url + "/x") as response:
        assert response.status == 503  # nothing deployed yet
    unavailable = r.registry.get_sample_value(
        "vouch_router_unavailable_total", {"service": "shop", "environment": "staging"}
    )
    assert unavailable == 1

    await r.platform.promote(T, "1.0.0")
    await r.settled(3)

    observed = await r.platform.observe(T)
    assert (observed.stable_version, observed.stable_desired, observed.canary_version) == ("1.0.0", 3, None)
    assert len(set(observed.stable_endpoints)) == 3
    assert set(await versions(http, r.platform.router_endpoint(T).url, 6)) == {"1.0.0"}
    assert (r.state_dir / "logs" / "shop-staging-1.0.0-2.log").exists()


async def test_canary_share_of_traffic_is_its_share_of_ready_replicas(rig, http) -> None:
    r = rig()
    await r.platform.start()
    await r.platform.promote(T, "1.0.0")
    await r.platform.scale(T, stable_replicas=3, canary_version="2.0.0", canary_replicas=1)
    await r.settled(3, 1)

    seen = await versions(http, r.platform.router_endpoint(T).url, 400)

    assert 80 <= seen.count("2.0.0") <= 120  # round-robin over 4 ready replicas: exactly 100
    assert r.traffic.window(T, "2.0.0", 60).requests == seen.count("2.0.0")
    assert r.traffic.window(T, "1.0.0", 60).requests == seen.count("1.0.0")
    assert (await r.platform.observe(T)).canary_weight == 0.25


async def test_faults_show_in_the_traffic_window_of_the_faulty_version(rig, http, tmp_path) -> None:
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"2.0.0": {"error_ratio": 1.0}}))
    r = rig(demo_service(replicas=2, faults_file=faults))
    await r.platform.start()
    await r.platform.promote(T, "1.0.0")
    await r.platform.scale(T, stable_replicas=2, canary_version="2.0.0", canary_replicas=1)
    await r.settled(2, 1)

    for i in range(30):
        async with http.get(f"{r.platform.router_endpoint(T).url}/buy/{i}") as response:
            await response.read()

    canary, stable = r.traffic.window(T, "2.0.0", 60), r.traffic.window(T, "1.0.0", 60)
    assert canary.requests == canary.errors == 10
    assert (stable.requests, stable.errors) == (20, 0)


async def test_scale_grows_shrinks_and_replaces_the_canary_idempotently(rig) -> None:
    r = rig()
    await r.platform.start()
    await r.platform.promote(T, "1.0.0")
    await r.platform.scale(T, stable_replicas=3, canary_version="2.0.0", canary_replicas=1)
    await r.settled(3, 1)
    stable, first = r.pids("stable"), r.pids("canary")

    await r.platform.scale(T, stable_replicas=2, canary_version="2.0.0", canary_replicas=3)
    await r.platform.scale(T, stable_replicas=2, canary_version="2.0.0", canary_replicas=3)
    await r.settled(2, 3)
    grown = r.pids("canary")
    assert len(grown) == 3
    assert grown[0] == first[0]
    assert r.pids("stable") == stable[:2]  # the highest index went
    assert not is_alive(stable[2])

    await r.platform.scale(T, stable_replicas=3, canary_version="2.0.0", canary_replicas=1)
    await r.settled(3, 1)
    assert r.pids("canary") == first
    assert not any(is_alive(pid) for pid in grown[1:])

    await r.platform.scale(T, stable_replicas=3, canary_version="3.0.0", canary_replicas=1)
    await r.settled(3, 1)
    observed = await r.platform.observe(T)
    assert observed.canary_version == "3.0.0"
    assert r.pids("canary") != first
    assert not is_alive(first[0])


async def test_promote_keeps_the_canary_processes_and_retires_the_old_stable(rig, http) -> None:
    r = rig()
    await r.platform.start()
    await r.platform.promote(T, "1.0.0")
    await r.platform.scale(T, stable_replicas=2, canary_version="2.0.0", canary_replicas=2)
    await r.settled(2, 2)
    old_stable, canary = r.pids("stable"), r.pids("canary")

    await r.platform.promote(T, "2.0.0")
    await r.settled(3)
    await eventually(lambda: r.pids("retiring") == [], what="the old stable to be stopped")
    await r.platform.promote(T, "2.0.0")  # again: nothing changes

    now = r.pids("stable")
    assert now[:2] == canary  # same processes, not restarted
    assert len(now) == 3
    assert not any(is_alive(pid) for pid in old_stable)
    observed = await r.platform.observe(T)
    assert (observed.stable_version, observed.canary_version, observed.canary_desired) == ("2.0.0", None, 0)
    assert set(await versions(http, r.platform.router_endpoint(T).url, 6)) == {"2.0.0"}


async def test_rollback_stops_the_canary_at_once_and_restores_stable(rig, http) -> None:
    r = rig()
    await r.platform.start()
    await r.platform.promote(T, "1.0.0")
    await r.platform.scale(T, stable_replicas=2, canary_version="2.0.0", canary_replicas=1)
    await r.settled(2, 1)
    canary = r.pids("canary")

    await r.platform.rollback(T)

    assert not is_alive(canary[0])  # exited before rollback returned
    assert r.pids("canary") == []
    observed = await r.platform.observe(T)
    assert (observed.canary_version, observed.canary_desired, observed.stable_desired) == (None, 0, 3)
    await r.settled(3)
    assert set(await versions(http, r.platform.router_endpoint(T).url, 9)) == {"1.0.0"}
    await r.platform.rollback(T)
    assert len(r.pids("stable")) == 3


async def test_a_fresh_platform_relaunches_the_persisted_state(rig, tmp_path) -> None:
    first = rig()
    await first.platform.start()
    await first.platform.promote(T, "1.0.0")
    await first.platform.scale(T, stable_replicas=2, canary_version="2.0.0", canary_replicas=1)
    await first.settled(2, 1)
    before = first.pids("stable") + first.pids("canary")
    await first.platform.stop()
    await first.platform.stop()  # idempotent
    assert not any(is_alive(pid) for pid in before)

    second = rig()
    await second.platform.start()
    await second.settled(2, 1)
    observed = await second.platform.observe(T)
    assert (observed.stable_version, observed.canary_version) == ("1.0.0", "2.0.0")
    assert not set(second.pids("stable") + second.pids("canary")) & set(before)


async def test_children_left_by_a_dead_run_are_killed_but_reused_pids_are_not(rig, tmp_path) -> None:
    first = rig(demo_service(replicas=1))
    await first.platform.start()
    await first.platform.promote(T, "1.0.0")
    await first.platform.stop()

    def demo(version: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", DEMO_MODULE, "--port", str(free_port()), "--version", version]
        return subprocess.Popen(argv, start_new_session=True)

    leftover, bystander = demo("0.9.0"), demo("0.0.0")
    try:
        path = first.state_dir / STATE_FILE
        state = load_state(path)
        start_time = proc_start_time(leftover.pid)
        assert start_time is not None
        records = (
            ChildRecord(leftover.pid, start_time, "shop", "staging", "0.9.0", 0),
            ChildRecord(bystander.pid, start_time - 1, "shop", "staging", "0.0.0", 1),  # a pid reused since
        )
        save_state(path, type(state)(desired=state.desired, children=records))

        second = rig(demo_service(replicas=1), state_dir=first.state_dir)
        await second.platform.start()

        assert leftover.wait(timeout=10) == -signal.SIGKILL
        assert bystander.poll() is None
        await second.settled(1)
    finally:
        for process in (leftover, bystander):
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


async def test_a_sigkilled_daemon_leaves_no_replica_behind(rig, tmp_path) -> None:
    state_dir = tmp_path / "crashed"
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD_SCRIPT), str(state_dir), stdout=asyncio.subprocess.PIPE
    )
    try:
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        pids = json.loads(line)
        replicas = pids["stable"] + pids["canary"]
        assert len(replicas) == 3
        assert all(is_alive(pid) for pid in replicas)
    finally:
        child.kill()
        await child.wait()

    revived = rig(demo_service(replicas=2), state_dir=state_dir)
    try:
        await eventually(lambda: not any(is_alive(pid) for pid in replicas), what="PDEATHSIG to kill the replicas")
    finally:
        await revived.platform.start()  # even if the check failed: its start kills what the dead run left
    await revived.settled(2, 1)


async def test_a_replica_killed_from_outside_is_replaced(rig, http) -> None:
    r = rig()
    await r.platform.start()
    await r.platform.promote(T, "1.0.0")
    await r.settled(3)
    victim = r.pids("stable")[1]

    os.kill(victim, signal.SIGKILL)
    await eventually(lambda: victim not in r.pids("stable") and len(r.pids("stable")) == 3, what="a replacement")
    await r.settled(3)

    restarts = r.registry.get_sample_value(
        "vouch_local_replica_restarts_total", {"service": "shop", "environment": "staging", "version": "1.0.0"}
    )
    assert restarts == 1
    assert set(await versions(http, r.platform.router_endpoint(T).url, 6)) == {"1.0.0"}


async def test_placeholders_reach_the_replica_command_and_environment(rig) -> None:
    service = ServiceSpec(
        command=demo_command(),
        env={"REPLICA_TAG": "{service}.{environment}.{version}.{replica}.{port}", "KEEP": "{unknown}"},
        replicas=2,
        environments=[ServiceEnvironment(name="staging")],
    )
    r = rig(service)
    await r.platform.start()
    await r.platform.promote(T, "1.0.0")
    await r.settled(2)
    observed = await r.platform.observe(T)
    pid, port = r.pids("stable")[1], observed.stable_endpoints[1].port

    environ = dict(entry.split("=", 1) for entry in proc_file(pid, "environ") if "=" in entry)
    argv = proc_file(pid, "cmdline")
    assert environ["REPLICA_TAG"] == f"shop.staging.1.0.0.1.{port}"
    assert environ["KEEP"] == "{unknown}"
    assert argv[argv.index("--port") + 1] == str(port)
    assert argv[argv.index("--version") + 1] == "1.0.0"


async def test_stop_leaves_no_child_and_refuses_further_calls(rig) -> None:
    r = rig()
    await r.platform.start()
    await r.platform.promote(T, "1.0.0")
    await r.platform.scale(T, stable_replicas=3, canary_version="2.0.0", canary_replicas=2)
    all_pids = r.pids("stable") + r.pids("canary")
    assert len(all_pids) == 5

    await r.platform.stop()

    assert not any(is_alive(pid) for pid in all_pids)
    assert demo_children() == []
    assert load_state(r.state_dir / STATE_FILE).children == ()
    with pytest.raises(PlatformError, match="not running"):
        await r.platform.observe(T)


async def test_unknown_targets_and_commandless_services_are_platform_errors(rig, tmp_path) -> None:
    r = rig()
    await r.platform.start()
    with pytest.raises(PlatformError, match="unknown service 'cart'"):
        await r.platform.observe(Target("cart", "staging"))
    with pytest.raises(PlatformError, match="no environment 'production'"):
        await r.platform.promote(Target("shop", "production"), "1.0.0")
    await r.platform.promote(T, "1.0.0")
    with pytest.raises(PlatformError, match="already the stable version"):
        await r.platform.scale(T, stable_replicas=3, canary_version="1.0.0", canary_replicas=1)

    image_only = ServiceSpec(image="shop:{version}", environments=[ServiceEnvironment(name="staging")])
    with pytest.raises(PlatformError, match="needs `command`"):
        LocalPlatform(
            LocalPlatformSpec(), {"shop": image_only}, state_dir=tmp_path / "other", traffic=TrafficRecorder()
        )


async def test_a_state_directory_serves_one_platform_at_a_time(rig) -> None:
    first = rig()
    await first.platform.start()
    second = rig(state_dir=first.state_dir)
    with pytest.raises(PlatformError, match="in use"):
        await second.platform.start()
    await first.platform.observe(T)  # the refused one did not disturb the first


async def test_no_request_fails_while_replicas_come_and_go(rig, http) -> None:
    r = rig()
    await r.platform.start()
    await r.platform.promote(T, "1.0.0")
    await r.platform.scale(T, stable_replicas=2, canary_version="2.0.0", canary_replicas=1)
    await r.settled(2, 1)
    url = r.platform.router_endpoint(T).url
    statuses: list[int] = []
    done = asyncio.Event()

    async def load() -> None:
        while not done.is_set():
            async with http.get(f"{url}/steady") as response:
                statuses.append(response.status)
                await response.read()

    clients = [asyncio.create_task(load(), name=f"load {i}") for i in range(3)]
    try:
        await r.platform.rollback(T)
        await r.settled(3)
        await r.platform.scale(T, stable_replicas=2, canary_version="2.0.0", canary_replicas=1)
        await r.settled(2, 1)
        await r.platform.promote(T, "2.0.0")
        await eventually(lambda: r.pids("retiring") == [], what="the old stable to be stopped")
        await r.settled(3)
    finally:
        done.set()
        await asyncio.gather(*clients)
    assert len(statuses) > 10
    assert set(statuses) == {200}


async def test_a_command_that_cannot_start_is_a_platform_error(rig) -> None:
    service = ServiceSpec(command=["/nonexistent/replica", "{port}"], environments=[ServiceEnvironment(name="staging")])
    r = rig(service)
    await r.platform.start()
    with pytest.raises(PlatformError, match=re.escape("cannot start replica shop/staging 1.0.0#0")):
        await r.platform.promote(T, "1.0.0")


async def test_a_crashing_replica_is_restarted_with_backoff_and_never_ready(rig) -> None:
    crash = [sys.executable, "-c", "import sys; sys.exit(3)", "{port}"]
    r = rig(ServiceSpec(command=crash, environments=[ServiceEnvironment(name="staging")]))
    await r.platform.start()
    await r.platform.promote(T, "1.0.0")
    labels = {"service": "shop", "environment": "staging", "version": "1.0.0"}

    await eventually(
        lambda: (r.registry.get_sample_value("vouch_local_replica_restarts_total", labels) or 0) >= 2,
        what="two restarts",
    )
    observed = await r.platform.observe(T)
    assert (observed.stable_desired, observed.stable_ready) == (1, 0)
    assert log_text(r.state_dir / "logs" / "shop-staging-1.0.0-0.log").count("vouch starts replica") >= 3


async def test_a_supervisor_torn_down_by_its_task_group_takes_its_process_along(tmp_path) -> None:
    spec = ReplicaSpec(
        service="shop",
        environment="staging",
        version="1.0.0",
        index=0,
        command=tuple(demo_command()),
        env={},
        host="127.0.0.1",
        readiness=ReadinessSpec(interval=0.02),
        stop_grace=5.0,
        log_dir=tmp_path,
    )

    async def sibling_fails(replica: Replica) -> None:
        await eventually(lambda: replica.ready, what="the replica to be ready")
        raise RuntimeError("a sibling task failed")

    pids: list[int | None] = []

    async def group(replica: Replica) -> None:
        async with asyncio.TaskGroup() as tasks:
            await replica.launch(tasks)
            pids.append(replica.pid)
            tasks.create_task(sibling_fails(replica))

    async with aiohttp.ClientSession() as http:
        with pytest.raises(ExceptionGroup):
            await group(Replica(spec, http=http, on_change=lambda _: None))
    pid = pids[0]
    assert pid is not None
    await eventually(lambda: not Path(f"/proc/{pid}").exists(), what="the replica to be killed and reaped")
