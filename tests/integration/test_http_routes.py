"""HTTP routes: declared with the `corral route` commands, called with a real HTTP client."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from click.testing import CliRunner
from test_function_urls import header, request

from corral.cli.commands.route import route as route_cli
from functions import create, unique

ROUTE_FN = """
import base64, json

def handler(event, context):
    query = event.get("queryStringParameters") or {}
    mode = query.get("mode")
    if mode == "plain":
        return {"hello": "world"}
    if mode == "raise":
        raise RuntimeError("boom")
    if mode == "binary":
        return {"statusCode": 200, "headers": {"Content-Type": "image/png"},
                "body": base64.b64encode(b"\\x89PNG\\x00\\xff").decode(), "isBase64Encoded": True}
    if mode == "multi":
        return {"statusCode": 200, "headers": {"X-One": "1", "Content-Type": "text/plain"},
                "multiValueHeaders": {"X-Many": ["a", "b"]}, "body": "ok"}
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"},
            "body": json.dumps({"event": event, "who": context.function_name})}
"""


def cli(server: Any, *args: str) -> str:
    """Run a `corral route` subcommand against the server; returns its stdout."""
    result = CliRunner().invoke(route_cli, [*args, "--endpoint-url", server.endpoint,
                                            "--data-dir", str(server.data_dir)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def api(server: Any, lam: Any) -> dict[str, Any]:
    """An API with routes in both payload formats; returns its name, base URL and functions."""
    name = unique("api")
    fn_a, fn_b = unique("route-a"), unique("route-b")
    create(lam, fn_a, {"app.py": ROUTE_FN})
    create(lam, fn_b, {"app.py": ROUTE_FN})
    url = cli(server, "add", name, "GET /items/{id}", "--function", fn_a).strip()
    cli(server, "add", name, "GET /items/special", "--function", fn_b)
    cli(server, "add", name, "ANY /files/{proxy+}", "--function", fn_a,
        "--payload-format", "1.0")
    cli(server, "add", name, "POST /items", "--function", fn_b)
    base = f"{server.endpoint}/http/{name}"
    assert url == f"{base}/items/{{id}}"
    return {"name": name, "base": base, "fn_a": fn_a, "fn_b": fn_b}


def call(url: str, method: str = "GET", body: bytes | None = None,
         headers: list[tuple[str, str]] | None = None) -> tuple[int, Any, list[tuple[str, str]]]:
    status, out_headers, data = request(url, method, body, headers)
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = data
    return status, parsed, out_headers


class TestPayload20:
    def test_event_shape(self, api):
        """A 2.0 route gets routeKey, rawPath relative to the API and pathParameters."""
        status, data, _ = call(f"{api['base']}/items/42?tag=a&tag=b",
                               headers=[("Cookie", "s=1"), ("X-A", "1")])
        assert status == 200, data
        event = data["event"]
        assert data["who"] == api["fn_a"]
        assert event["version"] == "2.0" and event["routeKey"] == "GET /items/{id}"
        assert event["rawPath"] == "/items/42" and event["rawQueryString"] == "tag=a&tag=b"
        assert event["pathParameters"] == {"id": "42"}
        assert event["queryStringParameters"] == {"tag": "a,b"}
        assert event["cookies"] == ["s=1"] and event["headers"]["x-a"] == "1"
        assert "body" not in event and "stageVariables" not in event
        ctx = event["requestContext"]
        assert ctx["routeKey"] == "GET /items/{id}" and ctx["stage"] == "$default"
        assert ctx["apiId"] == api["name"] and ctx["http"]["path"] == "/items/42"
        assert ctx["http"]["method"] == "GET" and ctx["requestId"]

    def test_literal_beats_parameter(self, api):
        """GET /items/special is more specific than GET /items/{id}."""
        status, data, _ = call(f"{api['base']}/items/special")
        assert status == 200 and data["who"] == api["fn_b"]
        assert data["event"]["routeKey"] == "GET /items/special"
        assert "pathParameters" not in data["event"]

    def test_method_must_match(self, api):
        """POST /items is its own route; DELETE /items/1 matches nothing (404)."""
        status, data, _ = call(f"{api['base']}/items", "POST", b"hi",
                               [("Content-Type", "text/plain")])
        assert status == 200 and data["event"]["body"] == "hi"
        status, data, _ = call(f"{api['base']}/items/1", "DELETE")
        assert status == 404 and data == {"message": "Not Found"}

    def test_plain_return(self, api):
        """Under 2.0 a result without statusCode is the 200 JSON body (plain-return rule)."""
        status, data, headers = call(f"{api['base']}/items/1?mode=plain")
        assert status == 200 and data == {"hello": "world"}
        assert header(headers, "content-type") == ["application/json"]

    def test_function_error(self, api):
        """A function error is 502 with the reason in X-Corral-Error."""
        status, data, headers = call(f"{api['base']}/items/1?mode=raise")
        assert status == 502 and data == {"message": "Internal server error"}
        assert "function failed" in header(headers, "x-corral-error")[0]


class TestPayload10:
    def test_event_shape(self, api):
        """A 1.0 route gets the REST proxy shape with multi-value maps and resourcePath."""
        status, data, _ = call(f"{api['base']}/files/a/b.txt?x=1&x=2", "POST", b'{"k": 1}',
                               [("Content-Type", "application/json"), ("X-Rep", "1"),
                                ("X-Rep", "2")])
        assert status == 200, data
        event = data["event"]
        assert event["version"] == "1.0" and event["resource"] == "/files/{proxy+}"
        assert event["path"] == "/files/a/b.txt" and event["httpMethod"] == "POST"
        assert event["pathParameters"] == {"proxy": "a/b.txt"}
        assert event["headers"]["Content-Type"] == "application/json"
        assert event["headers"]["X-Rep"] == "2"
        assert event["multiValueHeaders"]["X-Rep"] == ["1", "2"]
        assert event["queryStringParameters"] == {"x": "2"}
        assert event["multiValueQueryStringParameters"] == {"x": ["1", "2"]}
        assert event["stageVariables"] is None
        assert event["body"] == '{"k": 1}' and event["isBase64Encoded"] is False
        ctx = event["requestContext"]
        assert ctx["resourcePath"] == "/files/{proxy+}" and ctx["stage"] == "$default"
        assert ctx["httpMethod"] == "POST" and ctx["path"] == "/files/a/b.txt"
        assert ctx["identity"]["sourceIp"] == "127.0.0.1"

    def test_absent_parts_are_null(self, api):
        """A GET without query or body has nulls for them."""
        status, data, _ = call(f"{api['base']}/files/x")
        event = data["event"]
        assert status == 200
        assert event["queryStringParameters"] is None
        assert event["multiValueQueryStringParameters"] is None and event["body"] is None

    def test_binary_request_and_response(self, api):
        """Binary bodies travel base64 in both directions."""
        status, data, _ = call(f"{api['base']}/files/img", "PUT", b"\x00\x01\xfe",
                               [("Content-Type", "application/octet-stream")])
        event = data["event"]
        assert status == 200 and event["isBase64Encoded"] is True
        assert base64.b64decode(event["body"]) == b"\x00\x01\xfe"
        status, headers, body = request(f"{api['base']}/files/img?mode=binary")
        assert status == 200 and body == b"\x89PNG\x00\xff"
        assert header(headers, "content-type") == ["image/png"]

    def test_multi_value_headers(self, api):
        """headers and multiValueHeaders are merged into the response."""
        status, headers, body = request(f"{api['base']}/files/m?mode=multi")
        assert status == 200 and body == b"ok"
        assert header(headers, "x-many") == ["a", "b"] and header(headers, "x-one") == ["1"]

    def test_malformed_is_502(self, api):
        """Under 1.0 a result without statusCode is malformed: 502 Internal server error."""
        status, data, headers = call(f"{api['base']}/files/x?mode=plain")
        assert status == 502 and data == {"message": "Internal server error"}
        assert "Malformed Lambda proxy response" in header(headers, "x-corral-error")[0]


class TestManagement:
    def test_ls_and_rm(self, server, lam):
        """`route ls` lists routes with their URLs; `route rm` removes one."""
        name = unique("api-rm")
        fn = unique("route-rm")
        create(lam, fn, {"app.py": ROUTE_FN})
        cli(server, "add", name, "GET /x", "--function", fn)
        listed = json.loads(cli(server, "ls", name, "--json"))
        assert [(r["RouteKey"], r["FunctionName"], r["PayloadFormatVersion"]) for r in listed] \
            == [("GET /x", fn, "2.0")]
        assert request(f"{server.endpoint}/http/{name}/x")[0] == 200
        cli(server, "rm", name, "GET /x")
        assert request(f"{server.endpoint}/http/{name}/x")[0] == 404
        everything = json.loads(cli(server, "ls", "--json"))
        assert all(r["ApiName"] != name for r in everything)

    def test_unknown_function_is_refused(self, server):
        """Binding a route to a missing function fails with ResourceNotFoundException."""
        result = CliRunner().invoke(route_cli, [
            "add", unique("api"), "GET /x", "--function", unique("missing"),
            "--endpoint-url", server.endpoint, "--data-dir", str(server.data_dir)])
        assert result.exit_code != 0
        assert "ResourceNotFoundException" in str(result.exception)

    def test_invalid_route_key(self, server, lam):
        """A greedy parameter that is not last is refused."""
        fn = unique("route-bad")
        create(lam, fn, {"app.py": ROUTE_FN})
        result = CliRunner().invoke(route_cli, [
            "add", unique("api"), "GET /{p+}/x", "--function", fn,
            "--endpoint-url", server.endpoint, "--data-dir", str(server.data_dir)])
        assert result.exit_code != 0
        assert "InvalidParameterValueException" in str(result.exception)

    def test_api_requires_a_signature(self, server):
        """The route API refuses unsigned requests."""
        req = urllib.request.Request(f"{server.endpoint}/_corral/apis", method="GET")
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=10)
        assert exc.value.code == 403
