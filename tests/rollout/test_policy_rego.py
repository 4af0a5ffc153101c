"""The embedded Rego engine fails closed on each of regopy's traps, and says why."""

from __future__ import annotations

import hashlib
import importlib.metadata
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import regopy

from vouch.core.errors import ConfigError
from vouch.rollout.policy.base import PolicyEngine
from vouch.rollout.policy.input import canonical_digest
from vouch.rollout.policy.rego import CRASHING_BUILTINS, RegoPolicy, parse_errors, policy_digest

ALLOW = 'package vouch\n\ndecision := {"allow": true, "denials": set()}\n'


def decide(source: str, document: dict[str, object] | None = None) -> tuple[bool, tuple[str, ...]]:
    decision = RegoPolicy({"policy.rego": source}).evaluate(document if document is not None else {"a": 1})
    return decision.allow, decision.denials


def test_a_clean_allow_is_an_allow() -> None:
    assert decide(ALLOW) == (True, ())


def test_denials_from_a_v1_partial_set_are_all_reported() -> None:
    source = """package vouch

denials contains "no build" if not input.build
denials contains sprintf("coverage %v%% is too low", [input.coverage]) if input.coverage < 80

decision := {"allow": count(denials) == 0, "denials": denials}
"""
    allow, denials = decide(source, {"coverage": 71})
    assert not allow
    assert set(denials) == {"no build", "coverage 71% is too low"}


def test_an_undefined_decision_denies() -> None:
    source = 'package vouch\n\ndecision := {"allow": true, "denials": set()} if input.approved\n'
    assert decide(source) == (False, ("policy gave no decision (undefined)",))


def test_a_query_naming_nothing_denies() -> None:
    decision = RegoPolicy({"p.rego": ALLOW}, query="data.vouch.verdict").evaluate({})
    assert decision.denials == ("policy gave no decision (undefined)",)


def test_an_unsupported_builtin_denies_with_the_error_rather_than_going_undefined() -> None:
    # regopy lacks http.send: without strict builtin errors it would silently be undefined.
    assert not regopy.Interpreter().is_builtin("http.send")
    source = """package vouch

decision := {"allow": true, "denials": set()} if {
	http.send({"method": "GET", "url": "http://127.0.0.1:9/allowed"}).body.allowed
}
"""
    allow, denials = decide(source)
    assert not allow
    assert len(denials) == 1
    assert denials[0].startswith("policy evaluation failed: ")
    assert "HTTP builtins are not supported" in denials[0]


def test_another_unsupported_builtin_family_denies_too() -> None:
    assert not regopy.Interpreter().is_builtin("net.cidr_merge")
    source = 'package vouch\n\ndecision := {"allow": true, "denials": [x]} if x := net.cidr_merge(["10.0.0.0/8"])\n'
    assert decide(source) == (
        False,
        ("policy evaluation failed: Networking builtins are not supported (eval_builtin_error)",),
    )


def test_an_unknown_function_denies_naming_it() -> None:
    # regopy reports ok() with an error tree where the JSON should be, and compiles the call without complaint.
    source = 'package vouch\n\ndecision := {"allow": true, "denials": [x]} if x := corp.lookup("owner")\n'
    allow, denials = decide(source)
    assert not allow
    assert any("Function not found: corp.lookup" in d for d in denials), denials


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('decision := {"allow": true, "denials": [x]} if x := 1 / input.zero', "divide by zero"),
        (
            'decision := {"allow": true, "denials": set()} if input.a == 1\n'
            'decision := {"allow": false, "denials": {"no"}} if input.a == 1',
            "complete rules must not produce multiple outputs",
        ),
        (
            'keys[k] := v if { some k, v in {"a": 1} }\nkeys[k] := v if { some k, v in {"a": 2} }\n'
            'decision := {"allow": count(keys) > 5, "denials": set()}',
            "eval_conflict_error",
        ),
        ('decision := {"allow": true, "denials": set()} if to_number("not a number") > 1', "invalid syntax"),
    ],
    ids=["division-by-zero", "conflicting-complete-rule", "object-key-conflict", "failing-builtin"],
)
def test_a_runtime_error_denies_with_its_message(body: str, expected: str) -> None:
    allow, denials = decide(f"package vouch\n\n{body}\n", {"a": 1, "zero": 0})
    assert not allow
    assert denials
    assert all(d.startswith("policy evaluation failed: ") for d in denials)
    assert any(expected in d for d in denials), denials


def test_an_answer_regopy_cannot_render_denies_even_if_it_allows() -> None:
    # rego-cpp 1.5 leaves the quotes of a string literal bound to a variable inside sprintf's text,
    # so its answer is no longer JSON: that must be a deny, never an allow or a traceback.
    source = """package vouch

label(name) := sprintf("<%s>", [name])

decision := {"allow": true, "denials": set(), "note": label("x")}
"""
    allow, denials = decide(source)
    assert not allow
    assert len(denials) == 1
    assert denials[0].startswith("policy evaluation failed: unreadable result ")


def test_a_v0_style_deny_rule_is_an_object_and_denies_naming_it() -> None:
    # `deny[msg] { ... }` is accepted, but defines an object {msg: true}, not a set of messages.
    source = """package vouch

deny[msg] { not input.build; msg := "no build attestation" }

decision := {"allow": count(deny) == 0, "denials": deny}
"""
    allow, denials = decide(source, {})
    assert not allow
    assert len(denials) == 1
    assert "'denials' must be a set or array of strings, got an object" in denials[0]
    assert '{"no build attestation":true}' in denials[0]
    assert "Rego v0-style" in denials[0]


def test_a_v0_style_decision_rule_is_a_malformed_decision() -> None:
    source = 'package vouch\n\ndecision[msg] { msg := "x" }\n'
    allow, denials = decide(source, {})
    assert not allow
    assert any("has no 'allow'" in d for d in denials), denials


@pytest.mark.parametrize(
    ("decision", "fragment"),
    [
        ('{"allow": "true", "denials": set()}', "'allow' must be a boolean, got \"true\""),
        ('{"allow": true}', "has no 'denials'"),
        ('{"allow": true, "denials": [1, 2]}', "'denials' must be a set or array of strings, got [1,2]"),
        ('"allow"', 'expected an object {allow, denials}, got "allow"'),
        ("true", "expected an object {allow, denials}, got true"),
    ],
)
def test_a_malformed_decision_denies_quoting_what_came_back(decision: str, fragment: str) -> None:
    allow, denials = decide(f"package vouch\n\ndecision := {decision}\n")
    assert not allow
    assert any(fragment in d for d in denials), denials


def test_allow_with_denials_is_a_deny_and_the_denials_win() -> None:
    source = 'package vouch\n\ndecision := {"allow": true, "denials": {"coverage 71% < 80%"}}\n'
    assert decide(source) == (False, ("coverage 71% < 80%",))


def test_a_deny_without_a_reason_gets_one() -> None:
    source = 'package vouch\n\ndecision := {"allow": false, "denials": []}\n'
    assert decide(source) == (False, ("policy denied without giving a reason",))


def test_an_input_that_is_not_json_denies() -> None:
    decision = RegoPolicy({"p.rego": ALLOW}).evaluate({"when": object()})
    assert not decision.allow
    assert decision.denials[0].startswith("policy input is not a JSON document")


def test_the_decision_records_the_digests_of_its_input_and_policy() -> None:
    document = {"b": [1, "é"], "a": {"z": None}}
    policy = RegoPolicy({"b.rego": ALLOW, "a.rego": "package other\n\nx := 1\n"})
    decision = policy.evaluate(document)
    assert decision.input_digest == canonical_digest(document)
    concatenated = "package other\n\nx := 1\n" + ALLOW
    assert decision.policy_digest == "sha256:" + hashlib.sha256(concatenated.encode()).hexdigest()
    assert decision.policy_digest == policy_digest(policy.sources)
    assert decision.elapsed > 0


def test_the_input_evaluated_is_exactly_the_input_digested() -> None:
    source = 'package vouch\n\ndecision := {"allow": false, "denials": {json.marshal(input)}}\n'
    document = {'quote"key': 'va"lue\n', "unicode": "é😀", "big": 2**53 + 1, "float": 0.125, "none": None}
    decision = RegoPolicy({"p.rego": source}).evaluate(document)
    import json

    assert json.loads(decision.denials[0]) == document


async def test_decide_is_the_policy_engine_protocol() -> None:
    policy = RegoPolicy({"p.rego": ALLOW})
    assert isinstance(policy, PolicyEngine)
    decision = await policy.decide({})
    assert decision.allow
    await policy.close()


def test_evaluation_errors_do_not_write_to_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    # regopy's default log level prints some evaluation errors on stdout, which `--json` output owns.
    body = 'keys[k] := v if { some k, v in {"a": 1} }\nkeys[k] := v if { some k, v in {"a": 2} }\n'
    decide(f'package vouch\n\n{body}decision := {{"allow": count(keys) > 5, "denials": set()}}\n')
    assert capfd.readouterr().out == ""


def test_a_syntax_error_is_a_config_error_at_its_file_and_line() -> None:
    with pytest.raises(ConfigError) as raised:
        RegoPolicy({"ok.rego": ALLOW, "broken.rego": "package vouch\n\nx := 1\ny := {\n"})
    problems = raised.value.problems
    assert problems
    assert problems[0].file == "broken.rego"
    assert problems[0].line == 4
    assert "unclosed" in problems[0].message


def test_no_sources_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no Rego sources"):
        RegoPolicy({})


def test_a_policy_directory_is_read_without_opa_unit_tests(tmp_path: Path) -> None:
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "rules.rego").write_text('package vouch\n\nreasons := {"from nested"}\n')
    (tmp_path / "main.rego").write_text('package vouch\n\ndecision := {"allow": false, "denials": reasons}\n')
    (tmp_path / "main_test.rego").write_text("package vouch_test\n\ntest_x if { http.send({}) }\n")
    (tmp_path / "notes.txt").write_text("not rego")
    policy = RegoPolicy.from_path(tmp_path)
    assert sorted(policy.sources) == ["main.rego", "nested/rules.rego"]
    assert policy.evaluate({}).denials == ("from nested",)


def test_an_empty_or_missing_policy_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no \.rego files"):
        RegoPolicy.from_path(tmp_path)
    with pytest.raises(ConfigError, match="cannot read the policy"):
        RegoPolicy.from_path(tmp_path / "absent.rego")


def test_error_text_is_read_by_length_not_by_parenthesis() -> None:
    text = "(rego-errorseq (error 3:a.b|5|1 (errormsg 9:x (y) ) z) (errorast |5|1)) (error (errormsg 2:ok)))"
    assert parse_errors(text) == [("a.b", 5, "x (y) ) z"), (None, None, "ok")]


def test_a_policy_calling_a_builtin_that_crashes_regopy_is_refused_at_its_line() -> None:
    source = (
        "package vouch\n\n"
        "# object.subset(a, b) would crash; a mention in a comment is no call\n"
        'note := "object.subset(x) in a string is no call either"\n'
        'ok if object.subset(input.wanted, {"steps": []})\n'
        'decision := {"allow": ok, "denials": set()}\n'
    )
    with pytest.raises(ConfigError) as raised:
        RegoPolicy({"ok.rego": ALLOW, "subset.rego": source})
    [problem] = raised.value.problems
    assert (problem.file, problem.line) == ("subset.rego", 5)
    assert "object.subset" in problem.message
    assert "segmentation fault" in problem.message
    assert "every k, v in wanted" in problem.message
    mentions = source.replace('ok if object.subset(input.wanted, {"steps": []})', "ok := true")
    assert RegoPolicy({"mentions.rego": mentions}).evaluate({}).allow


@pytest.mark.parametrize("builtin", sorted(CRASHING_BUILTINS))
def test_the_refused_builtins_still_crash_regopy(builtin: str) -> None:
    """Why the refusal exists; should a regopy release fix it, this fails and the refusal can go."""
    calls = {"object.subset": "object.subset([1], [])"}
    code = (
        "import regopy\n"
        "interpreter = regopy.Interpreter()\n"
        f"interpreter.add_module('p.rego', 'package p\\nr := {calls[builtin]}\\n')\n"
        "print(interpreter.query('data.p.r'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGSEGV, (
        f"{builtin} no longer crashes regopy {regopy_version()} (exit {done.returncode}, {done.stdout!r}): "
        "drop it from CRASHING_BUILTINS"
    )


def regopy_version() -> str:
    return importlib.metadata.version("regopy")


@pytest.mark.parametrize(
    ("rules", "failed"),
    [
        ('decision := {"allow": true, "denials": set()}', False),
        ('decision := {"allow": false, "denials": {"coverage too low"}}', False),
        ("x := 1", True),  # undefined
        ('decision := {"allow": true, "denials": set()} if 1 / input.zero > 0', True),  # runtime error
        ('decision := {"allow": "yes", "denials": set()}', True),  # malformed
    ],
    ids=["allows", "denies", "undefined", "error", "malformed"],
)
def test_failed_tells_a_policy_that_could_not_decide_from_one_that_denied(rules: str, failed: bool) -> None:
    decision = RegoPolicy({"p.rego": f"package vouch\n\n{rules}\n"}).evaluate({"zero": 0})
    assert decision.failed is failed
    assert decision.to_dict()["failed"] is failed
