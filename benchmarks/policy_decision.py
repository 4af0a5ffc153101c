"""One promotion's attestation decision: verify 20 signed attestations, then evaluate the default policy.

The 20 attestations are what a production promotion reads: one per required
step (build provenance, tests, DCO, signed commits, vulnerability and secret
scans, coverage, review approval, ephemeral-environment health, network tests,
vouch's own "deployed to staging") plus nine more test suites. Each is an
in-toto Statement in a DSSE envelope signed here with a fresh local ed25519 key,
and verified through ``vouch.rollout.attestations.verify`` (signature, payload
type, subject, predicate schema) exactly as the attestations gate does. The
decision is then taken by the embedded Rego engine with vouch's default policy.

Timed per repetition, after a warm-up: ``verify_ms`` for the 20 verifications,
``input_ms`` to build the policy input (each attestation's projection
included), ``policy_eval_ms`` for the policy decision (canonical JSON of the
input and its digest, handing it to regopy, evaluation and reading the answer),
and ``total_ms`` for all three. Medians are reported. ``policy_floor_ms`` is
the same evaluation with a policy that reads nothing of its input: what
handing the input to regopy costs before any rule runs. ``policy_loop_floor_ms``
adds the least any policy that reads every attestation does: one pass over
them checking only the subject and the commit; no policy that judges 20
attestations with this engine can take less. ``policy_isolated_ms`` is the
same decision in a worker process (``IsolatedRegoPolicy``, how a policy of your
own runs), for what the isolation costs. ``handover`` says how
the input went to regopy (``built`` value by value, or ``text``: see
``vouch.rollout.policy.handover``) and ``input_bytes`` the size of its
canonical JSON. Targets: total under 100 ms, policy evaluation under 1 ms.

    python benchmarks/policy_decision.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import regopy

from vouch.rollout.attestations.dsse import sign_statement
from vouch.rollout.attestations.keys import generate_keypair, load_signer
from vouch.rollout.attestations.model import Attestation, RawAttestation, Rejected, Statement, Subject
from vouch.rollout.attestations.predicates import predicate_type_for
from vouch.rollout.attestations.verify import AttestationVerifier, KeySpec, TrustSpec
from vouch.rollout.policy.base import Decision
from vouch.rollout.policy.handover import set_input
from vouch.rollout.policy.input import canonical_json, policy_input
from vouch.rollout.policy.isolated import IsolatedRegoPolicy
from vouch.rollout.policy.rego import RegoPolicy

ARTIFACT = "sha256:" + "ab" * 32
COMMIT = "1f" * 20
WARMUP = 20
TARGET_TOTAL_MS = 100.0
TARGET_POLICY_EVAL_MS = 1.0
FLOOR_POLICY = 'package vouch\n\ndecision := {"allow": true, "denials": set()}\n'
LOOP_POLICY = """package vouch

about_this := {a.step |
	some a in input.attestations
	input.artifact.digest in a.subjects
	input.commit.sha in a.commits
}

decision := {"allow": count(about_this) > 0, "denials": set()}
"""


def predicates(commit: str) -> list[tuple[str, dict[str, Any]]]:
    """(step, predicate) for a production promotion whose every step passed: 11 steps, then 9 more test suites."""
    git = [{"uri": "git+https://git.example.com/checkout", "digest": {"gitCommit": commit}}]
    approver = {"name": "bob", "commit": commit}
    steps: list[tuple[str, dict[str, Any]]] = [
        (
            "build",
            {
                "buildDefinition": {"buildType": "https://ci.example.com/build/v1", "resolvedDependencies": git},
                "runDetails": {"builder": {"id": "https://ci.example.com/runner"}},
            },
        ),
        ("dco", {"commit": commit, "passed": True, "commits": [{"sha": commit, "signed_off": True}]}),
        ("signed-commits", {"commit": commit, "passed": True, "commits": [{"sha": commit, "verified": True}]}),
        (
            "vulnerability-scan",
            {
                "scanner": {
                    "uri": "pkg:github/aquasecurity/trivy@0.50.0",
                    "result": [{"id": "CVE-2024-0001", "severity": [{"method": "nvd", "score": "MEDIUM"}]}],
                }
            },
        ),
        ("secret-scan", {"commit": commit, "scanner": {"name": "gitleaks"}, "findings": []}),
        ("coverage", {"commit": commit, "percent": 91.5}),
        ("review-approval", {"commit": commit, "author": "ann", "approvers": [approver]}),
        ("ephemeral-environment-health", {"commit": commit, "healthy": True}),
        ("network-tests", {"commit": commit, "result": "PASSED", "passed": 12, "failed": 0}),
        (
            "deployed",
            {
                "commit": commit,
                "environment": "staging",
                "service": "checkout",
                "version": "2.4.1",
                "promotion_id": "p-1",
                "steps": [{"label": "100%"}],
                "finished_at": "2026-03-01T11:00:00Z",
            },
        ),
    ]
    for suite in range(10):
        configuration = [{"name": f"suite-{suite}", "digest": {"gitCommit": commit}}]
        result = {"result": "PASSED", "configuration": configuration, "passedTests": [f"test_{suite}"]}
        steps.append(("tests", result))
    return steps


def signed_documents(key_path: Path) -> list[RawAttestation]:
    signer = load_signer(key_path)
    subject = Subject(name="checkout", digest={"sha256": ARTIFACT.removeprefix("sha256:")})
    documents = []
    for index, (step, predicate) in enumerate(predicates(COMMIT)):
        statement = Statement(subjects=(subject,), predicate_type=predicate_type_for(step), predicate=predicate)
        envelope = sign_statement(statement, [signer])
        documents.append(RawAttestation(f"attestations/{index:02d}-{step}.json", json.dumps(envelope).encode()))
    return documents


def build_input(results: list[Attestation | Rejected]) -> dict[str, Any]:
    return policy_input(
        environment="production",
        service="checkout",
        version="2.4.1",
        artifact={"name": "checkout", "digest": ARTIFACT},
        commit={"sha": COMMIT, "merge": "fast-forward", "pr_head": COMMIT, "author": "ann"},
        attestations=[r for r in results if isinstance(r, Attestation)],
        rejected=[r for r in results if isinstance(r, Rejected)],
        now=datetime.now(UTC),
    )


def once(
    verifier: AttestationVerifier, policy: RegoPolicy, documents: list[RawAttestation]
) -> tuple[float, float, float, Decision]:
    """One decision: (verify_ms, input_ms, policy_eval_ms, decision)."""
    start = time.perf_counter()
    results = [verifier.verify(raw, subject_digest=ARTIFACT) for raw in documents]
    verified = time.perf_counter()
    document = build_input(results)
    built = time.perf_counter()
    decision = policy.evaluate(document)
    decided = time.perf_counter()
    return (verified - start) * 1000, (built - verified) * 1000, (decided - built) * 1000, decision


def floor(documents: list[RawAttestation], verifier: AttestationVerifier, source: str, repeats: int = 100) -> float:
    """Median ms to evaluate the policy ``source`` (a floor: see the module docstring) on the same input."""
    results = [verifier.verify(raw, subject_digest=ARTIFACT) for raw in documents]
    document = build_input(results)
    policy = RegoPolicy({"floor.rego": source})
    if not policy.evaluate(document).allow:
        raise SystemExit(f"the floor policy denied the benchmark's input:\n{source}")
    times = []
    for _ in range(WARMUP):
        policy.evaluate(document)
    for _ in range(repeats):
        start = time.perf_counter()
        policy.evaluate(document)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


async def isolated_ms(documents: list[RawAttestation], verifier: AttestationVerifier, repeats: int = 100) -> float:
    """Median ms of the default policy's decision in a worker process, on the same input."""
    document = build_input([verifier.verify(raw, subject_digest=ARTIFACT) for raw in documents])
    policy = IsolatedRegoPolicy(RegoPolicy.default(), timeout=10.0)
    try:
        if not (await policy.decide(document)).allow:
            raise SystemExit("the isolated policy denied the benchmark's input")
        for _ in range(WARMUP):
            await policy.decide(document)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            await policy.decide(document)
            times.append((time.perf_counter() - start) * 1000)
    finally:
        await policy.close()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vouch-bench-policy-") as tmp:
        pair = generate_keypair(Path(tmp) / "ci.key")
        verifier = AttestationVerifier(TrustSpec(keys=[KeySpec(path=str(pair.public_path))]))
        documents = signed_documents(pair.private_path)
    policy = RegoPolicy.default()
    first = [verifier.verify(raw, subject_digest=ARTIFACT) for raw in documents]
    rejected = [r.reason for r in first if isinstance(r, Rejected)]
    if rejected:
        raise SystemExit(f"the benchmark's own attestations were rejected: {rejected}")
    for _ in range(WARMUP):
        once(verifier, policy, documents)
    runs = [once(verifier, policy, documents) for _ in range(args.repeats)]
    denied = [decision for *_, decision in runs if not decision.allow]
    if denied:
        raise SystemExit(f"the decision was a deny: {denied[0].denials}")
    verify_ms, input_ms, eval_ms = (statistics.median(column) for column in list(zip(*runs, strict=True))[:3])
    floor_ms = floor(documents, verifier, FLOOR_POLICY)
    loop_floor_ms = floor(documents, verifier, LOOP_POLICY)
    isolated = asyncio.run(isolated_ms(documents, verifier))
    total = [v + i + e for v, i, e, _ in runs]
    total_ms = statistics.median(total)
    document = build_input(first)
    text = canonical_json(document)
    handover = set_input(regopy.Interpreter(), document, text)
    print(f"{len(documents)} DSSE attestations (ed25519), production policy, {args.repeats} decisions after {WARMUP}")
    print(f"verify {verify_ms:.2f} ms | input {input_ms:.2f} ms | policy {eval_ms:.2f} ms | total {total_ms:.2f} ms")
    print(f"policy floor (same input, a policy that reads none of it) {floor_ms:.2f} ms")
    print(f"policy loop floor (one pass checking each attestation's subject and commit) {loop_floor_ms:.2f} ms")
    print(f"the same decision in a worker process (a policy of your own) {isolated:.2f} ms")
    print(f"input: {len(text)} bytes of canonical JSON, handed to regopy as {handover}")
    result = {
        "benchmark": "policy_decision",
        "attestations": len(documents),
        "repeats": args.repeats,
        "total_ms": round(total_ms, 3),
        "policy_eval_ms": round(eval_ms, 3),
        "verify_ms": round(verify_ms, 3),
        "input_ms": round(input_ms, 3),
        "policy_floor_ms": round(floor_ms, 3),
        "policy_loop_floor_ms": round(loop_floor_ms, 3),
        "policy_isolated_ms": round(isolated, 3),
        "input_bytes": len(text),
        "handover": handover,
        "total_p95_ms": round(statistics.quantiles(total, n=20)[18], 3),
        "target_total_ms": TARGET_TOTAL_MS,
        "target_policy_eval_ms": TARGET_POLICY_EVAL_MS,
        "total_target_met": total_ms < TARGET_TOTAL_MS,
        "policy_eval_target_met": eval_ms < TARGET_POLICY_EVAL_MS,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
