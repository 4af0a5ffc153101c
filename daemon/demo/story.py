"""``vouch demo``: four releases of one service on the local platform, told as they happen.

The demo runs the real daemon as a child process with a generated
configuration, sends it steady traffic, and drives it only through the HTTP
API, exactly as a pipeline would. Nothing is simulated but the service's
faults and the alarm, which is posted the way Alertmanager posts it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml
from rich.text import Text

from vouch.core.errors import VouchError
from vouch.daemon.client import VouchClient, follow_release
from vouch.daemon.render import render_event
from vouch.rollout.alarms import webhook_for
from vouch.rollout.attestations.dsse import sign_statement
from vouch.rollout.attestations.keys import generate_keypair, load_signer
from vouch.rollout.attestations.model import Statement, Subject
from vouch.rollout.attestations.predicates import predicate_type_for

Narrate = Callable[[str | Text], None]

SERVICE = "checkout"
REPLICAS = 10
RATE_PER_ENVIRONMENT = 50.0
FAULTS = {"v3": {"error_ratio": 0.2}}

POLICY = """
# The demo's policy: staging needs a vulnerability scan signed by a trusted key;
# production also needs vouch's own word that the same artifact held in staging.
package vouch

required := {"staging": ["vulnerability-scan"], "production": ["vulnerability-scan", "deployed"]}

have contains a.step if {
	some a in input.attestations
	a.step != "deployed"
}

have contains "deployed" if {
	some a in input.attestations
	a.step == "deployed"
	a.predicate.environment == "staging"
}

denials contains msg if {
	some step in required[input.environment]
	not step in have
	msg := sprintf("%s needs a vulnerability-scan attestation signed by a trusted key", [input.environment])
	step == "vulnerability-scan"
}

denials contains msg if {
	some step in required[input.environment]
	not step in have
	step == "deployed"
	msg := sprintf("%s needs vouch's attestation that this artifact held in staging", [input.environment])
}

denials contains msg if {
	some r in input.rejected
	msg := sprintf("an attestation was rejected: %s", [r.reason])
}

decision := {"allow": count(denials) == 0, "denials": denials}
"""


@dataclass(frozen=True)
class DemoResult:
    """The JSON document ``vouch demo --json`` prints, and whether the story went as told."""

    document: dict[str, Any]
    ok: bool
    surprises: tuple[str, ...] = ()


def demo_config(state: Path, *, api_port: int, ports: dict[str, int]) -> dict[str, Any]:
    """The configuration the demo daemon runs with (written to ``state/vouch.yaml``)."""
    steps: list[int | str] = [1, 2, 5, "50%", "100%"]
    environment = {
        "plan": {"steps": steps},
        "analysis": {"interval": "3s", "runs": 1, "failure_limit": 0, "inconclusive_limit": 3},
        "gates": ["attestations", "slo", "alarms"],
        "policy": {"kind": "rego", "path": str(state / "policy")},
        "progress_deadline": "60s",
    }
    keys = state / "keys"
    command = [sys.executable, "-m", "vouch.daemon.demo.service", "--port", "{port}", "--version", "{version}"]
    return {
        "daemon": {"listen": f"127.0.0.1:{api_port}", "state_dir": str(state), "log_level": "info"},
        "platform": {"kind": "local", "stop_grace": "2s"},
        "services": {
            SERVICE: {
                "command": [*command, "--faults-file", str(state / "faults.json")],
                "replicas": REPLICAS,
                "readiness": {"path": "/healthz", "timeout": "20s"},
                "environments": [{"name": name, "port": port} for name, port in ports.items()],
                "slos": [
                    {"name": "error-ratio", "metric": "error_ratio", "window": "4s", "max": 0.05, "min_requests": 5},
                    {"name": "latency-p99", "metric": "latency", "quantile": 0.99, "window": "4s", "max": 0.5},
                ],
            }
        },
        "environments": {name: environment for name in ports},
        "attestations": {
            "trust": {"keys": [{"path": str(keys / "ci.key.pub")}, {"path": str(keys / "vouch.key.pub")}]},
            "signing_key": str(keys / "vouch.key"),
        },
    }


def run_demo(*, state_dir: Path | None, narrate: Narrate) -> DemoResult:
    """Run the whole story; the daemon and every replica are stopped before this returns."""
    state = (state_dir or Path(tempfile.mkdtemp(prefix="vouch-demo-"))).resolve()
    state.mkdir(parents=True, exist_ok=True)
    (state / "faults.json").write_text(json.dumps(FAULTS))
    _prepare_trust(state)
    ports = {"staging": _free_port(), "production": _free_port()}
    config = state / "vouch.yaml"
    config.write_text(yaml.safe_dump(demo_config(state, api_port=_free_port(), ports=ports), sort_keys=False))
    narrate(f"Starting the vouch daemon on the local platform (state and logs in {state})")
    with _daemon(config, state) as client, _traffic(ports, narrate=narrate) as traffic:
        story = _Story(client, narrate, traffic, state)
        story.tell()
    promotions = [_summary(p) for p in story.promotions]
    narrate(_table(promotions))
    surprises = _surprises(promotions)
    return DemoResult({"promotions": promotions, "state_dir": str(state)}, ok=not surprises, surprises=surprises)


class _Story:
    def __init__(self, client: VouchClient, narrate: Narrate, traffic: _Traffic, state: Path) -> None:
        self.state = state
        self.client = client
        self.narrate = narrate
        self.traffic = traffic
        self.promotions: list[dict[str, Any]] = []

    def tell(self) -> None:
        say = self.narrate
        say(f"\n[1/4] Deploying {SERVICE} v1 to staging and production: {REPLICAS} replicas each (a first deploy).")
        self.release("v1")
        self.traffic.start()
        say(f"Steady traffic now flows: {RATE_PER_ENVIRONMENT:g} requests/s into each environment's router.")
        say(
            "\n[2/4] Releasing v2 through staging, then production, with no human step. Each takes steps of "
            "1, 2, 5, 50% and 100% of the pods; every step is judged on error ratio and p99 latency."
        )
        self.release("v2")
        say("\n[3/4] Releasing v3, which fails about 20% of its requests. The SLO gate should catch it.")
        self.release("v3")
        say("\n[4/5] Releasing v4. Its errors are fine, but it leaks memory: an alert will fire in Alertmanager.")
        self.release("v4", alarm=True)
        say(
            "\n[5/5] Releasing v5, whose vulnerability scan was signed by a key nobody trusts. The policy "
            "should refuse it before a single pod starts."
        )
        self.release("v5", signer="rogue")

    def release(self, version: str, *, alarm: bool = False, signer: str = "ci") -> None:
        _sign_scan(self.state, version, signer)
        release = self.client.submit(
            SERVICE, version, artifact={"name": SERVICE, "digest": _digest(version)}, commit=_commit(version)
        )["release"]
        fired: list[dict[str, Any]] = []

        def watch(got: dict[str, Any]) -> None:
            if alarm and not fired and _analysing(got["promotions"]):
                fired.append(got["promotions"][-1])
                self._fire_alarm(fired[0])

        got = follow_release(
            self.client, release["id"], on_event=lambda e: self.narrate(render_event(e)), on_poll=watch, poll=0.2
        )
        if fired:
            self.client.send_alerts(_alert(fired[0], status="resolved"))
        self.promotions.extend(got["promotions"])
        last = got["promotions"][-1]["phase"] if got["promotions"] else ""
        verdict = {"Succeeded": "held everywhere", "Denied": "was refused before any pod started"}.get(
            got["release"]["phase"] if got["release"]["phase"] == "Succeeded" else last, "was stopped and rolled back"
        )
        self.narrate(Text(f"→ {version} {verdict}.", style="bold"))

    def _fire_alarm(self, promotion: dict[str, Any]) -> None:
        where = promotion["environment"]
        self.narrate(
            Text(f"!! Alertmanager posts a firing alert for {SERVICE} in {where}: CheckoutMemoryLeak", style="bold red")
        )
        self.client.send_alerts(_alert(promotion, status="firing"))


def _analysing(promotions: list[dict[str, Any]]) -> bool:
    return bool(promotions) and promotions[-1]["step_phase"] == "analysing"


def _alert(promotion: dict[str, Any], *, status: Literal["firing", "resolved"]) -> dict[str, Any]:
    labels = {
        "alertname": "CheckoutMemoryLeak",
        "service": promotion["service"],
        "environment": promotion["environment"],
        "severity": "critical",
    }
    summary = {"summary": "resident memory of the canary grew 40% in 2 minutes"}
    return webhook_for(labels, status=status, annotations=summary)


def _summary(p: dict[str, Any]) -> dict[str, Any]:
    keys = ("service", "version", "environment", "phase", "steps_completed", "rollback_cause", "detect_to_rollback_ms")
    return {key: p.get(key) for key in keys}


def _surprises(promotions: list[dict[str, Any]]) -> tuple[str, ...]:
    by = {(p["version"], p["environment"]): p for p in promotions}
    found = []
    for env in ("staging", "production"):
        for version in ("v1", "v2"):
            if by.get((version, env), {}).get("phase") != "Succeeded":
                found.append(f"{version} did not succeed in {env}")
    if by.get(("v5", "staging"), {}).get("phase") != "Denied":
        found.append("v5 was not denied in staging")
    for version, cause in (("v3", "gate:"), ("v4", "alarm:")):
        p = by.get((version, "staging"), {})
        if p.get("phase") != "RolledBack" or not str(p.get("rollback_cause")).startswith(cause):
            found.append(f"{version} was not rolled back by {cause.rstrip(':')} in staging")
        if (version, "production") in by:
            found.append(f"{version} reached production")
    return tuple(found)


def _table(promotions: list[dict[str, Any]]) -> Text:
    lines = Text("\nSummary\n", style="bold")
    lines.append(f"{'VERSION':<8} {'ENV':<11} {'PHASE':<11} {'STEPS':<6} {'CAUSE':<26} DETECT→ROLLBACK\n", style="bold")
    for p in promotions:
        ms = p["detect_to_rollback_ms"]
        detect = f"{ms:.0f} ms" if ms is not None else "-"
        style = "green" if p["phase"] == "Succeeded" else "red"
        row = f"{p['version']:<8} {p['environment']:<11} {p['phase']:<11} {p['steps_completed']!s:<6} "
        lines.append(row, style=style)
        lines.append(f"{p['rollback_cause'] or '-':<26} {detect}\n")
    return lines


# --------------------------------------------------------------------------- trust


def _prepare_trust(state: Path) -> None:
    """Keys for the pipeline (trusted), a stranger (not) and vouch itself, and the demo's policy."""
    keys = state / "keys"
    keys.mkdir(exist_ok=True)
    for name in ("ci", "rogue", "vouch"):
        if not (keys / f"{name}.key").exists():
            generate_keypair(keys / f"{name}.key")
    (state / "policy").mkdir(exist_ok=True)
    (state / "policy" / "demo.rego").write_text(POLICY)


def _digest(version: str) -> str:
    return "sha256:" + hashlib.sha256(f"{SERVICE}-{version}".encode()).hexdigest()


def _commit(version: str) -> dict[str, str]:
    return {"sha": hashlib.sha1(f"{SERVICE}-{version}".encode()).hexdigest(), "merge": "fast-forward"}


def _sign_scan(state: Path, version: str, signer: str) -> None:
    """What the pipeline's scanner step does: attest that the artifact has no known vulnerabilities."""
    digest = _digest(version)
    statement = Statement(
        subjects=(Subject(SERVICE, {"sha256": digest.split(":", 1)[1]}),),
        predicate_type=predicate_type_for("vulnerability-scan"),
        predicate={"scanner": {"uri": "https://github.com/aquasecurity/trivy", "version": "0.50.0", "result": []}},
    )
    envelope = sign_statement(statement, [load_signer(state / "keys" / f"{signer}.key")])
    folder = state / "attestations" / f"sha256-{digest.split(':', 1)[1]}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"vulnerability-scan-{signer}.json").write_text(json.dumps(envelope))


# --------------------------------------------------------------------------- the daemon and the traffic


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def _daemon(config: Path, state: Path) -> Iterator[VouchClient]:
    """Start ``vouch daemon`` as a child, wait until ready, and always stop it."""
    log = (state / "daemon.log").open("ab")
    env = {**os.environ, "VOUCH_TOKEN": ""}
    cmd = [sys.executable, "-m", "vouch.daemon", "daemon", "--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, start_new_session=True)
    try:
        listen = yaml.safe_load(config.read_text())["daemon"]["listen"]
        client = _wait_ready(proc, f"http://{listen}", state)
        with client:
            yield client
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_ready(proc: subprocess.Popen[bytes], url: str, state: Path) -> VouchClient:
    deadline = time.monotonic() + 60
    token_file = state / "token"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (state / "daemon.log").read_text(errors="replace")[-2000:]
            raise VouchError(f"the demo daemon exited with {proc.returncode}:\n{tail}")
        if token_file.exists():
            client = VouchClient(url, token_file.read_text().strip(), actor="demo")
            if client.ready():
                return client
            client.close()
        time.sleep(0.1)
    raise VouchError(f"the demo daemon did not become ready within 60s; see {state / 'daemon.log'}")


@dataclass
class _Traffic:
    """Background requests into each environment's router, counted by outcome."""

    urls: list[str]
    rate: float
    counts: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="demo-traffic", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        interval = 1.0 / (self.rate * len(self.urls))
        with httpx.Client(timeout=5.0) as http:
            next_at = time.monotonic()
            i = 0
            while not self._stop.is_set():
                url = self.urls[i % len(self.urls)]
                i += 1
                try:
                    status = str(http.get(url).status_code)
                except httpx.HTTPError:
                    status = "error"
                self.counts[status] = self.counts.get(status, 0) + 1
                next_at += interval
                self._stop.wait(max(0.0, next_at - time.monotonic()))


@contextlib.contextmanager
def _traffic(ports: dict[str, int], *, narrate: Narrate) -> Iterator[_Traffic]:
    traffic = _Traffic([f"http://127.0.0.1:{port}/checkout" for port in ports.values()], RATE_PER_ENVIRONMENT)
    try:
        yield traffic
    finally:
        traffic.stop()
        if traffic.counts:
            counts = ", ".join(f"{k}: {v}" for k, v in sorted(traffic.counts.items()))
            narrate(f"\nTraffic sent during the demo, by status: {counts}")
