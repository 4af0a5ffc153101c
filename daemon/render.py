"""How promotions and events look to people in a terminal."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

PHASE_STYLES = {
    "Succeeded": "green",
    "RolledBack": "red",
    "Denied": "red",
    "Aborting": "red",
    "Paused": "yellow",
    "Progressing": "cyan",
    "Promoting": "cyan",
}


def step_text(promotion: dict[str, Any]) -> str:
    """``3/5 (5)``: the step being run (or completed) and its size."""
    plan = promotion.get("plan") or []
    if not plan:
        return "-"
    done = promotion.get("steps_completed", 0)
    index = min(promotion.get("step", 0), len(plan) - 1)
    if promotion.get("phase") in ("Promoting", "Succeeded"):
        return f"{done}/{len(plan)} ✓"
    return f"{index + 1}/{len(plan)} ({plan[index]['label']})"


def age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def status_rows(promotions: list[dict[str, Any]]) -> list[list[str]]:
    now = time.time()
    return [
        [
            p["service"],
            p["environment"],
            p["version"],
            p["phase"],
            step_text(p),
            age(now - p["created_at"]),
            p.get("message", ""),
        ]
        for p in promotions
    ]


def status_table(rows: list[list[str]]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("SERVICE", "ENV", "VERSION", "PHASE", "STEP", "AGE", "MESSAGE"):
        table.add_column(column, overflow="fold" if column == "MESSAGE" else "ellipsis", no_wrap=column != "MESSAGE")
    for row in rows:
        styled = list(row)
        table.add_row(*styled[:3], Text(styled[3], style=PHASE_STYLES.get(styled[3], "")), *styled[4:])
    return table


def print_status(console: Console, rows: list[list[str]]) -> None:
    if not rows:
        console.print("no promotions")
        return
    console.print(status_table(rows))


def render_event(event: dict[str, Any]) -> Text:
    """One line per event: time, where, and what happened, coloured by outcome."""
    data = event.get("data") or {}
    stamp = time.strftime("%H:%M:%S", time.localtime(event["at"]))
    where = data.get("environment") or "release"
    kind = event["kind"]
    style = ""
    if "rolledback" in kind or "aborting" in kind or "denied" in kind or kind == "release.failed":
        style = "red"
    elif "succeeded" in kind:
        style = "green"
    elif kind == "analysis" or "paused" in kind:
        style = "yellow" if "paused" in kind or "failed" in event["message"] else ""
    line = Text(f"{stamp} ", style="dim")
    line.append(f"{where:<11} ", style="bold")
    line.append(event["message"], style=style)
    return line
