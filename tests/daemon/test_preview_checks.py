"""A preview's checks against the real demo service and two real mocks: health, network tests, attestations."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from support.demo import DEMO_MODULE, demo_processes
from support.network_suite import CHECKOUT_TEST, checkout_mocks, suite_ran, write_network_suite

from vouch.core.errors import InputError
from vouch.daemon.preview.attest import attest, statements
from vouch.daemon.preview.checks import NO_TESTS, NOT_RUN, run_checks
from vouch.daemon.preview.mock import MockServer
from vouch.daemon.preview.model import Check, CheckReport, Preview
from vouch.daemon.preview.suites import read_junit
from vouch.probes.http import HttpProbeSpec
from vouch.rollout.attestations.keys import generate_keypair
from vouch.rollout.attestations.model import Attestation
from vouch.rollout.attestations.sources import DirectorySource
from vouch.rollout.attestations.verify import AttestationVerifier, KeySpec, TrustSpec
from vouch.rollout.config import ServiceEnvironment, ServiceSpec
from vouch.rollout.preview import LocustSuite, PreviewSpec, ProbeSuite

DIGEST = "sha256:" + "5e" * 32
COMMIT = "4b" * 20


def service(*, probe_path: str = "/healthz") -> ServiceSpec:
    probe = HttpProbeSpec(name="healthz", targets=[f"http://{{address}}{probe_path}"], timeout=2.0)
    return ServiceSpec(
        command=[sys.executable, "-m", DEMO_MODULE, "--port", "{port}"],
        environments=[ServiceEnvironment(name="staging")],
        probes=[probe],
    )


def preview_of(address: str, mocks: dict[str, str]) -> Preview:
    now = time.time()
    return Preview("checkout-pr-7", "checkout", "1.0.0", "local", now, now + 3600, address, mocks=mocks)


@pytest.fixture
def start_demo() -> Iterator[Callable[..., str]]:
    """Start the demo service (not waiting: the health checks do); returns its ``host:port``."""
    with demo_processes() as start:

        def address(*args: str, env: dict[str, str] | None = None, wait: bool = False) -> str:
            return start(*args, env=env, wait=wait).removeprefix("http://")

        yield address


def start_mocks(*, payments_error_ratio: float = 0.0) -> list[MockServer]:
    return [MockServer(spec, seed=1) for spec in checkout_mocks(payments_error_ratio=payments_error_ratio)]


@pytest.fixture
async def mocks(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, MockServer]]:
    """The payments and inventory mocks; ``@pytest.mark.parametrize('mocks', [1.0], indirect=True)`` faults payments."""
    servers = start_mocks(payments_error_ratio=getattr(request, "param", 0.0))
    try:
        for server in servers:
            await server.start()
        yield {server.spec.name: server for server in servers}
    finally:
        for server in servers:
            await server.stop()


def backends(mocks: dict[str, MockServer]) -> dict[str, str]:
    return {**os.environ, "PAYMENTS_URL": mocks["payments"].url, "INVENTORY_URL": mocks["inventory"].url}


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return generate_keypair(tmp_path / "ci.key").private_path


async def attested(report: CheckReport, key: Path, store: Path) -> dict[str, Attestation]:
    """Attest ``report``, then verify what was stored with the public key alone; by step."""
    written = await attest(
        report, subject_name="checkout", digest=DIGEST, commit=COMMIT, key=key, source=DirectorySource(store)
    )
    assert len(written) == 2
    verifier = AttestationVerifier(TrustSpec(keys=[KeySpec(path=str(key) + ".pub")]))
    found = await DirectorySource(store).find(DIGEST)
    assert sorted(raw.source for raw in found) == sorted(written)
    checked = [verifier.verify(raw, subject_digest=DIGEST) for raw in found]
    assert all(isinstance(c, Attestation) for c in checked), checked
    return {c.step or "": c for c in checked if isinstance(c, Attestation)}


async def test_a_healthy_preview_passes_its_network_tests_and_both_attestations_verify(
    tmp_path: Path, start_demo: Callable[..., str], mocks: dict[str, MockServer], key: Path
) -> None:
    address = start_demo(env=backends(mocks))
    spec = PreviewSpec(health_deadline=30, tests=[write_network_suite(tmp_path)])
    preview = preview_of(address, {name: server.url for name, server in mocks.items()})

    report = await run_checks(preview, spec, service(), config_dir=tmp_path, clock=lambda: 1_700_000_000.0)

    assert report.healthy, report.health
    assert report.health == (Check("healthz", True, report.health[0].detail),)
    assert report.tests_result == "PASSED", report.tests
    assert report.passed
    assert [(c.name, c.passed, c.skipped) for c in report.tests] == [
        (CHECKOUT_TEST, True, False),
        ("network.test_checkout.test_refunds", True, True),
    ]
    assert report.mocked_backends == ("payments", "inventory")
    assert [c.path for c in mocks["payments"].calls] == ["/charge"]  # the suite's call, seen from here too

    by_step = await attested(report, key, tmp_path / "attestations")
    health = by_step["ephemeral-environment-health"].statement.predicate
    assert health["healthy"] is True
    assert health["environment"] == "checkout-pr-7"
    assert health["commit"] == COMMIT
    assert health["checked_at"] == "2023-11-14T22:13:20Z"
    assert [(c["name"], c["passed"]) for c in health["checks"]] == [("healthz", True)]
    tests = by_step["network-tests"].statement.predicate
    assert tests == {
        "result": "PASSED",
        "passed": 1,
        "failed": 0,
        "skipped": 1,
        "failed_tests": [],
        "mocked_backends": ["payments", "inventory"],
        "commit": COMMIT,
    }
    subject = by_step["network-tests"].statement.subjects[0]
    assert (subject.name, subject.digest["sha256"]) == ("checkout", DIGEST.removeprefix("sha256:"))


@pytest.mark.parametrize("mocks", [1.0], indirect=True)
async def test_a_faulty_backend_fails_the_network_test_and_the_attestation_names_it(
    tmp_path: Path, start_demo: Callable[..., str], mocks: dict[str, MockServer], key: Path
) -> None:
    address = start_demo(env=backends(mocks))
    spec = PreviewSpec(health_deadline=30, tests=[write_network_suite(tmp_path)])
    preview = preview_of(address, {name: server.url for name, server in mocks.items()})

    report = await run_checks(preview, spec, service(), config_dir=tmp_path)

    assert report.healthy
    assert report.tests_result == "FAILED"
    assert not report.passed
    failed = [c for c in report.tests if not c.passed]
    assert [c.name for c in failed] == [CHECKOUT_TEST]
    assert "backend payments failed: answered 503" in failed[0].detail
    assert [c.status for c in mocks["payments"].calls] == [503]
    assert mocks["inventory"].calls == ()  # the service stopped at the failed charge

    tests = (await attested(report, key, tmp_path / "attestations"))["network-tests"].statement.predicate
    assert tests["result"] == "FAILED"
    assert (tests["passed"], tests["failed"], tests["skipped"]) == (0, 1, 1)
    assert tests["failed_tests"] == [CHECKOUT_TEST]


async def test_an_unhealthy_preview_fails_without_running_its_tests(
    tmp_path: Path, start_demo: Callable[..., str], mocks: dict[str, MockServer], key: Path
) -> None:
    address = start_demo("--error-ratio", "1.0", env=backends(mocks), wait=True)  # all but /healthz answer 500
    spec = PreviewSpec(health_deadline=1, tests=[write_network_suite(tmp_path)])
    preview = preview_of(address, {name: server.url for name, server in mocks.items()})

    report = await run_checks(preview, spec, service(probe_path="/ready"), config_dir=tmp_path)

    assert not report.healthy
    assert [(c.name, c.passed) for c in report.health] == [("healthz", False)]
    assert report.health[0].detail.startswith("http_status"), report.health[0].detail
    assert report.tests_result == "FAILED"
    assert [(c.name, c.passed) for c in report.tests] == [(NOT_RUN, False)]
    assert "not healthy within 1s (failing: healthz)" in report.tests[0].detail
    assert not suite_ran(tmp_path)
    assert mocks["payments"].calls == ()

    by_step = await attested(report, key, tmp_path / "attestations")
    assert by_step["ephemeral-environment-health"].statement.predicate["healthy"] is False
    assert by_step["network-tests"].statement.predicate["result"] == "FAILED"


async def test_nothing_to_test_is_a_failure_and_probe_suites_run_the_named_probes(
    tmp_path: Path, start_demo: Callable[..., str]
) -> None:
    address = start_demo()
    preview = preview_of(address, {})
    empty = await run_checks(preview, PreviewSpec(health_deadline=30), service(), config_dir=tmp_path)
    assert empty.healthy
    assert (empty.tests_result, [c.name for c in empty.tests]) == ("FAILED", [NO_TESTS])

    spec = PreviewSpec(health_deadline=30, tests=[ProbeSuite(names=["healthz"]), ProbeSuite(names=["nope"])])
    report = await run_checks(preview, spec, service(), config_dir=tmp_path)
    assert [(c.name, c.passed) for c in report.tests] == [("probe healthz", True), ("probe nope", False)]
    assert "it has healthz" in report.tests[1].detail
    assert report.tests_result == "FAILED"


async def test_a_locust_suite_is_judged_on_its_error_ratio(tmp_path: Path, start_demo: Callable[..., str]) -> None:
    if importlib.util.find_spec("locust") is None:  # never imported here: its gevent patches break asyncio
        pytest.skip("Locust not installed: pip install 'vouch[loadtest]'")
    (tmp_path / "locustfile.py").write_text(
        "from locust import HttpUser, constant, task\n\n"
        "class Shopper(HttpUser):\n"
        "    wait_time = constant(0.05)\n\n"
        "    @task\n"
        "    def checkout(self):\n"
        "        self.client.post('/checkout', json={})\n"
    )
    preview = preview_of(start_demo(), {})  # no backends: every checkout answers 503
    spec = PreviewSpec(health_deadline=30, tests=[LocustSuite(locustfile="locustfile.py", users=1, duration=1)])
    report = await run_checks(preview, spec, service(), config_dir=tmp_path)
    assert [(c.name, c.passed) for c in report.tests] == [("locust locustfile.py", False)]
    assert "error ratio 1 is above the maximum 0" in report.tests[0].detail


async def test_a_suite_that_cannot_run_says_why(tmp_path: Path, start_demo: Callable[..., str]) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "test_broken.py").write_text("import not_a_module_anywhere\n")
    (tmp_path / "empty").mkdir()
    spec = PreviewSpec(
        health_deadline=30, tests=[{"kind": "pytest", "path": p} for p in ("missing", "broken", "empty")]
    )
    report = await run_checks(preview_of(start_demo(), {}), spec, service(), config_dir=tmp_path)
    details = {c.name: c.detail for c in report.tests if not c.passed}
    assert details["pytest missing"].startswith("no tests at ")
    assert details["broken.test_broken"] == (
        "collection failure: ModuleNotFoundError: No module named 'not_a_module_anywhere'"
    )
    assert details["pytest empty"] == "no test was collected"
    assert report.tests_result == "FAILED"


def test_junit_cases_become_checks(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="test_a" name="test_ok"/>'
        '<testcase classname="test_a" name="test_bad"><failure message="assert 502 == 200&#10;more">x</failure>'
        "</testcase>"
        '<testcase classname="test_a" name="test_later"><skipped message="not yet"/></testcase>'
        '<testcase classname="" name="test_a"><error message="collection failed"/></testcase>'
        "</testsuite></testsuites>"
    )
    assert read_junit(junit) == (
        Check("test_a.test_ok", True),
        Check("test_a.test_bad", False, "assert 502 == 200"),
        Check("test_a.test_later", True, "not yet", skipped=True),
        Check("test_a", False, "collection failed"),
    )
    assert read_junit(tmp_path / "absent.xml") == ()


def test_statements_refuse_what_is_not_a_digest_or_a_commit() -> None:
    report = CheckReport("checkout-pr-7", True, (Check("healthz", True),), "PASSED", (Check("t", True),))
    with pytest.raises(InputError, match="not a commit"):
        statements(report, subject_name="checkout", digest=DIGEST, commit="main")
    with pytest.raises(InputError, match="not a digest"):
        statements(report, subject_name="checkout", digest="latest", commit=COMMIT)
    made = statements(report, subject_name="checkout", digest=DIGEST, commit=COMMIT.upper())
    assert [s.predicate["commit"] for s in made] == [COMMIT, COMMIT]
    assert json.dumps([s.predicate for s in made])  # plain JSON all through
