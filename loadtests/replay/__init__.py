"""Traffic replay: real access logs (nginx/Apache combined, JSON lines, HAR 1.2) replayed through Locust.

Reading (:mod:`.parse`), choosing (:mod:`.filter`) and timing (:mod:`.schedule`) are pure;
:mod:`.replay` turns the result into a :class:`vouch.loadtests.model.LoadPlan` whose locustfile
(``locustfile.py.tmpl``, run only inside Locust's process) fires every request at its offset.
"""

from vouch.loadtests.replay.filter import ReplayFilters, apply_filters
from vouch.loadtests.replay.jsonlines import JsonFields
from vouch.loadtests.replay.parse import FORMATS, read_log
from vouch.loadtests.replay.record import LoggedRequest, ParsedLog
from vouch.loadtests.replay.replay import (
    PreparedReplay,
    ReplayOutcome,
    ReplaySummary,
    ReplayTiming,
    replay_plan,
    run_replay,
)
from vouch.loadtests.replay.schedule import Schedule, ScheduledRequest, build_schedule

__all__ = [
    "FORMATS",
    "JsonFields",
    "LoggedRequest",
    "ParsedLog",
    "PreparedReplay",
    "ReplayFilters",
    "ReplayOutcome",
    "ReplaySummary",
    "ReplayTiming",
    "Schedule",
    "ScheduledRequest",
    "apply_filters",
    "build_schedule",
    "read_log",
    "replay_plan",
    "run_replay",
]
