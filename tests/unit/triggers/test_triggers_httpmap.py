"""Request → event (payload 1.0 and 2.0) and result → response mapping, without a server."""

from __future__ import annotations

import base64
import json

import pytest

from corral.triggers.httpmap import (
    HttpRequest,
    MalformedResponse,
    canonical_header_name,
    encode_body,
    is_text_content_type,
    reply_v1,
    reply_v2,
    request_time,
    v1_event,
    v2_event,
)


def make_request(**overrides: object) -> HttpRequest:
    fields: dict[str, object] = {
        "method": "GET", "raw_path": "/a/b%20c", "raw_query": "", "headers": (),
        "body": b"", "source_ip": "10.0.0.1", "protocol": "HTTP/1.1",
        "host": "127.0.0.1:9009", "received_at": 1583348638.390,
    }
    fields.update(overrides)
    return HttpRequest(**fields)  # type: ignore[arg-type]


def v2(req: HttpRequest, **kwargs: object) -> dict:
    args: dict[str, object] = {"route_key": "$default", "api_id": "abc",
                               "domain_name": "abc.example", "domain_prefix": "abc",
                               "account_id": "000000000000", "request_id": "rid"}
    args.update(kwargs)
    return v2_event(req, **args)  # type: ignore[arg-type]


class TestContentTypes:
    @pytest.mark.parametrize("value", ["text/plain", "text/html; charset=utf-8",
                                       "application/json", "application/vnd.api+json",
                                       "application/xml", "image/svg+xml",
                                       "application/javascript"])
    def test_text(self, value):
        """Text, JSON, XML and JavaScript types are text."""
        assert is_text_content_type(value)

    @pytest.mark.parametrize("value", [None, "", "application/octet-stream", "image/png",
                                       "multipart/form-data; boundary=x",
                                       "application/x-www-form-urlencoded"])
    def test_binary(self, value):
        """Everything else, and a missing type, is binary."""
        assert not is_text_content_type(value)

    def test_encode_body(self):
        """Text bodies pass as strings, binary ones as base64, empty ones not at all."""
        assert encode_body(b"", "text/plain") == (None, False)
        assert encode_body(b"hi", "text/plain") == ("hi", False)
        assert encode_body(b"\x00\xff", "application/octet-stream") == ("AP8=", True)
        assert encode_body(b"\xff\xfe", "text/plain") == ("//4=", True)


class TestV2Event:
    def test_headers_cookies_query(self):
        """Headers are joined, cookies split out, query values comma-joined."""
        req = make_request(raw_query="a=1&a=2&b=", headers=(
            ("cookie", "x=1; y=2"), ("cookie", "z=3"), ("x-h", "1"), ("x-h", "2"),
            ("user-agent", "ua")))
        event = v2(req)
        assert event["cookies"] == ["x=1", "y=2", "z=3"]
        assert event["headers"]["x-h"] == "1,2" and "cookie" not in event["headers"]
        assert event["headers"]["x-forwarded-for"] == "10.0.0.1"
        assert event["queryStringParameters"] == {"a": "1,2", "b": ""}
        assert event["rawPath"] == "/a/b%20c" and event["rawQueryString"] == "a=1&a=2&b="
        assert event["requestContext"]["http"]["path"] == "/a/b c"
        assert event["requestContext"]["time"] == "04/Mar/2020:19:03:58 +0000"
        assert event["requestContext"]["timeEpoch"] == 1583348638390

    def test_absent_parts_omitted(self):
        """Without query, cookies or body those keys are omitted (routes)."""
        event = v2(make_request())
        for key in ("cookies", "queryStringParameters", "body", "pathParameters",
                    "stageVariables"):
            assert key not in event
        assert event["isBase64Encoded"] is False

    def test_function_url_nulls(self):
        """Function URL events carry the null placeholders and authorizer."""
        event = v2(make_request(), function_url=True)
        assert event["pathParameters"] is None and event["stageVariables"] is None
        assert event["requestContext"]["authentication"] is None
        assert event["requestContext"]["authorizer"] is None

    def test_path_parameters_and_binary(self):
        """Route parameters and a base64 body."""
        req = make_request(method="POST", body=b"\x01\x02",
                           headers=(("content-type", "application/octet-stream"),))
        event = v2(req, route_key="POST /x/{id}", path_parameters={"id": "7"})
        assert event["pathParameters"] == {"id": "7"}
        assert event["routeKey"] == "POST /x/{id}"
        assert event["requestContext"]["routeKey"] == "POST /x/{id}"
        assert event["isBase64Encoded"] is True
        assert base64.b64decode(event["body"]) == b"\x01\x02"


class TestV1Event:
    def test_shape(self):
        """Payload 1.0: last values, multi-value maps, nulls, resourcePath, $default stage."""
        req = make_request(method="POST", raw_query="q=1&q=2", body=b'{"a":1}', headers=(
            ("content-type", "application/json"), ("x-rep", "1"), ("x-rep", "2")))
        event = v1_event(req, resource="/a/{p}", api_id="api", domain_name="h:1",
                         account_id="000000000000", request_id="rid", resource_id="r1",
                         path_parameters={"p": "b c"})
        assert event["version"] == "1.0" and event["resource"] == "/a/{p}"
        assert event["path"] == "/a/b c" and event["httpMethod"] == "POST"
        assert event["headers"]["X-Rep"] == "2"
        assert event["multiValueHeaders"]["X-Rep"] == ["1", "2"]
        assert event["queryStringParameters"] == {"q": "2"}
        assert event["multiValueQueryStringParameters"] == {"q": ["1", "2"]}
        assert event["pathParameters"] == {"p": "b c"} and event["stageVariables"] is None
        assert event["body"] == '{"a":1}' and event["isBase64Encoded"] is False
        ctx = event["requestContext"]
        assert ctx["resourcePath"] == "/a/{p}" and ctx["stage"] == "$default"
        assert ctx["resourceId"] == "r1" and ctx["requestTimeEpoch"] == 1583348638390
        assert ctx["identity"]["sourceIp"] == "10.0.0.1" and ctx["identity"]["user"] is None

    def test_nulls(self):
        """Absent query, body and path parameters are null."""
        event = v1_event(make_request(), resource="/a", api_id="api", domain_name="h",
                         account_id="0", request_id="r", resource_id="x", path_parameters={})
        assert event["queryStringParameters"] is None
        assert event["multiValueQueryStringParameters"] is None
        assert event["pathParameters"] is None and event["body"] is None

    def test_canonical_names(self):
        """Lower-cased names become Title-Case."""
        assert canonical_header_name("x-forwarded-for") == "X-Forwarded-For"
        assert canonical_header_name("accept") == "Accept"


class TestReplyV2:
    def test_plain_return(self):
        """JSON without statusCode is returned as is with application/json."""
        for payload in (b'{"message": "hi"}', b'"Hello, world!"', b"[1, 2]", b"42"):
            reply = reply_v2(payload)
            assert reply.status == 200 and reply.body == payload
            assert reply.headers == [("content-type", "application/json")]

    def test_response_object(self):
        """statusCode, lower-cased headers, cookies as set-cookie, base64 body."""
        reply = reply_v2(json.dumps({
            "statusCode": 201, "headers": {"Content-Type": "text/plain", "X-N": 5,
                                           "Content-Length": "999"},
            "cookies": ["a=1", "b=2"], "body": base64.b64encode(b"\x00hi").decode(),
            "isBase64Encoded": True}).encode())
        assert reply.status == 201 and reply.body == b"\x00hi"
        assert ("content-type", "text/plain") in reply.headers
        assert ("x-n", "5") in reply.headers
        assert [v for k, v in reply.headers if k == "set-cookie"] == ["a=1", "b=2"]
        assert reply.header("content-length") is None

    def test_default_content_type(self):
        """A response object without content-type gets application/json."""
        reply = reply_v2(b'{"statusCode": 204}')
        assert reply.status == 204 and reply.body == b""
        assert reply.header("content-type") == "application/json"

    @pytest.mark.parametrize("payload", [b"not json", b'{"statusCode": "x"}',
                                         b'{"statusCode": 700}', b'{"statusCode": true}',
                                         b'{"statusCode": 200, "headers": []}',
                                         b'{"statusCode": 200, "cookies": "a=1"}',
                                         b'{"statusCode": 200, "body": "!!", '
                                         b'"isBase64Encoded": true}'])
    def test_malformed(self, payload):
        """Invalid JSON or an invalid response object is malformed."""
        with pytest.raises(MalformedResponse):
            reply_v2(payload)


class TestReplyV1:
    def test_valid(self):
        """A proxy response object; headers and multiValueHeaders merge."""
        reply = reply_v1(json.dumps({
            "statusCode": 200, "headers": {"X-A": "1", "X-B": "b"},
            "multiValueHeaders": {"X-A": ["1", "2"]}, "body": "ok",
            "isBase64Encoded": False}).encode())
        assert reply.status == 200 and reply.body == b"ok"
        assert [v for k, v in reply.headers if k == "X-A"] == ["1", "2"]
        assert ("X-B", "b") in reply.headers

    @pytest.mark.parametrize("payload", [b'{"hello": "world"}', b'"text"', b"[]",
                                         b'{"statusCode": 200, "body": {"a": 1}}',
                                         b'{"statusCode": 200, "extra": 1}',
                                         b'{"statusCode": 200, "multiValueHeaders": {"a": "b"}}'
                                         ])
    def test_malformed(self, payload):
        """Anything but the proxy response object is malformed under 1.0."""
        with pytest.raises(MalformedResponse):
            reply_v1(payload)


def test_request_time_format():
    """requestTime uses API Gateway's CLF-style timestamp."""
    assert request_time(0) == "01/Jan/1970:00:00:00 +0000"
