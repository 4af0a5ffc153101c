"""Real Prometheus and Alertmanager processes for tests, on 127.0.0.1 and free ports.

Each helper is a context manager that writes a temporary configuration, starts
the Debian binary, waits until ``/-/ready`` answers 200 and, on exit, stops the
process (terminate, wait, kill) and removes its directory. When a binary is
missing the calling test is skipped, saying how to install it.

    with serve_registry(recorder_registry) as target, prometheus([target]) as prom:
        series = await wait_for_query(prom.url, "sum(vouch_router_requests_total)", lambda s: bool(s))

Prometheus needs a few seconds after start before its first sample can be
queried; :func:`wait_for_query` polls with a deadline instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server
from support.demo import free_port

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 30.0
"""Longest a component may take to answer ``/-/ready``."""
STOP_TIMEOUT = 10.0
"""Longest a component may take to exit after SIGTERM before it is killed."""


def require_binary(name: str) -> str:
    """The path of ``name``, or skip the test saying how to get it."""
    path = shutil.which(name)
    if path is None and os.access(f"/usr/bin/{name}", os.X_OK):
        path = f"/usr/bin/{name}"
    if path is None:
        pytest.skip(f"{name} not installed: run `make test` as root to install it from Debian's packages")
    return path


@dataclass(frozen=True)
class Component:
    """A running component: its base URL, process and working directory."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    directory: Path

    @property
    def address(self) -> str:
        """``host:port``, as Prometheus wants its targets and alertmanagers."""
        return urlsplit(self.url).netloc

    def log(self) -> str:
        """Everything the process wrote so far (for assertion messages)."""
        return (self.directory / "output.log").read_text(errors="replace")


class Series(NamedTuple):
    """One element of a query answer: the labels and the value."""

    labels: dict[str, str]
    value: float


# --------------------------------------------------------------------------- Prometheus


@contextlib.contextmanager
def prometheus(
    scrape_targets: Sequence[str],
    *,
    rules_yaml: str | None = None,
    alertmanager_url: str | None = None,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    metrics_path: str = "/metrics",
) -> Iterator[Component]:
    """Run Prometheus scraping ``scrape_targets`` (``host:port``; an ``http://`` prefix is dropped).

    ``rules_yaml`` is the text of a rule file (``groups: ...``); ``alertmanager_url``
    makes Prometheus send its alerts there, again every second while they fire. All
    targets are one job, ``vouch``.
    """
    binary = require_binary("prometheus")
    with tempfile.TemporaryDirectory(prefix="vouch-prometheus-") as tmp:
        directory = Path(tmp)
        config: dict[str, Any] = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
            "scrape_configs": [
                {
                    "job_name": "vouch",
                    "metrics_path": metrics_path,
                    "static_configs": [{"targets": [_host_port(t) for t in scrape_targets]}],
                }
            ],
        }
        if rules_yaml is not None:
            (directory / "rules.yml").write_text(rules_yaml)
            config["rule_files"] = [str(directory / "rules.yml")]
        if alertmanager_url is not None:
            config["alerting"] = {"alertmanagers": [_alertmanager_target(alertmanager_url)]}
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))

        def argv(port: int) -> list[str]:
            return [
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address={HOST}:{port}",
                # Alertmanagers are discovered ~5 s after start; alerts sent before that are lost
                # and, by default, only sent again a minute later.
                "--rules.alert.resend-delay=1s",
            ]

        with _run("prometheus", argv, directory) as component:
            yield component


def _host_port(target: str) -> str:
    return urlsplit(target).netloc if "://" in target else target


def _alertmanager_target(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    target: dict[str, Any] = {"scheme": parts.scheme or "http", "static_configs": [{"targets": [parts.netloc]}]}
    if parts.path.strip("/"):
        target["path_prefix"] = parts.path
    return target


async def wait_for_query(
    url: str,
    expr: str,
    predicate: Callable[[list[Series]], bool] = bool,
    timeout: float = 30.0,
) -> list[Series]:
    """Poll the instant query ``expr`` on the Prometheus at ``url`` until ``predicate`` holds.

    Returns the answer that satisfied it; fails the test with the last answer
    when ``timeout`` passes first. The default predicate waits for any series.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    async with httpx.AsyncClient(timeout=5.0) as client:
        while True:
            response = await client.get(f"{url}/api/v1/query", params={"query": expr})
            last = response.text
            if response.status_code == 200:
                series = _series(response.json()["data"])
                if predicate(series):
                    return series
                last = series
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr!r} did not satisfy the predicate within {timeout}s; last answer: {last}")
            await asyncio.sleep(0.2)


def _series(data: dict[str, Any]) -> list[Series]:
    if data["resultType"] == "scalar":
        return [Series({}, float(data["result"][1]))]
    return [Series(dict(item["metric"]), float(item["value"][1])) for item in data["result"]]


@contextlib.contextmanager
def serve_registry(registry: CollectorRegistry) -> Iterator[str]:
    """Serve ``registry`` on ``/metrics`` of 127.0.0.1 from a thread; yields the ``host:port`` target."""
    server, thread = start_http_server(0, addr=HOST, registry=registry)
    try:
        yield f"{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=STOP_TIMEOUT)


# --------------------------------------------------------------------------- Alertmanager


@contextlib.contextmanager
def alertmanager(
    webhook_url: str,
    *,
    bearer_token: str | None = None,
    group_wait: str = "0s",
    group_interval: str = "1s",
    repeat_interval: str = "1h",
    group_by: Sequence[str] = ("...",),
) -> Iterator[Component]:
    """Run Alertmanager sending every alert (and its resolution) to ``webhook_url``.

    ``bearer_token`` is sent as ``Authorization: Bearer …``. ``group_by``
    defaults to every label, so each alert is its own notification.
    """
    binary = require_binary("prometheus-alertmanager")
    with tempfile.TemporaryDirectory(prefix="vouch-alertmanager-") as tmp:
        directory = Path(tmp)
        webhook: dict[str, Any] = {"url": webhook_url, "send_resolved": True}
        if bearer_token is not None:
            webhook["http_config"] = {"authorization": {"type": "Bearer", "credentials": bearer_token}}
        config = {
            "route": {
                "receiver": "webhook",
                "group_by": list(group_by),
                "group_wait": group_wait,
                "group_interval": group_interval,
                "repeat_interval": repeat_interval,
            },
            "receivers": [{"name": "webhook", "webhook_configs": [webhook]}],
        }
        (directory / "alertmanager.yml").write_text(yaml.safe_dump(config, sort_keys=False))

        def argv(port: int) -> list[str]:
            return [
                binary,
                f"--config.file={directory / 'alertmanager.yml'}",
                f"--storage.path={directory / 'data'}",
                f"--web.listen-address={HOST}:{port}",
                "--cluster.listen-address=",
            ]

        with _run("alertmanager", argv, directory) as component:
            yield component


# --------------------------------------------------------------------------- processes


@contextlib.contextmanager
def _run(name: str, argv: Callable[[int], list[str]], directory: Path, attempts: int = 3) -> Iterator[Component]:
    """Start ``argv(port)`` until one attempt becomes ready; always stop it on exit."""
    for attempt in range(1, attempts + 1):
        port = free_port()
        with (directory / "output.log").open("ab") as log:
            process = subprocess.Popen(argv(port), stdout=log, stderr=subprocess.STDOUT, cwd=directory)
        component = Component(name, f"http://{HOST}:{port}", process, directory)
        try:
            if _wait_ready(component):
                yield component
                return
            if attempt == attempts or "address already in use" not in component.log():
                raise RuntimeError(
                    f"{name} exited with {process.returncode} before it was ready:\n{component.log()[-3000:]}"
                )
        finally:
            _stop(process)


def _wait_ready(component: Component) -> bool:
    """True once ``/-/ready`` answers 200; False when the process died first; raises on timeout."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if component.process.poll() is not None:
                return False
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{component.url}/-/ready").status_code == 200:
                    return True
            time.sleep(0.05)
    raise RuntimeError(f"{component.name} was not ready within {STARTUP_TIMEOUT}s:\n{component.log()[-3000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
