"""Reading a configuration text: YAML with the line of every field, and pydantic's errors in plain words.

The first two of the three passes :mod:`vouch.daemon.config` describes live
here, with the driver that runs all three. Lines come from composing the YAML
node tree and walking it into a map of field path to line; pydantic's error
locations are translated onto that map, and each error into a sentence that
says what was expected, what was found and, where it can, what was meant.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from vouch.core.errors import ConfigError, Problem
from vouch.daemon.config import Loc, VouchConfig, dotted, quoted
from vouch.daemon.configcheck import Parts, parts_of_raw, references
from vouch.rollout.config import NAME_PATTERN

_M = TypeVar("_M", bound=BaseModel)


def validate_text(text: str, *, file: str) -> VouchConfig:
    """The three passes; a later pass runs on whatever an earlier one could read, so all problems surface.

    ``file`` names the text in problems. :class:`ConfigError` lists every problem, sorted by line.
    """
    read = _read_yaml(text, file)
    problems = list(read.problems)
    data = read.data
    if read.broken:
        raise ConfigError(problems)
    if data is None:
        problems.append(Problem(file, 1, "", "the file is empty; a configuration needs 'services' and 'environments'"))
        raise ConfigError(problems)
    if not isinstance(data, dict):
        message = f"the top level must be a mapping of 'services', 'environments', ...; got {_describe(data)}"
        problems.append(Problem(file, read.lines.get((), 1), "", message))
        raise ConfigError(problems)
    config: VouchConfig | None = None
    try:
        config = VouchConfig.model_validate(data)
        parts = Parts.of(config)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, data, file=file, lines=read.lines))
        parts = parts_of_raw(data)
    for loc, message in references(parts):
        problems.append(Problem(file, _line_of(loc, read.lines), dotted(loc), message))
    if problems or config is None:
        raise ConfigError(sorted(problems, key=lambda p: (p.line or 0, p.path)))
    return config


def validate_model_text(text: str, model: type[_M], *, file: str, what: str) -> _M:
    """Read ``text`` as YAML and validate it as ``model``; every problem names its line and field.

    For files other than the daemon's configuration (``vouch probe run``'s probe files, for one);
    ``what`` says what the file should hold, for an empty or non-mapping file.
    """
    read = _read_yaml(text, file)
    problems = list(read.problems)
    if read.broken:
        raise ConfigError(problems)
    if not isinstance(read.data, dict):
        problems.append(Problem(file, read.lines.get((), 1), "", f"expected a mapping with {what}"))
        raise ConfigError(problems)
    try:
        result = model.model_validate(read.data)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, read.data, file=file, lines=read.lines, root=model))
        raise ConfigError(sorted(problems, key=lambda p: (p.line or 0, p.path))) from None
    if problems:
        raise ConfigError(problems)
    return result


# --------------------------------------------------------------------------- YAML with lines


class _Loader(yaml.SafeLoader):
    """The safe loader, used node by node: compose, index lines and duplicates, then construct."""


_MERGE = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class _Read:
    """A YAML text read: its data, the line of every field path, and its problems so far."""

    data: object
    lines: dict[Loc, int]
    problems: tuple[Problem, ...]
    broken: bool
    """The text could not be read as YAML at all: there is no data to check further."""


def _read_yaml(text: str, file: str) -> _Read:
    loader = _Loader(text)
    indexer = _Indexer(file)
    try:
        node = loader.get_single_node()
        if node is None:
            return _Read(None, {}, (), broken=False)
        indexer.lines[()] = node.start_mark.line + 1
        indexer.walk(node, ())
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        return _Read(None, {}, (_yaml_problem(exc, file),), broken=True)
    except yaml.YAMLError as exc:
        return _Read(None, {}, (Problem(file, None, "", f"invalid YAML: {exc}"),), broken=True)
    finally:
        loader.dispose()
    return _Read(data, indexer.lines, tuple(indexer.problems), broken=False)


def _yaml_problem(exc: yaml.MarkedYAMLError, file: str) -> Problem:
    """PyYAML's two-part message ("while parsing X ... found Y") as one line, at the problem's line."""
    mark = exc.problem_mark or exc.context_mark
    message = exc.problem or exc.context or str(exc)
    if exc.problem and exc.context:
        where = f" at line {exc.context_mark.line + 1}" if exc.context_mark is not None else ""
        message = f"{exc.problem} ({exc.context}{where})"
    return Problem(file, mark.line + 1 if mark is not None else None, "", f"invalid YAML: {message}")


class _Indexer:
    """Walks a composed YAML tree: the line of every field path, and every duplicate key.

    Entries pulled in by a merge key (``<<: *base``) never override explicit ones.
    The walk is bounded, so aliases nested into an exponential tree (or a loop)
    end in a problem instead of hanging the check.
    """

    LIMIT = 100_000
    """Nodes walked at most; a configuration is a few hundred."""
    DEPTH = 64
    """Nesting at most; a configuration is a handful deep."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[Loc, int] = {}
        self.problems: list[Problem] = []
        self.walked = 0

    def walk(self, node: yaml.Node, loc: Loc, *, merged: bool = False) -> None:
        self.walked += 1
        if self.walked > self.LIMIT or len(loc) > self.DEPTH:
            problem = "nested too deep or too large (an alias inside itself?)"
            raise yaml.MarkedYAMLError(problem=problem, problem_mark=node.start_mark)
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._line((*loc, i), item.start_mark.line + 1, merged=merged)
                self.walk(item, (*loc, i), merged=merged)
        elif isinstance(node, yaml.MappingNode):
            self._mapping(node, loc, merged=merged)

    def _mapping(self, node: yaml.MappingNode, loc: Loc, *, merged: bool) -> None:
        seen: dict[str, int] = {}
        merges: list[yaml.Node] = []
        for key, value in node.value:
            if key.tag == _MERGE:
                merges.extend(value.value if isinstance(value, yaml.SequenceNode) else [value])
                continue
            if not isinstance(key, yaml.ScalarNode):
                continue
            line, child = key.start_mark.line + 1, (*loc, key.value)
            if key.value in seen and not merged:
                message = (
                    f"duplicate key {key.value!r} (also at line {seen[key.value]}); "
                    "YAML keeps only the last one, so the other is silently lost"
                )
                self.problems.append(Problem(self.file, line, dotted(child), message))
            seen.setdefault(key.value, line)
            self._line(child, line, merged=merged)
            self.walk(value, child, merged=merged)
        for base in merges:
            self.walk(base, loc, merged=True)

    def _line(self, loc: Loc, line: int, *, merged: bool) -> None:
        if merged:
            self.lines.setdefault(loc, line)
        else:
            self.lines[loc] = line


def _line_of(loc: Loc, lines: Mapping[Loc, int]) -> int | None:
    """The line of ``loc``, or of its nearest ancestor present in the file (for missing fields)."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


# --------------------------------------------------------------------------- pydantic errors


def _pydantic_problems(
    exc: ValidationError, data: object, *, file: str, lines: Mapping[Loc, int], root: type[BaseModel] = VouchConfig
) -> Iterator[Problem]:
    for err in exc.errors(include_url=False):
        loc = _follow(err["loc"], data)
        yield Problem(file, _line_of(loc, lines), dotted(loc), _message(err, root))


def _follow(raw: tuple[str | int, ...], data: object) -> Loc:
    """Translate pydantic's location into a field path by following the data.

    Parts that are not in the data (union tags such as ``prometheus``, the
    ``[key]`` marker of an invalid mapping key) are dropped, except a last part,
    which names a missing field.
    """
    out: list[str | int] = []
    current: object = data
    for i, part in enumerate(raw):
        if isinstance(current, dict) and part in current:
            out.append(str(part))
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            out.append(part)
            current = current[part]
        elif i == len(raw) - 1 and part != "[key]":
            out.append(str(part) if isinstance(current, dict) else part)
            current = None
    return tuple(out)


def _message(err: ErrorDetails, root: type[BaseModel] = VouchConfig) -> str:
    """A plain sentence for one pydantic error."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err["input"]
    got = _describe(value)
    if kind == "extra_forbidden":
        return _unknown_field(str(err["loc"][-1]), _fields_at(err["loc"][:-1], root))
    if kind == "missing":
        return f"missing required field {err['loc'][-1]!r}"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind == "union_tag_invalid":
        return f"unknown kind {ctx.get('tag')!r}; known kinds: {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        kinds = _kinds_at(err["loc"], root)
        return "missing field 'kind'" + (f" (one of {quoted(kinds)})" if kinds else "")
    if kind == "literal_error":
        return f"expected {ctx.get('expected')}, got {got}"
    if kind == "string_pattern_mismatch":
        if ctx.get("pattern") == NAME_PATTERN:
            return (
                f"{got} is not a valid name: use lowercase letters, digits and '-', "
                "starting and ending with a letter or digit, at most 63 characters"
            )
        return f"expected a string matching {ctx.get('pattern')}, got {got}"
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        what = "entry" if isinstance(value, dict) else "item"
        least = "at least" if kind == "too_short" else "at most"
        return f"needs {least} {bound} {what}{'' if bound == 1 else 's'}, got {len(value)}"
    if kind in _BOUNDS:
        words, key = _BOUNDS[kind]
        return f"must be {words} {ctx.get(key)}, got {got}"
    expected = _EXPECTED.get(kind)
    if expected:
        return f"expected {expected}, got {got}{_hint(expected, value)}"
    msg = err["msg"]
    return f"{msg[:1].lower()}{msg[1:]}, got {got}"


_BOUNDS = {
    "greater_than_equal": ("at least", "ge"),
    "greater_than": ("greater than", "gt"),
    "less_than_equal": ("at most", "le"),
    "less_than": ("less than", "lt"),
}

_EXPECTED = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _describe(value: object) -> str:
    """How a value reads in a message: strings quoted, containers by shape."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _hint(expected: str, value: object) -> str:
    """Two classic YAML traps: unquoted ``{port}`` is a mapping, and ``staging:`` alone is null."""
    if isinstance(value, dict) and len(value) == 1 and next(iter(value.values())) is None:
        return f" (write '{{{next(iter(value))}}}' in quotes: unquoted braces are a YAML mapping)"
    if value is None and expected == "a mapping":
        return " (write {} to take every default)"
    return ""


def _unknown_field(name: str, fields: list[str]) -> str:
    close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6)
    if close:
        return f"unknown field {name!r} (did you mean {close[0]!r}?)"
    if fields:
        return f"unknown field {name!r}; known fields: {', '.join(fields)}"
    return f"unknown field {name!r}"


def _type_at(raw: tuple[str | int, ...], root: type[BaseModel]) -> object:
    """The declared type at pydantic's location ``raw`` (tags included), or ``None`` if unclear."""
    tp: object = root
    for part in raw:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            tp = field.annotation
        elif get_origin(tp) is list:
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        elif get_origin(tp) in (Union, types.UnionType):
            tp = next((m for m in get_args(tp) if part in _kinds_of(m)), None)
        else:
            return None
    return _unwrap(tp)


def _unwrap(tp: object) -> object:
    """Strip ``Annotated`` and ``Optional`` down to the type that validates."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
            continue
        if get_origin(tp) in (Union, types.UnionType):
            arms = [a for a in get_args(tp) if a is not type(None)]
            if len(arms) == 1:
                tp = arms[0]
                continue
        return tp


def _kinds_of(tp: object) -> list[str]:
    """The ``kind`` literal of a model in a discriminated union."""
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel) and "kind" in tp.model_fields:
        return [str(a) for a in get_args(tp.model_fields["kind"].annotation)]
    return []


def _kinds_at(raw: tuple[str | int, ...], root: type[BaseModel]) -> list[str]:
    tp = _type_at(raw, root)
    if get_origin(tp) in (Union, types.UnionType):
        return [kind for arm in get_args(tp) for kind in _kinds_of(arm)]
    return _kinds_of(tp)


def _fields_at(raw: tuple[str | int, ...], root: type[BaseModel]) -> list[str]:
    tp = _type_at(raw, root)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []
