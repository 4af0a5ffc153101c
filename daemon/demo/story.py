"""``vouch demo``: six releases of one service on the local platform, told as they happen.

The demo runs the real daemon as a child process with a generated
configuration, sends it steady traffic, and drives it only through the HTTP
API, exactly as a pipeline would. Nothing is simulated but the service's
faults and the alarm, which is posted the way Alertmanager posts it. The
security team's webhook receiver is a small server of the demo's own
(:mod:`vouch.daemon.demo.receiver`); it checks every notice's signature.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml
from rich.text import Text

from vouch.core.errors import VouchError
from vouch.daemon.client import VouchClient, follow_release
from vouch.daemon.demo.evidence import (
    ESCALATION_LOGGER,
    AuditCheck,
    check_audit,
    escalation_kinds,
    outcome,
    summary,
    surprises,
    table,
)
from vouch.daemon.demo.receiver import SecurityReceiver, security_receiver
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
SECURITY_KINDS = ["override.*", "promotion.denied"]
"""What security and the escalation chain hear of: every break-glass, and every release a policy refused."""
OVERRIDE_REASON = "INC-4711: scanner key rotated, scan checked by hand"
NOTICE_WAIT = 10.0
"""Longest wait for a notice to reach the security receiver (it normally takes milliseconds)."""

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


def demo_config(state: Path, *, api_port: int, ports: dict[str, int], security_url: str) -> dict[str, Any]:
    """The configuration the demo daemon runs with (written to ``state/vouch.yaml``).

    ``security_url`` is the security team's webhook; its HMAC secret is read from
    ``state/security.hmac`` (see :func:`_security_secret`).
    """
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
        "audit": {"path": str(state / "audit.jsonl")},
        "notifications": {
            "notifiers": [
                {
                    "name": "security",
                    "kind": "webhook",
                    "url": security_url,
                    "secret": {"from_file": str(state / "security.hmac")},
                    "timeout": "5s",
                },
                {"name": "escalation", "kind": "log", "logger": ESCALATION_LOGGER},
            ],
            "routes": [{"kinds": SECURITY_KINDS, "to": ["security", "escalation"]}],
            "retry_initial": "0.5s",
        },
    }


def run_demo(*, state_dir: Path | None, narrate: Narrate) -> DemoResult:
    """Run the whole story; the daemon, every replica and the receiver are stopped before this returns."""
    state = (state_dir or Path(tempfile.mkdtemp(prefix="vouch-demo-"))).resolve()
    state.mkdir(parents=True, exist_ok=True)
    (state / "faults.json").write_text(json.dumps(FAULTS))
    _prepare_trust(state)
    ports = {"staging": _free_port(), "production": _free_port()}
    config = state / "vouch.yaml"
    daemon_log = state / "daemon.log"
    log_start = daemon_log.stat().st_size if daemon_log.exists() else 0  # a state folder may be used again
    with security_receiver(_security_secret(state)) as security:
        document = demo_config(state, api_port=_free_port(), ports=ports, security_url=security.url)
        config.write_text(yaml.safe_dump(document, sort_keys=False))
        narrate(f"Starting the vouch daemon on the local platform (state and logs in {state})")
        with _daemon(config, state) as client, _traffic(ports, narrate=narrate) as traffic:
            story = _Story(client, narrate, traffic, state, security)
            story.tell()
            listed = client.list_overrides(service=SERVICE)["overrides"]
        overrides = [o for o in listed if o["id"] in story.granted]
        heard = tuple(d.kind for d in security.received())
        refused = security.refused()
    audit = check_audit(state / "audit.jsonl", public_key=state / "keys" / "vouch.key.pub")
    escalation = escalation_kinds(daemon_log, start=log_start)
    _tell_evidence(narrate, heard=heard, escalation=escalation, audit=audit)
    promotions = [summary(p) for p in story.promotions]
    narrate(table(promotions))
    found = surprises(
        story.promotions, overrides=overrides, security=heard, refused=refused, escalation=escalation, audit=audit
    )
    result = {
        "promotions": promotions,
        "state_dir": str(state),
        "audit_log": str(state / "audit.jsonl"),
        "audit_records": audit.report.records,
        "security_notices": list(heard),
    }
    return DemoResult(result, ok=not found, surprises=found)


def _tell_evidence(narrate: Narrate, *, heard: tuple[str, ...], escalation: tuple[str, ...], audit: AuditCheck) -> None:
    """Who heard of the break-glass, and whether the audit log still proves what happened."""
    counts = ", ".join(f"{kind} ×{n}" for kind, n in Counter(heard).items()) or "nothing"
    narrate(f"\nSecurity's webhook received {len(heard)} signed notices: {counts}.")
    escalated = ", ".join(f"{kind} ×{n}" for kind, n in Counter(escalation).items()) or "nothing"
    narrate(f"The escalation chain (the daemon's log, logger {ESCALATION_LOGGER}) got {len(escalation)}: {escalated}.")
    narrate(Text(audit.describe(), style="green" if audit.ok else "bold red"))
    if audit.overrides:
        narrate(f"It holds the break-glass: {'; '.join(audit.overrides)}.")


class _Story:
    def __init__(
        self, client: VouchClient, narrate: Narrate, traffic: _Traffic, state: Path, security: SecurityReceiver
    ) -> None:
        self.state = state
        self.client = client
        self.narrate = narrate
        self.traffic = traffic
        self.security = security
        self.promotions: list[dict[str, Any]] = []
        self.granted: list[str] = []
        """Ids of the overrides granted in this telling."""
        self._expected: list[str] = []
        self._told = 0

    def tell(self) -> None:
        say = self.narrate
        say(f"\n[1/6] Deploying {SERVICE} v1 to staging and production: {REPLICAS} replicas each (a first deploy).")
        self.release("v1")
        self.traffic.start()
        say(f"Steady traffic now flows: {RATE_PER_ENVIRONMENT:g} requests/s into each environment's router.")
        say(
            "\n[2/6] Releasing v2 through staging, then production, with no human step. Each takes steps of "
            "1, 2, 5, 50% and 100% of the pods; every step is judged on error ratio and p99 latency."
        )
        self.release("v2")
        say("\n[3/6] Releasing v3, which fails about 20% of its requests. The SLO gate should catch it.")
        self.release("v3")
        say("\n[4/6] Releasing v4. Its errors are fine, but it leaks memory: an alert will fire in Alertmanager.")
        self.release("v4", alarm=True)
        say(
            "\n[5/6] Releasing v5, whose vulnerability scan was signed by a key nobody trusts. The policy "
            "should refuse it before a single pod starts; security hears of every refusal."
        )
        self.release("v5", signer="rogue")
        self.tell_break_glass()

    def tell_break_glass(self) -> None:
        say = self.narrate
        say(
            "\n[6/6] v6's scan is signed by that same unknown key: the scanner's key was rotated and the trust list "
            "not yet updated. On call checks the scan by hand and breaks the glass, through the API: the "
            "attestations gate may fail once, for v6, in staging only. Security and escalation hear of it."
        )
        self.break_glass("v6")
        self.heard("override.granted")
        self.release("v6", signer="rogue")
        say(
            Text(
                "The glass broke once, in one place: staging let v6 through on oncall's word and it held there; "
                "production, where nobody broke the glass, still wants a trusted scan and refused it.",
                style="bold",
            )
        )

    def break_glass(self, version: str) -> None:
        """What on call does: grant a one-time override through the API, under their own name."""
        token = (self.state / "token").read_text().strip()
        with VouchClient(self.client.base_url, token, actor="oncall") as oncall:
            got = oncall.grant_override(
                SERVICE, environment="staging", gate="attestations", reason=OVERRIDE_REASON, version=version, ttl="30m"
            )["override"]
        self.granted.append(got["id"])
        until = time.strftime("%H:%M", time.localtime(got["expires_at"]))
        self.narrate(
            Text(
                f"!! {got['actor']} breaks the glass ({got['id']}): gate attestations of {SERVICE} {version} in "
                f"staging may fail once, until {until}. Reason: {got['reason']}",
                style="bold yellow",
            )
        )

    def heard(self, kind: str) -> None:
        """Wait for the notice the last event should have sent to security, and tell what arrived."""
        self._expected.append(kind)
        if not self.security.wait_for(self._expected, timeout=NOTICE_WAIT):
            self.narrate(Text(f"security has not heard of {kind} within {NOTICE_WAIT:g}s", style="red"))
        for delivery in self.security.received()[self._told :]:
            message = delivery.message if len(delivery.message) <= 150 else delivery.message[:149] + "…"
            self.narrate(Text(f"   security ← {delivery.kind} ({delivery.severity}): {message}", style="magenta"))
            self._told += 1

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

        got = follow_release(self.client, release["id"], on_event=self._on_event, on_poll=watch, poll=0.2)
        if fired:
            self.client.send_alerts(_alert(fired[0], status="resolved"))
        self.promotions.extend(got["promotions"])
        self.narrate(Text(f"→ {version} {outcome(got['release'], got['promotions'])}.", style="bold"))

    def _on_event(self, event: dict[str, Any]) -> None:
        """Tell the event; if security is routed its kind, tell what the receiver got right after."""
        self.narrate(render_event(event))
        if any(fnmatchcase(event["kind"], kind) for kind in SECURITY_KINDS):
            self.heard(event["kind"])

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
    annotations = {"summary": "resident memory of the canary grew 40% in 2 minutes"}
    return webhook_for(labels, status=status, annotations=annotations)


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


def _security_secret(state: Path) -> str:
    """The HMAC key vouch signs security's notices with, shared with the receiver (a file only we can read)."""
    path = state / "security.hmac"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    return path.read_text().strip()


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
