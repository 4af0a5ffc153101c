"""Slack message rendering: the release pipeline, replies, pull requests."""

from __future__ import annotations

import dataclasses

from support.notify_fakes import notice, promotion, release

from vouch.daemon.notify.slackformat import (
    SECTION_LIMIT,
    pr_message,
    release_message,
    reply_message,
    standalone_message,
    step_bar,
)
from vouch.daemon.notify.view import release_view
from vouch.rollout.state import Phase


def test_step_bar() -> None:
    assert step_bar(0, 5) == "▱▱▱▱▱ 0/5"
    assert step_bar(5, 5) == "▰▰▰▰▰ 5/5"
    assert step_bar(7, 3) == "▰▰▰ 3/3"
    assert step_bar(0, 0) == "no steps"


def test_release_message_shows_every_environment_with_its_phase_and_bar() -> None:
    rel = release()
    staging = promotion(rel, "staging", phase=Phase.SUCCEEDED, steps=4)
    production = promotion(rel, "production", step=2, steps=5)
    message = release_message(release_view(rel, [staging, production]))
    assert message.text == (
        "checkout 2.4.1 — Progressing: staging Succeeded ▰▰▰▰ 4/4 · production Progressing ▰▰▱▱▱ 2/5"
    )
    lines = message.blocks[1]["text"]["text"].splitlines()
    assert lines == [
        ":white_check_mark: *staging* Succeeded `▰▰▰▰ 4/4`",
        ":arrows_counterclockwise: *production* Progressing `▰▰▱▱▱ 2/5` — analysing",
    ]
    assert "r-1" in message.blocks[2]["elements"][0]["text"]


def test_a_rollback_shows_its_cause_and_a_waiting_environment_says_so() -> None:
    rel = release()
    staging = promotion(rel, "staging", phase=Phase.ROLLED_BACK, step=1, abort_cause="gate:slo")
    lines = release_message(release_view(rel, [staging])).blocks[1]["text"]["text"].splitlines()
    assert lines == [
        ":rewind: *staging* RolledBack `▰▱▱▱▱ 1/5` — rolled back: gate:slo",
        ":white_circle: *production* waiting `no steps`",
    ]


def test_replies_escape_user_text_and_name_the_actor() -> None:
    n = notice("override.used", message="let <slo> pass & go")
    n = dataclasses.replace(n, actor="ana")
    text = reply_message(n).text
    assert text == ":rotating_light: `override.used` checkout/staging: let &lt;slo&gt; pass &amp; go (by ana)"


def test_long_messages_are_clipped_to_what_slack_accepts() -> None:
    message = standalone_message(notice("probe.failing", subject=None, message="x" * 10_000))
    assert len(message.blocks[0]["text"]["text"]) <= SECTION_LIMIT
    assert message.text.endswith("…")


def test_pr_message_lists_steps_in_order() -> None:
    steps = [
        {"name": "dco", "status": "passed", "url": None},
        {"name": "build", "status": "running", "url": "https://ci/b|1"},
    ]
    message = pr_message("acme/checkout", 42, steps)
    assert message.text == "pull request acme/checkout#42 — running: dco passed, build running"
    assert message.blocks[1]["text"]["text"].splitlines() == [
        ":white_check_mark: dco passed",
        ":hourglass_flowing_sand: <https://ci/b%7C1|build> running",
    ]
    failed = pr_message("acme/checkout", 42, [{"name": "scan", "status": "failed"}])
    assert failed.text.startswith("pull request acme/checkout#42 — failed")
