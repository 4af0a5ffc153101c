"""The parts of a ``flow`` step's settings: ``${name}`` templates and the extractors that set variables.

A template is parsed once, when the settings load, so a step that uses a
variable no earlier step defines is rejected before any run; rendering is then
a join. An extractor takes one value from an answer (a JSONPath, a regular
expression's group, a header) or says why it found none.

Example::

    Template.parse("Bearer ${token}").render({"token": "abc"}.__getitem__)   # 'Bearer abc'
    JsonExtract(json="$.token").extract(answer)                              # a str, or Missing(why)
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

import jsonpath
from pydantic import Discriminator, Field, PrivateAttr, Tag, model_validator

from vouch.core.settings import Model
from vouch.probes.settings import Secret
from vouch.probes.wire import WireAnswer

__all__ = [
    "Extractor",
    "HeaderExtract",
    "JsonExtract",
    "Missing",
    "RegexExtract",
    "StepTemplates",
    "Template",
    "VariableName",
    "is_absolute",
    "join_url",
]

_QUOTE = 80
_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,63}"
_NAME_RE = re.compile(_NAME)
_MARK = re.compile(r"\$?\$\{")
_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_JSONPATH = jsonpath.JSONPathEnvironment(strict=True)

VariableName = Annotated[str, Field(pattern=rf"^{_NAME}$")]
"""A variable's name: letters, digits and ``_``, not starting with a digit."""


# --------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class Template:
    """A text with ``${name}`` placeholders, parsed once; ``$${`` stands for a literal ``${``.

    >>> t = Template.parse("Bearer ${token}")
    >>> t.names, t.render({"token": "abc"}.__getitem__)
    (frozenset({'token'}), 'Bearer abc')
    """

    pieces: tuple[tuple[str, str], ...]
    """Pairs of (literal text, variable name), in order."""
    tail: str
    """Literal text after the last placeholder."""

    @classmethod
    def parse(cls, text: str) -> Template:
        """``text`` parsed; ``ValueError`` for an unclosed ``${`` or a placeholder that is not a variable name."""
        pieces: list[tuple[str, str]] = []
        literal: list[str] = []
        pos = 0
        while (mark := _MARK.search(text, pos)) is not None:
            literal.append(text[pos : mark.start()])
            if mark.group() == "$${":
                literal.append("${")
                pos = mark.end()
                continue
            end = text.find("}", mark.end())
            if end < 0:
                raise ValueError(f"unclosed '${{' at character {mark.start() + 1} (write '$${{' for a literal '${{')")
            name = text[mark.end() : end]
            if not _NAME_RE.fullmatch(name):
                raise ValueError(
                    f"'${{{_quote(name)}}}' is not a variable reference (names are letters, digits and _, "
                    "not starting with a digit; write '$${' for a literal '${')"
                )
            pieces.append(("".join(literal), name))
            literal = []
            pos = end + 1
        literal.append(text[pos:])
        return cls(tuple(pieces), "".join(literal))

    @property
    def names(self) -> frozenset[str]:
        """The variables the text uses."""
        return frozenset(name for _, name in self.pieces)

    def render(self, value: Callable[[str], str]) -> str:
        """The text with each placeholder replaced by ``value(name)``."""
        if not self.pieces:
            return self.tail
        return "".join(literal + value(name) for literal, name in self.pieces) + self.tail


def join_url(base: str, url: str) -> str:
    """``url`` as is when absolute, else appended to the path of ``base`` (whose query is dropped).

    >>> join_url("http://shop.example/api", "/items/7?full=1")
    'http://shop.example/api/items/7?full=1'
    >>> join_url("http://shop.example/api/", "https://auth.example/token")
    'https://auth.example/token'
    """
    if is_absolute(url):
        return url
    parts = urlsplit(base)
    if not url or url.startswith("?"):
        path = (parts.path or "/") + url
    else:
        path = f"{parts.path.rstrip('/')}/{url.lstrip('/')}"
    return f"{parts.scheme}://{parts.netloc}{path}"


@dataclass(frozen=True)
class StepTemplates:
    """A step's URL, header values and body, parsed; secrets stay secrets (sent verbatim)."""

    url: Template
    headers: tuple[tuple[str, Template | Secret], ...]
    body: Template | Secret | None

    @property
    def names(self) -> frozenset[str]:
        """Every variable the step uses."""
        parts = [self.url, *(value for _, value in self.headers), self.body]
        return frozenset[str]().union(*(part.names for part in parts if isinstance(part, Template)))


# --------------------------------------------------------------------------- extractors


@dataclass(frozen=True)
class Missing:
    """Why an extractor found no value in an answer."""

    why: str


class JsonExtract(Model):
    """The first value a JSONPath (RFC 9535) selects in the JSON body; numbers and booleans as their JSON text."""

    json_: str = Field(alias="json", min_length=1)
    """JSONPath query, e.g. ``$.token`` or ``$.items[?@.sku == 'A-1'].id``."""

    _query: jsonpath.JSONPath | jsonpath.CompoundJSONPath = PrivateAttr()

    @model_validator(mode="after")
    def _compiles(self) -> JsonExtract:
        try:
            self._query = _JSONPATH.compile(self.json_)
        except jsonpath.JSONPathError as exc:
            raise ValueError(f"not a valid JSONPath: {exc}") from exc
        return self

    def extract(self, answer: WireAnswer) -> str | Missing:
        try:
            document = answer.json()
        except ValueError:
            kind = answer.header("content-type")
            return Missing(f"the body is not JSON ({f'content-type {_quote(kind)}' if kind else 'no content-type'})")
        try:
            match = self._query.match(document)
        except jsonpath.JSONPathError as exc:
            return Missing(f"{self.json_} cannot be evaluated on this body: {exc}")
        if match is None:
            return Missing(f"{self.json_} selects nothing")
        value = match.obj
        if isinstance(value, str):
            return value
        if value is None:
            return Missing(f"{self.json_} selects null")
        if isinstance(value, bool | int | float):
            return json.dumps(value)
        return Missing(f"{self.json_} selects {'an array' if isinstance(value, list) else 'an object'}, not a value")


class RegexExtract(Model):
    """A group of the first match of a regular expression in the body (as text)."""

    regex: re.Pattern[str]
    """Regular expression searched in the body."""
    group: int | str = 1
    """The group whose text is the value: a number (0 is the whole match) or a group's name."""

    @model_validator(mode="after")
    def _group_exists(self) -> RegexExtract:
        group = self.group
        if isinstance(group, int) and not 0 <= group <= self.regex.groups:
            raise ValueError(f"/{self.regex.pattern}/ has no group {group} (use 0 for the whole match)")
        if isinstance(group, str) and group not in self.regex.groupindex:
            raise ValueError(f"/{self.regex.pattern}/ has no group named {group!r}")
        return self

    def extract(self, answer: WireAnswer) -> str | Missing:
        found = self.regex.search(answer.text())
        if found is None:
            cut = " (the body was cut at its size limit)" if answer.truncated else ""
            return Missing(f"the body does not match /{self.regex.pattern}/{cut}")
        value = found.group(self.group)
        if value is None:
            return Missing(f"group {self.group} of /{self.regex.pattern}/ took no part in the match")
        return value


class HeaderExtract(Model):
    """The first value of a response header."""

    header: str = Field(min_length=1)
    """Header name (any case)."""

    def extract(self, answer: WireAnswer) -> str | Missing:
        value = answer.header(self.header)
        return Missing(f"header {self.header} is missing") if value is None else value


_EXTRACTOR_KEYS = ("json", "regex", "header")


def _extractor_kind(value: Any) -> str | None:
    """Which extractor a configuration entry is: the one of its keys ``json``, ``regex`` or ``header``."""
    if isinstance(value, JsonExtract):
        return "json"
    if isinstance(value, RegexExtract):
        return "regex"
    if isinstance(value, HeaderExtract):
        return "header"
    if isinstance(value, Mapping):
        kinds = [key for key in _EXTRACTOR_KEYS if key in value]
        return kinds[0] if len(kinds) == 1 else None
    return None


Extractor = Annotated[
    Annotated[JsonExtract, Tag("json")]
    | Annotated[RegexExtract, Tag("regex")]
    | Annotated[HeaderExtract, Tag("header")],
    Discriminator(
        _extractor_kind,
        custom_error_type="extractor_kind",
        custom_error_message="an extractor sets exactly one of 'json', 'regex' or 'header'",
    ),
]
"""``{json: "$.path"}``, ``{regex: "pattern", group: 1}`` or ``{header: "Name"}``."""


def is_absolute(url: str) -> bool:
    """Whether ``url`` names its scheme (``https://...``) rather than a path under the target.

    >>> is_absolute("https://auth.example/token"), is_absolute("/items/${id}")
    (True, False)
    """
    return _ABSOLUTE.match(url) is not None


def _quote(text: str) -> str:
    return text if len(text) <= _QUOTE else text[: _QUOTE - 1] + "…"
