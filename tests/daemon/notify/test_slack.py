"""The Slack notifier: the real slack_sdk client against a local fake of Slack's Web API.

One parent message per release (every environment under it), updated in
place; every step, verdict and rollback threaded under it; the same thread
after a restart; 429s waited out; an outage that holds up nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from support.fake_slack import TOKEN, FakeSlack, running_fake_slack
from support.notify_fakes import (
    NotifyStore,
    advanced,
    notice,
    promotion,
    release,
    running_dispatcher,
    running_receiver,
    settle,
)

from vouch.daemon.notify.base import NotifyError, NotifyRejected, pr_notice
from vouch.daemon.notify.dispatcher import Backoff, Dispatcher
from vouch.daemon.notify.settings import SlackNotifierSpec, WebhookNotifierSpec
from vouch.daemon.notify.slack import SlackNotifier
from vouch.daemon.notify.webhook import WebhookNotifier
from vouch.daemon.store.sqlite import SqliteStore
from vouch.probes.settings import Secret
from vouch.rollout.state import Phase, ReleasePhase, StepPhase

FAST = Backoff(0.05, 0.2)


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with running_fake_slack() as fake:
        yield fake


def notifier(
    slack: FakeSlack,
    store: NotifyStore | SqliteStore,
    *,
    name: str = "team",
    channel: str = "#checkout",
    token: str = TOKEN,
    timeout: float = 5.0,
) -> SlackNotifier:
    spec = SlackNotifierSpec(
        name=name,
        channel=channel,
        token=Secret(from_env="SLACK_BOT_TOKEN"),
        base_url=slack.url,
        timeout=timeout,
    )
    return SlackNotifier(spec, token=token, store=store, clock=lambda: 1.0)


def outcome(registry: CollectorRegistry, name: str, what: str) -> float:
    value = registry.get_sample_value("vouch_notifications_total", {"notifier": name, "outcome": what})
    assert value is not None
    return value


async def test_one_parent_per_release_updated_in_place_with_replies_threaded(slack: FakeSlack) -> None:
    store = NotifyStore()
    rel = store.put_release(release())
    registry = CollectorRegistry()
    dispatcher = Dispatcher([notifier(slack, store)], registry=registry, backoff=FAST)

    async def step(kind: str, message: str = "") -> None:
        dispatcher.publish(notice(kind, message=message, environment=kind_env[0]))
        await settle(dispatcher)

    kind_env = ["staging"]
    staging = store.put_promotion(promotion(rel, "staging", step=0, step_phase=StepPhase.SCALING))
    async with running_dispatcher(dispatcher):
        await step("release.started", "release of checkout 2.4.1 through staging → production")
        await step("step.scaling", "step 1 of 5")
        store.put_promotion(advanced(staging, step=2, step_phase=StepPhase.ANALYSING))
        await step("analysis", "run 1: slo pass")
        store.put_promotion(advanced(staging, phase=Phase.SUCCEEDED, step=4, step_phase=None))
        await step("promotion.succeeded", "staging held")
        (parent,) = slack.parents()
        assert "staging Succeeded ▰▰▰▰▰ 5/5 · production waiting no steps" in parent.text
        kind_env[0] = "production"
        store.put_promotion(promotion(rel, "production", step=1, step_phase=StepPhase.SETTLING))
        await step("step.settling", "step 2 of 5")
        store.put_promotion(
            promotion(rel, "production", phase=Phase.ROLLED_BACK, step=1, abort_cause="alarm:HighErrorRate")
        )
        await step("promotion.rolledback", "alarm HighErrorRate fired")
        store.put_release(advanced(rel, phase=ReleasePhase.FAILED))
        await step("release.failed", "stopped in production")

    channel = slack.channel_id("#checkout")
    (parent,) = slack.parents()
    assert parent.channel == channel
    assert parent.text == ("checkout 2.4.1 — Failed: staging Succeeded ▰▰▰▰▰ 5/5 · production RolledBack ▰▱▱▱▱ 1/5")
    assert "rolled back: alarm:HighErrorRate" in parent.blocks[1]["text"]["text"]
    posts = slack.calls_to("chat.postMessage")
    assert [c.params.get("thread_ts") for c in posts] == [None] + [parent.ts] * 6  # release.started is the parent
    updates = slack.calls_to("chat.update")
    assert len(updates) == 6
    assert {(c.params["channel"], c.params["ts"]) for c in updates} == {(channel, parent.ts)}
    assert parent.updates == 6
    replies = [m.text for m in slack.replies(parent.ts)]
    assert [r.split("`")[1] for r in replies] == [
        "step.scaling",
        "analysis",
        "promotion.succeeded",
        "step.settling",
        "promotion.rolledback",
        "release.failed",
    ]
    assert replies[4].startswith(":rotating_light: `promotion.rolledback` checkout/production")
    (saved,) = store.thread_saves
    assert (saved.subject, saved.notifier, saved.channel, saved.ref) == ("r-1", "team", channel, parent.ts)
    assert outcome(registry, "team", "sent") == 7
    assert outcome(registry, "team", "failed") == 0


async def test_the_same_thread_continues_after_a_restart(slack: FakeSlack) -> None:
    store = NotifyStore()
    rel = store.put_release(release())
    store.put_promotion(promotion(rel, "staging", step=1))
    first = Dispatcher([notifier(slack, store)], registry=CollectorRegistry(), backoff=FAST)
    async with running_dispatcher(first):
        first.publish(notice("release.started"))
        first.publish(notice("step.analysing"))
        await settle(first)
    (parent,) = slack.parents()

    restarted = Dispatcher([notifier(slack, store)], registry=CollectorRegistry(), backoff=FAST)
    store.put_promotion(promotion(rel, "staging", phase=Phase.SUCCEEDED, step=5))
    store.put_promotion(promotion(rel, "production", step=0))
    async with running_dispatcher(restarted):
        restarted.publish(notice("promotion.succeeded"))
        restarted.publish(notice("step.scaling", environment="production"))
        await settle(restarted)

    assert slack.parents() == [parent]
    assert len(slack.calls_to("chat.postMessage")) == 1 + 3  # the parent, then three replies
    assert [m.thread_ts for m in slack.replies(parent.ts)] == [parent.ts] * 3
    assert {c.params["ts"] for c in slack.calls_to("chat.update")} == {parent.ts}
    assert "staging Succeeded" in parent.text
    assert "production Progressing" in parent.text
    assert len(store.thread_saves) == 1


async def test_each_release_and_each_notifier_has_its_own_parent(slack: FakeSlack) -> None:
    store = NotifyStore()
    store.put_release(release("r-1"))
    store.put_release(release("r-2", service="payments", version="9.0"))
    team = notifier(slack, store)
    security = notifier(slack, store, name="security", channel="#security")
    try:
        for subject in ("r-1", "r-2", "r-1"):
            await team.send(notice("step.scaling", subject=subject))
        await security.send(notice("override.used", subject="r-1"))
    finally:
        await team.close()
        await security.close()
    assert sorted(m.text.split(" —")[0] for m in slack.parents(slack.channel_id("#checkout"))) == [
        "checkout 2.4.1",
        "payments 9.0",
    ]
    (sec,) = slack.parents(slack.channel_id("#security"))
    assert [m.text.split("`")[1] for m in slack.replies(sec.ts)] == ["override.used"]


async def test_a_429_is_waited_out_and_the_message_still_lands(slack: FakeSlack) -> None:
    store = NotifyStore()
    store.put_release(release())
    registry = CollectorRegistry()
    dispatcher = Dispatcher([notifier(slack, store)], registry=registry, backoff=FAST)
    slack.rate_limit(1, retry_after=1)
    async with running_dispatcher(dispatcher):
        dispatcher.publish(notice("step.scaling"))
        await settle(dispatcher)
    limited, retried = slack.calls_to("chat.postMessage", ok=None)[:2]
    assert (limited.status, retried.status) == (429, 200)
    assert retried.at - limited.at >= 1.0  # Retry-After honoured, not ignored
    (parent,) = slack.parents()
    assert len(slack.replies(parent.ts)) == 1
    assert outcome(registry, "team", "failed") == 0  # slack_sdk's own handler waited; nothing failed


async def test_rate_limited_beyond_patience_is_retried_later_by_the_dispatcher(slack: FakeSlack) -> None:
    store = NotifyStore()
    store.put_release(release())
    spec = SlackNotifierSpec(
        name="team",
        channel="#checkout",
        token=Secret(from_env="SLACK_BOT_TOKEN"),
        base_url=slack.url,
        rate_limit_retries=0,
    )
    registry = CollectorRegistry()
    dispatcher = Dispatcher([SlackNotifier(spec, token=TOKEN, store=store)], registry=registry, backoff=FAST)
    slack.rate_limit(2, retry_after=0)
    async with running_dispatcher(dispatcher):
        dispatcher.publish(notice("step.scaling"))
        await settle(dispatcher)
    assert outcome(registry, "team", "failed") == 2
    assert len(slack.parents()) == 1


@pytest.mark.parametrize("mode", ["hang", "refuse"])
async def test_an_outage_holds_up_nothing_else_and_is_retried_when_slack_is_back(slack: FakeSlack, mode: str) -> None:
    store = NotifyStore()
    rel = store.put_release(release())
    store.put_promotion(promotion(rel, "staging", step=1))
    registry = CollectorRegistry()
    async with running_receiver("k") as receiver:
        hook = WebhookNotifier(WebhookNotifierSpec(name="oncall", url=receiver.url), secret="k")
        team = notifier(slack, store, timeout=0.5)
        dispatcher = Dispatcher([team, hook], registry=registry, backoff=FAST)
        async with running_dispatcher(dispatcher):
            dispatcher.publish(notice("release.started"))
            await settle(dispatcher)
            await slack.go_down(mode)  # type: ignore[arg-type]
            kinds = ["step.scaling", "step.settling", "analysis", "promotion.rolledback", "release.failed"]
            for kind in kinds:
                assert dispatcher.publish(notice(kind)) == ("team", "oncall")
            await receiver.wait_until(lambda: len(receiver.deliveries) == 6)
            await _wait_for_failures(registry, "team", 2)
            assert slack.replies(slack.parents()[0].ts) == []
            await slack.come_up()
            await settle(dispatcher)
    assert [d.body["kind"] for d in receiver.deliveries] == ["release.started", *kinds]
    assert all(d.signature_ok for d in receiver.deliveries)
    (parent,) = slack.parents()
    assert [m.text.split("`")[1] for m in slack.replies(parent.ts)] == kinds
    assert outcome(registry, "team", "sent") == 6
    assert outcome(registry, "oncall", "failed") == 0


async def _wait_for_failures(registry: CollectorRegistry, name: str, failures: int) -> None:
    """Polls (with a deadline) until the notifier has failed ``failures`` times: a counter has no event to await."""
    async with asyncio.timeout(15):
        while outcome(registry, name, "failed") < failures:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_a_pull_request_gets_one_parent_listing_its_steps(slack: FakeSlack) -> None:
    store = NotifyStore()
    first = notifier(slack, store)
    try:
        await first.send(pr_notice("acme/checkout", 42, "dco", "passed", at=1.0))
        await first.send(pr_notice("acme/checkout", 42, "build", "running", url="https://ci/7", at=2.0))
    finally:
        await first.close()
    restarted = notifier(slack, store)
    try:
        await restarted.send(pr_notice("acme/checkout", 42, "build", "passed", url="https://ci/7", at=3.0))
        await restarted.send(pr_notice("acme/checkout", 42, "scan", "failed", at=4.0))
    finally:
        await restarted.close()
    (parent,) = slack.parents()
    assert parent.text == "pull request acme/checkout#42 — failed: dco passed, build passed, scan failed"
    assert len(slack.replies(parent.ts)) == 4
    thread = store.threads[("pr:acme/checkout#42", "team")]
    assert [s["status"] for s in thread.state["steps"]] == ["passed", "passed", "failed"]


async def test_a_deleted_parent_starts_a_new_thread(slack: FakeSlack) -> None:
    store = NotifyStore()
    store.put_release(release())
    team = notifier(slack, store)
    try:
        await team.send(notice("step.scaling"))
        (gone,) = slack.parents()
        del slack.messages[(gone.channel, gone.ts)]
        await team.send(notice("step.settling"))
    finally:
        await team.close()
    (parent,) = slack.parents()
    assert parent.ts != gone.ts
    assert store.threads[("r-1", "team")].ref == parent.ts
    assert [m.text.split("`")[1] for m in slack.replies(parent.ts)] == ["step.settling"]


async def test_a_notice_about_no_release_is_a_message_of_its_own(slack: FakeSlack) -> None:
    store = NotifyStore()
    team = notifier(slack, store)
    try:
        await team.send(notice("probe.failing", subject=None, message="dns probe failing"))
    finally:
        await team.close()
    (message,) = slack.parents()
    assert message.text.startswith(":warning: `probe.failing` checkout/staging: dns probe failing")
    assert store.thread_saves == []


async def test_an_unknown_release_still_gets_a_parent_from_the_notice(slack: FakeSlack) -> None:
    team = notifier(slack, NotifyStore())
    try:
        await team.send(notice("override.used", subject="r-unknown"))
    finally:
        await team.close()
    (parent,) = slack.parents()
    assert parent.text.startswith("checkout 2.4.1 — Progressing")


async def test_a_bad_token_is_refused_for_good(slack: FakeSlack) -> None:
    team = notifier(slack, NotifyStore(), token="xoxb-wrong")
    try:
        with pytest.raises(NotifyRejected, match="invalid_auth"):
            await team.send(notice("step.scaling", subject=None))
        with pytest.raises(NotifyRejected, match="invalid_auth"):
            await team.check()
    finally:
        await team.close()
    good = notifier(slack, NotifyStore())
    try:
        assert await good.check() == "U0VOUCH"
    finally:
        await good.close()


async def test_a_failing_store_is_a_retryable_failure(slack: FakeSlack) -> None:
    store = NotifyStore()
    store.put_release(release())
    store.failing = True
    team = notifier(slack, store)
    try:
        with pytest.raises(NotifyError, match="the store failed") as caught:
            await team.send(notice("step.scaling"))
        assert caught.value.retryable
    finally:
        await team.close()
    assert slack.calls == []


async def test_the_thread_survives_a_real_store_reopened(slack: FakeSlack, tmp_path: Path) -> None:
    if not hasattr(SqliteStore, "get_chat_thread"):
        pytest.skip("the sqlite store keeps no chat threads yet")
    path = tmp_path / "vouch.db"
    store = await SqliteStore.open(path)
    try:
        rel = release()
        await store.create_release(rel)
        await store.create_promotion(promotion(rel, "staging", step=1))
        team = notifier(slack, store)
        await team.send(notice("step.analysing"))
        await team.close()
    finally:
        await store.close()
    (parent,) = slack.parents()

    store = await SqliteStore.open(path)
    try:
        team = notifier(slack, store)
        await team.send(notice("promotion.succeeded"))
        await team.close()
        thread = await store.get_chat_thread("r-1", "team")
    finally:
        await store.close()
    assert slack.parents() == [parent]
    assert thread is not None
    assert (thread.channel, thread.ref) == (slack.channel_id("#checkout"), parent.ts)
    assert [m.text.split("`")[1] for m in slack.replies(parent.ts)] == ["step.analysing", "promotion.succeeded"]
