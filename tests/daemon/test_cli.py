"""The ``vouch`` command line, run as a user runs it, against one real daemon.

Every command is a child process (``python -m vouch.daemon``, what the
``vouch`` script runs) in an empty folder with no ``VOUCH_*`` variables, so
nothing but its own options tells it where the daemon is. The daemon serves
one service, ``shop``, in two environments: ``staging`` analyses every half
second under steady traffic; ``production`` waits five minutes before its
first analysis, so a promotion there stays in flight until it is aborted.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.daemon import Daemon, free_port, local_config, running, wait_for
from support.traffic import steady_traffic

from vouch.daemon.client import VouchClient, follow_release

ACTOR = "cli-tester"
FAULTY = "v3"


def vouch(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the command line as a user would, with nothing inherited that could point it at a daemon."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOUCH_")}
    env["USER"] = ACTOR
    return subprocess.run(
        [sys.executable, "-m", "vouch.daemon", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def one_json(stdout: str) -> Any:
    """The single JSON document on stdout; ``json.loads`` refuses anything before or after it."""
    return json.loads(stdout)


@dataclass(frozen=True)
class Shop:
    """The module's daemon, how to reach it, and what the first deploy printed."""

    daemon: Daemon
    client: VouchClient
    cwd: Path
    first_deploy: subprocess.CompletedProcess[str]

    def cli(self, *args: str, via: str = "config") -> subprocess.CompletedProcess[str]:
        """Run a command against this daemon, found through its config file or through URL and token file."""
        if via == "config":
            where = ["--config", str(self.daemon.path)]
        else:
            where = ["--url", self.daemon.url, "--token-file", str(self.daemon.state / "token")]
        return vouch(*args, *where, cwd=self.cwd)

    def promotions(self, **filters: Any) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.client.list_promotions(limit=1000, **filters)["promotions"]
        return found


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    state = tmp_path_factory.mktemp("cli") / "state"
    config = local_config(
        state,
        replicas=2,
        steps=[1, "100%"],
        interval="0.5s",
        environments=("staging", "production"),
        faults={FAULTY: {"error_ratio": 0.9}},
    )
    config["environments"]["production"]["analysis"]["interval"] = "300s"
    config["environments"]["production"]["progress_deadline"] = "600s"
    cwd = tmp_path_factory.mktemp("cwd")
    with running(config, state) as (daemon, client), steady_traffic([daemon.router("staging")], rate=40):
        first = vouch("promote", "shop", "v1", "--wait", "--json", "--config", str(daemon.path), cwd=cwd)
        yield Shop(daemon=daemon, client=client, cwd=cwd, first_deploy=first)


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["daemon"],
        ["promote"],
        ["status"],
        ["abort"],
        ["config"],
        ["config", "validate"],
        ["config", "schema"],
        ["demo"],
    ],
    ids=lambda c: " ".join(c) or "vouch",
)
def test_every_help_exits_0_and_shows_an_example(tmp_path: Path, command: list[str]) -> None:
    result = vouch(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Example" in result.stdout, result.stdout


# --------------------------------------------------------------------------- promote


@pytest.mark.e2e
def test_first_deploy_with_json_prints_one_document_and_narrates_on_stderr(shop: Shop) -> None:
    result = shop.first_deploy
    assert result.returncode == 0, result.stderr
    document = one_json(result.stdout)
    assert document["release"]["phase"] == "Succeeded"
    assert document["release"]["version"] == "v1"
    assert [(p["environment"], p["phase"]) for p in document["promotions"]] == [
        ("staging", "Succeeded"),
        ("production", "Succeeded"),
    ]
    assert "v1 is stable with 2 replicas" in result.stderr
    assert "v1 holds in production" in result.stderr
    assert "holds in" not in result.stdout


@pytest.mark.e2e
def test_promote_with_wait_narrates_every_step_on_stderr(shop: Shop) -> None:
    result = shop.cli("promote", "shop", "v2", "--env", "staging", "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    for line in (
        "step 1/2 (1) passed",
        "step 2/2 (100%) passed",
        "v2 is stable with 2 replicas",
        "v2 holds in staging",
    ):
        assert line in result.stderr, result.stderr
    assert re.search(r"shop v2 — Succeeded", result.stdout), result.stdout
    assert re.search(r"shop\s+staging\s+v2\s+Succeeded", result.stdout), result.stdout
    assert "v2" not in {p["version"] for p in shop.promotions(environment="production")}, "--env: staging only"


@pytest.mark.e2e
def test_a_faulty_version_exits_1_and_says_it_rolled_back(shop: Shop) -> None:
    stable = next(p["version"] for p in shop.promotions(environment="staging") if p["phase"] == "Succeeded")
    result = shop.cli("promote", "shop", FAULTY, "--env", "staging", "--wait")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rolling back (gate:slo)" in result.stderr, result.stderr
    assert f"rolled back: {stable} serves all traffic" in result.stderr, result.stderr
    assert "stopped at staging" in result.stderr, result.stderr
    assert f"shop {FAULTY} — Failed" in result.stdout, result.stdout
    assert re.search(rf"shop\s+staging\s+{FAULTY}\s+RolledBack", result.stdout), result.stdout
    [latest] = shop.promotions(environment="staging")[:1]
    assert (latest["version"], latest["phase"], latest["rollback_cause"]) == (FAULTY, "RolledBack", "gate:slo")


@pytest.mark.e2e
def test_promote_while_another_is_active_exits_2_naming_how_to_abort(shop: Shop) -> None:
    started = shop.cli("promote", "shop", "v5", "--env", "production")
    assert started.returncode == 0, started.stderr
    try:
        again = shop.cli("promote", "shop", "v6", "--env", "production")
        assert again.returncode == 2
        assert "already has an active promotion" in again.stderr, again.stderr
        assert "vouch abort shop --env production" in again.stderr, again.stderr
    finally:
        aborted = shop.cli("abort", "shop", "--env", "production")
        assert aborted.returncode == 0, aborted.stderr
        wait_for(lambda: not shop.promotions(environment="production", active=True), what="production idle again")


# --------------------------------------------------------------------------- status


@pytest.mark.e2e
@pytest.mark.parametrize("via", ["config", "url-and-token-file"])
def test_status_json_is_one_document_listing_every_promotion(shop: Shop, via: str) -> None:
    result = shop.cli("status", "--json", "--limit", "1000", via=via)
    assert result.returncode == 0, result.stderr
    listed = one_json(result.stdout)["promotions"]
    expected = shop.promotions()
    assert [p["id"] for p in listed] == [p["id"] for p in expected]
    assert {("staging", "v1"), ("production", "v1")} <= {(p["environment"], p["version"]) for p in listed}
    assert result.stderr == ""


@pytest.mark.e2e
def test_status_of_one_environment_is_a_table(shop: Shop) -> None:
    result = shop.cli("status", "shop", "--env", "staging")
    assert result.returncode == 0, result.stderr
    header, *rows = [line for line in result.stdout.splitlines() if line.startswith(("SERVICE", "shop"))]
    assert header.split() == ["SERVICE", "ENV", "VERSION", "PHASE", "STEP", "AGE", "MESSAGE"]
    staging = shop.promotions(environment="staging")
    assert len(rows) == len(staging)
    for row, promotion in zip(rows, staging, strict=True):
        assert row.split()[:4] == ["shop", "staging", promotion["version"], promotion["phase"]]


# --------------------------------------------------------------------------- abort


@pytest.mark.e2e
def test_abort_with_nothing_active_exits_2(shop: Shop) -> None:
    result = shop.cli("abort", "shop", "--env", "staging")
    assert result.returncode == 2
    assert "shop/staging has no active promotion to abort" in result.stderr
    as_json = shop.cli("abort", "shop", "--env", "staging", "--json")
    assert as_json.returncode == 2
    assert "no active promotion" in one_json(as_json.stdout)["error"]["message"]


@pytest.mark.e2e
def test_abort_rolls_a_running_promotion_back_for_the_user(shop: Shop) -> None:
    started = shop.cli("promote", "shop", "v4", "--env", "production", "--json")
    assert started.returncode == 0, started.stderr
    promotion_id = one_json(started.stdout)["promotions"][0]["id"]
    wait_for(
        lambda: shop.client.get_promotion(promotion_id)["promotion"]["step_phase"] == "analysing",
        what="v4 to wait for its first analysis",
    )

    result = shop.cli("abort", "shop", "--env", "production", "--reason", "bad migration")
    assert result.returncode == 0, result.stderr
    assert "shop/production v4: Aborting" in result.stdout, result.stdout

    final = wait_for(
        lambda: (p := shop.client.get_promotion(promotion_id)["promotion"])["phase"] == "RolledBack" and p,
        what="the aborted promotion to roll back",
    )
    assert final["rollback_cause"] == "user"
    assert (final["abort"]["actor"], final["abort"]["reason"]) == (ACTOR, "bad migration")
    assert shop.client.get_release(final["release_id"])["release"]["phase"] == "Failed"


# --------------------------------------------------------------------------- what goes wrong


@pytest.mark.e2e
def test_unknown_service_exits_2_naming_the_known_ones(shop: Shop) -> None:
    result = shop.cli("promote", "nope", "v1")
    assert result.returncode == 2
    assert "unknown service 'nope'; known: ['shop']" in result.stderr
    assert result.stdout == ""
    as_json = shop.cli("promote", "nope", "v1", "--json")
    assert as_json.returncode == 2
    error = one_json(as_json.stdout)["error"]
    assert "unknown service 'nope'" in error["message"]
    assert "shop" in error["message"]


@pytest.mark.e2e
def test_unknown_environment_exits_2_naming_the_chain(shop: Shop) -> None:
    result = shop.cli("promote", "shop", "v9", "--env", "moon")
    assert result.returncode == 2
    assert "'moon'" in result.stderr
    assert "['staging', 'production']" in result.stderr


@pytest.mark.e2e
def test_a_wrong_token_exits_2_saying_so(shop: Shop) -> None:
    result = shop.cli("status", "--token", "nope")
    assert result.returncode == 2
    assert "refused the token" in result.stderr
    assert "--token-file" in result.stderr, "it says where the right token is"


def test_no_daemon_exits_2_telling_how_to_start_it(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = vouch("status", "--url", url, "--token", "anything", cwd=tmp_path)
    assert result.returncode == 2
    assert f"cannot reach the vouch daemon at {url}" in result.stderr
    assert "vouch daemon --config" in result.stderr
    as_json = vouch("promote", "shop", "v1", "--url", url, "--token", "anything", "--json", cwd=tmp_path)
    assert as_json.returncode == 2
    assert "vouch daemon --config" in one_json(as_json.stdout)["error"]["message"]


def test_no_token_anywhere_exits_2_naming_every_way_to_give_one(tmp_path: Path) -> None:
    result = vouch("status", "--url", f"http://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert result.returncode == 2
    for way in ("--token", "$VOUCH_TOKEN", "--token-file"):
        assert way in result.stderr


def test_watch_with_json_exits_2(tmp_path: Path) -> None:
    result = vouch("status", "--watch", "--json", "--url", "http://127.0.0.1:1", "--token", "t", cwd=tmp_path)
    assert result.returncode == 2
    assert "--watch" in one_json(result.stdout)["error"]["message"]


def test_a_bad_config_file_exits_2_naming_file_line_and_field(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("daemon:\n  listen: nope\nservices: {}\nenvironments: {}\n")
    result = vouch("status", "--config", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "bad.yaml:2: daemon.listen: 'nope' is not host:port" in result.stderr
    as_json = vouch("status", "--config", "bad.yaml", "--json", cwd=tmp_path)
    assert as_json.returncode == 2
    problems = one_json(as_json.stdout)["error"]["problems"]
    assert any((p["file"], p["line"], p["path"]) == ("bad.yaml", 2, "daemon.listen") for p in problems), problems


# --------------------------------------------------------------------------- following a release


class _EndingRelease:
    """A client whose release ends at a chosen read, with its last events recorded a read later.

    The daemon saves a release's final phase and then, in a separate write,
    its closing event, while the command line polls release and events in
    turn: that interleaving is a matter of milliseconds against a real daemon,
    so it is played here deterministically.
    """

    def __init__(self, *, closing_event: bool = True) -> None:
        self.phase = "Progressing"
        self._log: list[dict[str, Any]] = [self._event(1, "release.started")]
        self._pending = [self._event(2, "promotion.rolledback"), self._event(3, "release.failed")]
        if not closing_event:
            self._pending.pop()
        self._reads = 0

    @staticmethod
    def _event(event_id: int, kind: str) -> dict[str, Any]:
        return {"id": event_id, "kind": kind, "message": kind, "at": 0.0, "data": {}}

    def events(self, *, release: str, after: int) -> dict[str, Any]:
        return {"events": [e for e in self._log if e["id"] > after]}

    def get_release(self, release_id: str) -> dict[str, Any]:
        self._reads += 1
        if self._reads == 2:
            self.phase = "Failed"
            self._log.append(self._pending.pop(0))
        elif self._reads > 2 and self._pending:
            self._log.append(self._pending.pop(0))
        return {"release": {"id": release_id, "phase": self.phase}, "promotions": []}


def test_following_a_release_shows_every_event_written_as_it_ends() -> None:
    client = _EndingRelease()
    seen: list[str] = []
    result = follow_release(client, "r-1", on_event=lambda e: seen.append(e["kind"]), poll=0.01)  # type: ignore[arg-type]
    assert seen == ["release.started", "promotion.rolledback", "release.failed"]
    assert result["release"]["phase"] == "Failed"


def test_following_a_release_whose_closing_event_never_comes_still_ends() -> None:
    client = _EndingRelease(closing_event=False)
    seen: list[str] = []
    result = follow_release(client, "r-1", on_event=lambda e: seen.append(e["kind"]), poll=0.01, grace=0.1)  # type: ignore[arg-type]
    assert seen == ["release.started", "promotion.rolledback"]
    assert result["release"]["phase"] == "Failed"
