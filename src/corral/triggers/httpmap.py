"""HTTP requests as Lambda events and function results as HTTP responses.

Requests become API Gateway payload format 2.0 (function URLs and HTTP routes) or 1.0 (HTTP
routes), as the interface spec §6.1-6.3 describes:

* 2.0: header names lower-cased, repeated headers and query parameters comma-joined, every
  `Cookie` header split into `cookies` (and removed from `headers`), `rawPath` and
  `rawQueryString` as received (relative to the URL or API root), absent parts omitted;
* 1.0: `headers`/`queryStringParameters` hold the last value, `multiValueHeaders`/
  `multiValueQueryStringParameters` all values, absent parts are `null`. ASGI servers lower-case
  header names, so 1.0 header names are given in canonical `Title-Case` (`Content-Type`).

Bodies: a text content type (`text/*`, JSON, XML, JavaScript, YAML, and their `+json`/`+xml`
variants) is passed as a string; any other content type, or none, is base64 with
`isBase64Encoded: true`. An empty body is omitted (2.0) or `null` (1.0).

Responses: `reply_v2` applies the 2.0 rules (an object with `statusCode` is a response
description; any other valid JSON is the 200 `application/json` body as returned, "the plain
return rule"); `reply_v1` requires the 1.0 response object and raises `MalformedResponse`
otherwise.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from starlette.requests import Request
from starlette.responses import Response

_TEXT_TYPES = frozenset({
    "application/json", "application/javascript", "application/x-javascript",
    "application/xml", "application/yaml", "application/x-yaml", "application/graphql",
    "application/ld+json", "application/x-ndjson", "application/ecmascript",
})
# Response headers the front end owns.
_DROPPED_RESPONSE_HEADERS = frozenset({"content-length", "transfer-encoding", "connection",
                                       "keep-alive"})
MAX_REQUEST_BYTES = 6 * 1024 * 1024
# Every method a front-end route accepts (Starlette's default for function endpoints is GET).
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class MalformedResponse(Exception):
    """The function's result is not a valid response for the payload format."""


@dataclass(frozen=True)
class HttpRequest:
    """An HTTP request as the triggers see it: relative to the URL or API root."""

    method: str
    raw_path: str  # percent-encoded as received, starts with "/"
    raw_query: str  # without "?"
    headers: tuple[tuple[str, str], ...]  # lower-cased names, in order received
    body: bytes
    source_ip: str
    protocol: str  # "HTTP/1.1"
    host: str
    received_at: float = field(default_factory=time.time)

    @property
    def path(self) -> str:
        return unquote(self.raw_path)

    def header(self, name: str) -> str | None:
        """The comma-joined values of a header, or None."""
        values = [v for k, v in self.headers if k == name]
        return ",".join(values) if values else None

    @property
    def user_agent(self) -> str:
        return self.header("user-agent") or ""


@dataclass
class HttpReply:
    """An HTTP response to send: status, headers (repeatable) and body bytes."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def set_header(self, name: str, value: str) -> None:
        lowered = name.lower()
        self.headers = [(k, v) for k, v in self.headers if k.lower() != lowered]
        self.headers.append((name, value))


def request_from_scope(request: Request, body: bytes, prefix_len: int = 0) -> HttpRequest:
    """Build an `HttpRequest` whose path drops the first `prefix_len` bytes of the raw path."""
    scope = request.scope
    raw = scope.get("raw_path")
    raw_path = raw.decode("latin-1") if raw else quote(scope["path"])
    raw_path = raw_path.split("?", 1)[0][prefix_len:]
    if not raw_path.startswith("/"):
        raw_path = "/" + raw_path
    headers = tuple((k.decode("latin-1").lower(), v.decode("latin-1"))
                    for k, v in scope["headers"])
    client = scope.get("client")
    version = scope.get("http_version", "1.1")
    return HttpRequest(
        method=request.method, raw_path=raw_path,
        raw_query=scope.get("query_string", b"").decode("latin-1"), headers=headers, body=body,
        source_ip=client[0] if client else "127.0.0.1", protocol=f"HTTP/{version}",
        host=request.headers.get("host", ""))


# -- request → event -----------------------------------------------------------------------------

def is_text_content_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    mime = content_type.split(";", 1)[0].strip().lower()
    return (mime.startswith("text/") or mime in _TEXT_TYPES or mime.endswith("+json")
            or mime.endswith("+xml"))


def encode_body(body: bytes, content_type: str | None) -> tuple[str | None, bool]:
    """The event's `body` and `isBase64Encoded` for a request body."""
    if not body:
        return None, False
    if is_text_content_type(content_type):
        try:
            return body.decode("utf-8"), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode("ascii"), True


def _query_pairs(raw_query: str) -> list[tuple[str, str]]:
    return parse_qsl(raw_query, keep_blank_values=True) if raw_query else []


def request_time(epoch: float) -> str:
    """API Gateway's `requestTime`: `12/Mar/2020:19:03:58 +0000`."""
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")


def _forwarded(req: HttpRequest) -> list[tuple[str, str]]:
    """The x-forwarded-* headers API Gateway adds when the client did not send them."""
    present = {k for k, _ in req.headers}
    port = req.host.rsplit(":", 1)[1] if ":" in req.host and not req.host.endswith("]") \
        else "80"
    added = []
    if "x-forwarded-for" not in present:
        added.append(("x-forwarded-for", req.source_ip))
    if "x-forwarded-proto" not in present:
        added.append(("x-forwarded-proto", "http"))
    if "x-forwarded-port" not in present:
        added.append(("x-forwarded-port", port))
    return added


def v2_event(req: HttpRequest, *, route_key: str, api_id: str, domain_name: str,
             domain_prefix: str, account_id: str, request_id: str,
             path_parameters: Mapping[str, str] | None = None,
             function_url: bool = False, authorizer: dict[str, Any] | None = None) \
        -> dict[str, Any]:
    """Payload format 2.0; `function_url` adds the keys function URLs set to `null`."""
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in (*req.headers, *_forwarded(req)):
        if name == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    query: dict[str, str] = {}
    for key, value in _query_pairs(req.raw_query):
        query[key] = f"{query[key]},{value}" if key in query else value
    body, is_b64 = encode_body(req.body, headers.get("content-type"))
    context: dict[str, Any] = {
        "accountId": account_id, "apiId": api_id,
    }
    if function_url:
        context["authentication"] = None
        context["authorizer"] = authorizer
    elif authorizer is not None:
        context["authorizer"] = authorizer
    context.update({
        "domainName": domain_name, "domainPrefix": domain_prefix,
        "http": {"method": req.method, "path": req.path, "protocol": req.protocol,
                 "sourceIp": req.source_ip, "userAgent": req.user_agent},
        "requestId": request_id, "routeKey": route_key, "stage": "$default",
        "time": request_time(req.received_at), "timeEpoch": int(req.received_at * 1000),
    })
    event: dict[str, Any] = {"version": "2.0", "routeKey": route_key, "rawPath": req.raw_path,
                             "rawQueryString": req.raw_query}
    if cookies:
        event["cookies"] = cookies
    event["headers"] = headers
    if query:
        event["queryStringParameters"] = query
    event["requestContext"] = context
    if body is not None:
        event["body"] = body
    if function_url:
        event["pathParameters"] = None
    elif path_parameters:
        event["pathParameters"] = dict(path_parameters)
    event["isBase64Encoded"] = is_b64
    if function_url:
        event["stageVariables"] = None
    return event


def canonical_header_name(name: str) -> str:
    """`content-type` → `Content-Type` (ASGI servers deliver names lower-cased)."""
    return "-".join(part[:1].upper() + part[1:] for part in name.split("-"))


def v1_event(req: HttpRequest, *, resource: str, api_id: str, domain_name: str,
             account_id: str, request_id: str, resource_id: str,
             path_parameters: Mapping[str, str] | None) -> dict[str, Any]:
    """Payload format 1.0 (the REST API proxy shape, with `version` as HTTP APIs send it)."""
    headers: dict[str, str] = {}
    multi_headers: dict[str, list[str]] = {}
    for name, value in (*req.headers, *_forwarded(req)):
        key = canonical_header_name(name)
        headers[key] = value
        multi_headers.setdefault(key, []).append(value)
    pairs = _query_pairs(req.raw_query)
    query = dict(pairs) if pairs else None
    multi_query: dict[str, list[str]] | None = None
    if pairs:
        multi_query = {}
        for key, value in pairs:
            multi_query.setdefault(key, []).append(value)
    body, is_b64 = encode_body(req.body, req.header("content-type"))
    identity = {"cognitoIdentityPoolId": None, "accountId": None, "cognitoIdentityId": None,
                "caller": None, "apiKey": None, "apiKeyId": None, "accessKey": None,
                "sourceIp": req.source_ip, "cognitoAuthenticationType": None,
                "cognitoAuthenticationProvider": None, "userArn": None,
                "userAgent": req.user_agent, "user": None, "clientCert": None}
    return {
        "version": "1.0",
        "resource": resource,
        "path": req.path,
        "httpMethod": req.method,
        "headers": headers or None,
        "multiValueHeaders": multi_headers or None,
        "queryStringParameters": query,
        "multiValueQueryStringParameters": multi_query,
        "pathParameters": dict(path_parameters) if path_parameters else None,
        "stageVariables": None,
        "requestContext": {
            "accountId": account_id, "apiId": api_id, "domainName": domain_name,
            "domainPrefix": domain_name.split(".", 1)[0].split(":", 1)[0],
            "extendedRequestId": request_id, "httpMethod": req.method,
            "identity": identity, "path": req.path, "protocol": req.protocol,
            "requestId": request_id, "requestTime": request_time(req.received_at),
            "requestTimeEpoch": int(req.received_at * 1000), "resourceId": resource_id,
            "resourcePath": resource, "stage": "$default",
        },
        "body": body,
        "isBase64Encoded": is_b64,
    }


# -- result → response ---------------------------------------------------------------------------

def _header_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return json.dumps(value)
    raise MalformedResponse(f"header value {value!r} is not a string")


def _status(value: Any) -> int:
    if isinstance(value, bool):
        raise MalformedResponse("statusCode must be an integer")
    if isinstance(value, int):
        status = value
    elif isinstance(value, str) and value.isdigit():
        status = int(value)
    else:
        raise MalformedResponse(f"statusCode {value!r} is not an integer")
    if not 100 <= status <= 599:
        raise MalformedResponse(f"statusCode {status} is not an HTTP status")
    return status


def _body_bytes(body: Any, is_b64: Any) -> bytes:
    if body is None:
        return b""
    if not isinstance(body, str):
        raise MalformedResponse("body must be a string")
    if is_b64 is True:
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MalformedResponse("body is not valid base64") from exc
    if is_b64 not in (None, False):
        raise MalformedResponse("isBase64Encoded must be a boolean")
    return body.encode("utf-8")


def _parse(payload: bytes) -> Any:
    try:
        return json.loads(payload) if payload.strip() else None
    except ValueError as exc:
        raise MalformedResponse("the function's response is not valid JSON") from exc


def reply_v2(payload: bytes) -> HttpReply:
    """Format 2.0 / function URLs: a `statusCode` object, or the plain-return rule."""
    data = _parse(payload)
    if not isinstance(data, dict) or "statusCode" not in data:
        if data is None and not payload.strip():
            payload = b"null"
        return HttpReply(200, [("content-type", "application/json")], payload)
    status = _status(data["statusCode"])
    headers: list[tuple[str, str]] = []
    raw_headers = data.get("headers")
    if raw_headers is None:
        raw_headers = {}
    if not isinstance(raw_headers, dict):
        raise MalformedResponse("headers must be an object")
    for name, value in raw_headers.items():
        if name.lower() not in _DROPPED_RESPONSE_HEADERS:
            headers.append((str(name).lower(), _header_text(value)))
    cookies = data.get("cookies")
    if cookies is None:
        cookies = []
    if not isinstance(cookies, list):
        raise MalformedResponse("cookies must be a list of strings")
    for cookie in cookies:
        if not isinstance(cookie, str):
            raise MalformedResponse("cookies must be a list of strings")
        headers.append(("set-cookie", cookie))
    body = data.get("body")
    if body is not None and not isinstance(body, str):
        # HTTP APIs serialise a non-string body rather than fail.
        body = json.dumps(body)
    content = _body_bytes(body, data.get("isBase64Encoded"))
    if not any(k == "content-type" for k, _ in headers):
        headers.insert(0, ("content-type", "application/json"))
    return HttpReply(status, headers, content)


_V1_KEYS = frozenset({"statusCode", "headers", "multiValueHeaders", "body", "isBase64Encoded"})


def reply_v1(payload: bytes) -> HttpReply:
    """Format 1.0: exactly the proxy response object, else `MalformedResponse`."""
    data = _parse(payload)
    if not isinstance(data, dict):
        raise MalformedResponse("the response is not a JSON object")
    if "statusCode" not in data:
        raise MalformedResponse("statusCode is missing")
    unknown = set(data) - _V1_KEYS
    if unknown:
        raise MalformedResponse(f"unexpected field(s) {', '.join(sorted(unknown))}")
    status = _status(data["statusCode"])
    single = data.get("headers")
    multi = data.get("multiValueHeaders")
    single = {} if single is None else single
    multi = {} if multi is None else multi
    if not isinstance(single, dict) or not isinstance(multi, dict):
        raise MalformedResponse("headers and multiValueHeaders must be objects")
    merged: dict[str, list[str]] = {}
    for name, values in multi.items():
        if not isinstance(values, list):
            raise MalformedResponse("multiValueHeaders values must be lists")
        merged[str(name)] = [_header_text(v) for v in values]
    for name, value in single.items():
        text = _header_text(value)
        bucket = merged.setdefault(str(name), [])
        if text not in bucket:
            bucket.append(text)
    headers = [(name, value) for name, values in merged.items() for value in values
               if name.lower() not in _DROPPED_RESPONSE_HEADERS]
    content = _body_bytes(data.get("body"), data.get("isBase64Encoded"))
    if not any(k.lower() == "content-type" for k, _ in headers):
        headers.insert(0, ("Content-Type", "application/json"))
    return HttpReply(status, headers, content)


def json_reply(status: int, data: Any, extra: Iterable[tuple[str, str]] = ()) -> HttpReply:
    return HttpReply(status, [("content-type", "application/json"), *extra],
                     json.dumps(data).encode())


def to_response(reply: HttpReply, request_id: str | None = None, head: bool = False) \
        -> Response:
    """A Starlette response carrying repeated headers (one `set-cookie` per cookie)."""
    response = Response(b"" if head else reply.body, status_code=reply.status)
    raw = [(b"content-length", str(len(reply.body)).encode())]
    for name, value in reply.headers:
        raw.append((name.encode("latin-1", "replace"), value.encode("latin-1", "replace")))
    if request_id:
        raw.append((b"x-amzn-requestid", request_id.encode()))
    response.raw_headers = raw
    return response
