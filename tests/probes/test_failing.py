"""The failing state: table cases, then every outcome sequence up to eight runs against a reference."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence

import pytest

from vouch.probes.failing import FailingState, window_size
from vouch.probes.settings import FailingPolicy

F, S = False, True


def fold(outcomes: Sequence[bool], policy: FailingPolicy) -> list[FailingState]:
    states, state = [], FailingState()
    for outcome in outcomes:
        state = state.update(outcome, policy)
        states.append(state)
    return states


@pytest.mark.parametrize(
    ("policy", "outcomes", "failing"),
    [
        (FailingPolicy(consecutive=3), [F, F], [0, 0]),
        (FailingPolicy(consecutive=3), [F, F, F], [0, 0, 1]),
        (FailingPolicy(consecutive=3), [F, F, F, F, S, F], [0, 0, 1, 1, 0, 0]),
        (FailingPolicy(consecutive=1), [S, F, S, F], [0, 1, 0, 1]),
        (FailingPolicy(consecutive=3), [F, F, S, F, F], [0, 0, 0, 0, 0]),
        # 2 of the last 4: the flapping target is noticed although it never fails twice in a row
        (FailingPolicy(consecutive=3, of_last=4, failures=2), [F, S, F], [0, 0, 1]),
        # recovered on the first success, failing again at the next failure while the window holds two
        (FailingPolicy(consecutive=3, of_last=4, failures=2), [F, S, F, S, F], [0, 0, 1, 0, 1]),
        # the old failure has left the window of four: one failure among the last four is not enough
        (FailingPolicy(consecutive=3, of_last=4, failures=2), [F, S, S, S, F], [0, 0, 0, 0, 0]),
    ],
)
def test_table(policy: FailingPolicy, outcomes: list[bool], failing: list[int]) -> None:
    assert [int(s.failing) for s in fold(outcomes, policy)] == failing


def test_counts_and_window() -> None:
    policy = FailingPolicy(consecutive=2, of_last=3, failures=3)
    states = fold([F, F, S, F, F, F], policy)
    assert [s.consecutive_failures for s in states] == [1, 2, 0, 1, 2, 3]
    assert states[-1].recent == (F, F, F)
    assert states[-1].recent_failures == 3
    assert states[-1].runs == 6


def test_state_is_frozen_and_update_returns_a_new_one() -> None:
    state = FailingState()
    after = state.update(False, FailingPolicy(consecutive=1))
    assert state == FailingState()
    assert after.failing
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.failing = False  # type: ignore[misc]


def test_a_narrower_policy_trims_the_window() -> None:
    wide = fold([F] * 10, FailingPolicy(consecutive=1, of_last=10, failures=10))[-1]
    narrow = wide.update(True, FailingPolicy(consecutive=2))
    assert narrow.recent == (F, S)


def policies() -> Iterator[FailingPolicy]:
    for consecutive in range(1, 5):
        yield FailingPolicy(consecutive=consecutive)
        for of_last in range(1, 6):
            for failures in range(1, of_last + 1):
                yield FailingPolicy(consecutive=consecutive, of_last=of_last, failures=failures)


def reference(history: Sequence[bool], policy: FailingPolicy) -> bool:
    """Failing, computed from the whole history at once: the definition the fold must agree with."""
    if not history or history[-1]:
        return False
    trailing = len(history) - len("".join("S" if o else "F" for o in history).rstrip("F"))
    if trailing >= policy.consecutive:
        return True
    if policy.of_last is None or policy.failures is None:
        return False
    return list(history[-policy.of_last :]).count(False) >= policy.failures


@pytest.mark.parametrize("policy", list(policies()), ids=repr)
def test_every_sequence_agrees_with_the_definition(policy: FailingPolicy) -> None:
    for length in range(1, 9):
        for history in itertools.product((F, S), repeat=length):
            state = fold(history, policy)[-1]
            assert state.failing == reference(history, policy), history
            assert state.recent == history[-window_size(policy) :]
            trailing = length - len("".join("S" if o else "F" for o in history).rstrip("F"))
            assert state.consecutive_failures == trailing
            assert state.runs == length
            if history[-1]:
                assert not state.failing  # the first success always recovers
