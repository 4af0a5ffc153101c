"""Load-test settings: safe defaults, and every contradiction refused with the fix in the message."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from vouch.loadtests.settings import LoadTestSpec, LoadThresholds


def test_defaults_are_safe() -> None:
    spec = LoadTestSpec()
    assert (spec.users, spec.spawn_rate, spec.rate, spec.duration, spec.step) == (10, 10.0, None, 30.0, 0)
    assert spec.thresholds == LoadThresholds(max_error_ratio=0.01, min_rate_ratio=0.9)
    assert (spec.compare_stable, spec.locust_command, spec.locustfile, spec.paths) == (False, None, None, [])


def test_steps_are_indexes_or_labels() -> None:
    assert LoadTestSpec(step="50%").step == "50%"
    assert LoadTestSpec.model_validate({"step": 2}).step == 2
    assert LoadTestSpec.model_validate({"step": "2"}).step == "2"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"locustfile": "l.py", "paths": ["/"]}, "not both"),
        ({"paths": ["cart"]}, "must start with '/'"),
        ({"paths": ["FETCH /cart"]}, "unknown method 'FETCH'"),
        ({"paths": ["GET /a b"]}, "is not a request"),
        ({"duration": "500ms"}, "at least 1s"),
        ({"duration": "soon"}, "is not a duration"),
        ({"step": -1}, "counts from 0"),
        ({"users": 0}, "greater than or equal to 1"),
        ({"thresholds": {"max_latency_ms": {"p95": 0}}}, "must be positive"),
        ({"thresholds": {"max_latency_ms": {"p42": 10}}}, "p42"),
        ({"thresholds": {"max_canary_regression": {"p95": 1.2}}}, "compare_stable: true"),
        ({"thresholds": {"max_error_ratio": 2}}, "less than or equal to 1"),
        ({"user": 5}, "Extra inputs are not permitted"),
    ],
)
def test_contradictions_are_refused(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LoadTestSpec.model_validate(values)
