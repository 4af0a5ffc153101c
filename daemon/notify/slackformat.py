"""Slack messages, rendered from data: pure functions, so every message can be checked without Slack.

Each rendering returns the fallback ``text`` (what notifications and screen
readers show) and the ``blocks`` (what the channel shows).

>>> step_bar(2, 5)
'▰▰▱▱▱ 2/5'
>>> escape("a <b> & c")
'a &lt;b&gt; &amp; c'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vouch.daemon.notify.base import Notice, Severity
from vouch.daemon.notify.view import EnvironmentView, ReleaseView

SECTION_LIMIT = 2900
"""Slack refuses a section longer than 3000 characters; leave room for the decoration."""

PHASE_ICONS = {
    None: ":white_circle:",
    "Pending": ":hourglass_flowing_sand:",
    "Verifying": ":mag:",
    "Progressing": ":arrows_counterclockwise:",
    "Paused": ":double_vertical_bar:",
    "Promoting": ":arrows_counterclockwise:",
    "Succeeded": ":white_check_mark:",
    "Aborting": ":warning:",
    "RolledBack": ":rewind:",
    "Denied": ":no_entry:",
    "Failed": ":x:",
}

SEVERITY_ICONS = {
    Severity.INFO: ":information_source:",
    Severity.WARNING: ":warning:",
    Severity.CRITICAL: ":rotating_light:",
}

STEP_ICONS = {
    "pending": ":white_circle:",
    "running": ":hourglass_flowing_sand:",
    "passed": ":white_check_mark:",
    "failed": ":x:",
    "skipped": ":heavy_minus_sign:",
}


@dataclass(frozen=True)
class Message:
    """A rendered message: ``text`` for notifications, ``blocks`` for the channel."""

    text: str
    blocks: tuple[Mapping[str, Any], ...]

    def payload(self) -> dict[str, Any]:
        return {"text": self.text, "blocks": [dict(b) for b in self.blocks]}


def escape(text: str) -> str:
    """Slack's three control characters, escaped so user text cannot become links or mentions."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int = SECTION_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def step_bar(done: int, total: int) -> str:
    """Steps completed out of the plan, as a bar; a first deploy has no steps.

    >>> step_bar(0, 0)
    'no steps'
    """
    if total <= 0:
        return "no steps"
    done = max(0, min(done, total))
    return f"{'▰' * done}{'▱' * (total - done)} {done}/{total}"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": clip(text)}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": clip(text)}]}


def environment_line(env: EnvironmentView) -> str:
    """``:white_check_mark: *staging* Succeeded `▰▰▰ 3/3```, with the step phase or the rollback cause."""
    icon = PHASE_ICONS.get(env.phase, ":grey_question:")
    line = f"{icon} *{escape(env.name)}* {env.phase or 'waiting'} `{step_bar(env.step, env.steps)}`"
    if env.rollback_cause:
        line += f" — rolled back: {escape(env.rollback_cause)}"
    elif env.step_phase and env.phase in ("Progressing", "Paused"):
        line += f" — {env.step_phase}"
    return line


def release_message(view: ReleaseView) -> Message:
    """The parent message of a release: its whole pipeline, one line per environment."""
    title = f"{escape(view.service)} {escape(view.version)}"
    head = f"{PHASE_ICONS.get(view.phase, ':grey_question:')} *{title}* — {view.phase}"
    lines = [environment_line(env) for env in view.environments]
    plain = " · ".join(
        f"{env.name} {env.phase or 'waiting'} {step_bar(env.step, env.steps)}" for env in view.environments
    )
    blocks = (_section(head), _section("\n".join(lines) or "no environments"), _context(f"release {view.id}"))
    return Message(f"{view.service} {view.version} — {view.phase}: {plain}", blocks)


def notice_line(notice: Notice) -> str:
    """One line for a notice: severity, kind, where, and what happened."""
    where = "/".join(escape(part) for part in (notice.service, notice.environment) if part)
    where = f" {where}" if where else ""
    actor = f" (by {escape(notice.actor)})" if notice.actor not in ("", "vouch") else ""
    return f"{SEVERITY_ICONS[notice.severity]} `{notice.kind}`{where}: {escape(notice.message or notice.kind)}{actor}"


def reply_message(notice: Notice) -> Message:
    """A reply in a thread (a step, a verdict, an override, a rollback)."""
    line = notice_line(notice)
    return Message(clip(line), (_section(line),))


def standalone_message(notice: Notice) -> Message:
    """A notice about no release or pull request (a failing probe, a refused override)."""
    line = notice_line(notice)
    if notice.version:
        line += f" — version {escape(notice.version)}"
    return Message(clip(line), (_section(line),))


def pr_message(repo: str, number: int, steps: Sequence[Mapping[str, Any]]) -> Message:
    """The parent message of a pull request: its pipeline steps in the order first reported."""
    lines = []
    for step in steps:
        name = escape(str(step["name"]))
        if step.get("url"):
            name = f"<{escape(str(step['url'])).replace('|', '%7C')}|{name}>"
        lines.append(f"{STEP_ICONS.get(str(step['status']), ':grey_question:')} {name} {step['status']}")
    failed = any(s["status"] == "failed" for s in steps)
    done = bool(steps) and all(s["status"] in ("passed", "skipped") for s in steps)
    state = "failed" if failed else "passed so far" if done else "running"
    head = f"*pull request {escape(repo)}#{number}* — {state}"
    plain = ", ".join(f"{s['name']} {s['status']}" for s in steps)
    return Message(
        f"pull request {repo}#{number} — {state}: {plain}",
        (_section(head), _section("\n".join(lines) or "no steps yet")),
    )
