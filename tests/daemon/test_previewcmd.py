"""``vouch preview up|down|list|reap`` on the demo service with two mocked backends."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from support.api_fakes import TOKEN, FakeController, server_thread
from support.daemon import demo_service_pids, local_config, wait_for
from support.demo import is_alive
from typer.testing import CliRunner, Result

from vouch.daemon.cli import app
from vouch.daemon.notify.base import Notice
from vouch.rollout.attestations.keys import generate_keypair

DIGEST = "sha256:" + "ab" * 32
COMMIT = "c0ffee" * 6 + "abcd"


def config_file(tmp_path: Path, **preview: Any) -> Path:
    """The daemon tests' configuration of the demo service, with a preview: two mocks, a probe as the test."""
    config = local_config(tmp_path / "state")
    shop = config["services"]["shop"]
    shop["probes"] = [{"name": "healthz", "kind": "http", "targets": ["http://{address}/healthz"], "timeout": "2s"}]
    shop["preview"] = {
        "env": {"PAYMENTS_URL": "{mock:payments}", "INVENTORY_URL": "{mock:inventory}"},
        "mocks": [
            {"name": "payments", "routes": [{"method": "POST", "path": "/charge", "json": {"charged": True}}]},
            {"name": "inventory", "routes": [{"method": "POST", "path": "/reserve/{sku}", "json": {"ok": True}}]},
        ],
        "tests": [{"kind": "probes"}],
        "health_deadline": "10s",
        **preview,
    }
    path = tmp_path / "vouch.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def invoke(*args: str, config: Path | None = None, env: dict[str, str | None] | None = None) -> Result:
    where = ["--config", str(config)] if config is not None else []
    return CliRunner().invoke(app, ["preview", *args, *where], env={"GITHUB_REPOSITORY": None, **(env or {})})


def processes_of(tmp_path: Path) -> list[int]:
    """Live processes whose command line names this test's folder: the demo replica and the mocks."""
    marker = str(tmp_path).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline and is_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


@pytest.fixture
def cleanup(tmp_path: Path) -> Iterator[None]:
    """Whatever a test leaves up is taken down, and nothing of it may be left running."""
    yield
    assert invoke("reap", "--state-dir", str(tmp_path / "state")).exit_code == 0
    for folder in sorted((tmp_path / "state/previews").glob("*")):
        invoke("down", folder.name, "--state-dir", str(tmp_path / "state"))
    assert processes_of(tmp_path) == []


def attestations(store: Path) -> dict[str, dict[str, Any]]:
    """The predicates stored for DIGEST, by step (the predicate type's last segment)."""
    found = {}
    for path in sorted((store / DIGEST.replace(":", "-")).glob("*.json")):
        statement = json.loads(base64.b64decode(json.loads(path.read_text())["payload"]))
        found[statement["predicateType"].rstrip("/").rsplit("/", 2)[-2]] = statement["predicate"]
    return found


def test_up_checks_attests_and_stays_up_until_down(tmp_path: Path, cleanup: None) -> None:
    config = config_file(tmp_path)
    key = generate_keypair(tmp_path / "ci.key").private_path
    store = tmp_path / "attestations"

    result = invoke(
        *("up", "shop", "2.0.0", "--pr", "7", "--digest", DIGEST, "--commit", COMMIT),
        *("--key", str(key), "--store", str(store), "--json"),
        config=config,
    )

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["name"], document["passed"], document["up"]) == ("shop-pr-7", True, True)
    assert [(s["step"], s["status"]) for s in document["steps"]] == [
        ("preview-up", "passed"),
        ("health", "passed"),
        ("network-tests", "passed"),
        ("attest", "passed"),
    ]
    assert document["report"]["tests_result"] == "PASSED"
    assert document["preview"]["owner"]["pr"] == "7"
    assert document["preview"]["owner"]["digest"] == DIGEST
    assert len(document["attestations"]) == 2
    predicates = attestations(store)
    assert predicates["ephemeral-environment-health"]["healthy"] is True
    assert predicates["network-tests"]["result"] == "PASSED"
    assert predicates["network-tests"]["mocked_backends"] == ["payments", "inventory"]

    url = "http://" + document["preview"]["address"]
    assert httpx.post(f"{url}/checkout", json={"order": "o-1"}, trust_env=False).json()["charged"] is True

    listed = invoke("list", "--json", config=config)
    assert listed.exit_code == 0, listed.output
    [entry] = json.loads(listed.stdout)["previews"]
    assert (entry["name"], entry["service"], entry["version"], entry["running"]) == ("shop-pr-7", "shop", "2.0.0", True)
    assert 7100 < entry["expires_in"] <= 7200
    text = invoke("list", config=config)
    assert "EXPIRES IN" in text.stdout
    assert "shop-pr-7" in text.stdout

    down = invoke("down", "shop-pr-7", config=config)

    assert down.exit_code == 0, down.output
    assert demo_service_pids(tmp_path / "state") == []
    assert processes_of(tmp_path) == []
    assert json.loads(invoke("list", "--json", config=config).stdout) == {"previews": []}


def test_a_failed_check_tears_the_preview_down_unless_keep(tmp_path: Path, cleanup: None) -> None:
    config = config_file(tmp_path, health_deadline="500ms")
    document = yaml.safe_load(config.read_text())
    document["services"]["shop"]["probes"][0]["valid_status_codes"] = [418]
    config.write_text(yaml.safe_dump(document))

    failed = invoke("up", "shop", "2.0.0", "--pr", "8", "--json", config=config)

    assert failed.exit_code == 1, failed.output
    report = json.loads(failed.stdout)
    assert (report["passed"], report["up"]) == (False, False)
    assert [(s["step"], s["status"]) for s in report["steps"]][:3] == [
        ("preview-up", "passed"),
        ("health", "failed"),
        ("network-tests", "failed"),
    ]
    assert processes_of(tmp_path) == []

    kept = invoke("up", "shop", "2.0.0", "--pr", "8", "--keep", config=config)

    assert kept.exit_code == 1, kept.output
    assert "is up at http://127.0.0.1:" in kept.stdout
    assert len(demo_service_pids(tmp_path / "state")) == 1
    assert invoke("down", "shop-pr-8", config=config).exit_code == 0
    assert processes_of(tmp_path) == []


class NotifiedController(FakeController):
    """The fake daemon behind the real API, remembering the pull request steps posted to it."""

    def __init__(self) -> None:
        super().__init__()
        self.notices: list[Notice] = []

    def notify(self, notice: Notice) -> tuple[str, ...]:
        self.notices.append(notice)
        return ("slack",)


def test_notify_posts_each_step_to_the_pull_request(tmp_path: Path, cleanup: None) -> None:
    config = config_file(tmp_path)
    controller = NotifiedController()
    with server_thread(controller) as api:
        result = invoke(
            *("up", "shop", "2.0.0", "--pr", "9", "--repo", "acme/shop", "--notify"),
            *("--url", api.base_url, "--token", TOKEN),
            config=config,
        )

    assert result.exit_code == 0, result.output
    steps = [(n.subject, n.data["step"], n.data["status"]) for n in controller.notices]
    assert steps == [
        ("pr:acme/shop#9", "preview-up", "passed"),
        ("pr:acme/shop#9", "health", "passed"),
        ("pr:acme/shop#9", "network-tests", "passed"),
        ("pr:acme/shop#9", "attest", "skipped"),
    ]
    assert "answers at http://127.0.0.1:" in controller.notices[0].message
    assert invoke("down", "shop-pr-9", config=config).exit_code == 0


def test_reap_removes_what_has_expired(tmp_path: Path, cleanup: None) -> None:
    config = config_file(tmp_path)
    up = invoke("up", "shop", "2.0.0", "--pr", "10", "--ttl", "1ms", "--no-checks", "--json", config=config)
    assert up.exit_code == 0, up.output
    assert [s["step"] for s in json.loads(up.stdout)["steps"]] == ["preview-up"]

    reaped = invoke("reap", "--json", config=config)

    assert reaped.exit_code == 0, reaped.output
    assert json.loads(reaped.stdout) == {"removed": ["shop-pr-10"]}
    assert processes_of(tmp_path) == []
    assert "no previews" in invoke("list", config=config).stdout


def test_usage_errors_exit_2(tmp_path: Path, cleanup: None, monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_file(tmp_path)
    monkeypatch.chdir(tmp_path / "state")
    up = ("up", "shop", "1.0.0", "--pr", "1")
    cases = {
        "--digest and --commit go together": (*up, "--digest", DIGEST),
        "give --repo": (*up, "--notify"),
        "unknown service 'nope'": ("up", "nope", "1.0.0", "--pr", "1"),
        "not with --no-checks": (*up, "--no-checks", "--digest", DIGEST, "--commit", COMMIT),
        "no preview named 'shop-pr-1'": ("down", "shop-pr-1"),
        "cannot name a preview": ("down", "Nope"),
    }
    for message, args in cases.items():
        result = invoke(*args, config=config)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
    assert invoke(*up, "--ttl", "soon", config=config).exit_code == 2
    assert invoke("down", "shop-pr-1", "--missing-ok", config=config).exit_code == 0
    no_config = invoke("list")
    assert no_config.exit_code == 2
    assert "--state-dir" in no_config.stderr


# --------------------------------------------------------------------------- as separate processes


def vouch(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOUCH_")}
    return subprocess.Popen(
        [sys.executable, "-m", "vouch.daemon", "preview", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=120)
    return process.returncode, stdout, stderr


def test_the_preview_outlives_its_command_and_a_killed_up_is_cleaned_up_by_down(tmp_path: Path, cleanup: None) -> None:
    config_file(tmp_path)
    code, stdout, stderr = finished(vouch("up", "shop", "2.0.0", "--pr", "11", "--no-checks", "--json", cwd=tmp_path))
    assert code == 0, stderr
    url = "http://" + json.loads(stdout)["preview"]["address"]
    assert httpx.post(f"{url}/checkout", json={}, trust_env=False).status_code == 200, "it runs after `up` exited"

    # An `up` killed while it waits: its state is on disk already, so `down` finds what it started.
    (tmp_path / "state/faults.json").write_text(json.dumps({"3.0.0": {"startup_ms": 60000}}))
    killed = vouch("up", "shop", "3.0.0", "--pr", "12", "--name", "shop-crash", cwd=tmp_path)
    state = tmp_path / "state/previews/shop-crash/preview.json"

    def service_started() -> bool:
        try:
            processes = json.loads(state.read_text())["data"]["processes"]
        except (OSError, ValueError):
            return False
        return any(p["role"] == "service" for p in processes)

    try:
        wait_for(service_started, timeout=60, what="the killed up to record its service")
    finally:
        killed.send_signal(signal.SIGKILL)
        finished(killed)
    assert len(demo_service_pids(tmp_path / "state")) == 2

    for name in ("shop-pr-11", "shop-crash"):  # from this process, which did not start them
        down = invoke("down", name, config=tmp_path / "vouch.yaml")
        assert down.exit_code == 0, down.output
    assert processes_of(tmp_path) == []
