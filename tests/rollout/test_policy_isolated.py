"""A policy of your own runs in a worker process: what makes regopy hang or die denies, and the next decision works."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.demo import eventually
from support.policy_inputs import STAGING_STEPS, complete, document, without

from vouch.rollout.policy import RegoPolicySpec, build_policy
from vouch.rollout.policy import isolated as isolated_module
from vouch.rollout.policy.isolated import IsolatedRegoPolicy
from vouch.rollout.policy.rego import RegoPolicy

# Decides on input.mode: "split" splits by input.separator (regex.split never returns for ""), "print"
# prints before answering, "wait" takes a while, "long" denies for 500 reasons; anything else allows.
POLICY = """package vouch

decision := {"allow": count(regex.split(input.separator, "a,b")) == 2, "denials": set()} if input.mode == "split"

decision := {"allow": true, "denials": {sprintf("said %v", [print("to stdout")])}} if input.mode == "print"

decision := {"allow": count(slow) > 0, "denials": set()} if input.mode == "wait"

slow := {x | some x in numbers.range(1, 300000); x % 7 == 0}

decision := {"allow": false, "denials": {sprintf("reason %d", [i]) | some i in numbers.range(1, 500)}} if {
	input.mode == "long"
}

decision := {"allow": true, "denials": set()} if not input.mode in {"split", "print", "wait", "long"}
"""


@pytest.fixture
async def isolated() -> AsyncIterator[IsolatedRegoPolicy]:
    policy = IsolatedRegoPolicy(RegoPolicy({"modes.rego": POLICY}), timeout=2.0)
    try:
        yield policy
    finally:
        await policy.close()


def worker_pid(policy: IsolatedRegoPolicy) -> int | None:
    process = policy._process
    return process.pid if process is not None and process.returncode is None else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_the_default_policy_decides_the_same_in_a_worker() -> None:
    inputs = [document("staging"), document("staging", without(complete(STAGING_STEPS), "coverage"))]
    in_process = RegoPolicy.default()
    worker = IsolatedRegoPolicy(RegoPolicy.default(), timeout=10.0)
    try:
        for doc in inputs:
            here, there = in_process.evaluate(doc), await worker.decide(doc)
            assert (there.allow, there.denials) == (here.allow, here.denials)
            assert (there.input_digest, there.policy_digest) == (here.input_digest, here.policy_digest)
    finally:
        await worker.close()
    assert here.denials, "the second input is denied, with its reasons"


async def test_a_decision_that_never_returns_is_stopped_and_the_next_one_works(isolated: IsolatedRegoPolicy) -> None:
    assert (await isolated.decide({"mode": "split", "separator": ","})).allow
    first = worker_pid(isolated)
    stopped = await isolated.decide({"mode": "split", "separator": ""})
    assert not stopped.allow
    assert stopped.failed
    assert stopped.denials[0].startswith("policy evaluation took longer than 2s and was stopped")
    assert stopped.input_digest.startswith("sha256:")
    assert first is not None
    assert not alive(first), "the stuck worker was killed"
    assert (await isolated.decide({"mode": "split", "separator": ","})).allow
    assert worker_pid(isolated) not in (None, first)


async def test_a_worker_that_dies_while_deciding_denies_naming_the_signal(isolated: IsolatedRegoPolicy) -> None:
    assert (await isolated.decide({})).allow
    pid = worker_pid(isolated)
    assert pid is not None
    deciding = asyncio.create_task(isolated.decide({"mode": "split", "separator": ""}))
    await asyncio.sleep(0.3)
    os.kill(pid, signal.SIGSEGV)
    died = await deciding
    assert not died.allow
    assert died.failed
    assert died.denials == ("policy evaluation failed: the policy engine crashed (SIGSEGV) while deciding",)
    assert (await isolated.decide({})).allow


async def test_what_the_policy_prints_is_not_taken_for_an_answer(isolated: IsolatedRegoPolicy) -> None:
    printed = await isolated.decide({"mode": "print"})
    assert (printed.allow, printed.denials, printed.failed) == (False, ("said true",), False)
    assert (await isolated.decide({})).allow


async def test_a_cancelled_decision_leaves_no_answer_behind_for_the_next(isolated: IsolatedRegoPolicy) -> None:
    assert (await isolated.decide({})).allow
    pid = worker_pid(isolated)
    assert pid is not None
    deciding = asyncio.create_task(isolated.decide({"mode": "wait"}))
    await asyncio.sleep(0.05)
    deciding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await deciding
    assert not alive(pid)
    answer = await isolated.decide({"mode": "print"})
    assert answer.denials == ("said true",), "the answer to the cancelled decision was not read as this one's"


async def test_a_decision_cancelled_while_the_worker_starts_leaves_it_in_step(isolated: IsolatedRegoPolicy) -> None:
    starting = asyncio.create_task(isolated.decide({"mode": "print"}))
    await asyncio.sleep(0.01)  # the worker takes a good tenth of a second to import regopy and compile
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert worker_pid(isolated) is None
    answer = await isolated.decide({"mode": "print"})
    assert answer.denials == ("said true",), "the worker's ready line was not read as a decision"


async def test_an_answer_too_long_to_read_denies_and_the_next_one_works(
    isolated: IsolatedRegoPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(isolated_module, "LINE_LIMIT", 2048)
    long = await isolated.decide({"mode": "long"})
    assert (long.allow, long.failed) == (False, True)
    assert long.denials == ("policy evaluation failed: the policy worker's answer is longer than 2048 bytes",)
    printed = await isolated.decide({"mode": "print"})
    assert printed.denials == ("said true",), "what was left of the long answer was not read as this one"


async def test_close_stops_the_worker(isolated: IsolatedRegoPolicy) -> None:
    await isolated.decide({})
    pid = worker_pid(isolated)
    assert pid is not None
    await isolated.close()
    await eventually(lambda: not alive(pid), what="the worker gone")
    assert worker_pid(isolated) is None


async def test_a_policy_of_your_own_is_isolated_unless_told_otherwise(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text('package vouch\n\ndecision := {"allow": true, "denials": set()}\n')
    own = build_policy(RegoPolicySpec(path=str(tmp_path), timeout=3.0))
    default = build_policy(RegoPolicySpec())
    inline = build_policy(RegoPolicySpec(path=str(tmp_path), isolated=False))
    shipped_isolated = build_policy(RegoPolicySpec(isolated=True))
    try:
        assert isinstance(own, IsolatedRegoPolicy)
        assert isinstance(shipped_isolated, IsolatedRegoPolicy)
        assert isinstance(default, RegoPolicy)
        assert isinstance(inline, RegoPolicy)
        assert (await own.decide({})).allow
        assert own.full_statements
        assert not shipped_isolated.full_statements
    finally:
        for engine in (own, default, inline, shipped_isolated):
            await engine.close()
