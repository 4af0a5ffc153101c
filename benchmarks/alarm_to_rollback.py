"""How long from an Alertmanager webhook arriving to the canary taking no traffic and being stopped.

Runs the real daemon on the local platform with the demo service; each trial
starts a canary, waits until its step is being analysed, posts a firing
alert exactly as Alertmanager does, and reads back when the daemon received
the alert and when the rollback had taken the canary out of the router and
its processes had exited. The analysis interval is an hour, so only the
alarm can act.

The peer is Flagger, which notices a failing canary at its next analysis
tick: one minute by default. The last line of stdout is one JSON object.

    python benchmarks/alarm_to_rollback.py [--trials 50]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import yaml

from vouch.daemon.client import VouchClient
from vouch.rollout.alarms import webhook_for

PEER_MS = 60_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(state: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "vouch.daemon.demo.service", "--port", "{port}", "--version", "{version}"]
    return {
        "daemon": {"listen": f"127.0.0.1:{free_port()}", "state_dir": str(state), "log_level": "warning"},
        "platform": {"kind": "local", "stop_grace": "2s"},
        "services": {
            "bench": {
                "command": command,
                "replicas": 2,
                "readiness": {"path": "/healthz", "timeout": "20s", "interval": "20ms"},
                "environments": [{"name": "staging", "port": free_port()}],
            }
        },
        "environments": {
            "staging": {
                "plan": {"steps": [1]},
                "analysis": {"interval": "1h"},
                "gates": ["alarms"],
                "progress_deadline": "5m",
            }
        },
    }


def alert(status: Literal["firing", "resolved"]) -> dict[str, Any]:
    labels = {"alertname": "BenchCanaryBroken", "service": "bench", "environment": "staging"}
    return webhook_for(labels, status=status, annotations={"summary": "benchmark alarm"})


def wait(predicate, *, timeout: float = 60.0, interval: float = 0.01):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("benchmark step timed out")


def start_daemon(path: Path, state: Path, listen: str) -> tuple[subprocess.Popen[bytes], VouchClient]:
    log = (state / "daemon.log").open("ab")
    env = {k: v for k, v in os.environ.items() if k != "VOUCH_TOKEN"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vouch.daemon", "daemon", "--config", str(path)],
        stdout=log,
        stderr=log,
        env=env,
        start_new_session=True,
    )

    def ready() -> VouchClient | None:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited: {(state / 'daemon.log').read_text()[-2000:]}")
        token = state / "token"
        if token.exists():
            client = VouchClient(f"http://{listen}", token.read_text().strip(), actor="alertmanager")
            if client.ready():
                return client
            client.close()
        return None

    return proc, wait(ready, interval=0.05)


def trial(client: VouchClient, version: str) -> tuple[float, float]:
    """One canary, one alarm; returns (daemon-measured ms, client-observed ms)."""
    release = client.submit("bench", version, environment="staging")["release"]
    pid = release["promotion_ids"][0]
    wait(lambda: client.get_promotion(pid)["promotion"]["step_phase"] == "analysing")
    sent = time.time()
    answer = client.send_alerts(alert("firing"))
    assert pid in answer["matched"], answer
    p = wait(lambda: (q := client.get_promotion(pid)["promotion"])["canary_stopped_at"] and q, interval=0.002)
    observed = time.time()
    client.send_alerts(alert("resolved"))
    wait(lambda: client.get_promotion(pid)["promotion"]["phase"] == "RolledBack")
    return p["detect_to_rollback_ms"], (observed - sent) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vouch-bench-") as tmp:
        state = Path(tmp)
        cfg = config(state)
        path = state / "vouch.yaml"
        path.write_text(yaml.safe_dump(cfg))
        proc, client = start_daemon(path, state, cfg["daemon"]["listen"])
        try:
            first = client.submit("bench", "v0")["release"]
            wait(lambda: client.get_release(first["id"])["release"]["phase"] == "Succeeded")
            daemon_ms, client_ms = [], []
            for i in range(args.trials):
                d, c = trial(client, f"v{i + 1}")
                daemon_ms.append(d)
                client_ms.append(c)
                print(f"trial {i + 1:>3}: alarm → canary stopped {d:7.1f} ms (seen by the client after {c:7.1f} ms)")
        finally:
            client.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    p95 = statistics.quantiles(daemon_ms, n=20)[18]
    result = {
        "benchmark": "alarm_to_rollback",
        "trials": len(daemon_ms),
        "median_ms": round(statistics.median(daemon_ms), 1),
        "p95_ms": round(p95, 1),
        "max_ms": round(max(daemon_ms), 1),
        "client_median_ms": round(statistics.median(client_ms), 1),
        "peer": "flagger default analysis interval",
        "peer_ms": PEER_MS,
        "ratio_p95_to_peer": round(p95 / PEER_MS, 5),
        "target_p95_ms": 500,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
