"""Chat from the real daemon: one Slack message per release and per pull request, threads kept across restarts.

The daemon runs as a child process; Slack is the fake Web API (tests/support/fake_slack.py) spoken
to by the real ``slack_sdk`` client inside the daemon.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support.daemon import Daemon, local_config, wait_for
from support.fake_slack import FakeSlack, SlackMessage, running_fake_slack
from support.traffic import steady_traffic

pytestmark = pytest.mark.e2e


@pytest.fixture
async def chat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Daemon, FakeSlack]]:
    async with running_fake_slack() as slack:
        monkeypatch.setenv("TEST_SLACK_TOKEN", slack.token)
        state = tmp_path / "state"
        config = local_config(state, steps=[1, 2, "100%"], environments=("staging", "production"))
        config["notifications"] = {
            "notifiers": [
                {
                    "name": "team",
                    "kind": "slack",
                    "channel": "#checkout",
                    "token": {"from_env": "TEST_SLACK_TOKEN"},
                    "base_url": slack.url,
                }
            ],
            "retry_initial": "100ms",
            "retry_max": "1s",
        }
        daemon = Daemon(config, state)
        client = await asyncio.to_thread(daemon.start)
        client.close()
        try:
            yield daemon, slack
        finally:
            await asyncio.to_thread(daemon.stop)


def release(daemon: Daemon, version: str) -> str:
    with daemon.client() as client:
        release_id: str = client.submit("shop", version)["release"]["id"]
    return release_id


def wait_ended(daemon: Daemon, release_id: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        with daemon.client() as client:
            got: dict[str, Any] = client.get_release(release_id)
        return got if got["release"]["phase"] != "Progressing" else None

    result: dict[str, Any] = wait_for(ended, timeout=120, what=f"release {release_id} to end")
    return result


def parent_of(slack: FakeSlack, marker: str) -> SlackMessage:
    (parent,) = [m for m in slack.parents() if marker in m.text]
    return parent


async def test_one_parent_per_release_across_environments_and_a_restart(chat: tuple[Daemon, FakeSlack]) -> None:
    daemon, slack = chat
    first = await asyncio.to_thread(release, daemon, "v1")
    await asyncio.to_thread(wait_ended, daemon, first)
    with steady_traffic([daemon.router("staging"), daemon.router("production")]):
        second = await asyncio.to_thread(release, daemon, "v2")

        def analysing_in_staging() -> bool:
            with daemon.client() as client:
                found = client.list_promotions(service="shop", active=True)["promotions"]
            return any(p["environment"] == "staging" and p["step"] >= 1 for p in found)

        await asyncio.to_thread(wait_for, analysing_in_staging, timeout=60, what="v2 past its first step")
        await slack.wait_until(lambda: any("v2" in m.text for m in slack.parents()))
        before = len(slack.calls_to("chat.postMessage"))
        await asyncio.to_thread(daemon.stop)  # mid-release: the thread must continue after the restart
        await asyncio.to_thread(daemon.start)
        result = await asyncio.to_thread(wait_ended, daemon, second)
    assert result["release"]["phase"] == "Succeeded"
    assert [p["environment"] for p in result["promotions"]] == ["staging", "production"]

    def settled() -> bool:
        parent = parent_of(slack, "v2")
        return "Succeeded" in parent.text and len(slack.calls_to("chat.postMessage")) > before

    await slack.wait_until(settled, timeout=30)
    parent = parent_of(slack, "v2")
    assert "staging" in parent.text
    assert "production" in parent.text
    assert parent.updates >= 3, "the parent is redrawn in place"
    updates = slack.calls_to("chat.update")
    assert {call.params["ts"] for call in updates if call.params["ts"] == parent.ts} == {parent.ts}
    replies = slack.replies(parent.ts)
    kinds = " ".join(r.text for r in replies)
    assert "production" in kinds
    assert "staging" in kinds
    assert len([m for m in slack.parents() if "v2" in m.text]) == 1, "no second parent after the restart"
    assert len(replies) > 4


def notify(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    token = (daemon.state / "token").read_text().strip()
    command = [sys.executable, "-m", "vouch.daemon", "notify", "pr", *args, "--url", daemon.url, "--token", token]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=daemon.state)


async def test_a_pull_requests_steps_thread_under_one_message_across_a_restart(
    chat: tuple[Daemon, FakeSlack],
) -> None:
    daemon, slack = chat
    pr = ("--repo", "acme/shop", "--pr", "42")
    for step, status in (("build", "running"), ("build", "passed")):
        done = await asyncio.to_thread(notify, daemon, *pr, "--step", step, "--status", status)
        assert done.returncode == 0, done.stderr
        assert "pr:acme/shop#42: " in done.stdout
        assert "team" in done.stdout
    await slack.wait_until(lambda: len(slack.calls_to("chat.postMessage")) >= 3)
    await asyncio.to_thread(daemon.stop)
    await asyncio.to_thread(daemon.start)
    done = await asyncio.to_thread(notify, daemon, *pr, "--step", "unit-tests", "--status", "failed")
    assert done.returncode == 0, done.stderr
    await slack.wait_until(lambda: len(slack.calls_to("chat.postMessage")) >= 4)
    (parent,) = slack.parents()
    assert "acme/shop" in parent.text
    assert "#42" in parent.text
    await slack.wait_until(lambda: "unit-tests" in parent_of(slack, "#42").text)
    replies = slack.replies(parent.ts)
    assert [r.thread_ts for r in replies] == [parent.ts] * 3
    assert "unit-tests failed" in replies[-1].text

    bad = await asyncio.to_thread(notify, daemon, *pr, "--step", "x", "--status", "exploded")
    assert bad.returncode == 2
    assert "'exploded' is not one of" in bad.stderr
