"""Function URLs: the control-plane operations through boto3, and real HTTP requests to the URLs."""

from __future__ import annotations

import base64
import http.client
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from functions import create, unique

ECHO_FN = """
import base64, json

def handler(event, context):
    mode = (event.get("queryStringParameters") or {}).get("mode")
    if mode == "plain":
        return {"message": "hi"}
    if mode == "string":
        return "Hello, world!"
    if mode == "raise":
        raise RuntimeError("boom")
    if mode == "malformed":
        return {"statusCode": "not-a-number"}
    if mode == "cookies":
        return {"statusCode": 201,
                "headers": {"Content-Type": "text/plain", "X-Custom": "v",
                            "Access-Control-Allow-Origin": "https://evil.example"},
                "cookies": ["a=1; Max-Age=60", "b=2"], "body": "created"}
    if mode == "binary":
        return {"statusCode": 200, "headers": {"content-type": "application/octet-stream"},
                "body": base64.b64encode(bytes(range(256))).decode(), "isBase64Encoded": True}
    return {"statusCode": 200, "headers": {"content-type": "application/json"},
            "body": json.dumps(event)}
"""


def request(url: str, method: str = "GET", body: bytes | None = None,
            headers: list[tuple[str, str]] | None = None, host: str | None = None) \
        -> tuple[int, list[tuple[str, str]], bytes]:
    """A raw HTTP request (repeated headers allowed); returns status, headers, body."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    conn.putrequest(method, path, skip_host=host is not None, skip_accept_encoding=True)
    if host is not None:
        conn.putheader("Host", host)
    for name, value in headers or []:
        conn.putheader(name, value)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, response.getheaders(), data


def header(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


@pytest.fixture(scope="module")
def echo_url(lam: Any) -> tuple[str, str]:
    """A function with an AuthType NONE URL; returns (function name, URL)."""
    name = unique("url-echo")
    create(lam, name, {"app.py": ECHO_FN})
    resp = lam.create_function_url_config(FunctionName=name, AuthType="NONE")
    return name, resp["FunctionUrl"]


class TestControlPlane:
    def test_create_get_update_list_delete(self, lam):
        """The five operations return the model's shapes and status codes."""
        name = unique("url-crud")
        create(lam, name, {"app.py": ECHO_FN})
        created = lam.create_function_url_config(FunctionName=name, AuthType="NONE")
        assert created["ResponseMetadata"]["HTTPStatusCode"] == 201
        assert created["AuthType"] == "NONE" and created["InvokeMode"] == "BUFFERED"
        assert created["FunctionArn"].endswith(f":function:{name}")
        assert "/lambda-url/" in created["FunctionUrl"] and created["FunctionUrl"].endswith("/")
        assert created["CreationTime"]
        got = lam.get_function_url_config(FunctionName=name)
        assert got["FunctionUrl"] == created["FunctionUrl"] and got["LastModifiedTime"]
        updated = lam.update_function_url_config(
            FunctionName=name, AuthType="AWS_IAM", InvokeMode="RESPONSE_STREAM",
            Cors={"AllowOrigins": ["https://a.example"], "MaxAge": 60})
        assert updated["AuthType"] == "AWS_IAM" and updated["InvokeMode"] == "RESPONSE_STREAM"
        assert updated["Cors"] == {"AllowOrigins": ["https://a.example"], "MaxAge": 60}
        listed = lam.list_function_url_configs(FunctionName=name)["FunctionUrlConfigs"]
        assert [c["FunctionUrl"] for c in listed] == [created["FunctionUrl"]]
        deleted = lam.delete_function_url_config(FunctionName=name)
        assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
        with pytest.raises(ClientError) as exc:
            lam.get_function_url_config(FunctionName=name)
        assert exc.value.response["Error"]["Code"] == "ResourceNotFoundException"

    def test_conflict_and_validation(self, lam):
        """A second URL is a conflict; bad AuthType and MaxAge are validation errors."""
        name = unique("url-conf")
        create(lam, name, {"app.py": ECHO_FN})
        lam.create_function_url_config(FunctionName=name, AuthType="NONE")
        with pytest.raises(ClientError) as exc:
            lam.create_function_url_config(FunctionName=name, AuthType="NONE")
        assert exc.value.response["Error"]["Code"] == "ResourceConflictException"
        with pytest.raises(ClientError) as exc:
            lam.update_function_url_config(FunctionName=name, Cors={"MaxAge": 90000})
        assert exc.value.response["Error"]["Code"] == "InvalidParameterValueException"

    def test_unknown_function(self, lam):
        """A URL for a missing function is ResourceNotFoundException."""
        with pytest.raises(ClientError) as exc:
            lam.create_function_url_config(FunctionName=unique("nope"), AuthType="NONE")
        assert exc.value.response["Error"]["Code"] == "ResourceNotFoundException"

    def test_url_goes_with_its_function(self, lam):
        """Deleting the function deletes its URL: the URL then answers 404."""
        name = unique("url-del")
        create(lam, name, {"app.py": ECHO_FN})
        url = lam.create_function_url_config(FunctionName=name, AuthType="NONE")["FunctionUrl"]
        assert request(url + "?mode=plain")[0] == 200
        lam.delete_function(FunctionName=name)
        assert request(url)[0] == 404


class TestEvent:
    def test_get_event_shape(self, echo_url):
        """A GET becomes payload 2.0: cookies split, headers joined, query joined, no body."""
        _, url = echo_url
        status, _, body = request(url + "a/b%20c?x=1&x=2&y=&z=3", headers=[
            ("Cookie", "c1=v1; c2=v2"), ("Cookie", "c3=v3"), ("X-Multi", "a"),
            ("X-Multi", "b"), ("User-Agent", "tester/1.0")])
        assert status == 200
        event = json.loads(body)
        assert event["version"] == "2.0" and event["routeKey"] == "$default"
        assert event["rawPath"] == "/a/b%20c"
        assert event["rawQueryString"] == "x=1&x=2&y=&z=3"
        assert event["cookies"] == ["c1=v1", "c2=v2", "c3=v3"]
        assert "cookie" not in event["headers"]
        assert event["headers"]["x-multi"] == "a,b"
        assert event["headers"]["user-agent"] == "tester/1.0"
        assert event["queryStringParameters"] == {"x": "1,2", "y": "", "z": "3"}
        assert "body" not in event and event["isBase64Encoded"] is False
        assert event["pathParameters"] is None and event["stageVariables"] is None
        ctx = event["requestContext"]
        url_id = urlsplit(url).path.split("/")[2]
        assert ctx["apiId"] == url_id and ctx["domainPrefix"] == url_id
        assert ctx["domainName"] == f"{url_id}.lambda-url.us-east-1.on.aws"
        assert ctx["http"] == {"method": "GET", "path": "/a/b c", "protocol": "HTTP/1.1",
                               "sourceIp": "127.0.0.1", "userAgent": "tester/1.0"}
        assert ctx["routeKey"] == "$default" and ctx["stage"] == "$default"
        assert ctx["authentication"] is None and ctx["authorizer"] is None
        assert ctx["requestId"] and isinstance(ctx["timeEpoch"], int)
        assert ctx["time"].endswith(" +0000")

    def test_root_path(self, echo_url):
        """The URL root is rawPath "/" with or without the trailing slash."""
        _, url = echo_url
        for target in (url, url.rstrip("/")):
            status, _, body = request(target)
            assert status == 200 and json.loads(body)["rawPath"] == "/"

    def test_text_body(self, echo_url):
        """A JSON body is passed as text."""
        _, url = echo_url
        status, _, body = request(url, "POST", b'{"a": 1}',
                                  [("Content-Type", "application/json")])
        event = json.loads(body)
        assert status == 200 and event["body"] == '{"a": 1}'
        assert event["isBase64Encoded"] is False

    def test_binary_body(self, echo_url):
        """A binary body is base64 with isBase64Encoded true."""
        _, url = echo_url
        raw = bytes(range(256))
        status, _, body = request(url, "PUT", raw,
                                  [("Content-Type", "application/octet-stream")])
        event = json.loads(body)
        assert status == 200 and event["isBase64Encoded"] is True
        assert base64.b64decode(event["body"]) == raw

    def test_host_based_url(self, echo_url):
        """The Host <url-id>.lambda-url.<region>.localhost serves the URL from the root."""
        _, url = echo_url
        parts = urlsplit(url)
        url_id = parts.path.split("/")[2]
        status, _, body = request(f"http://127.0.0.1:{parts.port}/x/y", host=(
            f"{url_id}.lambda-url.us-east-1.localhost:{parts.port}"))
        assert status == 200 and json.loads(body)["rawPath"] == "/x/y"


class TestResponseMapping:
    def test_plain_object(self, echo_url):
        """JSON without statusCode is a 200 application/json body, as returned."""
        _, url = echo_url
        status, headers, body = request(url + "?mode=plain")
        assert status == 200 and header(headers, "content-type") == ["application/json"]
        assert json.loads(body) == {"message": "hi"}

    def test_plain_string(self, echo_url):
        """A returned string keeps its quotes."""
        _, url = echo_url
        status, _, body = request(url + "?mode=string")
        assert status == 200 and body == b'"Hello, world!"'

    def test_status_headers_cookies(self, echo_url):
        """statusCode, lower-cased headers and one set-cookie per cookie."""
        _, url = echo_url
        status, headers, body = request(url + "?mode=cookies")
        assert status == 201 and body == b"created"
        assert header(headers, "content-type") == ["text/plain"]
        assert header(headers, "x-custom") == ["v"]
        assert header(headers, "set-cookie") == ["a=1; Max-Age=60", "b=2"]

    def test_binary_response(self, echo_url):
        """isBase64Encoded bodies are decoded to bytes."""
        _, url = echo_url
        status, _, body = request(url + "?mode=binary")
        assert status == 200 and body == bytes(range(256))

    def test_function_error_is_502(self, echo_url):
        """An unhandled function error answers 502 Internal Server Error."""
        _, url = echo_url
        status, _, body = request(url + "?mode=raise")
        assert status == 502 and json.loads(body) == {"Message": "Internal Server Error"}

    def test_malformed_is_502(self, echo_url):
        """A statusCode that is not a number answers 502."""
        _, url = echo_url
        status, _, body = request(url + "?mode=malformed")
        assert status == 502 and json.loads(body) == {"Message": "Internal Server Error"}

    def test_head_has_no_body(self, echo_url):
        """A HEAD request gets the status and headers without a body."""
        _, url = echo_url
        status, headers, body = request(url + "?mode=plain", "HEAD")
        assert status == 200 and body == b""
        assert header(headers, "content-type") == ["application/json"]

    def test_unknown_url_is_404(self, server):
        """An unknown URL id answers 404."""
        assert request(f"{server.endpoint}/lambda-url/{'x' * 32}/")[0] == 404


@pytest.fixture(scope="module")
def cors_url(lam: Any) -> str:
    """A URL with a Cors configuration."""
    name = unique("url-cors")
    create(lam, name, {"app.py": ECHO_FN})
    return str(lam.create_function_url_config(FunctionName=name, AuthType="NONE", Cors={
        "AllowOrigins": ["https://app.example"], "AllowMethods": ["GET", "POST"],
        "AllowHeaders": ["x-custom"], "ExposeHeaders": ["x-custom"], "MaxAge": 300,
        "AllowCredentials": True})["FunctionUrl"])


class TestCors:
    def test_preflight(self, cors_url):
        """A preflight OPTIONS is answered from the Cors configuration."""
        status, headers, _ = request(cors_url, "OPTIONS", headers=[
            ("Origin", "https://app.example"), ("Access-Control-Request-Method", "POST")])
        assert status == 200
        assert header(headers, "access-control-allow-origin") == ["https://app.example"]
        assert header(headers, "access-control-allow-methods") == ["GET,POST"]
        assert header(headers, "access-control-allow-headers") == ["x-custom"]
        assert header(headers, "access-control-max-age") == ["300"]
        assert header(headers, "access-control-allow-credentials") == ["true"]

    def test_response_headers(self, cors_url):
        """Responses carry the configured CORS headers, replacing the function's."""
        status, headers, _ = request(cors_url + "?mode=cookies",
                                     headers=[("Origin", "https://app.example")])
        assert status == 201
        assert header(headers, "access-control-allow-origin") == ["https://app.example"]
        assert header(headers, "access-control-expose-headers") == ["x-custom"]

    def test_other_origin(self, cors_url):
        """An origin outside AllowOrigins gets no CORS headers."""
        _, headers, _ = request(cors_url + "?mode=cookies",
                                headers=[("Origin", "https://evil.example")])
        assert header(headers, "access-control-allow-origin") == []


@pytest.fixture(scope="module")
def iam_url(lam: Any) -> str:
    """A URL with AuthType AWS_IAM."""
    name = unique("url-iam")
    create(lam, name, {"app.py": ECHO_FN})
    return str(lam.create_function_url_config(FunctionName=name,
                                              AuthType="AWS_IAM")["FunctionUrl"])


class TestIamAuth:
    def test_unsigned_is_forbidden(self, iam_url):
        """Without a signature an AWS_IAM URL answers 403 Forbidden."""
        status, _, body = request(iam_url)
        assert status == 403 and json.loads(body) == {"Message": "Forbidden"}

    def test_bad_signature_is_forbidden(self, iam_url):
        """A signature made with a wrong secret is refused."""
        signed = AWSRequest(method="GET", url=iam_url + "p?q=1")
        SigV4Auth(Credentials("AKIAWRONGKEYEXAMPLE", "nope"), "lambda",
                  "us-east-1").add_auth(signed)
        status, _, _ = request(iam_url + "p?q=1", headers=list(signed.headers.items()))
        assert status == 403

    def test_signed_request(self, iam_url, server):
        """A SigV4-signed request (service lambda) is invoked with the IAM authorizer."""
        creds = server.credentials
        body = b'{"k": "v"}'
        signed = AWSRequest(method="POST", url=iam_url + "p?q=1", data=body,
                            headers={"Content-Type": "application/json"})
        SigV4Auth(Credentials(creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"]),
                  "lambda", "us-east-1").add_auth(signed)
        status, _, data = request(iam_url + "p?q=1", "POST", body,
                                  list(signed.headers.items()))
        assert status == 200, data
        iam = json.loads(data)["requestContext"]["authorizer"]["iam"]
        assert iam["accessKey"] == creds["AWS_ACCESS_KEY_ID"]
        assert iam["accountId"] == "000000000000"
