"""Slack: one parent message per release, updated in place, and every step, verdict and rollback as a reply.

The parent shows the release's whole pipeline (each environment's phase and
step bar), redrawn from the store on every notice with ``chat.update``; the
notice itself becomes a reply in the parent's thread. Where the parent lives
(channel id and ``ts``) is saved in the store right after ``chat.postMessage``
and looked up before posting, so a restarted daemon keeps the same thread.
A pull request (subject ``pr:<repo>#<n>``) gets the same treatment, its steps
kept in the thread's saved state.

Slack's 429 answers are waited out by slack_sdk's own rate-limit handler
(honouring ``Retry-After``); anything else that may pass becomes a
:class:`NotifyError` for the dispatcher to retry later.

    notifier = SlackNotifier(spec, token=spec.token.reveal(), store=store)
    await notifier.send(notice)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from vouch.core.errors import StoreError
from vouch.daemon.notify.base import Notice, NotifyError, NotifyRejected
from vouch.daemon.notify.settings import SlackNotifierSpec
from vouch.daemon.notify.slackformat import (
    Message,
    pr_message,
    release_message,
    reply_message,
    standalone_message,
)
from vouch.daemon.notify.view import ReleaseView, load_release_view
from vouch.rollout.state import ChatThread, Store

log = logging.getLogger(__name__)

PERMANENT_ERRORS = frozenset(
    {
        "account_inactive",
        "channel_not_found",
        "ekm_access_denied",
        "invalid_arguments",
        "invalid_auth",
        "invalid_blocks",
        "is_archived",
        "missing_scope",
        "msg_too_long",
        "no_permission",
        "no_text",
        "not_authed",
        "not_in_channel",
        "restricted_action",
        "token_expired",
        "token_revoked",
    }
)
"""Slack errors that retrying cannot mend: the notice is given up (and counted)."""

PARENT_LOST = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
"""``chat.update`` errors meaning the parent is gone: a new parent (and thread) is started."""

QUIET_KINDS = frozenset({"release.started", "promotion.update"})
"""Kinds that only redraw the parent: the parent itself says what they would."""


class SlackNotifier:
    """Posts to one channel with a bot token; threads live in ``store`` under this notifier's name."""

    def __init__(
        self,
        spec: SlackNotifierSpec,
        *,
        token: str,
        store: Store,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = spec.name
        self._spec = spec
        self._token = token
        self._store = store
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._client: AsyncWebClient | None = None

    def _api(self) -> AsyncWebClient:
        """The client, made on first use: its aiohttp session must be born inside the running loop."""
        if self._client is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._spec.timeout))
            self._client = AsyncWebClient(
                token=self._token,
                base_url=self._spec.base_url,
                timeout=max(1, math.ceil(self._spec.timeout)),
                session=self._session,
                retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=self._spec.rate_limit_retries)],
            )
        return self._client

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = self._client = None

    async def check(self) -> str:
        """Calls ``auth.test``: the bot's user id when the token is good; :class:`NotifyRejected` when not."""
        try:
            response = await self._api().auth_test()
        except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise _translated(exc, "auth.test") from exc
        return str(response.get("user_id") or "")

    async def send(self, notice: Notice) -> None:
        try:
            if notice.subject is None:
                await self._post(standalone_message(notice))
            elif notice.subject.startswith("pr:"):
                await self._send_pr(notice, notice.subject)
            else:
                await self._send_release(notice, notice.subject)
        except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise _translated(exc, notice.kind) from exc
        except StoreError as exc:
            raise NotifyError(f"slack {self.name}: the store failed: {exc}") from exc

    async def _send_release(self, notice: Notice, subject: str) -> None:
        view = await load_release_view(self._store, subject) or _view_from(notice, subject)
        thread = await self._parent(subject, release_message(view), state={})
        if notice.kind not in QUIET_KINDS:
            await self._post(reply_message(notice), thread_ts=thread.ref, channel=thread.channel)

    async def _send_pr(self, notice: Notice, subject: str) -> None:
        known = await self._store.get_chat_thread(subject, self.name)
        steps = [dict(s) for s in known.state.get("steps", ())] if known is not None else []
        step = {"name": notice.data.get("step"), "status": notice.data.get("status"), "url": notice.data.get("url")}
        for i, seen in enumerate(steps):
            if seen["name"] == step["name"]:
                steps[i] = step
                break
        else:
            steps.append(step)
        repo, number = str(notice.data.get("repo")), int(notice.data.get("number") or 0)
        state = {"repo": repo, "number": number, "steps": steps}
        thread = await self._parent(subject, pr_message(repo, number, steps), state=state, known=known)
        await self._post(reply_message(notice), thread_ts=thread.ref, channel=thread.channel)

    async def _parent(
        self, subject: str, message: Message, *, state: Mapping[str, Any], known: ChatThread | None = None
    ) -> ChatThread:
        """Redraws the subject's parent in place, or posts it (and records where) when there is none yet."""
        state = {**state, "channel": self._spec.channel}
        thread = known or await self._store.get_chat_thread(subject, self.name)
        if thread is not None and thread.state.get("channel", self._spec.channel) == self._spec.channel:
            try:
                await self._api().chat_update(channel=thread.channel, ts=thread.ref, **message.payload())
            except SlackApiError as exc:
                if _error_code(exc) not in PARENT_LOST:
                    raise
                log.warning("slack %s: the message of %s is gone (%s); starting a new one", self.name, subject, exc)
            else:
                if dict(thread.state) != state:
                    thread = ChatThread(subject, self.name, thread.channel, thread.ref, thread.created_at, state)
                    await self._store.save_chat_thread(thread)
                return thread
        response = await self._post(message)
        thread = ChatThread(
            subject, self.name, str(response["channel"]), str(response["ts"]), created_at=self._clock(), state=state
        )
        await self._store.save_chat_thread(thread)
        return thread

    async def _post(
        self, message: Message, *, thread_ts: str | None = None, channel: str | None = None
    ) -> Mapping[str, Any]:
        response = await self._api().chat_postMessage(
            channel=channel or self._spec.channel, thread_ts=thread_ts, **message.payload()
        )
        data = response.data
        return data if isinstance(data, dict) else {}


def _view_from(notice: Notice, subject: str) -> ReleaseView:
    """A bare view for a release the store does not know (yet): the notice says what little is known."""
    return ReleaseView(subject, notice.service or "?", notice.version or "?", "Progressing", ())


def _error_code(exc: SlackApiError) -> str:
    data = getattr(exc.response, "data", None)
    return str(data.get("error") or "") if isinstance(data, dict) else ""


def _translated(exc: BaseException, what: str) -> NotifyError | NotifyRejected:
    """Slack's and aiohttp's failures as vouch errors: permanent ones are rejections, the rest may pass."""
    if isinstance(exc, SlackApiError):
        status = getattr(exc.response, "status_code", 0)
        code = _error_code(exc)
        if status == 429:
            return NotifyError(f"slack {what}: still rate limited after waiting")
        if status < 500 and code in PERMANENT_ERRORS:
            return NotifyRejected(f"slack {what}: {code}")
        return NotifyError(f"slack {what}: {code or f'HTTP {status}'}")
    if isinstance(exc, TimeoutError):
        return NotifyError(f"slack {what}: timed out")
    return NotifyError(f"slack {what}: {type(exc).__name__}: {exc}")
