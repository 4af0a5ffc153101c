"""The Locust runner, for real: Locust as a subprocess against demo-service processes."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest
from support.demo import eventually
from support.loadtarget import demo_targets, locust_children

from vouch.loadtests.errors import LoadTestError
from vouch.loadtests.locust import LocustRunner, run_time
from vouch.loadtests.locustfiles import generated_locustfile, parse_request
from vouch.loadtests.model import LoadPlan, Progress


def plan(target: str, locustfile: Path, **changes: object) -> LoadPlan:
    values: dict[str, object] = {"users": 4, "spawn_rate": 100.0, "duration": 3.0}
    values.update(changes)
    return LoadPlan(target=target, locustfile=locustfile, **values)  # type: ignore[arg-type]


async def test_a_paced_run_counts_requests_and_failures_per_endpoint() -> None:
    seen: list[Progress] = []
    async with demo_targets() as start:
        target = await start("1.0.0", error_ratio=0.3)
        requests = [parse_request("/cart"), parse_request("POST /orders")]
        with generated_locustfile(requests) as locustfile:
            result = await LocustRunner(progress_interval=0.5).run(
                plan(target.url, locustfile, rate=40.0), on_progress=seen.append
            )
    assert result.tool_version
    assert result.tool_version[0].isdigit()
    assert {(e.name, e.method) for e in result.endpoints} == {("GET /cart", "GET"), ("POST /orders", "POST")}
    assert result.requests == sum(e.requests for e in result.endpoints)
    assert result.failures == sum(e.failures for e in result.endpoints)
    # 40 rps for ~3 s: generous bounds, the machine is shared (unpaced, the demo answers thousands).
    assert 40 <= result.requests <= 200
    assert 20 <= result.rps <= 60
    assert 0.1 <= result.error_ratio <= 0.5  # 30% injected
    assert any("500" in message for message in result.errors)
    assert result.latency.p50 is not None
    assert result.latency.max is not None
    assert result.latency.p95 is not None
    assert result.latency.p50 <= result.latency.p95
    assert seen
    assert seen[-1].elapsed > seen[0].elapsed
    assert not locust_children()


async def test_a_user_locustfile_gets_the_rate_and_its_tags(tmp_path: Path) -> None:
    """VOUCH_RATE reaches a user's own locustfile; --tags picks its tasks."""
    locustfile = tmp_path / "mine.py"
    locustfile.write_text(
        "import os\n"
        "from locust import FastHttpUser, constant, tag, task\n"
        "class Mine(FastHttpUser):\n"
        "    wait_time = constant(1)\n"
        "    @tag('smoke')\n"
        "    @task\n"
        "    def rate(self):\n"
        "        self.client.get('/rate/' + os.environ['VOUCH_RATE'], name='rate')\n"
        "    @task\n"
        "    def other(self):\n"
        "        self.client.get('/other', name='other')\n"
    )
    async with demo_targets() as start:
        target = await start()
        result = await LocustRunner().run(
            plan(target.url, locustfile, users=2, duration=2.0, rate=7.0, tags=("smoke",))
        )
    assert [e.name for e in result.endpoints] == ["rate"]
    assert result.failures == 0
    assert result.requests >= 2


async def test_cancelling_a_run_leaves_no_locust_process() -> None:
    async with demo_targets() as start:
        target = await start()
        with generated_locustfile([parse_request("/")]) as locustfile:
            run = asyncio.create_task(LocustRunner().run(plan(target.url, locustfile, duration=60.0, rate=20.0)))
            await eventually(lambda: bool(locust_children()), what="Locust to start")
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
    assert not locust_children()


async def test_locust_missing_is_a_clear_error(tmp_path: Path) -> None:
    python = shutil.which("python3", path="/usr/bin")
    if python is None or python == sys.executable:
        pytest.skip("no second Python here to run without Locust: /usr/bin/python3 not installed")
    probe = await asyncio.create_subprocess_exec(python, "-c", "import locust", stderr=asyncio.subprocess.DEVNULL)
    if await probe.wait() == 0:
        pytest.skip(f"{python} has Locust installed; cannot show it missing")
    with generated_locustfile([parse_request("/")]) as locustfile:
        with pytest.raises(LoadTestError, match=r"Locust is not installed .*pip install 'vouch\[loadtest\]'"):
            await LocustRunner(command=[python, "-m", "locust"]).run(plan("http://127.0.0.1:9", locustfile))
        with pytest.raises(LoadTestError, match=r"cannot start Locust .*no-such-locust"):
            await LocustRunner(command=[str(tmp_path / "no-such-locust")]).run(plan("http://127.0.0.1:9", locustfile))


async def test_plans_locust_cannot_run_are_refused_before_starting(tmp_path: Path) -> None:
    with pytest.raises(LoadTestError, match="no locustfile"):
        await LocustRunner().run(plan("http://127.0.0.1:9", tmp_path / "absent.py"))
    with generated_locustfile([parse_request("/")]) as locustfile, pytest.raises(LoadTestError, match="users >= 1"):
        await LocustRunner().run(plan("http://127.0.0.1:9", locustfile, users=0))


def test_the_command_line_is_headless_with_results_in_the_run_folder(tmp_path: Path) -> None:
    argv = LocustRunner(command=["locust"]).command_line(
        plan("http://h:1", tmp_path / "f.py", duration=2.4, tags=("a",)), tmp_path
    )
    assert argv[:3] == ["locust", "-f", str((tmp_path / "f.py").resolve())]
    assert "--headless" in argv
    assert argv[argv.index("--run-time") + 1] == "2s"
    assert argv[argv.index("--json-file") + 1] == str(tmp_path / "result")
    assert argv[argv.index("--exit-code-on-error") + 1] == "0"
    assert argv[-2:] == ["--tags", "a"]
    assert run_time(0.2) == 1


def test_pacing_reaches_the_locustfile_through_its_environment(tmp_path: Path) -> None:
    env = LocustRunner().environment(plan("http://h:1", tmp_path / "f.py", rate=10.0, env={"VOUCH_HOSTS": "x y"}))
    assert (env["VOUCH_RATE"], env["VOUCH_RATE_PER_USER"], env["VOUCH_HOSTS"]) == ("10", "2.5", "x y")
    assert "VOUCH_RATE" not in LocustRunner().environment(plan("http://h:1", tmp_path / "f.py"))
