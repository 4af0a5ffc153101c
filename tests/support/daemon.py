"""Run the real ``vouch daemon`` as a child process for end-to-end tests, and kill it at will."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from support.demo import demo_command, free_port, is_alive

from vouch.daemon.client import VouchClient

__all__ = ["Daemon", "demo_service_pids", "free_port", "is_alive", "local_config", "running", "wait_for"]


def local_config(
    state: Path,
    *,
    replicas: int = 2,
    steps: list[Any] | None = None,
    interval: str = "1s",
    environments: tuple[str, ...] = ("staging",),
    slos: list[dict[str, Any]] | None = None,
    gates: list[str] | None = None,
    faults: dict[str, dict[str, float]] | None = None,
    providers: dict[str, Any] | None = None,
    analysis: dict[str, Any] | None = None,
    deadline: str = "60s",
) -> dict[str, Any]:
    """A configuration for the local platform running the demo service."""
    faults_file = state / "faults.json"
    faults_file.parent.mkdir(parents=True, exist_ok=True)
    faults_file.write_text(json.dumps(faults or {}))
    env = {
        "plan": {"steps": steps or [1, "100%"]},
        "analysis": {"interval": interval, "runs": 1, "failure_limit": 0, "inconclusive_limit": 5, **(analysis or {})},
        "gates": gates or ["slo", "alarms"],
        "progress_deadline": deadline,
    }
    config: dict[str, Any] = {
        "daemon": {"listen": f"127.0.0.1:{free_port()}", "state_dir": str(state), "log_level": "debug"},
        "platform": {"kind": "local", "stop_grace": "2s"},
        "services": {
            "shop": {
                "command": demo_command("--faults-file", str(faults_file)),
                "replicas": replicas,
                "readiness": {"path": "/healthz", "timeout": "20s", "interval": "50ms"},
                "environments": [{"name": name, "port": free_port()} for name in environments],
                "slos": slos
                if slos is not None
                else [{"name": "error-ratio", "metric": "error_ratio", "window": "3s", "max": 0.05, "min_requests": 3}],
            }
        },
        "environments": {name: copy.deepcopy(env) for name in environments},
    }
    if providers:
        config["metric_providers"] = providers
    return config


class Daemon:
    """One daemon configuration, started and stopped (or killed) as many times as a test likes."""

    def __init__(self, config: dict[str, Any], state: Path) -> None:
        self.config = config
        self.state = state
        self.path = state / "vouch.yaml"
        self.path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.url = f"http://{config['daemon']['listen']}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = state / "daemon.log"

    def router(self, environment: str = "staging", service: str = "shop") -> str:
        env = next(e for e in self.config["services"][service]["environments"] if e["name"] == environment)
        return f"http://127.0.0.1:{env['port']}"

    def start(self, *, timeout: float = 60) -> VouchClient:
        with self.log_path.open("ab") as log:
            env = {k: v for k, v in os.environ.items() if k != "VOUCH_TOKEN"}
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vouch.daemon", "daemon", "--config", str(self.path)],
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        return self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> VouchClient:
        deadline = time.monotonic() + timeout
        token = self.state / "token"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()[-4000:]}")
            if token.exists():
                client = VouchClient(self.url, token.read_text().strip())
                if client.ready():
                    return client
                client.close()
            time.sleep(0.05)
        raise AssertionError(f"daemon not ready in {timeout}s:\n{self.log()[-4000:]}")

    def client(self) -> VouchClient:
        return VouchClient(self.url, (self.state / "token").read_text().strip())

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind runs."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextmanager
def running(config: dict[str, Any], state: Path) -> Iterator[tuple[Daemon, VouchClient]]:
    daemon = Daemon(config, state)
    client = daemon.start()
    try:
        yield daemon, client
    finally:
        client.close()
        daemon.stop()


def wait_for(predicate: Callable[[], Any], *, timeout: float = 60, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def demo_service_pids(state: Path) -> list[int]:
    """Every live demo-service process started for ``state`` (by its faults file in the argv)."""
    marker = str(state / "faults.json").encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"vouch.daemon.demo.service" in cmdline and marker in cmdline and is_alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids
