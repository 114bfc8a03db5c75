"""Route keys and HTTP-API-style route matching."""

from __future__ import annotations

import pytest

from corral.errors import InvalidParameterValueException
from corral.triggers.routes import match_route, parse_route_key

KEYS = [parse_route_key(k) for k in (
    "GET /items/{id}", "GET /items/special", "ANY /items/{id}", "POST /items",
    "GET /files/{proxy+}", "GET /files/{dir}/readme", "GET /", "ANY /{proxy+}")]


def matched(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    found = match_route(KEYS, method, path)
    return None if found is None else (found[0].text, found[1])


class TestParse:
    def test_normalizes(self):
        """Methods are upper-cased and trailing slashes dropped."""
        key = parse_route_key("get /a/{b}/")
        assert key.text == "GET /a/{b}" and key.method == "GET" and key.path == "/a/{b}"

    def test_default(self):
        """$default is a catch-all key."""
        assert parse_route_key("$default").is_default

    @pytest.mark.parametrize("key", ["", "FETCH /a", "GET a", "GET /{p+}/x", "GET /a//b",
                                     "GET /{a}/{a}", "GET /a{b}", "GET /a?x=1"])
    def test_invalid(self, key):
        """Malformed keys are InvalidParameterValueException."""
        with pytest.raises(InvalidParameterValueException):
            parse_route_key(key)


class TestMatch:
    def test_literal_beats_parameter(self):
        """A literal segment is more specific than a parameter."""
        assert matched("GET", "/items/special") == ("GET /items/special", {})
        assert matched("GET", "/items/7") == ("GET /items/{id}", {"id": "7"})

    def test_method_beats_any(self):
        """A route with the request's method beats ANY; ANY covers other methods."""
        assert matched("DELETE", "/items/7") == ("ANY /items/{id}", {"id": "7"})

    def test_greedy(self):
        """{proxy+} takes one or more segments, decoded; a literal tail wins."""
        assert matched("GET", "/files/a/b%20c.txt") == ("GET /files/{proxy+}",
                                                         {"proxy": "a/b c.txt"})
        assert matched("GET", "/files/docs/readme") == ("GET /files/{dir}/readme",
                                                         {"dir": "docs"})

    def test_root_and_fallback(self):
        """GET / is the root; anything else unmatched falls to ANY /{proxy+}."""
        assert matched("GET", "/") == ("GET /", {})
        assert matched("GET", "") == ("GET /", {})
        assert matched("PUT", "/nothing/here") == ("ANY /{proxy+}", {"proxy": "nothing/here"})

    def test_trailing_slash_ignored(self):
        """A trailing slash on the request does not change the match."""
        assert matched("POST", "/items/") == ("POST /items", {})

    def test_no_match_and_default(self):
        """Without a catch-all nothing matches; $default catches what is left."""
        keys = [parse_route_key("GET /a")]
        assert match_route(keys, "GET", "/b") is None
        keys.append(parse_route_key("$default"))
        found = match_route(keys, "GET", "/b")
        assert found is not None and found[0].is_default
