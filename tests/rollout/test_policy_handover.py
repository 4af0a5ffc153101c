"""Handing the input to regopy value by value reads exactly as the JSON text would, or goes as text."""

from __future__ import annotations

import json
from typing import Any

import pytest
import regopy
from support.policy_inputs import STAGING_STEPS, attestation, complete, document, replace

from vouch.rollout.policy.handover import set_input
from vouch.rollout.policy.input import canonical_json
from vouch.rollout.policy.rego import RegoPolicy

STRINGS = [
    "plain",
    'a "quoted" word',
    "back\\slash",
    "line\nbreak\ttab\rreturn",
    "\x01\x1f control",
    "nul\x00inside",
    "é, ß, 日本, 😀",
    "</script>",
    "",
]

# What a policy can read of a value: the value itself, its rendering, its length, equality with a literal.
PROBE = """package probe

echo := input

shown := sprintf("%v", [input])

lengths := {k: count(input.strings[k]) | some k in object.keys(input.strings)}

equal := {k | some k in object.keys(input.strings); input.strings[k] == input.literals[k]}

by_key := {k: input.keyed[k] | some k in object.keys(input.keyed)}
"""


def read(document: dict[str, Any], how: str) -> dict[str, str]:
    """Every probe rule's answer, with ``document`` handed over as built values or as JSON text."""
    answers = {}
    for rule in ("echo", "shown", "lengths", "equal", "by_key"):
        builder = regopy.Interpreter()
        builder.add_module("probe.rego", PROBE)
        bundle = builder.build(f"data.probe.{rule}")
        runner = regopy.Interpreter()
        if how == "built":
            assert set_input(runner, document, canonical_json(document)) == "built"
        else:
            runner.set_input_term(canonical_json(document))
        answers[rule] = str(runner.query_bundle(bundle))
    return answers


def test_strings_numbers_and_structure_read_the_same_as_json_text() -> None:
    document = {
        "strings": {str(i): s for i, s in enumerate(STRINGS)},
        "literals": {str(i): s for i, s in enumerate(STRINGS)},
        "keyed": {s: i for i, s in enumerate(STRINGS)},
        "numbers": [0, -1, 2**53 + 1, 2**63 - 1, 91.5, -3.25, 80.0, 0.125],
        "nested": [[], {}, [None, True, False], {"a": [{"b": "c"}]}],
    }
    built = read(document, "built")
    assert built == read(document, "text")
    assert json.loads(built["echo"])["expressions"] == [document]


def test_the_default_policys_input_goes_as_values() -> None:
    assert set_input(regopy.Interpreter(), document("production"), "{}") == "built"


@pytest.mark.parametrize(
    "value",
    [1e-7, 0.1 + 0.2, 1e300, 2**63, -(2**63) - 1, {1: "a"}, ("a", b"b"), "lone \ud800 surrogate"],
    ids=[
        "tiny-float",
        "float-beyond-six-decimals",
        "huge-float",
        "int-beyond-64-bits",
        "negative",
        "int-key",
        "bytes",
        "surrogate",
    ],
)
def test_a_value_the_api_would_not_render_exactly_goes_as_text(value: Any) -> None:
    interpreter = regopy.Interpreter()
    assert set_input(interpreter, {"v": value}, '{"v": "as text"}') == "text"
    assert str(interpreter.query("x := input.v")) == '{"expressions":[true], "bindings":{"x":"as text"}}'


def test_floats_that_go_as_text_keep_their_value() -> None:
    policy = RegoPolicy({"p.rego": 'package vouch\n\ndecision := {"allow": input.v > 0, "denials": set()}\n'})
    assert policy.evaluate({"v": 1e-7}).allow
    assert not policy.evaluate({"v": -1e-7}).allow


def test_a_decision_is_the_same_whichever_way_its_input_went() -> None:
    policy = RegoPolicy.default()
    low = attestation("coverage", {"commit": "1f" * 20, "percent": 79.9999999})
    doc = document("staging", replace(complete(STAGING_STEPS), low))
    # 79.9999999 has more than six decimals: it goes as text, and stays below 80.
    assert set_input(regopy.Interpreter(), doc, "{}") == "text"
    decision = policy.evaluate(doc)
    assert not decision.allow
    assert "coverage is 79.99999990000001%, below the minimum of 80%" in decision.denials[0]  # rego-cpp's rendering
    doc["attestations"][-1]["predicate"]["percent"] = 79.5
    assert set_input(regopy.Interpreter(), doc, "{}") == "built"
    assert "coverage is 79.5%, below the minimum of 80%" in policy.evaluate(doc).denials[0]
