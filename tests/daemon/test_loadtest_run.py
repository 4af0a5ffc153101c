"""``vouch loadtest run``: a real Locust run against the demo service, judged, with exit codes 0, 1 and 2."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest
from support.demo import DEMO_MODULE, free_port
from support.loadtarget import locust_children
from typer.testing import CliRunner

from vouch.daemon.cli import app

runner = CliRunner()


@pytest.fixture
def demo() -> Iterator[str]:
    """A demo replica answering 20% of its requests with 500."""
    port = free_port()
    argv = [sys.executable, "-m", DEMO_MODULE, "--port", str(port), "--version", "1.0.0", "--error-ratio", "0.2"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                    break
            except OSError:
                assert process.poll() is None, "the demo exited"
                assert time.monotonic() < deadline, "the demo did not come up"
                time.sleep(0.02)
        yield url
    finally:
        process.kill()
        process.wait(timeout=10)


def test_a_run_is_judged_and_its_exit_code_says_so(demo: str) -> None:
    common = ["loadtest", "run", demo, "--path", "/cart", "-u", "2", "-r", "100", "-d", "2s", "--rate", "20", "--json"]
    failed = runner.invoke(app, [*common, "--max-p99-ms", "5000"])
    assert failed.exit_code == 1, failed.output
    document = json.loads(failed.stdout)
    assert document["result"]["requests"] > 0
    assert document["result"]["endpoints"][0]["name"] == "GET /cart"
    assert not document["judgement"]["passed"]
    assert document["judgement"]["reasons"][0].startswith("error ratio")
    held = runner.invoke(app, [*common, "--max-error-ratio", "0.6"])
    assert held.exit_code == 0, held.output
    assert json.loads(held.stdout)["judgement"]["passed"]
    assert not locust_children()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["127.0.0.1:8080"], "is not an http:// or https:// URL"),
        (["http://127.0.0.1:9", "-d", "soon"], "is not a duration"),
        (["http://127.0.0.1:9", "--path", "cart"], "must start with '/'"),
        (["http://127.0.0.1:9", "-f", "/nonexistent/locustfile.py"], "no locustfile at /nonexistent/locustfile.py"),
    ],
)
def test_usage_problems_exit_2_with_the_reason(arguments: list[str], message: str) -> None:
    result = runner.invoke(app, ["loadtest", "run", *arguments, "--json"])
    assert result.exit_code == 2
    assert message in json.loads(result.stdout)["error"]["message"]
