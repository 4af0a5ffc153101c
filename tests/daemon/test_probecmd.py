"""``vouch probe``: run, import-blackbox and rules, through the real command line."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vouch.daemon.cli import app
from vouch.probes.registry import ProbeFile

runner = CliRunner()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/ok" else 500
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def probes_file(tmp_path: Path, *targets: str) -> Path:
    path = tmp_path / "probes.yaml"
    path.write_text(yaml.safe_dump({"probes": [{"name": "web", "kind": "http", "targets": list(targets)}]}))
    return path


def test_once_exits_0_when_every_probe_passes(tmp_path, server):
    result = runner.invoke(app, ["probe", "run", str(probes_file(tmp_path, f"{server}/ok")), "--once"])
    assert result.exit_code == 0, result.output
    assert "web" in result.output
    assert "ok" in result.output


def test_once_exits_1_and_says_why_when_a_probe_fails(tmp_path, server):
    path = probes_file(tmp_path, f"{server}/ok", f"{server}/bad")
    result = runner.invoke(app, ["probe", "run", str(path), "--once", "--json"])
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["ok"] is False
    by_target = {r["target"]: r for r in document["results"]}
    assert by_target[f"{server}/ok"]["success"] is True
    assert by_target[f"{server}/bad"]["reason"] == "http_status"


def test_a_bad_probe_file_names_line_and_field_and_exits_2(tmp_path):
    path = tmp_path / "probes.yaml"
    path.write_text("probes:\n  - name: web\n    kind: http\n    targets: [http://x]\n    intervl: 30s\n")
    result = runner.invoke(app, ["probe", "run", str(path), "--once"])
    assert result.exit_code == 2
    assert f"{path}:5: probes[0].intervl: unknown field 'intervl' (did you mean 'interval'?)" in result.stderr


def test_import_blackbox_converts_what_it_can_and_names_the_rest(tmp_path):
    modules = tmp_path / "blackbox.yml"
    modules.write_text(
        yaml.safe_dump(
            {
                "modules": {
                    "http_2xx": {"prober": "http", "timeout": "5s", "http": {"valid_status_codes": [200]}},
                    "icmp": {"prober": "icmp"},
                }
            }
        )
    )
    result = runner.invoke(app, ["probe", "import-blackbox", str(modules)])
    assert result.exit_code == 0, result.output
    assert "icmp" in result.stderr
    converted = yaml.safe_load(result.stdout.replace("<TARGET>", "http://127.0.0.1:8080/"))
    probes = ProbeFile.model_validate(converted).probes
    assert [p.kind for p in probes] == ["http"]


def test_rules_are_a_prometheus_rules_file(tmp_path):
    out = tmp_path / "rules.yml"
    result = runner.invoke(app, ["probe", "rules", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rules = yaml.safe_load(out.read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {"ProbeFailing", "ProbeStale", "CertificateExpiringSoon"} <= names
