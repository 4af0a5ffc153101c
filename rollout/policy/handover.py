"""Handing a policy input to regopy: built value by value where that is exact, as JSON text otherwise.

regopy reads a JSON text through rego-cpp's Rego term parser, about 0.2 µs a
byte: 2 ms for the 10 KB input of a production promotion, before any rule
runs. rego-cpp's input API builds the same value from its parts at well under
1 µs a value, key or object item (0.6 ms for that input), and is what
:func:`set_input` uses.

Two properties of that API are handled here. It takes a string as the body of
a JSON string literal, so each string goes JSON-escaped (a NUL as ``\\u0000``),
without its quotes: as given, which is how ``regopy.Input`` gives it, a quote
or a backslash would change what the policy reads, and a key holding one
would be unreadable. And it renders a float with six
decimals (``std::to_string``), so a float goes as a value only when those six
decimals read back as the same number (``91.5`` does, ``1e-7`` does not); the
policy then reads the same number, and only ``json.marshal`` of it shows the
six decimals. An input with any other float, an integer beyond 64 bits, a key
that is not a string, or a value JSON would write differently goes as text.
Either way the policy reads the document whose canonical JSON the decision's
digest names.

The functions are regopy's own bindings of rego-cpp's C API
(``regopy.rego_shared``), the ones ``regopy.Input`` calls one Python wrapper at
a time; should a regopy release no longer have them, every input goes as text.

>>> import regopy
>>> interpreter = regopy.Interpreter()
>>> set_input(interpreter, {"coverage": 91.5, "steps": ["build", "tests"]}, '{"coverage":91.5}')
'built'
>>> str(interpreter.query("x := input.steps[1]"))
'{"expressions":[true], "bindings":{"x":"tests"}}'
>>> set_input(interpreter, {"tiny": 1e-7}, '{"tiny":1e-7}')
'text'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from json.encoder import encode_basestring
from typing import Any, Literal

from regopy import rego_shared  # type: ignore[import-untyped]

_EXACT_FLOAT = 2.0**53
"""Largest magnitude of a float handed over as a value: its six-decimal rendering reads back exactly."""
_INT64 = (-(2**63), 2**63 - 1)


class _Inexact(Exception):
    """A value the input API would not hand over exactly: the input goes as text."""


def set_input(interpreter: Any, document: Mapping[str, Any], text: str) -> Literal["built", "text"]:
    """Make ``document`` the input of ``interpreter``; ``text`` is its JSON, used when building is not exact.

    Returns how it went over. Raises ``regopy.RegoError`` when rego-cpp
    refuses the input; the caller turns that into a deny.
    """
    api = _API
    impl = getattr(interpreter, "_impl", None)
    if api is not None and impl is not None and isinstance(document, dict):
        handle = api.new()
        try:
            api.build(handle, document)
            api.set(impl, handle)
            return "built"
        except (_Inexact, UnicodeEncodeError, RecursionError):
            pass  # a lone surrogate cannot be UTF-8; a nesting this deep is the parser's to refuse
        finally:
            api.free(handle)
    interpreter.set_input_term(text)
    return "text"


class _InputApi:
    """rego-cpp's input API through regopy's ctypes bindings: a stack of values, closed into arrays and objects."""

    def __init__(self, shared: Any) -> None:
        lib = shared.rego
        self.new: Callable[[], Any] = lib.regoNewInput
        self.free: Callable[[Any], None] = lib.regoFreeInput
        self.set: Callable[[Any, Any], None] = shared.rego_set_input
        self._calls = (
            lib.regoInputString,
            lib.regoInputInt,
            lib.regoInputFloat,
            lib.regoInputBoolean,
            lib.regoInputNull,
            lib.regoInputObjectItem,
            lib.regoInputObject,
            lib.regoInputArray,
        )

    def build(self, handle: Any, document: Any) -> None:
        """Push ``document`` onto ``handle``'s stack; raise :class:`_Inexact` for what must go as text.

        One call per value, key and object item, each answering 0 when it went
        well; the calls live in locals, which is most of what this costs besides them.
        """
        string, integer, real, boolean, null, item, obj, array = self._calls
        escape = encode_basestring

        def push(value: Any) -> Any:
            kind = type(value)
            if kind is str:
                return string(handle, escape(value)[1:-1].encode())
            if kind is dict:
                for key, inner in value.items():
                    if type(key) is not str or string(handle, escape(key)[1:-1].encode()) or push(inner):
                        raise _Inexact
                    if item(handle):
                        raise _Inexact
                return obj(handle, len(value))
            if kind is list or kind is tuple:
                for inner in value:
                    if push(inner):
                        raise _Inexact
                return array(handle, len(value))
            if value is True or value is False:
                return boolean(handle, value)
            if value is None:
                return null(handle)
            if kind is int and _INT64[0] <= value <= _INT64[1]:
                return integer(handle, value)
            if kind is float and abs(value) < _EXACT_FLOAT and float(f"{value:f}") == value:
                return real(handle, value)
            raise _Inexact  # a number that would not read back, or a type JSON writes its own way

        if push(document):
            raise _Inexact


def _load() -> _InputApi | None:
    try:
        return _InputApi(rego_shared)
    except AttributeError:
        return None


_API = _load()
"""The input API, or ``None`` when this regopy does not expose it (every input then goes as text)."""
