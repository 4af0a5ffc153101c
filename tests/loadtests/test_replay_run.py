"""Replays run for real: Locust as a subprocess against the demo service and against a recording server."""

from __future__ import annotations

import importlib.util
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from support.demo import demo_processes, free_port
from typer.testing import CliRunner

from vouch.daemon.cli import app as cli
from vouch.loadtests.locust import LocustRunner
from vouch.loadtests.replay import ReplayFilters, read_log, replay_plan, run_replay

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MUTATING = re.compile(r'"(POST|PUT|PATCH|DELETE) ')

if importlib.util.find_spec("locust") is None:
    pytest.skip("locust not installed: pip install 'vouch[loadtest]'", allow_module_level=True)


@dataclass(frozen=True)
class Seen:
    at: float
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Recorder(ThreadingHTTPServer):
    """Answers every request and remembers it; ``/missing*`` and ``/gone*`` answer 404, ``/boom*`` 500."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Recording)
        self.seen: list[Seen] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Recording(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Recorder

    def _any(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        with self.server.lock:
            self.server.seen.append(Seen(time.monotonic(), self.command, self.path, headers, body))
        status = 404 if self.path.startswith(("/missing", "/gone")) else 500 if self.path.startswith("/boom") else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(b"{}")

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _any

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def demo() -> Iterator[str]:
    """The demo service as its own process, answering every path with 200."""
    with demo_processes() as start:
        yield start()


def test_the_sample_log_replays_against_the_demo_service(demo: str) -> None:
    result = CliRunner().invoke(
        cli, ["loadtest", "replay", str(EXAMPLES / "access.log"), "--target", demo, "--speed", "4", "--json"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["ok"], document["problems"]) == (True, [])
    summary, measured, timing = document["summary"], document["result"], document["timing"]

    lines = (EXAMPLES / "access.log").read_text().splitlines()
    mutating = sum(1 for line in lines if MUTATING.search(line))
    assert (summary["read"], summary["dropped_mutating"], summary["kept"]) == (200, mutating, 200 - mutating)

    # every kept request was made once, and no mutating one was
    assert (measured["requests"], measured["failures"]) == (summary["kept"], 0)
    made = Counter({(e["method"], e["name"]): e["requests"] for e in measured["endpoints"]})
    logged = read_log(EXAMPLES / "access.log").requests
    wanted = Counter((r.method, r.path.split("?")[0]) for r in logged if r.method in {"GET", "HEAD"})
    assert made == wanted

    # the schedule was kept: everything fired, never early, mostly in order
    assert timing["fired"] == timing["scheduled"] == summary["kept"]
    assert summary["duration"] == pytest.approx(summary["span"] / 4)
    assert timing["replay_seconds"] >= summary["duration"] - 0.01
    assert timing["replay_seconds"] < summary["duration"] + 30
    assert timing["reordered"] <= summary["kept"] // 10


async def test_the_har_sample_arrives_in_order_with_its_body_and_without_credentials(
    recorder: Recorder, tmp_path: Path
) -> None:
    log = read_log(EXAMPLES / "access.har")
    prepared = replay_plan(
        log, target=recorder.url, workdir=tmp_path, speed=2.0, users=1, filters=ReplayFilters(allow_mutating=True)
    )
    outcome = await run_replay(prepared, LocustRunner())
    assert outcome.problems(max_error_ratio=0.0) == ()

    seen = recorder.seen
    assert [(s.method, s.path) for s in seen] == [(e.method, e.path) for e in prepared.schedule.entries]
    assert [(s.method, s.path) for s in seen] == [(r.method, r.path) for r in log.requests]  # the HAR is in order
    post = next(s for s in seen if s.method == "POST")
    assert post.body == b'{"product": 4242, "quantity": 1}'
    assert post.headers["content-type"] == "application/json"
    for request in seen:
        assert "Firefox" in request.headers["user-agent"]
        assert not {"cookie", "authorization"} & set(request.headers)
        assert request.headers["host"] == recorder.url.removeprefix("http://")

    # one user fires its requests one after the other, each no earlier than its offset
    assert outcome.timing is not None
    late = (outcome.timing.lateness.max or 0.0) / 1000
    assert seen[-1].at - seen[0].at >= prepared.summary.duration - late - 0.25


def test_failures_are_judged_against_what_the_log_recorded(recorder: Recorder, tmp_path: Path) -> None:
    log = tmp_path / "app.jsonl"
    records = [("/ok", 200), ("/missing", 404), ("/gone", 200), ("/boom", 200)]
    log.write_text(
        "".join(
            json.dumps({"ts": 1_700_000_000 + i / 10, "method": "GET", "path": p, "status": s}) + "\n"
            for i, (p, s) in enumerate(records)
        )
    )
    result = CliRunner().invoke(cli, ["loadtest", "replay", str(log), "--target", recorder.url, "--json"])
    assert result.exit_code == 1, result.output
    document = json.loads(result.stdout)
    assert document["ok"] is False
    assert document["problems"] == ["error ratio 0.5000 over 0.01 (2 of 4 failed)"]
    assert (document["result"]["requests"], document["result"]["failures"]) == (4, 2)
    errors = " | ".join(document["result"]["errors"])
    assert "HTTP 404 where the log had 200" in errors
    assert "HTTP 500" in errors
    assert sorted(s.path for s in recorder.seen) == sorted(p for p, _ in records)


def test_skipped_records_are_counted_and_an_unreachable_target_fails_the_replay(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    good = (EXAMPLES / "access.log").read_text().splitlines()[:3]
    log.write_text("\n".join([good[0], "this is not a log line", *good[1:]]) + "\n")
    target = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = CliRunner().invoke(cli, ["loadtest", "replay", str(log), "--target", target, "--skip-bad"])
    assert result.exit_code == 1, result.output
    assert f"skipped 1 bad records, the first: {log}:2: not in combined or common log format" in result.stderr
    assert "3 requests, 1 bad records skipped" in result.stdout
    assert "FAIL error ratio 1.0000 over 0.01 (3 of 3 failed)" in result.stderr
    assert "no answer" in result.stdout
