"""The dispatcher: routing into per-notifier queues, retries, bounded queues, metrics, independence."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry
from support.notify_fakes import ScriptedNotifier, notice, running_dispatcher, settle

from vouch.core.errors import ConfigError
from vouch.daemon.notify.base import Severity
from vouch.daemon.notify.dispatcher import Backoff, Dispatcher, overflow_victim
from vouch.daemon.notify.settings import RouteSpec
from vouch.rollout.state import Event

FAST = Backoff(0.01, 0.05)


def count(registry: CollectorRegistry, notifier: str, outcome: str) -> float:
    value = registry.get_sample_value("vouch_notifications_total", {"notifier": notifier, "outcome": outcome})
    assert value is not None
    return value


def depth(registry: CollectorRegistry, notifier: str) -> float | None:
    return registry.get_sample_value("vouch_notification_queue", {"notifier": notifier})


async def test_notices_go_only_where_routes_say_in_order() -> None:
    team, security = ScriptedNotifier("team"), ScriptedNotifier("security")
    routes = [RouteSpec(kinds=["override.*"], to=["security"]), RouteSpec(services=["checkout"], to=["team"])]
    registry = CollectorRegistry()
    dispatcher = Dispatcher([team, security], routes, registry=registry, backoff=FAST)
    async with running_dispatcher(dispatcher):
        assert dispatcher.publish(notice("step.scaling")) == ("team",)
        assert dispatcher.publish(notice("override.used")) == ("security", "team")
        assert dispatcher.publish(notice("step.settling", service="payments")) == ()
        await settle(dispatcher)
    assert [n.kind for n in team.sent] == ["step.scaling", "override.used"]
    assert [n.kind for n in security.sent] == ["override.used"]
    assert count(registry, "team", "sent") == 2
    assert team.closed
    assert security.closed


async def test_engine_events_are_published_as_notices() -> None:
    ops = ScriptedNotifier("ops")
    dispatcher = Dispatcher([ops], registry=CollectorRegistry(), backoff=FAST)
    async with running_dispatcher(dispatcher):
        dispatcher.on_event(Event("promotion.rolledback", "slo failed", 1.0, "p-1", "r-1", {"service": "checkout"}))
        await settle(dispatcher)
    (sent,) = ops.sent
    assert (sent.kind, sent.severity, sent.subject) == ("promotion.rolledback", Severity.CRITICAL, "r-1")


async def test_notices_published_before_run_wait_in_the_queue() -> None:
    ops = ScriptedNotifier("ops")
    registry = CollectorRegistry()
    dispatcher = Dispatcher([ops], registry=registry, backoff=FAST)
    dispatcher.publish(notice("release.started"))
    assert depth(registry, "ops") == 1
    async with running_dispatcher(dispatcher):
        await settle(dispatcher)
    assert [n.kind for n in ops.sent] == ["release.started"]
    assert depth(registry, "ops") == 0


async def test_transient_failures_are_retried_until_delivered() -> None:
    ops = ScriptedNotifier("ops")
    ops.fail_next(3)
    registry = CollectorRegistry()
    dispatcher = Dispatcher([ops], registry=registry, backoff=FAST)
    async with running_dispatcher(dispatcher):
        dispatcher.publish(notice("promotion.rolledback"))
        dispatcher.publish(notice("release.failed"))
        await settle(dispatcher)
    assert [n.kind for n in ops.sent] == ["promotion.rolledback", "release.failed"]
    assert ops.attempts == 5
    assert count(registry, "ops", "failed") == 3
    assert count(registry, "ops", "sent") == 2


async def test_a_refused_notice_is_given_up_and_the_next_one_delivered() -> None:
    ops = ScriptedNotifier("ops")
    ops.reject_next()
    registry = CollectorRegistry()
    dispatcher = Dispatcher([ops], registry=registry, backoff=FAST)
    async with running_dispatcher(dispatcher):
        dispatcher.publish(notice("step.scaling"))
        dispatcher.publish(notice("step.settling"))
        await settle(dispatcher)
    assert [n.kind for n in ops.sent] == ["step.settling"]
    assert (count(registry, "ops", "rejected"), count(registry, "ops", "sent")) == (1, 1)


async def test_an_unexpected_error_is_retried_a_few_times_then_given_up() -> None:
    ops = ScriptedNotifier("ops")
    ops.fail_next(5, RuntimeError)
    registry = CollectorRegistry()
    dispatcher = Dispatcher([ops], registry=registry, backoff=FAST)
    async with running_dispatcher(dispatcher):
        dispatcher.publish(notice("step.scaling"))
        await settle(dispatcher)
        ops.fail_next(0)
    assert ops.sent == []
    assert ops.attempts == 3
    assert (count(registry, "ops", "failed"), count(registry, "ops", "rejected")) == (3, 1)


async def test_a_full_queue_drops_the_oldest_least_severe_and_never_a_critical() -> None:
    ops = ScriptedNotifier("ops")
    ops.hold()
    registry = CollectorRegistry()
    dispatcher = Dispatcher([ops], registry=registry, queue_size=2, backoff=FAST)
    async with running_dispatcher(dispatcher):
        dispatcher.publish(notice("step.scaling", message="in flight"))
        async with asyncio.timeout(5):
            await ops.entered.wait()
        dispatcher.publish(notice("step.settling", message="i2"))
        dispatcher.publish(notice("promotion.paused", message="w3"))
        dispatcher.publish(notice("promotion.rolledback", message="c4"))  # drops i2
        dispatcher.publish(notice("release.failed", message="c5"))  # drops w3
        dispatcher.publish(notice("override.used", message="c6"))  # all critical: the queue grows
        dispatcher.publish(notice("analysis", message="i7"))  # the least severe is itself
        assert depth(registry, "ops") == 4
        ops.release()
        await settle(dispatcher)
    assert [n.message for n in ops.sent] == ["in flight", "c4", "c5", "c6"]
    assert count(registry, "ops", "dropped") == 3


def test_overflow_victim_prefers_the_oldest_of_the_lowest_severity() -> None:
    queued = [notice("promotion.paused"), notice("analysis", message="a"), notice("analysis", message="b")]
    assert overflow_victim(queued, notice("release.failed")) == 1
    assert overflow_victim(queued[:1], notice("analysis")) == 1
    assert overflow_victim([notice("release.failed")], notice("override.used")) is None


async def test_a_stuck_notifier_delays_no_one_else() -> None:
    stuck, team = ScriptedNotifier("stuck"), ScriptedNotifier("team")
    stuck.hold()
    registry = CollectorRegistry()
    dispatcher = Dispatcher([stuck, team], registry=registry, queue_size=5, backoff=FAST)
    async with running_dispatcher(dispatcher):
        for i in range(50):
            assert dispatcher.publish(notice("analysis", message=f"run {i}")) == ("stuck", "team")
            async with asyncio.timeout(10):
                while len(team.sent) <= i:
                    team.delivered.clear()
                    await team.delivered.wait()
        assert stuck.sent == []
        assert depth(registry, "stuck") == 6  # one in flight, five waiting
        stuck.release()
        await settle(dispatcher)
    assert [n.message for n in team.sent] == [f"run {i}" for i in range(50)]
    assert [n.message for n in stuck.sent] == ["run 0", "run 45", "run 46", "run 47", "run 48", "run 49"]
    assert count(registry, "stuck", "dropped") == 44
    assert count(registry, "team", "dropped") == 0


def test_routes_naming_unknown_notifiers_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown notifiers: pager; known: team"):
        Dispatcher([ScriptedNotifier("team")], [RouteSpec(to=["pager"])], registry=CollectorRegistry())


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


async def test_shutdown_closes_notifiers_even_mid_delivery() -> None:
    ops = ScriptedNotifier("ops")
    ops.hold()
    dispatcher = Dispatcher([ops], registry=CollectorRegistry(), backoff=FAST)
    async with running_dispatcher(dispatcher):
        dispatcher.publish(notice("step.scaling"))
        async with asyncio.timeout(5):
            await ops.entered.wait()
    assert ops.closed
    assert ops.sent == []


def test_publish_never_raises() -> None:
    ops = ScriptedNotifier("ops")
    dispatcher = Dispatcher([ops], registry=CollectorRegistry(), backoff=FAST)
    dispatcher._lanes["ops"].queue = None  # type: ignore[assignment]  # any failure inside
    assert dispatcher.publish(notice("step.scaling")) == ()


async def test_with_no_notifiers_it_runs_until_cancelled() -> None:
    dispatcher = Dispatcher([], registry=CollectorRegistry())
    task = asyncio.create_task(dispatcher.run(), name="notify-test")
    try:
        assert dispatcher.publish(notice("release.failed")) == ()
        await settle(dispatcher)
        done, _ = await asyncio.wait([task], timeout=0.2)  # a broken run() returns at once
        assert not done
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
