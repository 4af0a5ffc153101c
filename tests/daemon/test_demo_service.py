"""The demo service, run as the process it is: real ports, real HTTP, real signals."""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.demo import DEMO_MODULE, free_port


class Demo:
    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str, *, method: str = "GET", data: bytes | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, method=method, data=data)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def statuses(self, count: int) -> list[int]:
        return [self.get(f"/work/{i}")[0] for i in range(count)]


@pytest.fixture
def start_demo() -> Iterator:
    started: list[subprocess.Popen[bytes]] = []

    def start(version: str = "1.0.0", *args: str) -> Demo:
        port = free_port()
        argv = [sys.executable, "-m", DEMO_MODULE, "--port", str(port), "--version", version, *args]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started.append(process)
        demo = Demo(process, port)
        deadline = time.monotonic() + 20
        while True:
            try:
                if demo.get("/healthz")[0] == 200:
                    return demo
            except OSError:
                pass
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the demo did not come up"
            time.sleep(0.01)

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_answers_every_method_with_its_version_and_path(start_demo) -> None:
    demo = start_demo("2.4.1")
    assert demo.get("/healthz")[0] == 200
    status, body = demo.get("/api/cart?id=7")
    assert status == 200
    assert json.loads(body) == {"version": "2.4.1", "path": "/api/cart?id=7"}
    status, body = demo.get("/orders", method="POST", data=b'{"sku": 1}')
    assert (status, json.loads(body)["path"]) == (200, "/orders")
    for method in ("PUT", "PATCH", "DELETE", "OPTIONS"):
        assert demo.get("/x", method=method)[0] == 200
    assert demo.get("/x", method="HEAD") == (200, b"")


def test_error_ratio_fails_that_share_but_never_the_health_check(start_demo) -> None:
    always = start_demo("1.0.0", "--error-ratio", "1")
    assert set(always.statuses(20)) == {500}
    assert always.get("/healthz")[0] == 200

    half = start_demo("1.0.0", "--error-ratio", "0.5")
    errors = half.statuses(200).count(500)
    assert 50 < errors < 150  # binomial(200, 0.5): mean 100, sd 7


def test_latency_is_added_before_answering(start_demo) -> None:
    demo = start_demo("1.0.0", "--latency-ms", "300")
    started = time.monotonic()
    assert demo.get("/slow")[0] == 200
    assert time.monotonic() - started >= 0.3


def test_faults_file_is_read_again_when_it_changes(start_demo, tmp_path: Path) -> None:
    faults = tmp_path / "faults.json"
    faults.write_text("{}")
    demo = start_demo("2.0.0", "--faults-file", str(faults))
    assert set(demo.statuses(10)) == {200}

    faults.write_text(json.dumps({"2.0.0": {"error_ratio": 1.0}, "1.0.0": {"error_ratio": 0.0}}))
    assert set(demo.statuses(10)) == {500}

    faults.write_text(json.dumps({"1.0.0": {"error_ratio": 1.0}}))  # another version's faults only
    assert set(demo.statuses(10)) == {200}

    faults.write_text("{ half written")  # unreadable: keep what was last read
    assert set(demo.statuses(10)) == {200}


def test_sigterm_exits_zero_and_logs_no_requests(start_demo) -> None:
    demo = start_demo()
    demo.statuses(5)
    demo.process.send_signal(signal.SIGTERM)
    stdout, stderr = demo.process.communicate(timeout=10)
    assert demo.process.returncode == 0
    assert stderr == b""
    assert stdout == b""


def test_sigterm_while_connections_pour_in_still_exits_promptly(start_demo) -> None:
    """The signal may land while the server is accepting; it must not be swallowed there."""
    for _ in range(10):
        demo = start_demo()
        stop = threading.Event()

        def hammer(demo: Demo = demo, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError, http.client.HTTPException):
                    demo.get("/healthz")

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            demo.get("/healthz")
            demo.process.send_signal(signal.SIGTERM)
            demo.process.communicate(timeout=10)
            assert demo.process.returncode == 0
        finally:
            stop.set()
            for thread in threads:
                thread.join()


def test_a_slow_start_waits_before_listening_and_a_stop_cuts_it_short(tmp_path) -> None:
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vouch.daemon.demo.service",
            "--port",
            str(port),
            "--version",
            "v1",
            "--startup-ms",
            "30000",
        ]
    )
    try:
        time.sleep(0.5)
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, "not listening while starting"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0, "a stop during the slow start ends it at once"
    finally:
        proc.kill()
        proc.wait()


def test_checkout_without_backends_configured_answers_503_and_other_methods_keep_answering(
    start_demo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PAYMENTS_URL", raising=False)
    monkeypatch.delenv("INVENTORY_URL", raising=False)
    demo = start_demo("3.0.0")
    status, body = demo.get("/checkout", method="POST", data=b'{"order": "o-1"}')
    assert status == 503
    assert json.loads(body)["error"] == "no backends configured: PAYMENTS_URL, INVENTORY_URL unset"
    status, body = demo.get("/checkout")
    assert (status, json.loads(body)) == (200, {"version": "3.0.0", "path": "/checkout"})


def test_checkout_names_the_one_backend_variable_missing(start_demo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYMENTS_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("INVENTORY_URL", raising=False)
    demo = start_demo()
    status, body = demo.get("/checkout", method="POST", data=b"")
    assert (status, json.loads(body)["error"]) == (503, "no backends configured: INVENTORY_URL unset")
