"""vouch's http probe and the real blackbox_exporter agree on success for the same targets.

blackbox_exporter runs with modules equivalent to the vouch settings next to
them; each case asks both about the same local target and compares
blackbox_exporter's ``probe_success`` with vouch's ``success`` (and both with
what the case expects, so they cannot agree by both being wrong).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from support.components import require_binary
from support.demo import free_port
from support.tls import Certs, make_certs, never_answer, probe_app, serve_app, serve_raw, server_context

from vouch.probes.http import HttpProbe, HttpProbeSpec
from vouch.probes.settings import TlsClientSpec

TIMEOUT = 1.0
"""Both probers' timeout, in seconds."""


@dataclass(frozen=True)
class Blackbox:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def blackbox_exporter(modules: dict[str, Any]) -> Iterator[Blackbox]:
    """Run blackbox_exporter with ``modules`` on 127.0.0.1; stopped (terminate, then kill) on exit."""
    binary = require_binary("prometheus-blackbox-exporter")
    with tempfile.TemporaryDirectory(prefix="vouch-blackbox-") as tmp:
        directory = Path(tmp)
        (directory / "blackbox.yml").write_text(yaml.safe_dump({"modules": modules}))
        port = free_port()
        log = directory / "output.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [binary, f"--config.file={directory / 'blackbox.yml'}", f"--web.listen-address=127.0.0.1:{port}"],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            exporter = Blackbox(f"http://127.0.0.1:{port}", process, log)
            _wait_ready(exporter)
            yield exporter
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(exporter: Blackbox) -> None:
    deadline = time.monotonic() + 30
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if exporter.process.poll() is not None:
                raise RuntimeError(f"blackbox_exporter exited early:\n{exporter.log.read_text(errors='replace')}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{exporter.url}/-/healthy").status_code == 200:
                    return
            time.sleep(0.05)
    raise RuntimeError(f"blackbox_exporter was not ready within 30s:\n{exporter.log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def exporter(certs: Certs) -> Iterator[Blackbox]:
    http = {"preferred_ip_protocol": "ip4", "tls_config": {"ca_file": str(certs.ca_file)}}
    modules = {
        "http_2xx": {"prober": "http", "timeout": f"{TIMEOUT:g}s", "http": http},
        "http_welcome": {
            "prober": "http",
            "timeout": f"{TIMEOUT:g}s",
            "http": {**http, "fail_if_body_not_matches_regexp": ["welcome"]},
        },
        "http_goodbye": {
            "prober": "http",
            "timeout": f"{TIMEOUT:g}s",
            "http": {**http, "fail_if_body_not_matches_regexp": ["goodbye"]},
        },
    }
    with blackbox_exporter(modules) as running:
        yield running


@pytest.fixture(scope="module")
def targets(certs: Certs) -> Iterator[dict[str, str]]:
    """Base URLs: ``http``, ``valid``, ``untrusted`` and ``expired`` HTTPS, and ``silent`` (never answers)."""
    with contextlib.ExitStack() as stack:
        urls = {"http": stack.enter_context(serve_app(probe_app()))}
        for kind in ("valid", "untrusted", "expired"):
            urls[kind] = stack.enter_context(serve_app(probe_app(), ssl_context=server_context(getattr(certs, kind))))
        urls["silent"] = f"http://127.0.0.1:{stack.enter_context(serve_raw(never_answer))}"
        yield urls


def vouch_spec(module: str, certs: Certs) -> HttpProbeSpec:
    """The vouch settings equivalent to blackbox module ``module``."""
    body = {"http_welcome": ["welcome"], "http_goodbye": ["goodbye"]}.get(module, [])
    return HttpProbeSpec(
        name=module,
        targets=["http://127.0.0.1/"],
        timeout=TIMEOUT,
        ip_protocol="ip4",
        tls=TlsClientSpec(ca_file=str(certs.ca_file)),
        assertions={"body_matches": body},
    )


async def blackbox_success(exporter: Blackbox, module: str, target: str) -> bool:
    async with httpx.AsyncClient(timeout=TIMEOUT + 10) as client:
        answer = await client.get(f"{exporter.url}/probe", params={"module": module, "target": target})
    answer.raise_for_status()
    values = [line.split()[1] for line in answer.text.splitlines() if line.startswith("probe_success ")]
    assert len(values) == 1, answer.text
    return values[0] == "1"


CASES = [
    ("2xx", "http_2xx", "http", "/ok", True),
    ("5xx", "http_2xx", "http", "/status/503", False),
    ("timeout", "http_2xx", "silent", "/", False),
    ("https-valid", "http_2xx", "valid", "/ok", True),
    ("tls-untrusted", "http_2xx", "untrusted", "/ok", False),
    ("tls-expired", "http_2xx", "expired", "/ok", False),
    ("body-regex-match", "http_welcome", "http", "/text", True),
    ("body-regex-miss", "http_goodbye", "http", "/text", False),
]


@pytest.mark.parametrize(
    ("module", "server", "path", "expected"), [case[1:] for case in CASES], ids=[c[0] for c in CASES]
)
async def test_probe_success_agrees(
    exporter: Blackbox, targets: dict[str, str], certs: Certs, module: str, server: str, path: str, expected: bool
) -> None:
    target = targets[server] + path
    peer, ours = await asyncio.gather(
        blackbox_success(exporter, module, target), HttpProbe(vouch_spec(module, certs)).run(target)
    )
    assert ours.success == peer, f"vouch: {ours}; blackbox_exporter probe_success: {int(peer)}"
    assert ours.success is expected, ours
