"""vouch's configuration file: the root model, and a loader that locates every problem.

A configuration is judged in three passes, and every problem of every pass is
reported at once, each with its file, line and field path (``services.checkout.
environments[1].port``), because fixing one error per run is how people learn to
hate a tool:

1. YAML: syntax errors, and duplicate keys (PyYAML would silently keep the last);
2. the models: types, ranges and unknown fields (with a "did you mean");
3. references between parts: environments, providers, gate kinds, ports.

Lines come from composing the YAML node tree and walking it into a map of
field path to line; pydantic's error locations are translated onto that map.

>>> config = parse_config('''
... services:
...   web:
...     command: [python, -m, http.server, "{port}"]
...     environments: [{name: prod}]
... environments:
...   prod: {gates: [alarms]}
... ''')
>>> config.host_port()
('127.0.0.1', 8470)
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails

from vouch.core.errors import ConfigError, NotFoundError, Problem
from vouch.rollout.config import (
    NAME_PATTERN,
    BuiltinProviderSpec,
    EnvironmentSpec,
    LocalPlatformSpec,
    Model,
    PlatformSpec,
    ProviderSpec,
    ServiceSpec,
    SloSpec,
)
from vouch.rollout.gates import GATE_KINDS
from vouch.rollout.metrics.template import PLACEHOLDERS

Loc = tuple[str | int, ...]
"""A field path: mapping keys as strings, list positions as integers."""

_T = TypeVar("_T")

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]

_STEP_SHORTHAND = r"^\s*\d+(\.\d+)?\s*%?\s*$"


def split_host_port(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[::1]:8470`` for IPv6); raise ``ValueError`` saying what is wrong.

    >>> split_host_port("0.0.0.0:8470")
    ('0.0.0.0', 8470)
    """
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host:
        raise ValueError(f"{value!r} is not host:port; write e.g. '127.0.0.1:8470'")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: the port must be a number from 1 to 65535")
    return host, int(port)


class DaemonSpec(Model):
    """The daemon process itself: where it listens, keeps its state and finds its API token."""

    listen: str = "127.0.0.1:8470"
    """``host:port`` of the HTTP API (and ``/metrics``); use ``0.0.0.0:8470`` to listen on every address."""
    state_dir: str = ".vouch"
    """Folder of the state store; a relative path resolves against the configuration file's folder."""
    token_file: str | None = None
    """File holding the API bearer token (made on first start if missing); default ``<state_dir>/token``.
    A relative path resolves against the configuration file's folder."""
    token_env: str = Field(default="VOUCH_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Environment variable that, when set, holds the API token and wins over ``token_file``."""
    max_body_bytes: int = Field(default=1048576, ge=1)
    """Largest request body the API accepts; larger ones are refused with 413."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Least severe log records written."""

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_host_port(value)
        return value


def _default_providers() -> dict[str, ProviderSpec]:
    return {"builtin": BuiltinProviderSpec()}


class VouchConfig(Model):
    """A vouch configuration: the daemon, metric providers, the platform, services and environments.

    Load it with :func:`load_config`, which also checks the references between parts;
    ``model_validate`` alone checks each part but not how they fit together.
    """

    daemon: DaemonSpec = Field(default_factory=DaemonSpec)
    """The daemon process: API address, state folder, token."""
    metric_providers: dict[str, ProviderSpec] = Field(default_factory=_default_providers)
    """Where SLO measurements come from, by name; ``builtin`` (the local router's own metrics) is always
    defined unless this map defines that name itself."""
    platform: PlatformSpec = Field(default_factory=LocalPlatformSpec)
    """Where replicas run: ``local`` processes behind a weighted router (the default)."""
    services: dict[Name, ServiceSpec] = Field(min_length=1)
    """The services vouch rolls out, by name (lowercase letters, digits and ``-``)."""
    environments: dict[Name, EnvironmentSpec] = Field(min_length=1)
    """The stages services move through, by name, each with its plan, gates and limits."""

    _source: Path | None = PrivateAttr(default=None)

    @field_validator("metric_providers")
    @classmethod
    def _with_builtin(cls, value: dict[str, ProviderSpec]) -> dict[str, ProviderSpec]:
        return value if "builtin" in value else {**value, "builtin": BuiltinProviderSpec()}

    @property
    def source(self) -> Path | None:
        """The file this configuration was read from, if any."""
        return self._source

    def _resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        if path.is_absolute():
            return path
        base = self._source.parent if self._source is not None else Path.cwd()
        return base / path

    def state_path(self) -> Path:
        """The state folder, relative paths taken against the configuration file's folder."""
        return self._resolve(self.daemon.state_dir)

    def token_path(self) -> Path:
        """The API token file: ``token_file``, or ``<state_dir>/token``."""
        if self.daemon.token_file is None:
            return self.state_path() / "token"
        return self._resolve(self.daemon.token_file)

    def host_port(self) -> tuple[str, int]:
        """The API's listen address as ``(host, port)``."""
        return split_host_port(self.daemon.listen)

    def service(self, name: str) -> ServiceSpec:
        """The service called ``name``; :class:`NotFoundError` naming the known ones otherwise."""
        if name not in self.services:
            raise NotFoundError(f"unknown service {name!r}; known: {_names(self.services)}")
        return self.services[name]

    def environment(self, name: str) -> EnvironmentSpec:
        """The environment called ``name``; :class:`NotFoundError` naming the known ones otherwise."""
        if name not in self.environments:
            raise NotFoundError(f"unknown environment {name!r}; known: {_names(self.environments)}")
        return self.environments[name]


def config_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a configuration file, for editors and CI."""
    schema = VouchConfig.model_json_schema()
    schema.pop("title", None)
    step = schema.get("$defs", {}).get("Step")
    if step is not None and "anyOf" not in step:
        # Step accepts shorthand before validation (``2``, ``'50%'``), which pydantic cannot see.
        shorthand = [
            {"type": "integer", "minimum": 1, "description": "canary pods"},
            {"type": "string", "pattern": _STEP_SHORTHAND, "description": "pods, or a share such as '50%'"},
        ]
        schema["$defs"]["Step"] = {"anyOf": [*shorthand, step]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "vouch configuration",
        **schema,
    }


def load_config(path: str | Path) -> VouchConfig:
    """Read and check the configuration at ``path``; :class:`ConfigError` lists every problem found."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(file, None, "", "no such file")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(file, None, "", f"not UTF-8 text: {exc.reason}")]) from exc
    except OSError as exc:
        raise ConfigError([Problem(file, None, "", f"cannot read: {exc.strerror or exc}")]) from exc
    return _parse(text, file=file, source=Path(path).resolve())


def parse_config(text: str, *, source: str = "<string>") -> VouchConfig:
    """Check a configuration given as text, exactly as :func:`load_config` does.

    ``source`` names the text in problems. Unless it is a placeholder such as
    ``<string>``, it is taken as the file's path, so relative paths resolve
    against its folder; otherwise they resolve against the working directory.
    """
    origin = None if source.startswith("<") else Path(source).resolve()
    return _parse(text, file=source, source=origin)


def check_config(config: VouchConfig, *, file: str = "<config>") -> list[Problem]:
    """The reference problems of an already validated configuration (no lines: there is no file)."""
    parts = _Parts.of(config)
    return [Problem(file, None, _dotted(loc), message) for loc, message in _semantic(parts)]


def _parse(text: str, *, file: str, source: Path | None) -> VouchConfig:
    """The three passes; a later pass runs on whatever an earlier one could read, so all problems surface."""
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
        parts = _Parts.of(config)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, data, file=file, lines=read.lines))
        parts = _parts_of_raw(data)
    for loc, message in _semantic(parts):
        problems.append(Problem(file, _line_of(loc, read.lines), _dotted(loc), message))
    if problems or config is None:
        raise ConfigError(sorted(problems, key=lambda p: (p.line or 0, p.path)))
    config._source = source
    return config


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
                self.problems.append(Problem(self.file, line, _dotted(child), message))
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


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _dotted(loc: Loc) -> str:
    """``('services', 'web', 'environments', 1, 'port')`` → ``services.web.environments[1].port``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


# --------------------------------------------------------------------------- pydantic errors


def _pydantic_problems(exc: ValidationError, data: object, *, file: str, lines: Mapping[Loc, int]) -> Iterator[Problem]:
    for err in exc.errors(include_url=False):
        loc = _follow(err["loc"], data)
        yield Problem(file, _line_of(loc, lines), _dotted(loc), _message(err))


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


def _message(err: ErrorDetails) -> str:
    """A plain sentence for one pydantic error."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err["input"]
    got = _describe(value)
    if kind == "extra_forbidden":
        return _unknown_field(str(err["loc"][-1]), _fields_at(err["loc"][:-1]))
    if kind == "missing":
        return f"missing required field {err['loc'][-1]!r}"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind == "union_tag_invalid":
        return f"unknown kind {ctx.get('tag')!r}; known kinds: {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        kinds = _kinds_at(err["loc"])
        return "missing field 'kind'" + (f" (one of {_names(kinds)})" if kinds else "")
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


def _type_at(raw: tuple[str | int, ...]) -> object:
    """The declared type at pydantic's location ``raw`` (tags included), or ``None`` if unclear."""
    tp: object = VouchConfig
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


def _kinds_at(raw: tuple[str | int, ...]) -> list[str]:
    tp = _type_at(raw)
    if get_origin(tp) in (Union, types.UnionType):
        return [kind for arm in get_args(tp) for kind in _kinds_of(arm)]
    return _kinds_of(tp)


def _fields_at(raw: tuple[str | int, ...]) -> list[str]:
    tp = _type_at(raw)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _names(names: Mapping[str, object] | list[str] | tuple[str, ...]) -> str:
    return ", ".join(repr(n) for n in names) or "none"


# --------------------------------------------------------------------------- references between parts


@dataclass(frozen=True)
class _Stage:
    """One entry of a service's chain, as far as it could be read."""

    index: int
    name: str | None
    port: int


@dataclass(frozen=True)
class _ServiceView:
    """What the reference checks need of a service; of a broken one, whatever still reads."""

    chain: tuple[_Stage, ...]
    slos: tuple[tuple[int, SloSpec], ...]
    has_command: bool
    has_slos: bool

    @classmethod
    def of(cls, spec: ServiceSpec) -> _ServiceView:
        return cls(
            chain=tuple(_Stage(i, env.name, env.port) for i, env in enumerate(spec.environments)),
            slos=tuple(enumerate(spec.slos)),
            has_command=spec.command is not None,
            has_slos=bool(spec.slos),
        )

    @classmethod
    def of_raw(cls, raw: dict[str, Any]) -> _ServiceView:
        chain = raw.get("environments")
        slos = raw.get("slos")
        return cls(
            chain=tuple(
                _Stage(i, _of_type(env.get("name"), str), _port(env.get("port")))
                for i, env in enumerate(chain if isinstance(chain, list) else [])
                if isinstance(env, dict)
            ),
            slos=_valid_items(SloSpec.model_validate, slos),
            has_command=raw.get("command") is not None,
            has_slos=bool(slos),
        )


@dataclass(frozen=True)
class _EnvironmentView:
    """The gates of an environment, as far as they could be read."""

    gates: tuple[tuple[int, str], ...]

    @classmethod
    def of(cls, spec: EnvironmentSpec) -> _EnvironmentView:
        return cls(tuple(enumerate(spec.gates)))

    @classmethod
    def of_raw(cls, raw: object) -> _EnvironmentView:
        gates = raw.get("gates", _DEFAULT_GATES) if isinstance(raw, dict) else []
        return cls(tuple((i, g) for i, g in enumerate(gates if isinstance(gates, list) else []) if isinstance(g, str)))


_DEFAULT_GATES: list[str] = EnvironmentSpec().gates


@dataclass(frozen=True)
class _Parts:
    """What validated, part by part; a ``None`` map could not be read at all (its checks are skipped)."""

    daemon: DaemonSpec | None
    platform: PlatformSpec | None
    providers: Mapping[str, ProviderSpec | None] | None
    services: Mapping[str, _ServiceView]
    environments: Mapping[str, _EnvironmentView] | None

    @classmethod
    def of(cls, config: VouchConfig) -> _Parts:
        return cls(
            daemon=config.daemon,
            platform=config.platform,
            providers=dict(config.metric_providers),
            services={name: _ServiceView.of(spec) for name, spec in config.services.items()},
            environments={name: _EnvironmentView.of(spec) for name, spec in config.environments.items()},
        )


_PROVIDER: TypeAdapter[ProviderSpec] = TypeAdapter(ProviderSpec)
_PLATFORM: TypeAdapter[PlatformSpec] = TypeAdapter(PlatformSpec)


def _valid(validate: Callable[[object], _T], value: object) -> _T | None:
    try:
        return validate(value)
    except ValidationError:
        return None


def _valid_items(validate: Callable[[object], _T], values: object) -> tuple[tuple[int, _T], ...]:
    if not isinstance(values, list):
        return ()
    checked = ((i, _valid(validate, value)) for i, value in enumerate(values))
    return tuple((i, item) for i, item in checked if item is not None)


def _of_type(value: object, kind: type[_T]) -> _T | None:
    return value if isinstance(value, kind) else None


def _port(value: object) -> int:
    """A port as written, or 0 (none) when it is not one; the models report why."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 65535 else 0


def _parts_of_raw(data: dict[str, Any]) -> _Parts:
    """Read each part alone, so reference checks still run when other parts are broken."""
    raw_providers = data.get("metric_providers", {})
    providers: dict[str, ProviderSpec | None] | None = None
    if isinstance(raw_providers, dict):
        providers = {str(k): _valid(_PROVIDER.validate_python, v) for k, v in raw_providers.items()}
        providers.setdefault("builtin", BuiltinProviderSpec())
    raw_services = data.get("services")
    services: dict[str, _ServiceView] = {}
    if isinstance(raw_services, dict):
        services = {str(k): _ServiceView.of_raw(v) for k, v in raw_services.items() if isinstance(v, dict)}
    raw_envs = data.get("environments")
    environments = None
    if isinstance(raw_envs, dict) and raw_envs:
        environments = {str(k): _EnvironmentView.of_raw(v) for k, v in raw_envs.items()}
    return _Parts(
        daemon=_valid(DaemonSpec.model_validate, data.get("daemon", {})),
        platform=_valid(_PLATFORM.validate_python, data.get("platform", {})),
        providers=providers,
        services=services,
        environments=environments,
    )


def _semantic(parts: _Parts) -> Iterator[tuple[Loc, str]]:
    yield from _check_chains(parts)
    yield from _check_slos(parts)
    yield from _check_slo_gates(parts)
    yield from _check_gates(parts)
    yield from _check_platform(parts)
    yield from _check_ports(parts)


def _check_chains(parts: _Parts) -> Iterator[tuple[Loc, str]]:
    for name, spec in parts.services.items():
        first: dict[str, int] = {}
        for stage in spec.chain:
            if stage.name is None:
                continue
            loc: Loc = ("services", name, "environments", stage.index, "name")
            if parts.environments is not None and stage.name not in parts.environments:
                yield loc, f"unknown environment {stage.name!r}; defined: {_names(parts.environments)}"
            if stage.name in first:
                yield loc, f"environment {stage.name!r} is already in the chain at environments[{first[stage.name]}]"
            first.setdefault(stage.name, stage.index)


def _check_slos(parts: _Parts) -> Iterator[tuple[Loc, str]]:
    for name, spec in parts.services.items():
        for i, slo in spec.slos:
            loc: Loc = ("services", name, "slos", i)
            if parts.providers is not None and slo.provider not in parts.providers:
                yield (*loc, "provider"), f"unknown provider {slo.provider!r}; defined: {_names(parts.providers)}"
            provider = parts.providers.get(slo.provider) if parts.providers is not None else None
            if slo.metric is not None and provider is not None and provider.kind != "builtin":
                yield (
                    (*loc, "metric"),
                    (
                        f"'metric' needs a builtin provider, but {slo.provider!r} is of kind {provider.kind!r}; "
                        "write a 'query' in its language instead"
                    ),
                )
            for placeholder in re.findall(r"\{([A-Za-z_]+)\}", slo.query or ""):
                if placeholder not in PLACEHOLDERS:
                    known = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
                    yield (*loc, "query"), f"unknown placeholder {{{placeholder}}}; known: {known}"


def _check_slo_gates(parts: _Parts) -> Iterator[tuple[Loc, str]]:
    """A service promoted where the ``slo`` gate runs must give it something to judge."""
    for name, spec in parts.services.items():
        if spec.has_slos:
            continue
        for stage in spec.chain:
            env = (parts.environments or {}).get(stage.name or "")
            if env is not None and any(gate == "slo" for _, gate in env.gates):
                message = f"environment {stage.name!r} gates on 'slo' but service {name!r} defines no slos"
                yield ("services", name, "slos"), message


def _check_gates(parts: _Parts) -> Iterator[tuple[Loc, str]]:
    for name, env in (parts.environments or {}).items():
        for i, gate in env.gates:
            if gate not in GATE_KINDS:
                yield ("environments", name, "gates", i), f"unknown gate {gate!r}; known gates: {_names(GATE_KINDS)}"


def _check_platform(parts: _Parts) -> Iterator[tuple[Loc, str]]:
    if parts.platform is None or parts.platform.kind != "local":
        return
    for name, spec in parts.services.items():
        if not spec.has_command:
            yield (
                ("services", name, "command"),
                (
                    "the local platform starts every replica from 'command'; add one, "
                    "e.g. [python, -m, myapp, --port, '{port}']"
                ),
            )


def _check_ports(parts: _Parts) -> Iterator[tuple[Loc, str]]:
    """Routers of the local platform each bind their port: two on one port cannot both start."""
    listen = split_host_port(parts.daemon.listen)[1] if parts.daemon is not None else None
    taken: dict[int, Loc] = {}
    for name, spec in parts.services.items():
        for stage in spec.chain:
            loc: Loc = ("services", name, "environments", stage.index, "port")
            if stage.port == 0:
                continue
            if stage.port == listen:
                yield loc, f"port {stage.port} is the daemon's own (daemon.listen)"
            elif stage.port in taken:
                yield loc, f"port {stage.port} is already used by {_dotted(taken[stage.port])}"
            taken.setdefault(stage.port, loc)
