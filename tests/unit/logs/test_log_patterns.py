"""CloudWatch Logs filter pattern matching: unstructured terms, JSON and space-delimited."""

from __future__ import annotations

import json

import pytest

from corral.logs.patterns import (
    FilterPatternError,
    compile_pattern,
    metric_value,
    validate_metric_value,
)


def match(pattern: str, message: str) -> bool:
    return compile_pattern(pattern).matches(message)


def js(**fields: object) -> str:
    return json.dumps(fields)


@pytest.mark.parametrize("pattern", ["", "   ", None])
def test_empty_pattern_matches_everything(pattern: str | None) -> None:
    """An empty (or blank) pattern matches every message."""
    compiled = compile_pattern(pattern)
    assert compiled.matches("anything at all")
    assert compiled.matches("")


@pytest.mark.parametrize(
    ("pattern", "message", "expected"),
    [
        ("ERROR", "[ERROR] 400 BAD REQUEST", True),
        ("ERROR", "[error] 400 bad request", False),  # case-sensitive
        ("ERROR", "all good", False),
        ("ERROR ARGUMENTS", "ERROR: bad ARGUMENTS given", True),
        ("ERROR ARGUMENTS", "ERROR: bad input", False),
        ("RequestId:", "END RequestId: 1234", True),
    ],
)
def test_terms_must_all_appear(pattern: str, message: str, expected: bool) -> None:
    """Whitespace-separated terms are ANDed, case-sensitive substring matches."""
    assert match(pattern, message) is expected


@pytest.mark.parametrize(
    ("pattern", "message", "expected"),
    [
        ('"ERROR 42"', "got ERROR 42 here", True),
        ('"ERROR 42"', "got ERROR and 42", False),
        ('"INTERNAL SERVER ERROR" 500', "500 INTERNAL SERVER ERROR", True),
        (r'"say \"hi\""', 'they say "hi" loudly', True),
        ('"a,b"', "x a,b y", True),
    ],
)
def test_quoted_phrases(pattern: str, message: str, expected: bool) -> None:
    """A quoted phrase is one term, matched with its spaces and escaped quotes."""
    assert match(pattern, message) is expected


@pytest.mark.parametrize(
    ("pattern", "message", "expected"),
    [
        ("ERROR -ARGUMENTS", "ERROR bad input", True),
        ("ERROR -ARGUMENTS", "ERROR bad ARGUMENTS", False),
        ('ERROR -"not found"', "ERROR: not found", False),
        ('ERROR -"not found"', "ERROR: found", True),
        ("-DEBUG", "INFO hello", True),
        ("-DEBUG", "DEBUG hello", False),
    ],
)
def test_exclusions(pattern: str, message: str, expected: bool) -> None:
    """A `-term` (or `-"phrase"`) must not appear."""
    assert match(pattern, message) is expected


@pytest.mark.parametrize(
    ("pattern", "message", "expected"),
    [
        ("?ERROR ?WARN", "WARN disk almost full", True),
        ("?ERROR ?WARN", "ERROR disk full", True),
        ("?ERROR ?WARN", "INFO all fine", False),
        ("disk ?ERROR ?WARN", "WARN disk", True),
        ("disk ?ERROR ?WARN", "WARN memory", False),
        ("?ERROR ?WARN -ignore", "WARN ignore me", False),
    ],
)
def test_optional_terms(pattern: str, message: str, expected: bool) -> None:
    """`?term`s are ORed; plain terms stay required and exclusions still exclude."""
    assert match(pattern, message) is expected


def test_regex_term() -> None:
    """`%regex%` terms are regular expressions searched in the message."""
    assert match(r"%time=\d+ms%", "done time=123ms")
    assert not match(r"%time=\d+ms%", "done time=fast")


@pytest.mark.parametrize(
    ("pattern", "message", "expected"),
    [
        ('{ $.level = "ERROR" }', js(level="ERROR"), True),
        ('{ $.level = "ERROR" }', js(level="INFO"), False),
        ('{ $.level = "ERROR" }', js(other="ERROR"), False),
        ('{$.level="ERROR"}', js(level="ERROR"), True),
        ("{ $.level = ERROR }", js(level="ERROR"), True),
        ('{ $.level != "ERROR" }', js(level="INFO"), True),
        ('{ $.level != "ERROR" }', js(level="ERROR"), False),
        ('{ $.level != "ERROR" }', js(other=1), False),  # missing field: comparison is false
        ('{ $.a.b = "x" }', js(a={"b": "x"}), True),
        ('{ $.a.b = "x" }', js(a="b"), False),
        ('{ $.items[1] = "y" }', js(items=["x", "y"]), True),
        ('{ $.items[5] = "y" }', js(items=["x", "y"]), False),
        ("{ $['odd key'] = 1 }", json.dumps({"odd key": 1}), True),
        ('{ $.flag = "true" }', js(flag=True), True),
        ('{ $.code = "200" }', js(code=200), True),
    ],
)
def test_json_equality(pattern: str, message: str, expected: bool) -> None:
    """JSON selectors compare with = and != against strings (quoted or bare)."""
    assert match(pattern, message) is expected


@pytest.mark.parametrize(
    ("pattern", "message", "expected"),
    [
        ("{ $.latency > 100 }", js(latency=150), True),
        ("{ $.latency > 100 }", js(latency=100), False),
        ("{ $.latency >= 100 }", js(latency=100), True),
        ("{ $.latency < 1.5 }", js(latency=1.25), True),
        ("{ $.latency <= -2 }", js(latency=-3), True),
        ("{ $.latency = 100 }", js(latency=100.0), True),
        ("{ $.latency != 100 }", js(latency=99), True),
        ("{ $.latency > 1e2 }", js(latency=101), True),
        ("{ $.latency > 100 }", js(latency="150"), True),  # numeric strings compare as numbers
        ("{ $.latency > 100 }", js(latency="slow"), False),
        ("{ $.latency > 100 }", js(latency=True), False),
        ("{ $.latency > 100 }", js(other=500), False),
    ],
)
def test_json_numeric_comparisons(pattern: str, message: str, expected: bool) -> None:
    """Numeric operators compare numbers (and numeric strings), never booleans."""
    assert match(pattern, message) is expected


@pytest.mark.parametrize(
    ("pattern", "message", "expected"),
    [
        ('{ $.eventType = "Update*" }', js(eventType="UpdateTrail"), True),
        ('{ $.eventType = "Update*" }', js(eventType="CreateTrail"), False),
        ('{ $.eventType = "*Trail" }', js(eventType="CreateTrail"), True),
        ('{ $.eventType = "C*T*l" }', js(eventType="CreateTrail"), True),
        ("{ $.group = sg-* }", js(group="sg-1234"), True),
        (r'{ $.s = "a\*b" }', js(s="a*b"), True),
        (r'{ $.s = "a\*b" }', js(s="axxb"), False),
        ("{ $.a.b = * }", js(a={"b": "anything"}), True),
        ("{ $.a.b = * }", js(a={"b": 3}), True),
        ("{ $.a.b = * }", js(a={"c": 3}), False),
        ("{ $.msg = %^time=\\d+$% }", js(msg="time=42"), True),
        ("{ $.msg = %^time=\\d+$% }", js(msg="time=fast"), False),
    ],
)
def test_json_wildcards_and_regex(pattern: str, message: str, expected: bool) -> None:
    """`*` in string values is a wildcard, `\\*` a literal star, `= *` means present."""
    assert match(pattern, message) is expected


@pytest.mark.parametrize(
    ("pattern", "message", "expected"),
    [
        ('{ $.level = "ERROR" && $.latency > 100 }', js(level="ERROR", latency=200), True),
        ('{ $.level = "ERROR" && $.latency > 100 }', js(level="ERROR", latency=50), False),
        ('{ $.level = "ERROR" || $.latency > 100 }', js(level="INFO", latency=200), True),
        ('{ $.level = "ERROR" || $.latency > 100 }', js(level="INFO", latency=50), False),
        # && binds tighter than ||
        ('{ $.a = 1 || $.b = 1 && $.c = 1 }', js(a=1, b=0, c=0), True),
        ('{ ($.a = 1 || $.b = 1) && $.c = 1 }', js(a=1, b=0, c=0), False),
        ('{ ($.a = 1 || $.b = 1) && $.c = 1 }', js(a=0, b=1, c=1), True),
        (
            '{ ($.user.id = 2 && $.users[0].email = "John.Doe@example.com") '
            '|| $.actions[2] = "GET" }',
            json.dumps({"user": {"id": 1}, "users": [{"email": "x"}],
                        "actions": ["PUT", "POST", "GET"]}),
            True,
        ),
    ],
)
def test_json_boolean_combinations(pattern: str, message: str, expected: bool) -> None:
    """`&&`, `||` and parentheses combine comparisons with the usual precedence."""
    assert match(pattern, message) is expected


@pytest.mark.parametrize(
    ("pattern", "message", "expected"),
    [
        ("{ $.x IS NULL }", js(x=None), True),
        ("{ $.x IS NULL }", js(x=0), False),
        ("{ $.x IS NULL }", js(y=None), False),
        ("{ $.x NOT EXISTS }", js(y=1), True),
        ("{ $.x NOT EXISTS }", js(x=None), False),
        ("{ $.ok IS TRUE }", js(ok=True), True),
        ("{ $.ok IS FALSE }", js(ok=True), False),
        ("{ $.ok is false }", js(ok=False), True),
    ],
)
def test_json_null_exists_and_booleans(pattern: str, message: str, expected: bool) -> None:
    """IS NULL / IS TRUE / IS FALSE / NOT EXISTS test a field's presence and literal value."""
    assert match(pattern, message) is expected


@pytest.mark.parametrize("message", ["ERROR not json", "", "[1, 2", '"just a string"'])
def test_json_pattern_never_matches_non_json(message: str) -> None:
    """Messages that are not JSON documents match no JSON pattern, not even NOT EXISTS."""
    assert not match('{ $.level = "ERROR" }', message)
    assert not match("{ $.level NOT EXISTS }", message)


@pytest.mark.parametrize(
    "pattern",
    [
        '{ $.level = "ERROR"',
        "{ level = 1 }",
        "{ $.latency > fast }",
        "{ $.a = }",
        "{ $.a = 1 && }",
        "{ ($.a = 1 }",
        "{ $.a ~ 1 }",
        "{ $. = 1 }",
        '"unterminated',
        "[a, b = 1",
        "[a, b = 1 || c = 2]",
        "%(%",
    ],
)
def test_invalid_patterns_raise(pattern: str) -> None:
    """Syntax errors raise FilterPatternError (a ValueError)."""
    compile_pattern.cache_clear()
    with pytest.raises(FilterPatternError):
        compile_pattern(pattern)


def test_compilation_is_cached() -> None:
    """The same pattern text compiles once and yields the same object."""
    assert compile_pattern('{ $.a = "b" }') is compile_pattern('{ $.a = "b" }')


APACHE = '127.0.0.1 - frank [10/Oct/2000:13:25:15 -0700] "GET /apache_pb.gif HTTP/1.0" 404 2326'


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("[ip, id, user, timestamp, request, status_code, size]", True),
        ("[ip, id, user, timestamp, request, status_code = 404, size]", True),
        ("[ip, id, user, timestamp, request, status_code = 4*, size]", True),
        ("[ip, id, user, timestamp, request, status_code = 200, size]", False),
        ("[ip, id, user, timestamp, request, status_code, size > 1000]", True),
        ("[ip, id, user, timestamp, request, status_code, size > 5000]", False),
        ("[ip, ..., status_code = 4* || status_code = 5*, size]", True),
        ("[..., size]", True),
        ('[ip, id, user = "frank", ...]', True),
        ("[ip, id, user, timestamp, request = *gif*, ...]", True),
        ("[ip, id, user]", False),  # field count must match without an ellipsis
    ],
)
def test_space_delimited_patterns(pattern: str, expected: bool) -> None:
    """Space-delimited patterns bind fields ("..." and [...] are one field) and test them."""
    assert match(pattern, APACHE) is expected


def test_space_delimited_extract_names_fields() -> None:
    """`extract` returns the named fields of a matching message and None otherwise."""
    pattern = compile_pattern("[ip, ..., status, size]")
    assert pattern.extract(APACHE) == {"ip": "127.0.0.1", "status": "404", "size": "2326"}
    assert pattern.extract("only") is None


def test_metric_values() -> None:
    """metricValue is a number, a JSON selector or a named space-delimited field."""
    assert metric_value("1", "anything") == 1.0
    assert metric_value("2.5", "anything") == 2.5
    assert metric_value("$.latency", js(latency=120)) == 120.0
    assert metric_value("$.a.b[0]", json.dumps({"a": {"b": [7]}})) == 7.0
    assert metric_value("$.latency", js(latency="slow")) is None
    assert metric_value("$.latency", "not json") is None
    assert metric_value("$size", APACHE, {"size": "2326"}) == 2326.0
    assert metric_value("$size", APACHE, {"other": "1"}) is None


@pytest.mark.parametrize("good", ["1", "-0.5", "$.latency", "$.a[0].b", "$bytes"])
def test_valid_metric_value_expressions(good: str) -> None:
    """Numbers, JSON selectors and `$name` field references are valid metric values."""
    validate_metric_value(good)


@pytest.mark.parametrize("bad", ["", "one", "$.", "$.a b", "$"])
def test_invalid_metric_value_expressions(bad: str) -> None:
    """Anything else is rejected."""
    with pytest.raises(FilterPatternError):
        validate_metric_value(bad)
