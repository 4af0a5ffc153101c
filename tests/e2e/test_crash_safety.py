"""SIGKILL the daemon mid-promotion, start it again, and check nothing was lost or done twice.

Replicas take a second to start (``startup_ms``), so scaling and the
restoring half of a rollback are long enough to be caught in the act.
After the restart every promotion ends in exactly one of Succeeded or
RolledBack, the replicas running are the ones the store says, every step
was started once and in order, and no process outlives the daemon.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from support.daemon import Daemon, demo_service_pids, is_alive, local_config, wait_for
from support.traffic import steady_traffic

pytestmark = pytest.mark.e2e

REPLICAS = 3
STEPS = [1, 2, "100%"]


def _config(state: Path) -> dict:
    return local_config(
        state,
        replicas=REPLICAS,
        steps=STEPS,
        interval="1s",
        faults={
            "v1": {"startup_ms": 1000},
            "v2": {"startup_ms": 1000},
            "v3": {"startup_ms": 1000, "error_ratio": 0.6},
        },
    )


def _versions_running(state: Path) -> Counter[str]:
    """Replica processes alive per version, read from their command lines."""
    running: Counter[str] = Counter()
    for pid in demo_service_pids(state):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        running[argv[argv.index(b"--version") + 1].decode()] += 1
    return running


def _phase_of(client, promotion_id: str) -> dict:
    return client.get_promotion(promotion_id)["promotion"]


@pytest.mark.parametrize(
    ("version", "kill_when", "expected"),
    [
        ("v2", lambda p: p["step_phase"] == "scaling" and p["step"] == 1, "Succeeded"),
        ("v2", lambda p: p["step_phase"] == "analysing" and p["step"] == 1, "Succeeded"),
        ("v3", lambda p: p["phase"] == "Aborting" and p["canary_stopped_at"] is not None, "RolledBack"),
    ],
    ids=["during-scaling", "during-analysis", "during-rollback"],
)
def test_a_killed_daemon_resumes_every_promotion_exactly_once(tmp_path, version, kill_when, expected):
    state = tmp_path / "state"
    daemon = Daemon(_config(state), state)
    client = daemon.start()
    try:
        first = client.submit("shop", "v1")["release"]
        wait_for(lambda: client.get_release(first["id"])["release"]["phase"] == "Succeeded", what="v1 deployed")
        with steady_traffic([daemon.router()], rate=60):
            release = client.submit("shop", version)["release"]
            promotion_id = release["promotion_ids"][0]
            seen = wait_for(
                lambda: p if kill_when(p := _phase_of(client, promotion_id)) else None,
                interval=0.01,
                what=f"the moment to kill ({version})",
            )
            client.close()
            daemon.kill()
            assert seen["phase"] not in ("Succeeded", "RolledBack")
            wait_for(lambda: not demo_service_pids(state), timeout=10, what="replicas to die with the daemon")

            client = daemon.start()
            final = wait_for(
                lambda: (p := _phase_of(client, promotion_id))["phase"] in ("Succeeded", "RolledBack") and p,
                timeout=90,
                what="the promotion to finish after the restart",
            )
        assert final["phase"] == expected, final["message"]
        _check_history(client, promotion_id, final)
        _check_replicas(state, final)
    finally:
        client.close()
        pids = demo_service_pids(state)
        daemon.stop()
    assert not [pid for pid in pids if is_alive(pid)], "no replica outlives the daemon"
    assert not demo_service_pids(state)


def _check_history(client, promotion_id: str, final: dict) -> None:
    detail = client.get_promotion(promotion_id)
    steps = detail["steps"]
    indexes = [s["index"] for s in steps]
    assert indexes == sorted(set(indexes)), f"each step recorded once, in order: {indexes}"
    assert indexes == list(range(len(indexes))), "no step skipped"
    started = Counter(e["data"]["step"] for e in detail["events"] if e["kind"] == "step.scaling")
    assert all(n == 1 for n in started.values()), f"no step started twice: {started}"
    if final["phase"] == "Succeeded":
        assert len(steps) == len(STEPS)
        assert all(s["outcome"] == "passed" for s in steps)
    else:
        assert steps[-1]["outcome"] == "aborted"
        assert all(s["outcome"] == "passed" for s in steps[:-1])
    runs = Counter((v["step"], v["run"], v["verdict"]["gate"]) for v in detail["verdicts"])
    assert all(n == 1 for n in runs.values()), "no analysis run recorded twice"


def _check_replicas(state: Path, final: dict) -> None:
    stable = final["version"] if final["phase"] == "Succeeded" else final["stable_version"]
    wait_for(
        lambda: _versions_running(state) == Counter({stable: REPLICAS}),
        timeout=30,
        what=f"exactly {REPLICAS} replicas of {stable} and nothing else (running: {_versions_running(state)})",
    )
    record = json.loads((state / "local-platform.json").read_text())
    [target] = [t for t in record["targets"] if (t["service"], t["environment"]) == ("shop", "staging")]
    assert (target["stable_version"], target["stable_replicas"], target["canary_replicas"]) == (stable, REPLICAS, 0)
