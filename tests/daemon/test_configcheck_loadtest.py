"""Configuration checks of the loadtest gate: where it may load, and whether it can run there."""

from __future__ import annotations

from support.configs import only

from vouch.daemon.config import parse_config

VALID = """\
services:
  web:
    command: [python, -m, app, --port, "{port}"]
    performance_critical: true
    loadtest:
      paths: [/, POST /orders]
      duration: 30s
      step: 50%
    environments:
      - name: staging
      - name: production
    slos:
      - {name: errors, metric: error_ratio, max: 0.05}
environments:
  staging:
    gates: [slo, alarms, loadtest]
    plan: {steps: [1, 50%, 100%]}
  production:
    gates: [slo, alarms]
"""


def test_a_performance_critical_service_load_tested_in_staging_is_valid() -> None:
    config = parse_config(VALID, source="vouch.yaml")
    web = config.services["web"]
    assert web.performance_critical
    assert web.loadtest is not None
    assert web.loadtest.step == "50%"
    assert not config.environments["staging"].allow_load_tests


def test_production_needs_the_loud_switch() -> None:
    text = VALID.replace("gates: [slo, alarms]\n", "gates: [slo, loadtest]\n    plan: {steps: [50%, 100%]}\n")
    problem = only(text)
    assert (problem.line, problem.path) == (19, "environments.production.gates[1]")
    assert "looks like production" in problem.message
    assert "allow_load_tests: true" in problem.message
    parse_config(text + "    allow_load_tests: true\n", source="vouch.yaml")


def test_a_performance_critical_service_needs_settings() -> None:
    text = VALID.replace("    loadtest:\n      paths: [/, POST /orders]\n      duration: 30s\n      step: 50%\n", "")
    problem = only(text)
    assert problem.path == "services.web.loadtest"
    assert (
        problem.message
        == "performance-critical service 'web' has no loadtest settings, but 'staging' gates on 'loadtest'"
    )
    parse_config(text.replace("    performance_critical: true\n", ""), source="vouch.yaml")  # not critical: no load


def test_the_step_must_be_in_the_plan() -> None:
    problem = only(VALID.replace("step: 50%", "step: 20%"))
    assert (problem.line, problem.path) == (8, "services.web.loadtest.step")
    assert problem.message.startswith("in environment 'staging': the load test runs at step '20%', which is not a step")


def test_there_must_be_something_to_load() -> None:
    problem = only(VALID.replace("      paths: [/, POST /orders]\n", ""))
    assert problem.path == "services.web.loadtest"
    assert problem.message.startswith("nothing to load")
    probes = "    probes:\n      - {name: home, kind: http, targets: ['http://{address}/']}\n"
    text = VALID.replace("      paths: [/, POST /orders]\n", "").replace("    slos:\n", probes + "    slos:\n")
    parse_config(text, source="vouch.yaml")  # the GET probes give a generated locustfile its requests


def test_the_analysis_must_tolerate_the_runs_the_load_takes() -> None:
    text = VALID.replace(
        "    plan: {steps: [1, 50%, 100%]}\n", "    plan: {steps: [1, 50%, 100%]}\n    analysis: {interval: 10s}\n"
    )
    problem = only(text)
    assert problem.path == "environments.staging.analysis.inconclusive_limit"
    assert (
        "about 2 analysis runs are inconclusive while it runs, more than inconclusive_limit 1; "
        "raise the limit to 2 or the interval to at least 40s"
    ) in problem.message
    parse_config(text.replace("{interval: 10s}", "{interval: 10s, inconclusive_limit: 2}"), source="vouch.yaml")
    parse_config(text.replace("{interval: 10s}", "{interval: 40s}"), source="vouch.yaml")


def test_a_scale_test_is_budgeted_at_its_worst_case() -> None:
    scaled = VALID.replace(
        "      step: 50%\n",
        "      step: 50%\n      thresholds: {max_latency_ms: {p95: 200}}\n"
        "      scale: {start: 10, max_rate: 80, factor: 2, resolution: 0.1, retries: 0, step_duration: 3s}\n",
    ).replace(
        "    plan: {steps: [1, 50%, 100%]}\n", "    plan: {steps: [1, 50%, 100%]}\n    analysis: {interval: 20s}\n"
    )
    # 4 ramp rates and 3 bisections, each 3 s plus 1.5 s of start-up, after the 30 s load run: 61.5 s
    problem = only(scaled)
    assert "runs up to 61.5s" in problem.message
    assert "raise the limit to 2 or the interval to at least 72s" in problem.message
    parse_config(VALID.replace("{steps: [1, 50%, 100%]}", "{steps: [1, 50%, 100%]}\n    analysis: {interval: 20s}"))
