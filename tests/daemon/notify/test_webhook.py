"""The webhook notifier against a real HTTP receiver that checks the signature itself."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from support.notify_fakes import notice, running_dispatcher, running_receiver, settle

from vouch.daemon.notify.base import NotifyError
from vouch.daemon.notify.dispatcher import Backoff, Dispatcher
from vouch.daemon.notify.settings import WebhookNotifierSpec
from vouch.daemon.notify.webhook import WebhookNotifier, body_of, signature, verify_signature


async def test_a_signed_notice_verifies_at_the_receiver() -> None:
    async with running_receiver("s3cret") as receiver:
        hook = WebhookNotifier(
            WebhookNotifierSpec(name="oncall", url=receiver.url), secret="s3cret", clock=lambda: 1234.9
        )
        try:
            await hook.send(notice("override.used", message="slo overridden"))
        finally:
            await hook.close()
    (delivery,) = receiver.deliveries
    assert delivery.signature_ok is True
    assert delivery.headers["X-Vouch-Timestamp"] == "1234"
    assert delivery.headers["Content-Type"] == "application/json"
    assert delivery.body["kind"] == "override.used"
    assert delivery.body["severity"] == "critical"
    assert delivery.body["subject"] == "r-1"


async def test_a_receiver_with_another_secret_sees_a_bad_signature() -> None:
    async with running_receiver("other") as receiver:
        hook = WebhookNotifier(WebhookNotifierSpec(name="oncall", url=receiver.url), secret="s3cret")
        try:
            await hook.send(notice("override.used"))
        finally:
            await hook.close()
    assert receiver.deliveries[0].signature_ok is False


async def test_unsigned_without_a_secret() -> None:
    async with running_receiver(None) as receiver:
        hook = WebhookNotifier(WebhookNotifierSpec(name="oncall", url=receiver.url))
        try:
            await hook.send(notice("release.failed"))
        finally:
            await hook.close()
    (delivery,) = receiver.deliveries
    assert "X-Vouch-Signature" not in delivery.headers


async def test_a_non_2xx_answer_is_a_retryable_failure_and_is_retried() -> None:
    async with running_receiver("k") as receiver:
        receiver.status = 503
        hook = WebhookNotifier(WebhookNotifierSpec(name="oncall", url=receiver.url), secret="k")
        with pytest.raises(NotifyError, match="HTTP 503") as caught:
            await hook.send(notice("release.failed"))
        assert caught.value.retryable
        registry = CollectorRegistry()
        dispatcher = Dispatcher([hook], registry=registry, backoff=Backoff(0.01, 0.05))
        async with running_dispatcher(dispatcher):
            dispatcher.publish(notice("release.failed"))
            await receiver.wait_until(lambda: receiver.attempts >= 3)
            receiver.status = 204
            await settle(dispatcher)
    assert [d.body["kind"] for d in receiver.deliveries] == ["release.failed"]
    assert registry.get_sample_value("vouch_notifications_total", {"notifier": "oncall", "outcome": "failed"}) >= 2


async def test_an_unreachable_receiver_is_a_retryable_failure() -> None:
    async with running_receiver() as receiver:
        url = receiver.url
    hook = WebhookNotifier(WebhookNotifierSpec(name="oncall", url=url, timeout=2.0))
    try:
        with pytest.raises(NotifyError, match="ConnectError"):
            await hook.send(notice("release.failed"))
    finally:
        await hook.close()


def test_signature_helpers_agree() -> None:
    body = body_of(notice("step.scaling"))
    header = signature("k", "17", body)
    assert verify_signature("k", timestamp="17", body=body, header=header)
    assert not verify_signature("k", timestamp="18", body=body, header=header)
    assert not verify_signature("k", timestamp="17", body=body + b" ", header=header)
