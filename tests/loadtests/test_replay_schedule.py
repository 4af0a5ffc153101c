"""Filters, the schedule and the replay plan: pure, no Locust."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from vouch.loadtests.errors import LoadTestError
from vouch.loadtests.model import LoadResult, Quantiles
from vouch.loadtests.replay import (
    ParsedLog,
    ReplayFilters,
    ReplayOutcome,
    ReplaySummary,
    ReplayTiming,
    apply_filters,
    build_schedule,
    read_log,
    replay_plan,
)
from vouch.loadtests.replay.record import LoggedRequest
from vouch.loadtests.replay.replay import read_timing
from vouch.loadtests.replay.schedule import ScheduledRequest, read_schedule, write_schedule

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def req(at: float, method: str = "GET", path: str = "/", **extra: object) -> LoggedRequest:
    return LoggedRequest(at, method, path, **extra)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- filters


@pytest.mark.parametrize(
    ("method", "kept_by_default"),
    [
        ("GET", True),
        ("HEAD", True),
        ("OPTIONS", True),
        ("POST", False),
        ("PUT", False),
        ("PATCH", False),
        ("DELETE", False),
        ("PROPFIND", False),  # unknown methods count as mutating: fail closed
        ("TRACE", False),
    ],
)
def test_mutating_methods_are_dropped_unless_allowed(method: str, kept_by_default: bool) -> None:
    logged = [req(0, method, "/x")]
    default = apply_filters(logged, ReplayFilters())
    assert (len(default.requests) == 1) is kept_by_default
    assert default.dropped_mutating == (0 if kept_by_default else 1)
    assert len(apply_filters(logged, ReplayFilters(allow_mutating=True)).requests) == 1


@pytest.mark.parametrize(
    ("include", "exclude", "kept"),
    [
        ((), (), ["/api/cart", "/static/app.js", "/healthz", "/api/stock?id=1"]),
        (("^/api/",), (), ["/api/cart", "/api/stock?id=1"]),
        (("^/api/",), (r"id=\d",), ["/api/cart"]),
        ((), ("^/healthz$", r"\.js$"), ["/api/cart", "/api/stock?id=1"]),
        (("cart", "healthz"), (), ["/api/cart", "/healthz"]),
    ],
)
def test_include_and_exclude_patterns(include: tuple[str, ...], exclude: tuple[str, ...], kept: list[str]) -> None:
    paths = ["/api/cart", "/static/app.js", "/healthz", "/api/stock?id=1"]
    filtered = apply_filters(
        [req(i, "GET", p) for i, p in enumerate(paths)], ReplayFilters(include=include, exclude=exclude)
    )
    assert [r.path for r in filtered.requests] == kept
    assert filtered.dropped_by_path == len(paths) - len(kept)


def test_a_bad_pattern_is_an_error_naming_it() -> None:
    with pytest.raises(LoadTestError, match=r"--exclude \[a-: not a regular expression"):
        apply_filters([req(0)], ReplayFilters(exclude=("[a-",)))


# --------------------------------------------------------------------------- schedule


def test_offsets_are_relative_to_the_first_request_and_scaled_by_speed() -> None:
    logged = [req(1000.0, path="/a"), req(1003.0, path="/b"), req(1001.0, path="/c"), req(1001.0, path="/d")]
    for speed, offsets in ((1.0, [0.0, 1.0, 1.0, 3.0]), (2.0, [0.0, 0.5, 0.5, 1.5]), (0.5, [0.0, 2.0, 2.0, 6.0])):
        schedule = build_schedule(logged, speed=speed)
        assert [e.offset for e in schedule.entries] == offsets
        assert [e.path for e in schedule.entries] == ["/a", "/c", "/d", "/b"]  # by time; ties keep file order
        assert schedule.span == 3.0
        assert schedule.duration == offsets[-1]


def test_the_duration_cap_counts_in_replay_seconds() -> None:
    logged = [req(float(t)) for t in range(10)]
    capped = build_schedule(logged, speed=2.0, max_duration=2.0)
    assert [e.offset for e in capped.entries] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert (capped.dropped_by_cap, capped.span, capped.duration) == (5, 4.0, 2.0)
    assert build_schedule(logged, max_duration=0).dropped_by_cap == 9


@pytest.mark.parametrize("speed", [0.0, -1.0, math.inf, math.nan])
def test_speed_must_be_a_positive_number(speed: float) -> None:
    with pytest.raises(LoadTestError, match="speed must be a positive number"):
        build_schedule([req(0)], speed=speed)


def test_an_empty_log_is_an_empty_schedule() -> None:
    schedule = build_schedule([])
    assert (schedule.entries, schedule.span, schedule.duration) == ((), 0.0, 0.0)


def test_schedule_files_round_trip_bodies_and_join_repeated_headers(tmp_path: Path) -> None:
    entry = ScheduledRequest(
        offset=1.25,
        method="POST",
        path="/orders?x=1",
        headers=(("Accept", "a"), ("Accept", "b"), ("User-Agent", "app")),
        body=b"\x00\xffbody",
        status=201,
        line=7,
    )
    path = write_schedule([entry, ScheduledRequest(2.0, "GET", "/")], tmp_path / "s.jsonl")
    first = json.loads(path.read_text().splitlines()[0])
    assert first["headers"] == {"Accept": "a, b", "User-Agent": "app"}
    assert first["body_b64"] == "AP9ib2R5"
    back = read_schedule(path)
    assert back[0].body == b"\x00\xffbody"
    assert back[0].headers == (("Accept", "a, b"), ("User-Agent", "app"))
    assert (back[0].offset, back[0].status, back[0].line) == (1.25, 201, 7)
    assert back[1] == ScheduledRequest(2.0, "GET", "/")


# --------------------------------------------------------------------------- the plan


def test_the_plan_for_the_sample_log(tmp_path: Path) -> None:
    log = read_log(EXAMPLES / "access.log")
    prepared = replay_plan(log, target="http://127.0.0.1:9/", workdir=tmp_path / "run", speed=4.0, users=8)
    s = prepared.summary
    mutating = sum(1 for r in log.requests if r.method in {"POST", "PUT", "PATCH", "DELETE"})
    assert mutating > 0
    assert (s.read, s.dropped_mutating, s.kept) == (200, mutating, 200 - mutating)
    assert s.duration == pytest.approx(s.span / 4.0)
    plan = prepared.plan
    assert plan.target == "http://127.0.0.1:9"
    assert (plan.users, plan.spawn_rate) == (8, 8.0)
    assert plan.duration >= s.duration + 1
    assert plan.locustfile.read_text().startswith('"""Replays a schedule of logged requests')
    schedule = read_schedule(Path(plan.env["VOUCH_REPLAY_SCHEDULE"]))
    assert len(schedule) == s.kept
    assert {e.method for e in schedule} <= {"GET", "HEAD"}
    assert plan.env["VOUCH_REPLAY_USERS"] == "8"
    assert Path(plan.env["VOUCH_REPLAY_REPORT"]) == prepared.report
    assert all(Path(plan.env[k]).is_absolute() for k in ("VOUCH_REPLAY_SCHEDULE", "VOUCH_REPLAY_REPORT"))


def test_users_never_outnumber_the_requests(tmp_path: Path) -> None:
    log = ParsedLog("x.log", "combined", (req(0), req(1)))
    assert replay_plan(log, target="http://h:1", workdir=tmp_path, users=50).plan.users == 2


@pytest.mark.parametrize(
    ("target", "users", "why"),
    [
        ("127.0.0.1:8080", 1, "target must be an http"),
        ("ftp://h/", 1, "target must be an http"),
        ("http://h:1", 0, "users must be at least 1"),
    ],
)
def test_bad_plans_are_refused(tmp_path: Path, target: str, users: int, why: str) -> None:
    with pytest.raises(LoadTestError, match=why):
        replay_plan(ParsedLog("x.log", "combined", (req(0),)), target=target, workdir=tmp_path, users=users)


def test_nothing_left_to_replay_is_an_error_saying_what_was_dropped(tmp_path: Path) -> None:
    log = ParsedLog("x.log", "combined", (req(0, "POST"), req(1, "GET", "/healthz")))
    with pytest.raises(LoadTestError, match=r"x\.log: nothing to replay: 2 requests read, 1 mutating dropped"):
        replay_plan(log, target="http://h:1", workdir=tmp_path, filters=ReplayFilters(exclude=("healthz",)))


# --------------------------------------------------------------------------- judging an outcome


def outcome(requests: int, failures: int, timing: ReplayTiming | None) -> ReplayOutcome:
    summary = ReplaySummary(
        file="x.log",
        format="combined",
        read=12,
        skipped_bad=0,
        dropped_mutating=2,
        dropped_by_path=0,
        dropped_by_cap=0,
        kept=10,
        span=9.0,
        speed=1.0,
        duration=9.0,
        users=2,
    )
    result = LoadResult(
        target="http://h:1", duration=1.0, requests=requests, failures=failures, rps=1.0, latency=Quantiles()
    )
    return ReplayOutcome(summary=summary, result=result, timing=timing)


def timing(fired: int) -> ReplayTiming:
    return ReplayTiming(scheduled=10, fired=fired, reordered=0, replay_seconds=1.0, lateness=Quantiles(p50=1.0))


@pytest.mark.parametrize(
    ("requests", "failures", "fired", "problems"),
    [
        (10, 0, 10, []),
        (100, 1, 10, []),  # exactly at the bound
        (10, 1, 10, ["error ratio 0.1000 over 0.01 (1 of 10 failed)"]),
        (7, 0, 7, ["only 7 of 10 scheduled requests fired"]),
        (0, 0, 0, ["only 0 of 10 scheduled requests fired", "no requests were made"]),
        (10, 0, None, ["no timing report: the replay locustfile did not finish"]),
    ],
)
def test_a_replay_holds_only_when_everything_fired_within_the_error_budget(
    requests: int, failures: int, fired: int | None, problems: list[str]
) -> None:
    done = outcome(requests, failures, timing(fired) if fired is not None else None)
    assert list(done.problems(max_error_ratio=0.01)) == problems
    assert done.complete is (fired == 10)


def test_timing_reports_that_are_missing_or_torn_read_as_none(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    assert read_timing(report) is None
    report.write_text('{"scheduled": 3, "fired"')
    assert read_timing(report) is None
    report.write_text(
        json.dumps(
            {
                "scheduled": 3,
                "fired": 3,
                "users": 1,
                "reordered": 0,
                "replay_seconds": 1.5,
                "lateness_ms": {"p50": 1.0, "p90": 2.0, "p95": 2.0, "p99": 3.0, "max": 3.0},
            }
        )
    )
    assert read_timing(report) == ReplayTiming(3, 3, 0, 1.5, Quantiles(1.0, 2.0, 2.0, 3.0, 3.0))
