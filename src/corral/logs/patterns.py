"""CloudWatch Logs filter patterns: compile once, match many.

`compile_pattern(text)` returns a `FilterPattern` (cached per text) whose `matches(message)`
answers whether a log event's message matches. The three syntaxes CloudWatch Logs accepts:

* **Unstructured** (the default). An empty pattern matches every event. Whitespace-separated
  terms must all occur (case-sensitive substring match); `"quoted phrases"` are one term; a term
  prefixed with `-` must not occur; when any term is prefixed with `?`, at least one of those
  must occur; `%regex%` is a regular-expression term (Python `re.search`).
  Examples: `ERROR`, `ERROR "not found" -Retrying`, `?ERROR ?WARN`.
* **JSON** (`{ ... }`): comparisons on selectors `$.a.b`, `$.list[0]`, `$['odd key']`:
  `=` / `!=` against strings (`"Update*"` with `*` wildcards, `\\*` a literal star; bare words
  are strings too), `%regex%`, or `*` (the field is present); numeric `= != < <= > >=`;
  `IS NULL`, `IS TRUE`, `IS FALSE`, `NOT EXISTS`; combined with `&&`, `||` (`&&` binds tighter)
  and parentheses. A message that is not JSON matches no JSON pattern; a comparison on a field
  the event does not have is false (also for `!=`); only `NOT EXISTS` matches a missing field.
* **Space-delimited** (`[ ... ]`, basic): comma-separated field names, each optionally with a
  condition (`status = 4* || status = 5*`, `bytes > 1000`), and `...` for any number of fields.
  Message fields are separated by spaces; text in `"..."` or `[...]` is one field (without the
  enclosing characters). Without `...` the number of fields must equal the pattern's.

`metric_value(expression, message, fields)` evaluates a metric filter's `metricValue`: a number,
a JSON selector (`$.latency`) or a space-delimited field (`$bytes`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

__all__ = [
    "FilterPattern",
    "FilterPatternError",
    "compile_pattern",
    "metric_value",
    "validate_metric_value",
]


class FilterPatternError(ValueError):
    """The filter pattern is not valid CloudWatch Logs syntax."""


class FilterPattern:
    """A compiled filter pattern; `matches` is the only hot method."""

    def __init__(self, source: str) -> None:
        self.source = source

    def matches(self, message: str) -> bool:
        """True when `message` matches the pattern."""
        return True

    def extract(self, message: str) -> dict[str, str] | None:
        """The named fields of a matching message ({} if the syntax names none), else None."""
        return {} if self.matches(message) else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r})"


@lru_cache(maxsize=512)
def compile_pattern(pattern: str | None) -> FilterPattern:
    """Compile a filter pattern (cached); raises FilterPatternError on invalid syntax."""
    text = (pattern or "").strip()
    if not text:
        return FilterPattern("")
    if text.startswith("{"):
        if not text.endswith("}"):
            raise FilterPatternError("JSON filter pattern is missing its closing '}'")
        return _JsonPattern(text, _ExprParser(text[1:-1], json_mode=True).parse_all())
    if text.startswith("["):
        if not text.endswith("]"):
            raise FilterPatternError("space-delimited filter pattern is missing its closing ']'")
        return _parse_delimited(text)
    return _parse_terms(text)


# -- unstructured terms ----------------------------------------------------------------------

Term = Callable[[str], bool]


class _TermPattern(FilterPattern):
    def __init__(self, source: str, required: Sequence[Term], optional: Sequence[Term],
                 excluded: Sequence[Term]) -> None:
        super().__init__(source)
        self._required = tuple(required)
        self._optional = tuple(optional)
        self._excluded = tuple(excluded)

    def matches(self, message: str) -> bool:
        for term in self._required:
            if not term(message):
                return False
        for term in self._excluded:
            if term(message):
                return False
        if self._optional:
            return any(term(message) for term in self._optional)
        return True


def _substring_term(text: str) -> Term:
    return lambda message: text in message


def _regex_term(regex: str) -> Term:
    try:
        compiled = re.compile(regex)
    except re.error as exc:
        raise FilterPatternError(f"invalid regular expression %{regex}%: {exc}") from None
    return lambda message: compiled.search(message) is not None


def _read_quoted(text: str, start: int, quote: str) -> tuple[str, int]:
    """Read a quoted string whose opening quote is at `start`; returns (raw content, next)."""
    i = start + 1
    out: list[str] = []
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i : i + 2])
            i += 2
            continue
        if ch == quote:
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise FilterPatternError(f"unterminated {quote}...{quote} in filter pattern")


def _unescape(raw: str) -> str:
    return re.sub(r"\\(.)", r"\1", raw)


def _parse_terms(text: str) -> FilterPattern:
    required: list[Term] = []
    optional: list[Term] = []
    excluded: list[Term] = []
    i = 0
    n = len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        bucket = required
        if text[i] in "-?" and i + 1 < n and not text[i + 1].isspace():
            bucket = excluded if text[i] == "-" else optional
            i += 1
        term: Term
        if text[i] == '"':
            raw, i = _read_quoted(text, i, '"')
            term = _substring_term(_unescape(raw))
        elif text[i] == "%":
            raw, i = _read_quoted(text, i, "%")
            term = _regex_term(raw.replace("\\%", "%"))
        else:
            j = i
            while j < n and not text[j].isspace():
                j += 1
            term = _substring_term(text[i:j])
            i = j
        bucket.append(term)
    return _TermPattern(text, required, optional, excluded)


# -- values and comparisons (shared by JSON and space-delimited patterns) --------------------

_MISSING: Final = object()
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


@dataclass(frozen=True)
class _Number:
    value: float
    text: str


@dataclass(frozen=True)
class _Text:
    """A string literal; `regex` is set when it contains `*` wildcards."""

    text: str
    regex: re.Pattern[str] | None


@dataclass(frozen=True)
class _Regex:
    regex: re.Pattern[str]


@dataclass(frozen=True)
class _Any:
    pass


_Value = _Number | _Text | _Regex | _Any


def _text_value(raw: str) -> _Text:
    """A string literal in pattern syntax: `\\x` is a literal x, `*` a wildcard."""
    parts: list[str] = []
    literal: list[str] = []
    wildcard = False
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw):
            parts.append(re.escape(raw[i + 1]))
            literal.append(raw[i + 1])
            i += 2
            continue
        if ch == "*":
            wildcard = True
            parts.append(".*")
        else:
            parts.append(re.escape(ch))
        literal.append(ch)
        i += 1
    if wildcard:
        return _Text("".join(literal), re.compile("".join(parts), re.DOTALL))
    return _Text("".join(literal), None)


def _as_number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return None


def _as_text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float) or value is None:
        return json.dumps(value)
    return None  # objects and arrays never equal a scalar


def _equals(value: _Value, field: object) -> bool:
    if isinstance(value, _Any):
        return True
    if isinstance(value, _Number):
        number = _as_number(field)
        if number is not None:
            return number == value.value
        return _as_text(field) == value.text
    text = _as_text(field)
    if text is None:
        return False
    if isinstance(value, _Regex):
        return value.regex.search(text) is not None
    if value.regex is not None:
        return value.regex.fullmatch(text) is not None
    return text == value.text


_NUMERIC_OPS: Final[dict[str, Callable[[float, float], bool]]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


# -- expression trees -------------------------------------------------------------------------

Lookup = Callable[[tuple[str | int, ...]], object]


class _Node:
    def evaluate(self, lookup: Lookup) -> bool:
        raise NotImplementedError

    def names(self) -> set[str]:
        return set()


@dataclass(frozen=True)
class _Compare(_Node):
    path: tuple[str | int, ...]
    op: str  # = != < <= > >= null true false notexists
    value: _Value | None

    def evaluate(self, lookup: Lookup) -> bool:
        field = lookup(self.path)
        if self.op == "notexists":
            return field is _MISSING
        if field is _MISSING:
            return False
        if self.op == "null":
            return field is None
        if self.op == "true":
            return field is True
        if self.op == "false":
            return field is False
        assert self.value is not None
        if self.op == "=":
            return _equals(self.value, field)
        if self.op == "!=":
            return not isinstance(self.value, _Any) and not _equals(self.value, field)
        assert isinstance(self.value, _Number)
        number = _as_number(field)
        return number is not None and _NUMERIC_OPS[self.op](number, self.value.value)

    def names(self) -> set[str]:
        return {str(self.path[0])} if self.path else set()


@dataclass(frozen=True)
class _And(_Node):
    parts: tuple[_Node, ...]

    def evaluate(self, lookup: Lookup) -> bool:
        return all(part.evaluate(lookup) for part in self.parts)

    def names(self) -> set[str]:
        return set().union(*(part.names() for part in self.parts))


@dataclass(frozen=True)
class _Or(_Node):
    parts: tuple[_Node, ...]

    def evaluate(self, lookup: Lookup) -> bool:
        return any(part.evaluate(lookup) for part in self.parts)

    def names(self) -> set[str]:
        return set().union(*(part.names() for part in self.parts))


_OPERATORS = ("!=", "<=", ">=", "=", "<", ">")
_BARE_STOP = set("()&|=!<>\"%,")
_NAME_STOP = set(".[]()&|=!<>\"'%, \t\r\n")


class _ExprParser:
    """Recursive-descent parser for `a = 1 && (b > 2 || c IS NULL)` style expressions.

    In JSON mode the left side of a comparison is a `$` selector; otherwise (space-delimited
    patterns) it is a field name.
    """

    def __init__(self, text: str, json_mode: bool) -> None:
        self.text = text
        self.pos = 0
        self.json_mode = json_mode

    # lexing helpers
    def _skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def _peek(self, literal: str) -> bool:
        self._skip()
        return self.text.startswith(literal, self.pos)

    def _take(self, literal: str) -> bool:
        if self._peek(literal):
            self.pos += len(literal)
            return True
        return False

    def _error(self, what: str) -> FilterPatternError:
        return FilterPatternError(f"{what} at position {self.pos} of {self.text.strip()!r}")

    def _word(self, stop: set[str]) -> str:
        self._skip()
        start = self.pos
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch.isspace() or ch in stop:
                break
            self.pos += 1
        return self.text[start : self.pos]

    # grammar
    def parse_all(self) -> _Node:
        node = self._or()
        self._skip()
        if self.pos != len(self.text):
            raise self._error("unexpected text")
        return node

    def _or(self) -> _Node:
        parts = [self._and()]
        while self._take("||"):
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else _Or(tuple(parts))

    def _and(self) -> _Node:
        parts = [self._primary()]
        while self._take("&&"):
            parts.append(self._primary())
        return parts[0] if len(parts) == 1 else _And(tuple(parts))

    def _primary(self) -> _Node:
        if self._take("("):
            node = self._or()
            if not self._take(")"):
                raise self._error("expected ')'")
            return node
        path = self._selector() if self.json_mode else self._field_name()
        return self._comparison(path)

    def _field_name(self) -> tuple[str | int, ...]:
        name = self._word(_NAME_STOP)
        if not name:
            raise self._error("expected a field name")
        return (name,)

    def _selector(self) -> tuple[str | int, ...]:
        self._skip()
        if not self._take("$"):
            raise self._error("expected a selector starting with '$'")
        path: list[str | int] = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == ".":
                self.pos += 1
                start = self.pos
                while self.pos < len(self.text) and self.text[self.pos] not in _NAME_STOP:
                    self.pos += 1
                if start == self.pos:
                    raise self._error("expected a property name after '.'")
                path.append(self.text[start : self.pos])
            elif ch == "[":
                self.pos += 1
                if self.pos < len(self.text) and self.text[self.pos] in "'\"":
                    raw, self.pos = _read_quoted(self.text, self.pos, self.text[self.pos])
                    path.append(_unescape(raw))
                else:
                    start = self.pos
                    while self.pos < len(self.text) and self.text[self.pos].isdigit():
                        self.pos += 1
                    if start == self.pos:
                        raise self._error("expected an array index")
                    path.append(int(self.text[start : self.pos]))
                if self.pos >= len(self.text) or self.text[self.pos] != "]":
                    raise self._error("expected ']'")
                self.pos += 1
            else:
                break
        if not path:
            raise self._error("a selector needs at least one property")
        return tuple(path)

    def _comparison(self, path: tuple[str | int, ...]) -> _Node:
        self._skip()
        for op in _OPERATORS:
            if self.text.startswith(op, self.pos):
                self.pos += len(op)
                value = self._value()
                if op in _NUMERIC_OPS and not isinstance(value, _Number):
                    raise self._error(f"operator {op} needs a number")
                return _Compare(path, op, value)
        keyword = self._word(_BARE_STOP).upper()
        if keyword == "IS":
            what = self._word(_BARE_STOP).upper()
            if what in ("NULL", "TRUE", "FALSE"):
                return _Compare(path, what.lower(), None)
            raise self._error("expected NULL, TRUE or FALSE after IS")
        if keyword == "NOT" and self._word(_BARE_STOP).upper() == "EXISTS":
            return _Compare(path, "notexists", None)
        raise self._error("expected a comparison operator")

    def _value(self) -> _Value:
        self._skip()
        if self.pos >= len(self.text):
            raise self._error("expected a value")
        ch = self.text[self.pos]
        if ch == '"':
            raw, self.pos = _read_quoted(self.text, self.pos, '"')
            return _text_value(raw)
        if ch == "%":
            raw, self.pos = _read_quoted(self.text, self.pos, "%")
            try:
                return _Regex(re.compile(raw.replace("\\%", "%")))
            except re.error as exc:
                raise self._error(f"invalid regular expression ({exc})") from None
        word = self._word(_BARE_STOP)
        if not word:
            raise self._error("expected a value")
        if word == "*":
            return _Any()
        if _NUMBER.fullmatch(word):
            number = float(word)
            if math.isfinite(number):
                return _Number(number, word)
        return _text_value(word)


# -- JSON patterns ----------------------------------------------------------------------------


def _resolve(document: object, path: tuple[str | int, ...]) -> object:
    current = document
    for step in path:
        if isinstance(step, int):
            if not isinstance(current, list) or step >= len(current):
                return _MISSING
            current = current[step]
        else:
            if not isinstance(current, dict) or step not in current:
                return _MISSING
            current = current[step]
    return current


def _parse_json(message: str) -> object:
    stripped = message.strip()
    if not stripped or stripped[0] not in "{[":
        return _MISSING
    try:
        return json.loads(stripped)
    except ValueError:
        return _MISSING


class _JsonPattern(FilterPattern):
    def __init__(self, source: str, expression: _Node) -> None:
        super().__init__(source)
        self._expression = expression

    def matches(self, message: str) -> bool:
        document = _parse_json(message)
        if document is _MISSING:
            return False
        return self._expression.evaluate(lambda path: _resolve(document, path))


# -- space-delimited patterns -----------------------------------------------------------------

_ELLIPSIS: Final = "..."


@dataclass(frozen=True)
class _Slot:
    name: str | None  # None for "..."
    condition: _Node | None


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "\"%":
            _, end = _read_quoted(text, i, ch)
            current.append(text[i:end])
            i = end
            continue
        if ch == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _parse_delimited(text: str) -> FilterPattern:
    slots: list[_Slot] = []
    inner = text[1:-1]
    if not inner.strip():
        return _DelimitedPattern(text, [])
    for raw in _split_top_level(inner):
        part = raw.strip()
        if part == _ELLIPSIS:
            slots.append(_Slot(None, None))
            continue
        if not part:
            raise FilterPatternError(f"empty field in space-delimited pattern {text!r}")
        name_match = re.fullmatch(r"[^\s=!<>&|()\"%,]+", part)
        if name_match:
            slots.append(_Slot(part, None))
            continue
        condition = _ExprParser(part, json_mode=False).parse_all()
        name = _ExprParser(part, json_mode=False)._field_name()[0]
        slots.append(_Slot(str(name), condition))
    named = {slot.name for slot in slots if slot.name is not None}
    for slot in slots:
        if slot.condition is not None:
            unknown = slot.condition.names() - named
            if unknown:
                raise FilterPatternError(
                    f"space-delimited pattern refers to undefined field(s) {sorted(unknown)}")
    return _DelimitedPattern(text, slots)


def _split_fields(message: str) -> list[str]:
    fields: list[str] = []
    i = 0
    n = len(message)
    while i < n:
        ch = message[i]
        if ch.isspace():
            i += 1
            continue
        closer = {'"': '"', "[": "]"}.get(ch)
        if closer is not None:
            end = message.find(closer, i + 1)
            if end >= 0:
                fields.append(message[i + 1 : end])
                i = end + 1
                continue
        j = i
        while j < n and not message[j].isspace():
            j += 1
        fields.append(message[i:j])
        i = j
    return fields


class _DelimitedPattern(FilterPattern):
    _MAX_ATTEMPTS = 10_000

    def __init__(self, source: str, slots: Sequence[_Slot]) -> None:
        super().__init__(source)
        self._slots = tuple(slots)
        self._conditions = tuple(s.condition for s in slots if s.condition is not None)
        self._has_ellipsis = any(s.name is None for s in slots)

    def matches(self, message: str) -> bool:
        return self.extract(message) is not None

    def extract(self, message: str) -> dict[str, str] | None:
        fields = _split_fields(message)
        if not self._slots:
            return {}
        if not self._has_ellipsis and len(fields) != len(self._slots):
            return None
        attempts = [0]
        return self._assign(fields, 0, 0, {}, attempts)

    def _assign(self, fields: list[str], slot_index: int, field_index: int,
                bound: dict[str, str], attempts: list[int]) -> dict[str, str] | None:
        if slot_index == len(self._slots):
            if field_index != len(fields):
                return None
            attempts[0] += 1
            if attempts[0] > self._MAX_ATTEMPTS:
                return None
            lookup: Lookup = lambda path: bound.get(str(path[0]), _MISSING)  # noqa: E731
            if all(condition.evaluate(lookup) for condition in self._conditions):
                return dict(bound)
            return None
        slot = self._slots[slot_index]
        if slot.name is None:
            remaining_named = sum(1 for s in self._slots[slot_index + 1 :] if s.name is not None)
            for skip in range(len(fields) - field_index - remaining_named + 1):
                found = self._assign(fields, slot_index + 1, field_index + skip, bound, attempts)
                if found is not None:
                    return found
            return None
        if field_index >= len(fields):
            return None
        previous = bound.get(slot.name)
        bound[slot.name] = fields[field_index]
        found = self._assign(fields, slot_index + 1, field_index + 1, bound, attempts)
        if previous is None:
            bound.pop(slot.name, None)
        else:
            bound[slot.name] = previous
        return found


# -- metric values ----------------------------------------------------------------------------


def metric_value(expression: str, message: str, fields: dict[str, str] | None = None) -> \
        float | None:
    """The value a metric filter's `metricValue` yields for a matching message, or None.

    `expression` is a number (`1`), a JSON selector (`$.latency`) or, with `fields` from a
    space-delimited pattern's `extract`, a named field (`$bytes`). Non-numeric values give None.
    """
    text = expression.strip()
    if _NUMBER.fullmatch(text):
        number = float(text)
        return number if math.isfinite(number) else None
    if text.startswith("$.") or text.startswith("$["):
        try:
            path = _ExprParser(text, json_mode=True)._selector()
        except FilterPatternError:
            return None
        document = _parse_json(message)
        if document is _MISSING:
            return None
        return _as_number(_resolve(document, path))
    if text.startswith("$") and fields is not None:
        return _as_number(fields.get(text[1:], _MISSING))
    return None


def validate_metric_value(expression: str) -> None:
    """Raise FilterPatternError unless `expression` is a valid metricValue."""
    text = expression.strip()
    if _NUMBER.fullmatch(text):
        return
    if text.startswith("$.") or text.startswith("$["):
        parser = _ExprParser(text, json_mode=True)
        parser._selector()
        if parser.pos != len(text):
            raise FilterPatternError(f"invalid metric value {expression!r}")
        return
    if re.fullmatch(r"\$[A-Za-z0-9_\-]+", text):
        return
    raise FilterPatternError(f"invalid metric value {expression!r}")
