"""The demo's security receiver, fed by vouch's real webhook notifier over loopback HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from support.notify_fakes import notice

from vouch.daemon.demo.receiver import SecurityReceiver, expected_signature, security_receiver
from vouch.daemon.notify.base import Notice, NotifyError
from vouch.daemon.notify.settings import WebhookNotifierSpec
from vouch.daemon.notify.webhook import WebhookNotifier, signature


async def send(
    receiver: SecurityReceiver, item: Notice, *, secret: str | None, clock: Callable[[], float] = time.time
) -> None:
    hook = WebhookNotifier(WebhookNotifierSpec(name="security", url=receiver.url), secret=secret, clock=clock)
    try:
        await hook.send(item)
    finally:
        await hook.close()


def test_the_receiver_computes_the_signature_vouch_sends() -> None:
    for secret, stamp, body in (("s3cret", "1700000000", b'{"kind":"override.used"}'), ("k", "0", b"")):
        assert expected_signature(secret, stamp, body) == signature(secret, stamp, body)


async def test_a_notice_signed_by_vouch_is_kept_as_sent() -> None:
    with security_receiver("s3cret") as receiver:
        await send(receiver, notice("override.used", message="break-glass: oncall overrode"), secret="s3cret")
        (got,) = receiver.received()
    assert (got.kind, got.severity, got.message) == ("override.used", "critical", "break-glass: oncall overrode")
    assert (got.service, got.environment, got.version) == ("checkout", "staging", "2.4.1")
    assert receiver.refused() == 0


@pytest.mark.parametrize(
    ("secret", "clock", "why"),
    [
        ("another", time.time, "the signature does not match"),
        (None, time.time, "unsigned"),
        ("s3cret", lambda: time.time() - 3600, "a replay"),
    ],
    ids=["wrong-secret", "unsigned", "stale"],
)
async def test_a_notice_it_cannot_trust_is_refused_and_vouch_will_retry_it(
    secret: str | None, clock: Callable[[], float], why: str
) -> None:
    with security_receiver("s3cret") as receiver:
        with pytest.raises(NotifyError, match="HTTP 401"):
            await send(receiver, notice("override.granted"), secret=secret, clock=clock)
        assert receiver.received() == ()
        assert receiver.refused() == 1
        assert any(why in reason for reason in receiver.refusals), receiver.refusals


async def test_wait_for_counts_each_kind_as_often_as_it_is_listed() -> None:
    with security_receiver("s3cret") as receiver:
        await send(receiver, notice("promotion.denied"), secret="s3cret")
        assert receiver.wait_for(["promotion.denied"], timeout=5)
        assert not receiver.wait_for(["promotion.denied", "promotion.denied"], timeout=0.05)
        await send(receiver, notice("promotion.denied"), secret="s3cret")
        assert receiver.wait_for(["promotion.denied", "promotion.denied"], timeout=5)
