"""A Rego policy evaluated in a worker process of its own, with a deadline: what regopy does wrong stays there.

regopy runs in the caller's process, and some inputs make it do worse than fail (measured with
regopy 1.5.2): :data:`NEVER_RETURNS` lists the builtins that then never return, and
``object.subset`` with an empty array kills the process. In the daemon that would stop every
promotion, probe and rollback at once. A policy of your own is therefore evaluated in a worker
(:mod:`.worker`, ``python -m vouch.rollout.policy.worker``), one decision at a time:

- a decision that takes longer than ``timeout`` is a deny saying so, and the worker is killed;
- a worker that dies while deciding is a deny naming how it died;
- either way the next decision starts a fresh worker, so one bad input does not deny the next.

The policy is compiled here too, when the engine is built, so a policy that does not compile is a
:class:`~vouch.core.errors.ConfigError` at configuration time, and the decision's digests are
computed here from the same canonical JSON the worker reads. A decision costs a few tenths of a
millisecond more than in-process (``benchmarks/policy_decision.py``: ``policy_isolated_ms``), and the
worker holds its own regopy (tens of MB).

Example::

    policy = IsolatedRegoPolicy(RegoPolicy.from_path("policies/"), timeout=5.0)
    decision = await policy.decide(policy_input(...))
    await policy.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any

from vouch.core.errors import ConfigError, Problem
from vouch.rollout.policy.base import Decision
from vouch.rollout.policy.input import Answer, canonical_json, failure, read_decision
from vouch.rollout.policy.rego import RegoPolicy

NEVER_RETURNS = (
    'replace and strings.replace_n with "" to replace, regex.split with an empty pattern, yaml.unmarshal("")'
)
"""Builtins that never return on some inputs (regopy 1.5.2, found by calling each with edge values)."""
START_TIMEOUT = 60.0
"""Longest a worker may take to start and compile the policy (it imports regopy), apart from the decision's own."""
LINE_LIMIT = 64 * 1024 * 1024
"""Longest answer read from the worker: a decision with very many denials still fits."""


class _WorkerGone(Exception):
    """The worker ended (or could not start) while it owed an answer."""


class _Unreadable(Exception):
    """The worker's answer could not be read whole; what is left of it would be taken for the next answer."""


class IsolatedRegoPolicy:
    """:class:`~vouch.rollout.policy.base.PolicyEngine` on a :class:`RegoPolicy` evaluated in a worker process."""

    def __init__(self, policy: RegoPolicy, *, timeout: float = 5.0) -> None:
        self._policy = policy
        self._timeout = timeout
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    @property
    def full_statements(self) -> bool:
        return self._policy.full_statements

    @property
    def query(self) -> str:
        return self._policy.query

    @property
    def policy_digest(self) -> str:
        return self._policy.policy_digest

    async def decide(self, input: Mapping[str, Any]) -> Decision:
        """Evaluate the policy on ``input`` in the worker; never raises, a failure of any kind is a deny."""
        start = time.perf_counter()
        try:
            text = canonical_json(input)
        except (TypeError, ValueError) as exc:
            denial = f"policy input is not a JSON document: {exc}"
            return Decision(False, (denial,), "", self.policy_digest, time.perf_counter() - start, failed=True)
        answer = await self._decide(text)
        return Decision(
            allow=answer.allow,
            denials=answer.denials,
            failed=answer.failed,
            input_digest="sha256:" + hashlib.sha256(text.encode()).hexdigest(),
            policy_digest=self.policy_digest,
            elapsed=time.perf_counter() - start,
        )

    async def close(self) -> None:
        """Stop the worker, if one runs."""
        async with self._lock:
            await self._stop()

    async def _decide(self, text: str) -> Answer:
        async with self._lock:
            try:
                return await self._exchange(text)
            except asyncio.CancelledError:
                # A worker cancelled mid-exchange still owes an answer, which the next decision would read
                # as its own: it goes, and the next decision starts another.
                await asyncio.shield(self._stop())
                raise

    async def _exchange(self, text: str) -> Answer:
        try:
            process = await asyncio.wait_for(self._started(), START_TIMEOUT)
        except (TimeoutError, _WorkerGone, _Unreadable, OSError, ConfigError) as exc:
            await self._stop()
            return failure(f"policy evaluation failed: the policy worker could not start: {_why(exc)}")
        try:
            async with asyncio.timeout(self._timeout):
                answer = await _ask(process, text.encode() + b"\n")
        except TimeoutError:
            await self._stop()
            return failure(
                f"policy evaluation took longer than {self._timeout:g}s and was stopped: a slow policy, or a "
                f"builtin that never returns on this input (with regopy 1.5.2: {NEVER_RETURNS})"
            )
        except _WorkerGone:
            code = await self._reap()
            return failure(f"policy evaluation failed: the policy engine {_death(code)} while deciding")
        except _Unreadable as exc:
            await self._stop()
            return failure(f"policy evaluation failed: {exc}")
        decided = read_decision(answer)
        return decided._replace(failed=True) if answer.get("failed") is True else decided

    async def _started(self) -> asyncio.subprocess.Process:
        if self._process is not None and self._process.returncode is None:
            return self._process  # only ever kept once it said it is ready: _stop() drops it otherwise
        self._process = process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "vouch.rollout.policy.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
        )
        settings = {"sources": dict(self._policy.sources), "query": self._policy.query}
        answer = await _ask(process, json.dumps(settings).encode() + b"\n")
        if answer.get("ready") is not True:
            problems = answer.get("problems") or [["policy", None, f"unexpected answer {answer!r}"]]
            raise ConfigError([Problem(str(f), line, "", str(m)) for f, line, m in problems])
        return process

    async def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()

    async def _reap(self) -> int | None:
        process, self._process = self._process, None
        if process is None:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                return await process.wait()
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        return await process.wait()


async def _ask(process: asyncio.subprocess.Process, line: bytes) -> dict[str, Any]:
    """Send one line to the worker and read its one-line answer; :class:`_WorkerGone` when it ended instead."""
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        process.stdin.write(line)
        await process.stdin.drain()
        reply = await process.stdout.readline()
    except (BrokenPipeError, ConnectionResetError) as exc:
        raise _WorkerGone() from exc
    except ValueError as exc:  # asyncio's way of saying the line is longer than the limit
        raise _Unreadable(f"the policy worker's answer is longer than {LINE_LIMIT} bytes") from exc
    if not reply.endswith(b"\n"):
        raise _WorkerGone()
    try:
        answer = json.loads(reply)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return {"allow": False, "denials": [f"the policy worker answered {reply[:200]!r}"], "failed": True}
    return answer


def _death(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"crashed ({signal.Signals(-code).name})"
    return f"exited (status {code})"


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"not ready within {START_TIMEOUT:g}s"
    return str(exc) or type(exc).__name__
