"""The configuration loader: every problem found at once, each at its exact line and field path."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from support.components import require_binary
from support.configs import only, problems_of

from vouch.core.errors import ConfigError, NotFoundError
from vouch.daemon.config import (
    VouchConfig,
    check_config,
    config_schema,
    load_config,
    parse_config,
    split_host_port,
)
from vouch.rollout.config import BuiltinProviderSpec, PrometheusProviderSpec
from vouch.rollout.gates import GATE_KINDS
from vouch.rollout.metrics.template import render

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

VALID = """\
services:
  web:
    command: [python, -m, app, --port, "{port}"]
    environments:
      - name: staging
        port: 9001
      - name: production
    slos:
      - {name: errors, metric: error_ratio, max: 0.05}
environments:
  staging: {}
  production:
    gates: [slo, alarms]
"""


# --------------------------------------------------------------------------- valid files


def test_valid_configuration_has_defaults_and_builtin_provider() -> None:
    config = parse_config(VALID)
    assert list(config.services) == ["web"]
    assert list(config.environments) == ["staging", "production"]
    assert config.metric_providers == {"builtin": BuiltinProviderSpec()}
    assert config.host_port() == ("127.0.0.1", 8470)
    assert config.platform.kind == "local"
    assert config.daemon.log_level == "info"
    assert check_config(config) == []


def test_own_provider_map_still_gets_builtin_unless_it_defines_it() -> None:
    text = VALID + "metric_providers:\n  prom: {kind: prometheus, url: 'http://127.0.0.1:9090'}\n"
    providers = parse_config(text).metric_providers
    assert set(providers) == {"prom", "builtin"}
    assert isinstance(providers["prom"], PrometheusProviderSpec)


def test_query_against_builtin_provider_is_accepted() -> None:
    query = 'error_ratio{service=\\"{service}\\",environment=\\"{environment}\\",version=\\"{version}\\"}[{window}]'
    text = VALID.replace("metric: error_ratio", f'query: "{query}"')
    slo = parse_config(text).services["web"].slos[0]
    assert slo.query is not None
    assert slo.query.startswith("error_ratio{")


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_validates_clean(example: Path) -> None:
    config = load_config(example)
    assert config.source == example.resolve()
    assert check_config(config) == []


def test_there_are_examples_to_validate() -> None:
    assert {p.name for p in EXAMPLES.glob("*.yaml")} >= {"local.yaml", "prometheus.yaml"}


def test_merged_entries_keep_the_line_of_their_anchor() -> None:
    found = problems_of(
        """\
        defaults: &defaults
          plan: {steps: [1, "50 %x"]}
        services:
          web:
            command: [app, "{port}"]
            environments: [{name: staging}]
            slos: [{name: e, metric: error_ratio, max: 0.1}]
        environments:
          staging:
            <<: *defaults
            gates: [slo]
        """
    )
    assert [(p.line, p.path) for p in found] == [(1, "defaults"), (2, "environments.staging.plan.steps[1]")]
    assert found[0].message.startswith("unknown field 'defaults'; known fields: daemon, ")


def test_merged_value_errors_point_at_the_anchor() -> None:
    found = problems_of(
        """\
        services:
          web: &web
            command: [app, "{port}"]
            replicas: ten
            environments: [{name: staging}]
            slos: [{name: e, metric: error_ratio, max: 0.1}]
          api:
            <<: *web
            environments: [{name: staging, port: 9100}]
        environments:
          staging: {}
        """
    )
    assert [(p.line, p.path) for p in found] == [
        (4, "services.api.replicas"),
        (4, "services.web.replicas"),
    ]


# --------------------------------------------------------------------------- exact lines


def test_yaml_syntax_error_names_its_line() -> None:
    problem = only(
        """\
        services:
          web:
            command: [app, "{port}"
            replicas: 2
        """
    )
    assert problem.line == 4
    assert problem.path == ""
    assert problem.message.startswith("invalid YAML: ")
    assert "flow sequence at line 3" in problem.message


def test_duplicate_key_reports_both_lines() -> None:
    problem = only(
        VALID.replace(
            "  staging: {}\n",
            "  staging: {}\n  staging:\n    gates: [alarms]\n",
        )
    )
    assert (problem.line, problem.path) == (12, "environments.staging")
    assert "duplicate key 'staging' (also at line 11)" in problem.message


def test_unknown_field_suggests_the_known_one() -> None:
    problem = only(VALID.replace("    environments:\n", "    replica: 3\n    environments:\n", 1))
    assert (problem.line, problem.path) == (4, "services.web.replica")
    assert problem.message == "unknown field 'replica' (did you mean 'replicas'?)"


def test_wrong_type_is_a_plain_sentence() -> None:
    problem = only(VALID.replace("        port: 9001\n", "        port: 9001\n        replicas: ten\n"))
    assert (problem.line, problem.path) == (7, "services.web.environments[0].replicas")
    assert problem.message == "expected an integer, got 'ten'"


def test_missing_required_field_is_on_its_parent_line() -> None:
    problem = only(
        """\
        services:
          web:
            command: [app, "{port}"]
        environments:
          staging: {}
        """
    )
    assert (problem.line, problem.path) == (2, "services.web.environments")
    assert problem.message == "missing required field 'environments'"


def test_unknown_environment_names_the_defined_ones() -> None:
    problem = only(VALID.replace("      - name: production\n", "      - name: prod\n"))
    assert (problem.line, problem.path) == (7, "services.web.environments[1].name")
    assert problem.message == "unknown environment 'prod'; defined: 'staging', 'production'"


def test_unknown_provider() -> None:
    problem = only(VALID.replace("metric: error_ratio", "provider: prom, metric: error_ratio"))
    assert (problem.line, problem.path) == (9, "services.web.slos[0].provider")
    assert problem.message == "unknown provider 'prom'; defined: 'builtin'"


def test_unknown_gate_lists_the_known_ones() -> None:
    problem = only(VALID.replace("gates: [slo, alarms]", "gates:\n      - slo\n      - smoke"))
    assert (problem.line, problem.path) == (15, "environments.production.gates[1]")
    known = ", ".join(repr(kind) for kind in GATE_KINDS)
    assert problem.message == f"unknown gate 'smoke'; known gates: {known}"


def test_port_clash_between_service_environments() -> None:
    problem = only(VALID.replace("      - name: production\n", "      - name: production\n        port: 9001\n"))
    assert (problem.line, problem.path) == (8, "services.web.environments[1].port")
    assert problem.message == "port 9001 is already used by services.web.environments[0].port"


def test_port_of_the_daemon_itself() -> None:
    problem = only(VALID.replace("port: 9001", "port: 8471") + "daemon: {listen: '127.0.0.1:8471'}\n")
    assert (problem.line, problem.path) == (6, "services.web.environments[0].port")
    assert "daemon.listen" in problem.message


def test_bad_step() -> None:
    problem = only(VALID.replace("  staging: {}\n", "  staging:\n    plan:\n      steps: [1, '50 %x']\n"))
    assert (problem.line, problem.path) == (13, "environments.staging.plan.steps[1]")
    assert problem.message.startswith("'50 %x' is not a step")


def test_bad_duration() -> None:
    problem = only(VALID.replace("  staging: {}\n", "  staging:\n    progress_deadline: 5 sec\n"))
    assert (problem.line, problem.path) == (12, "environments.staging.progress_deadline")
    assert problem.message.startswith("'5 sec' is not a duration")


def test_every_problem_of_a_file_is_reported() -> None:
    found = problems_of(
        """\
        daemon:
          listen: 127.0.0.1:99999
          log_level: loud
        services:
          web:
            command: [app, "{port}"]
            replica: 2
            environments:
              - name: staging
              - name: qa
            slos: [{name: e, metric: error_ratio, max: 0.1, provider: prom}]
        environments:
          staging:
            gates: [slo, smoke]
            progress_deadline: 5 sec
        """
    )
    assert [(p.line, p.path) for p in found] == [
        (2, "daemon.listen"),
        (3, "daemon.log_level"),
        (7, "services.web.replica"),
        (10, "services.web.environments[1].name"),
        (11, "services.web.slos[0].provider"),
        (14, "environments.staging.gates[1]"),
        (15, "environments.staging.progress_deadline"),
    ]
    assert all(p.file == "vouch.yaml" for p in found)
    assert found[1].message == "expected 'debug', 'info', 'warning' or 'error', got 'loud'"


# --------------------------------------------------------------------------- semantic checks


def test_duplicate_environment_in_a_chain() -> None:
    problem = only(VALID.replace("      - name: production\n", "      - name: staging\n"))
    assert (problem.line, problem.path) == (7, "services.web.environments[1].name")
    assert problem.message == "environment 'staging' is already in the chain at environments[0]"


def test_metric_needs_a_builtin_provider() -> None:
    text = VALID.replace("metric: error_ratio", "provider: prom, metric: error_ratio")
    problem = only(text + "metric_providers:\n  prom: {kind: prometheus, url: 'http://127.0.0.1:9090'}\n")
    assert (problem.line, problem.path) == (9, "services.web.slos[0].metric")
    assert "'prom' is of kind 'prometheus'" in problem.message


def test_local_platform_needs_a_command() -> None:
    problem = only(VALID.replace('    command: [python, -m, app, --port, "{port}"]\n', ""))
    assert (problem.line, problem.path) == (2, "services.web.command")
    assert "local platform" in problem.message


def test_slo_gate_without_slos() -> None:
    text = VALID.replace("    slos:\n      - {name: errors, metric: error_ratio, max: 0.05}\n", "")
    found = problems_of(text.replace("gates: [slo, alarms]", "gates: [alarms]"))
    # staging gates on the default [slo, alarms]; production no longer does.
    assert [(p.line, p.path, p.message) for p in found] == [
        (2, "services.web.slos", "environment 'staging' gates on 'slo' but service 'web' defines no slos")
    ]


def test_unknown_placeholder_in_a_query() -> None:
    text = VALID.replace("metric: error_ratio", "query: 'x{v=\"{verison}\"}'")
    problem = only(text)
    assert (problem.line, problem.path) == (9, "services.web.slos[0].query")
    assert problem.message.startswith("unknown placeholder {verison}")


def test_invalid_names() -> None:
    problem = only(VALID.replace("  web:", "  Web_1:"))
    assert (problem.line, problem.path) == (2, "services.Web_1")
    assert "is not a valid name" in problem.message


def test_references_are_checked_even_when_other_parts_are_broken() -> None:
    found = problems_of(VALID.replace("      - name: production\n", "      - name: prod\n        port: x\n"))
    assert [(p.line, p.path) for p in found] == [
        (7, "services.web.environments[1].name"),
        (8, "services.web.environments[1].port"),
    ]


# --------------------------------------------------------------------------- files


def test_missing_file_has_no_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.yaml")
    [problem] = caught.value.problems
    assert (problem.file, problem.line, problem.message) == (str(tmp_path / "nope.yaml"), None, "no such file")


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "the file is empty"), ("- a\n- b\n", "the top level must be a mapping")],
)
def test_top_level_must_be_a_mapping(text: str, message: str) -> None:
    problem = only(text)
    assert problem.line == 1
    assert problem.message.startswith(message)


def test_relative_state_dir_resolves_against_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "vouch.yaml").write_text(VALID + "daemon: {state_dir: state, listen: '0.0.0.0:9470'}\n")
    monkeypatch.chdir(tmp_path)
    config = load_config("conf/vouch.yaml")
    assert config.source == folder / "vouch.yaml"
    assert config.state_path() == folder / "state"
    assert config.token_path() == folder / "state" / "token"
    assert config.host_port() == ("0.0.0.0", 9470)


def test_token_file_relative_and_absolute(tmp_path: Path) -> None:
    path = tmp_path / "vouch.yaml"
    path.write_text(VALID + "daemon: {token_file: secrets/token}\n")
    assert load_config(path).token_path() == tmp_path / "secrets" / "token"
    path.write_text(VALID + f"daemon: {{token_file: {tmp_path / 'abs'}}}\n")
    assert load_config(path).token_path() == tmp_path / "abs"


def test_lookups_name_the_known_ones() -> None:
    config = parse_config(VALID)
    assert config.service("web").replicas == 1
    assert config.environment("production").gates == ["slo", "alarms"]
    with pytest.raises(NotFoundError, match="unknown service 'api'; known: 'web'"):
        config.service("api")
    with pytest.raises(NotFoundError, match="known: 'staging', 'production'"):
        config.environment("prod")


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "127.0.0.1:65536", "8470", ":8470", "host:http"])
def test_listen_must_be_host_and_port(listen: str) -> None:
    problem = only(VALID + f"daemon: {{listen: '{listen}'}}\n")
    assert (problem.line, problem.path) == (14, "daemon.listen")


def test_split_host_port_ipv6() -> None:
    assert split_host_port("[::1]:8470") == ("::1", 8470)


# --------------------------------------------------------------------------- schema


def test_schema_is_draft_2020_12_without_id() -> None:
    schema = config_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "$id" not in schema
    assert {"services", "environments", "daemon", "metric_providers", "platform"} <= set(schema["properties"])
    assert set(schema["required"]) == {"services", "environments"}
    # Steps accept shorthand (2, '50%') that the model converts before validation.
    step_types = {arm.get("type") for arm in schema["$defs"]["Step"]["anyOf"]}
    assert {"integer", "string", "object"} <= step_types


def test_examples_match_the_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(config_schema())
    for example in EXAMPLES.glob("*.yaml"):
        errors = list(validator.iter_errors(yaml.safe_load(example.read_text())))
        assert errors == [], f"{example.name}: {errors[0].message if errors else ''}"


# --------------------------------------------------------------------------- the Prometheus examples


def _promtool_test(tmp_path: Path, tests: dict[str, object]) -> subprocess.CompletedProcess[str]:
    promtool = require_binary("promtool")
    path = tmp_path / "test.yml"
    path.write_text(yaml.safe_dump(tests))
    return subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)


def _series(code: str, per_15s: int, *, track: str = "canary", version: str = "2.0.0") -> dict[str, str]:
    labels = f'service="checkout",environment="staging",version="{version}",track="{track}",code="{code}"'
    return {"series": f"vouch_router_requests_total{{{labels}}}", "values": f"0+{per_15s}x40"}


def test_prometheus_example_queries_measure_what_they_say(tmp_path: Path) -> None:
    config = load_config(EXAMPLES / "prometheus.yaml")
    slos = {slo.name: slo for slo in config.services["checkout"].slos}
    values = {"service": "checkout", "environment": "staging", "window": "1m"}
    error_ratio = slos["error-ratio"].query
    latency = slos["latency-p99"].query
    assert error_ratio is not None
    assert latency is not None
    buckets = [
        {
            "series": "vouch_router_request_duration_seconds_bucket"
            f'{{service="checkout",environment="staging",version="2.0.0",track="canary",le="{le}"}}',
            "values": "0+10x40" if le == "+Inf" else "0x40",
        }
        for le in ("0.1", "0.5", "+Inf")
    ]
    result = _promtool_test(
        tmp_path,
        {
            "rule_files": [],
            "tests": [
                {
                    "interval": "15s",
                    "input_series": [
                        _series("200", 12),
                        _series("500", 3),
                        _series("200", 15, version="1.0.0", track="stable"),
                        *buckets,
                    ],
                    "promql_expr_test": [
                        {
                            "expr": render(error_ratio, {**values, "version": "2.0.0"}),
                            "eval_time": "5m",
                            "exp_samples": [{"labels": "{}", "value": 0.2}],
                        },
                        {
                            # No 5xx at all is a ratio of 0, not "no data".
                            "expr": render(error_ratio, {**values, "version": "1.0.0"}),
                            "eval_time": "5m",
                            "exp_samples": [{"labels": "{}", "value": 0}],
                        },
                        {
                            "expr": render(latency, {**values, "version": "2.0.0"}),
                            "eval_time": "5m",
                            # Every request slower than the last finite bucket: its bound, 0.5 s.
                            "exp_samples": [{"labels": "{}", "value": 0.5}],
                        },
                    ],
                }
            ],
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_canary_alert_rule_fires_for_a_bad_canary_only(tmp_path: Path) -> None:
    summary = "Canary 2.0.0 of checkout in staging fails 20% of requests"
    description = (
        "More than 10% of the answers of the canary version 2.0.0 were errors (5xx) over the last minute. "
        "vouch rolls the promotion back when this alert reaches it through Alertmanager."
    )
    result = _promtool_test(
        tmp_path,
        {
            "rule_files": [str(EXAMPLES / "prometheus-rules.yml")],
            "evaluation_interval": "15s",
            "tests": [
                {
                    "interval": "15s",
                    "input_series": [
                        _series("200", 12),
                        _series("500", 3),
                        # Stable failing as much is not the canary's alarm.
                        _series("200", 12, version="1.0.0", track="stable"),
                        _series("500", 3, version="1.0.0", track="stable"),
                    ],
                    "alert_rule_test": [
                        {"eval_time": "30s", "alertname": "CanaryErrorRatioHigh", "exp_alerts": []},
                        {
                            "eval_time": "5m",
                            "alertname": "CanaryErrorRatioHigh",
                            "exp_alerts": [
                                {
                                    "exp_labels": {
                                        "service": "checkout",
                                        "environment": "staging",
                                        "version": "2.0.0",
                                        "severity": "critical",
                                    },
                                    "exp_annotations": {"summary": summary, "description": description},
                                }
                            ],
                        },
                    ],
                }
            ],
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_example_is_accepted_by_amtool() -> None:
    amtool = require_binary("amtool")
    result = subprocess.run(
        [amtool, "check-config", str(EXAMPLES / "alertmanager.yml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    routes = yaml.safe_load((EXAMPLES / "alertmanager.yml").read_text())["route"]["routes"]
    [vouch] = [r for r in routes if r["receiver"] == "vouch"]
    assert vouch["continue"] is True


def test_alertmanager_example_posts_to_the_local_example_daemon() -> None:
    receivers = yaml.safe_load((EXAMPLES / "alertmanager.yml").read_text())["receivers"]
    [hook] = next(r for r in receivers if r["name"] == "vouch")["webhook_configs"]
    config = load_config(EXAMPLES / "local.yaml")
    host, port = config.host_port()
    assert hook["url"] == f"http://{host}:{port}/api/v1/alerts"
    token = EXAMPLES / hook["http_config"]["authorization"]["credentials_file"]
    assert token == config.token_path()


def test_model_validate_alone_skips_reference_checks() -> None:
    data = yaml.safe_load(VALID.replace("- name: production", "- name: prod"))
    config = VouchConfig.model_validate(data)
    [problem] = check_config(config)
    assert (problem.line, problem.path) == (None, "services.web.environments[1].name")


def test_yaml_traps_get_a_hint() -> None:
    found = problems_of(
        """\
        services:
          web:
            command:
              - app
              - {port}
            environments: [{name: staging}]
            slos: [{name: e, metric: error_ratio, max: 0.1}]
        environments:
          staging:
        """
    )
    assert [(p.line, p.path) for p in found] == [(5, "services.web.command[1]"), (9, "environments.staging")]
    assert "write '{port}' in quotes" in found[0].message
    assert found[1].message == "expected a mapping, got nothing (null) (write {} to take every default)"


def test_unknown_provider_kind_names_the_known_ones() -> None:
    problem = only(VALID + "metric_providers:\n  prom:\n    kind: graphite\n")
    assert (problem.line, problem.path) == (15, "metric_providers.prom")
    assert problem.message == "unknown kind 'graphite'; known kinds: 'builtin', 'prometheus'"


def test_the_kubernetes_platform_needs_an_image_with_the_version(tmp_path: Path) -> None:
    text = """
platform:
  kind: kubernetes
  namespace: apps
services:
  shop:
    image: registry.example/shop:{version}
    environments: [{name: staging}]
    slos: [{name: errors, metric: error_ratio, max: 0.05}]
  cart:
    command: ["{python}", -m, cart, --port, "{port}"]
    environments: [{name: staging}]
    slos: [{name: errors, metric: error_ratio, max: 0.05}]
environments:
  staging: {}
"""
    path = tmp_path / "vouch.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    [problem] = caught.value.problems
    assert problem.path == "services.cart.image"
    assert "{version}" in problem.message
    fixed = text.replace('    command: ["{python}", -m, cart, --port, "{port}"]', "    image: cart:{version}")
    config = parse_config(fixed)
    assert config.platform.kind == "kubernetes"
