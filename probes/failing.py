"""When a probe counts as *failing*: a pure fold over its outcomes, one run at a time.

A single failed run is data; *failing* is the judgement that deserves an alert
or a faster interval. It is the state after the latest run under a
:class:`~vouch.probes.settings.FailingPolicy`:

- failing after ``consecutive`` failed runs in a row, or
- when ``of_last`` and ``failures`` are set, after ``failures`` failed runs
  among the last ``of_last`` (a flapping target that never fails three times
  in a row still gets noticed);
- **recovered on the first success.** Whatever the window still holds, a run
  that passed means the target answers correctly right now, and the state says
  what is true now. The window is kept, so a flapping target is failing again
  at its very next failure while enough failures remain among the last
  ``of_last``; smoothing the flapping into one long alert is the alerting
  layer's job (the generated ``ProbeFailing`` rule keeps firing for a while,
  see :mod:`vouch.probes.rules`).

Example::

    >>> from vouch.probes.settings import FailingPolicy
    >>> policy = FailingPolicy(consecutive=2)
    >>> state = FailingState().update(False, policy)
    >>> state.failing, state.consecutive_failures
    (False, 1)
    >>> state = state.update(False, policy)
    >>> state.failing
    True
    >>> state.update(True, policy).failing
    False
"""

from __future__ import annotations

from dataclasses import dataclass

from vouch.probes.settings import FailingPolicy


def window_size(policy: FailingPolicy) -> int:
    """How many outcomes the state keeps: enough for both rules of ``policy``.

    >>> window_size(FailingPolicy(consecutive=3, of_last=10, failures=4))
    10
    """
    return max(policy.consecutive, policy.of_last or 0)


@dataclass(frozen=True)
class FailingState:
    """A probe's recent history and whether it is failing; never mutated, :meth:`update` makes the next one.

    ``recent`` holds the outcomes of the last runs, oldest first, ``True``
    for a success; it is at most :func:`window_size` long for the policy of the
    latest update. ``runs`` counts every update since the state was created.
    """

    consecutive_failures: int = 0
    recent: tuple[bool, ...] = ()
    failing: bool = False
    runs: int = 0

    @property
    def recent_failures(self) -> int:
        """Failed runs among ``recent``."""
        return self.recent.count(False)

    def update(self, success: bool, policy: FailingPolicy) -> FailingState:
        """The state after one more run whose outcome was ``success``."""
        recent = (*self.recent, success)[-window_size(policy) :]
        consecutive = 0 if success else self.consecutive_failures + 1
        return FailingState(
            consecutive_failures=consecutive,
            recent=recent,
            failing=not success and _over_limit(consecutive, recent, policy),
            runs=self.runs + 1,
        )


def _over_limit(consecutive: int, recent: tuple[bool, ...], policy: FailingPolicy) -> bool:
    if consecutive >= policy.consecutive:
        return True
    if policy.of_last is None or policy.failures is None:
        return False
    return recent[-policy.of_last :].count(False) >= policy.failures
