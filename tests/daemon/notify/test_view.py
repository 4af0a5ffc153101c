"""Release views: the release's environments in order, from the store."""

from __future__ import annotations

from support.notify_fakes import NotifyStore, advanced, promotion, release

from vouch.daemon.notify.view import EnvironmentView, load_release_view, release_view
from vouch.rollout.state import Phase, StepPhase


def test_environments_keep_the_release_order_and_wait_until_started() -> None:
    rel = release(environments=("dev", "staging", "production"))
    staging = promotion(rel, "staging", step=2, steps=5, step_phase=StepPhase.SETTLING)
    view = release_view(rel, [staging])
    assert [e.name for e in view.environments] == ["dev", "staging", "production"]
    assert view.environments[0] == EnvironmentView("dev")
    assert view.environments[1] == EnvironmentView("staging", "Progressing", 2, 5, "settling", None, "")


def test_a_succeeded_promotion_shows_every_step_done_and_a_rollback_its_cause() -> None:
    rel = release()
    done = promotion(rel, "staging", phase=Phase.SUCCEEDED, step=4, steps=5)
    back = promotion(rel, "production", phase=Phase.ROLLED_BACK, step=1, abort_cause="alarm:HighErrorRate")
    staging, production = release_view(rel, [done, back]).environments
    assert (staging.step, staging.steps) == (5, 5)
    assert (production.phase, production.rollback_cause) == ("RolledBack", "alarm:HighErrorRate")


def test_the_newest_promotion_of_an_environment_wins_and_others_releases_are_ignored() -> None:
    rel, other = release("r-1"), release("r-2")
    old = promotion(rel, "staging", phase=Phase.ROLLED_BACK, created_at=1.0)
    new = advanced(promotion(rel, "staging", step=3, created_at=2.0), id="p-new")
    stray = promotion(other, "production", phase=Phase.SUCCEEDED)
    view = release_view(rel, [new, old, stray])
    assert view.environments[0].phase == "Progressing"
    assert view.environments[1].phase is None


async def test_loaded_from_the_store() -> None:
    store = NotifyStore()
    rel = store.put_release(release())
    store.put_promotion(promotion(rel, "staging", step=1))
    view = await load_release_view(store, "r-1")
    assert view is not None
    assert view.environments[0].step == 1
    assert await load_release_view(store, "r-unknown") is None
