"""The embedded policy engine: Rego evaluated in-process by regopy (rego-cpp), failing closed.

regopy is easy to misread, so every answer is checked for what it actually is:

- an undefined result still reports ``ok()``: it is a deny, "policy gave no decision";
- a builtin that fails (or one regopy lacks, such as ``http.send``) is undefined
  unless ``strict_built_in_errors`` is on: it is on, so it is an error, and a deny
  quoting the error;
- a function regopy does not know comes back as ``ok()`` with an error tree where
  the JSON should be: a deny quoting the error;
- Rego v0 syntax is partly accepted with another meaning (``deny[msg] { ... }``
  defines an object): the decision's shape is checked, and a wrong one is a deny
  naming what came back;
- ``object.subset`` kills the whole process (a segmentation fault, not an error)
  when the value looked for is or holds an empty array: a policy that calls it is
  refused when it is loaded (:data:`CRASHING_BUILTINS`), since no deny could be
  returned from a process that is gone.

The policy is compiled once into a bundle; each decision hands over the input
(the document whose canonical JSON the decision's digest names: see
:mod:`.handover` for how) and runs the bundle.

Example::

    policy = RegoPolicy.default()
    decision = await policy.decide(policy_input(...))
    if not decision.allow:
        print("\\n".join(decision.denials))
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import regopy  # type: ignore[import-untyped]

from vouch.core.errors import ConfigError, Problem
from vouch.rollout.policy.base import Decision
from vouch.rollout.policy.handover import set_input
from vouch.rollout.policy.input import UNDEFINED, Answer, canonical_json, failure, read_decision

DEFAULT_QUERY = "data.vouch.decision"
"""The rule whose value is the decision document ``{"allow": bool, "denials": [str, ...]}``."""

CRASHING_BUILTINS = {
    "object.subset": (
        "regopy crashes the whole process (segmentation fault) when the value looked for is or holds an "
        "empty array, so a policy may not call it; compare field by field instead, e.g. "
        "`every k, v in wanted { object.get(have, k, null) == v }`"
    ),
}
"""Builtins that crash regopy rather than fail, with why and what to write instead; a policy calling one is a
:class:`ConfigError` at its line. Checked against regopy 1.5.2 (tests/rollout/test_policy_rego.py keeps it true)."""

_CALL = re.compile(r"(?<![\w.])(" + "|".join(re.escape(name) for name in CRASHING_BUILTINS) + r")\s*\(")
_ERROR_TOKEN = re.compile(rb"\((errormsg|error) (\d+):")
_LOCATION = re.compile(rb"\|(\d+)\|(\d+)")


class RegoPolicy:
    """A Rego policy compiled once and evaluated in-process; see the module docstring for its traps.

    ``sources`` maps a module name (a file name, shown in errors) to its Rego
    text. An invalid policy is a :class:`ConfigError` naming the file and line,
    raised here, at configuration time, never at decision time.

    >>> policy = RegoPolicy({"p.rego": 'package vouch\\ndecision := {"allow": false, "denials": {"no"}}'})
    >>> policy.evaluate({}).denials
    ('no',)
    >>> RegoPolicy({"p.rego": "package vouch\\nx := 1"}).evaluate({}).denials
    ('policy gave no decision (undefined)',)
    """

    def __init__(self, sources: Mapping[str, str], *, query: str = DEFAULT_QUERY, full_statements: bool = True) -> None:
        if not sources:
            raise ConfigError([Problem("policy", None, "", "no Rego sources to evaluate")])
        self._sources = dict(sorted(sources.items()))
        _refuse_crashing_builtins(self._sources)
        self.query = query
        self._full_statements = full_statements
        self.policy_digest = policy_digest(self._sources)
        self._builder = _interpreter()
        self._bundle = _compile(self._builder, self._sources, query)
        self._runner = _interpreter()
        self._lock = threading.Lock()

    @classmethod
    def from_path(cls, path: str | Path, *, query: str = DEFAULT_QUERY, full_statements: bool = True) -> RegoPolicy:
        """The policy in ``path``: one ``.rego`` file, or every ``.rego`` file under a directory.

        Files ending ``_test.rego`` (OPA's unit tests) are left out. A policy of
        your own gets whole statements unless told it reads only the projection.
        """
        return cls(read_sources(path), query=query, full_statements=full_statements)

    @classmethod
    def default(cls, *, query: str = DEFAULT_QUERY, full_statements: bool = False) -> RegoPolicy:
        """The default policy shipped with vouch (``rollout/policy/default/``), which reads only the projection."""
        folder = resources.files("vouch.rollout.policy.default")
        sources = {
            item.name: item.read_text(encoding="utf-8")
            for item in folder.iterdir()
            if item.name.endswith(".rego") and not item.name.endswith("_test.rego")
        }
        return cls(sources, query=query, full_statements=full_statements)

    @property
    def sources(self) -> Mapping[str, str]:
        return dict(self._sources)

    @property
    def full_statements(self) -> bool:
        """Whether the policy's input must carry each attestation's whole statement, not only its projection."""
        return self._full_statements

    async def decide(self, input: Mapping[str, Any]) -> Decision:
        """Evaluate the policy on ``input``.

        regopy is synchronous, and one decision of the default policy on a
        production promotion's 20 attestations takes about 2 ms
        (``benchmarks/policy_decision.py``), once per promotion: short enough
        to run inline on the event loop rather than pay for a thread.
        """
        return self.evaluate(input)

    def evaluate(self, input: Mapping[str, Any]) -> Decision:
        """Evaluate the policy on ``input``, synchronously (for the CLI and benchmarks). Never raises."""
        start = time.perf_counter()
        try:
            text = canonical_json(input)
            input_digest = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
        except (TypeError, ValueError) as exc:
            denial = f"policy input is not a JSON document: {exc}"
            return Decision(False, (denial,), "", self.policy_digest, time.perf_counter() - start, failed=True)
        answer = self._run(input, text)
        return Decision(
            allow=answer.allow,
            denials=answer.denials,
            failed=answer.failed,
            input_digest=input_digest,
            policy_digest=self.policy_digest,
            elapsed=time.perf_counter() - start,
        )

    async def close(self) -> None:
        """Nothing to release: the interpreters go with the object."""

    def _run(self, document: Mapping[str, Any], text: str) -> Answer:
        # Any failure inside regopy is a deny with its text: this is the boundary where fail-closed is kept.
        try:
            with self._lock:
                set_input(self._runner, document, text)
                output = self._runner.query_bundle(self._bundle)
                if not output.ok():
                    return _failed(_output_errors(output))
                rendered = str(output)
                results = [list(result.expressions) for result in output.results]
        except json.JSONDecodeError as exc:
            # ok() was true but the result is an error tree, not JSON (an unknown function, for one).
            return _failed([m for _, _, m in parse_errors(exc.doc)] or [f"unreadable result {exc.doc[:200]!r}"])
        except Exception as exc:
            return _failed([m for _, _, m in parse_errors(str(exc))] or [f"{type(exc).__name__}: {exc}"])
        if rendered == "undefined":
            return failure(UNDEFINED)
        if len(results) != 1 or len(results[0]) != 1:
            return failure(f"policy query {self.query!r} gave {rendered[:200]}; expected exactly one decision")
        return read_decision(results[0][0])


def policy_digest(sources: Mapping[str, str]) -> str:
    """``sha256:HEX`` of the sources' texts concatenated in name order.

    For a directory that is ``cat $(ls *.rego | LC_ALL=C sort) | sha256sum``,
    so anyone can check which policy a stored decision was made with.

    >>> policy_digest({"b.rego": "B", "a.rego": "A"}) == policy_digest({"x.rego": "AB"})
    True
    """
    digest = hashlib.sha256()
    for name in sorted(sources):
        digest.update(sources[name].encode())
    return "sha256:" + digest.hexdigest()


def read_sources(path: str | Path) -> dict[str, str]:
    """The Rego files at ``path`` by name (relative to a directory), as :class:`RegoPolicy` takes them."""
    root = Path(path)
    try:
        if root.is_dir():
            files = sorted(p for p in root.rglob("*.rego") if not p.name.endswith("_test.rego"))
            sources = {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8") for p in files}
        else:
            sources = {root.name: root.read_text(encoding="utf-8")}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(str(root), None, "", f"cannot read the policy: {exc}")]) from exc
    if not sources:
        raise ConfigError([Problem(str(root), None, "", "no .rego files in this directory")])
    return sources


def parse_errors(text: str) -> list[tuple[str | None, int | None, str]]:
    """``(module, offset, message)`` of each error in regopy's error tree text.

    regopy renders errors as an s-expression whose atoms are length-prefixed
    (``(errormsg 16:this is unclosed)``), so they are read by length, not by
    looking for a closing parenthesis that a message may itself contain.

    >>> parse_errors("(rego-errorseq (error 6:m.rego|26|1 (errormsg 16:this is unclosed) (errorast |26|1)))")
    [('m.rego', 26, 'this is unclosed')]
    """
    data = text.encode()
    found: list[tuple[str | None, int | None, str]] = []
    module: str | None = None
    offset: int | None = None
    position = 0
    while match := _ERROR_TOKEN.search(data, position):
        start, size = match.end(), int(match.group(2))
        atom = data[start : start + size].decode(errors="replace")
        position = start + size
        if match.group(1) == b"errormsg":
            found.append((module, offset, atom))
            module, offset = None, None
            continue
        module = atom
        location = _LOCATION.match(data, position)
        if location:
            offset = int(location.group(1))
            position = location.end()
    return found


def _refuse_crashing_builtins(sources: Mapping[str, str]) -> None:
    """A :class:`ConfigError` naming each call of a builtin in :data:`CRASHING_BUILTINS`, by file and line.

    Read in the text outside comments and strings, so a mention of one in either is not a call.
    """
    problems = []
    for name, text in sources.items():
        for number, line in enumerate(text.splitlines(), start=1):
            for match in _CALL.finditer(_code_of(line)):
                builtin = match.group(1)
                problems.append(Problem(name, number, "", f"{builtin}: {CRASHING_BUILTINS[builtin]}"))
    if problems:
        raise ConfigError(problems)


def _code_of(line: str) -> str:
    """``line`` with its comment cut off and the contents of its strings blanked (Rego's "..." and `...`)."""
    kept: list[str] = []
    quote: str | None = None
    escaped = False
    for char in line:
        if quote is not None:
            if escaped:
                escaped = False
            elif char == "\\" and quote == '"':
                escaped = True
            elif char == quote:
                quote = None
                kept.append(char)
            continue
        if char == "#":
            break
        if char in '"`':
            quote = char
        kept.append(char)
    return "".join(kept)


def _interpreter() -> Any:
    interpreter = regopy.Interpreter()
    interpreter.strict_built_in_errors = True
    # regopy's default log level prints evaluation errors on stdout, which belongs to `--json` output.
    interpreter.log_level = regopy.LogLevel.NONE
    return interpreter


def _compile(interpreter: Any, sources: Mapping[str, str], query: str) -> Any:
    """Add every module and build the bundle; a compile error is a :class:`ConfigError` at its line."""
    try:
        for name, text in sources.items():
            interpreter.add_module(name, text)
        bundle = interpreter.build(query)
    except regopy.RegoError as exc:
        raise ConfigError(_problems(str(exc), sources)) from exc
    if not bundle.ok():
        raise ConfigError([Problem("policy", None, "", f"regopy could not build the query {query!r}")])
    return bundle


def _problems(text: str, sources: Mapping[str, str]) -> list[Problem]:
    problems = []
    for module, offset, message in parse_errors(text) or [(None, None, text.strip())]:
        line = None
        if module is not None and module in sources and offset is not None:
            line = sources[module].encode()[:offset].count(b"\n") + 1
        problems.append(Problem(module or "policy", line, "", message))
    return problems


def _output_errors(output: Any) -> list[str]:
    """The messages (and codes) of a failed evaluation, read from regopy's error nodes."""
    try:
        return list(_walk_errors(output.node()))
    except Exception:  # the deny stands; only its wording is lost
        return []


def _walk_errors(node: Any) -> Iterator[str]:
    kind = node.kind
    if kind == regopy.NodeKind.Error:
        parts = {node.at(i).kind: _node_text(node.at(i)) for i in range(len(node))}
        message = parts.get(regopy.NodeKind.ErrorMessage) or "unknown error"
        code = parts.get(regopy.NodeKind.ErrorCode)
        yield f"{message} ({code})" if code else message
    elif kind == regopy.NodeKind.ErrorSeq:
        for i in range(len(node)):
            yield from _walk_errors(node.at(i))


def _node_text(node: Any) -> str:
    # regopy's Node.value only reads scalars; an error message's text is read through its C API binding.
    try:
        return str(regopy.rego_shared.rego_node_value(node._impl))
    except Exception:
        return ""


def _failed(messages: list[str]) -> Answer:
    if not messages:
        return failure("policy evaluation failed, and regopy gave no reason")
    return failure(*dict.fromkeys(f"policy evaluation failed: {m}" for m in messages))
