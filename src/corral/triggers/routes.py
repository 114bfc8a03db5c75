"""API-Gateway-style HTTP routes: `METHOD /path/{param}/{proxy+}` bound to functions.

Routes are grouped in named APIs and served on the main endpoint under
`http://<host>:<port>/http/<api>/...`; the path after `/http/<api>` is what routes match and what
the event's `rawPath`/`path` shows (the API root behaves like an HTTP API's `$default` stage).
Matching follows HTTP APIs: the most specific route wins (literal segments over `{param}` over
`{proxy+}`, segment by segment), a route with the request's method beats `ANY`, and the route
key `$default` catches whatever nothing else matched. `{proxy+}` matches one or more segments
and must be last. A trailing slash is ignored.

Each route has its payload format: "2.0" (default; `httpmap.v2_event`, `routeKey` "GET
/items/{id}", response by the 2.0 rules including the plain-return rule) or "1.0"
(`httpmap.v1_event`, `resource`/`resourcePath` the route path, stage `$default`; the response
must be the proxy response object). Answers the front end makes itself:

* no API / no matching route: 404 `{"message":"Not Found"}`;
* function error, malformed response, missing function: 502 `{"message":"Internal server
  error"}`, with the reason in the `X-Corral-Error` header and the server log;
* throttled: 429 `{"message":"Too Many Requests"}`.

Declaring routes (SigV4-signed, rest-json errors like the Lambda API):

    GET    /_corral/apis                               {"Apis": [{"Name", "Endpoint", "Routes"}]}
    GET    /_corral/apis/{api}/routes                  {"Name", "Endpoint", "Routes": [...]}
    PUT    /_corral/apis/{api}/routes                  {"RouteKey", "FunctionName",
                                                        "PayloadFormatVersion"} → 201 / 200
    DELETE /_corral/apis/{api}/routes?RouteKey=...     204
    DELETE /_corral/apis/{api}                         204 (every route of the API)
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import string
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from corral.api.common import empty_response, json_response, signed_body, signed_json
from corral.control.arns import parse_function_name
from corral.errors import (
    InvalidParameterValueException,
    ResourceNotFoundException,
)
from corral.feature import WithoutBackgroundWork
from corral.model import LATEST, new_request_id
from corral.triggers.httpinvoke import invoke_for_http
from corral.triggers.httpmap import (
    ALL_METHODS,
    MAX_REQUEST_BYTES,
    HttpReply,
    HttpRequest,
    json_reply,
    reply_v1,
    reply_v2,
    request_from_scope,
    to_response,
    v1_event,
    v2_event,
)
from corral.triggers.store import Tables

if TYPE_CHECKING:
    from corral.server import Runtime

log = logging.getLogger(__name__)

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY")
PAYLOAD_FORMATS = ("1.0", "2.0")
DEFAULT_ROUTE = "$default"
PATH_PREFIX = "/http/"
_API_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PARAM = re.compile(r"^\{([A-Za-z0-9._-]+)(\+?)\}$")
_ID_ALPHABET = string.ascii_lowercase + string.digits

LITERAL, PARAM, GREEDY = 2, 1, 0


@dataclass(frozen=True)
class Segment:
    kind: int  # LITERAL, PARAM or GREEDY
    text: str  # the literal, or the parameter's name


@dataclass(frozen=True)
class RouteKey:
    """A parsed route key: `GET /items/{id}`, `ANY /{proxy+}` or `$default`."""

    text: str
    method: str
    path: str
    segments: tuple[Segment, ...]

    @property
    def is_default(self) -> bool:
        return self.text == DEFAULT_ROUTE


def _bad_key(key: str, why: str) -> InvalidParameterValueException:
    return InvalidParameterValueException(f"Invalid route key '{key}': {why}.")


def parse_route_key(key: str) -> RouteKey:
    """Validate a route key and split it into method and path segments."""
    if not key.strip():
        raise InvalidParameterValueException("RouteKey is required.")
    key = key.strip()
    if key == DEFAULT_ROUTE:
        return RouteKey(key, "ANY", "", ())
    method, _, path = key.partition(" ")
    method = method.upper()
    path = path.strip()
    if method not in METHODS:
        raise _bad_key(key, f"the method must be one of {', '.join(METHODS)}")
    if not path.startswith("/"):
        raise _bad_key(key, "the path must start with '/'")
    if any(c in path for c in "?# \t"):
        raise _bad_key(key, "the path must not contain a query, fragment or spaces")
    parts = path.strip("/").split("/") if path != "/" else []
    segments: list[Segment] = []
    names: set[str] = set()
    for index, part in enumerate(parts):
        if not part:
            raise _bad_key(key, "empty path segment")
        found = _PARAM.match(part)
        if found:
            name, greedy = found.group(1), bool(found.group(2))
            if name in names:
                raise _bad_key(key, f"duplicate parameter {{{name}}}")
            names.add(name)
            if greedy and index != len(parts) - 1:
                raise _bad_key(key, "a greedy parameter {name+} must be the last segment")
            segments.append(Segment(GREEDY if greedy else PARAM, name))
        elif "{" in part or "}" in part:
            raise _bad_key(key, f"segment '{part}' is neither a literal nor {{param}}")
        else:
            segments.append(Segment(LITERAL, part))
    normalized = "/" + "/".join(part for part in parts)
    return RouteKey(f"{method} {normalized}", method, normalized, tuple(segments))


def _match_segments(route: RouteKey, raw_parts: list[str]) -> dict[str, str] | None:
    params: dict[str, str] = {}
    for index, segment in enumerate(route.segments):
        if segment.kind == GREEDY:
            rest = raw_parts[index:]
            if not rest:
                return None
            params[segment.text] = unquote("/".join(rest))
            return params
        if index >= len(raw_parts):
            return None
        value = unquote(raw_parts[index])
        if segment.kind == LITERAL:
            if value != segment.text:
                return None
        else:
            if not value:
                return None
            params[segment.text] = value
    return params if len(raw_parts) == len(route.segments) else None


def match_route(keys: list[RouteKey], method: str, raw_path: str) \
        -> tuple[RouteKey, dict[str, str]] | None:
    """The most specific route for a request, with its decoded path parameters."""
    trimmed = raw_path.strip("/")
    raw_parts = trimmed.split("/") if trimmed else []
    best: tuple[tuple[Any, ...], RouteKey, dict[str, str]] | None = None
    fallback: RouteKey | None = None
    for key in keys:
        if key.is_default:
            fallback = key
            continue
        if key.method not in (method, "ANY"):
            continue
        params = _match_segments(key, raw_parts)
        if params is None:
            continue
        rank = (tuple(s.kind for s in key.segments), key.method != "ANY")
        if best is None or rank > best[0]:
            best = (rank, key, params)
    if best is not None:
        return best[1], best[2]
    if fallback is not None:
        return fallback, {}
    return None


@dataclass(frozen=True)
class HttpRoute:
    api: str
    route_key: str
    route_id: str
    function_name: str
    qualifier: str | None
    payload_format: str
    created: float

    @property
    def key(self) -> RouteKey:
        return parse_route_key(self.route_key)


def _created_text(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _server_error(reason: str) -> HttpReply:
    return json_reply(502, {"message": "Internal server error"},
                      [("x-corral-error", reason.replace("\n", " ")[:500])])


class HttpRoutes(WithoutBackgroundWork):
    """The routes of every API (persisted, cached) and the front end serving them."""

    name = "http-routes"

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._settings = runtime.settings
        self._registry = runtime.registry
        self._tables = Tables(runtime.db)
        self._apis: dict[str, dict[str, HttpRoute]] = {}
        self._keys: dict[str, list[RouteKey]] = {}
        for row in self._tables.rows(
                "SELECT api, route_key, route_id, function_name, qualifier, payload_format, "
                "created FROM trigger_http_routes"):
            api, key, route_id, function, qualifier, fmt, created = row
            self._put(HttpRoute(api, key, route_id, function, qualifier or None, fmt, created))
        self.routes: list[BaseRoute] = [
            Route("/_corral/apis", self.list_apis, methods=["GET"]),
            Route("/_corral/apis/{api}", self.delete_api, methods=["DELETE"]),
            Route("/_corral/apis/{api}/routes", self.get_routes, methods=["GET"]),
            Route("/_corral/apis/{api}/routes", self.put_route, methods=["PUT"]),
            Route("/_corral/apis/{api}/routes", self.delete_route, methods=["DELETE"]),
            Route("/http/{api}", self.serve, methods=ALL_METHODS),
            Route("/http/{api}/{rest:path}", self.serve, methods=ALL_METHODS),
        ]


    # -- cache -----------------------------------------------------------------------------------
    def _put(self, route: HttpRoute) -> None:
        self._apis.setdefault(route.api, {})[route.route_key] = route
        self._keys[route.api] = [r.key for r in self._apis[route.api].values()]

    def _drop(self, api: str, route_key: str | None = None) -> int:
        routes = self._apis.get(api, {})
        if route_key is None:
            count = len(routes)
            self._apis.pop(api, None)
            self._keys.pop(api, None)
            return count
        if routes.pop(route_key, None) is None:
            return 0
        if routes:
            self._keys[api] = [r.key for r in routes.values()]
        else:
            self._apis.pop(api, None)
            self._keys.pop(api, None)
        return 1

    # -- control plane ---------------------------------------------------------------------------
    @staticmethod
    def _api_name(request: Request) -> str:
        api = str(request.path_params["api"])
        if not _API_NAME.match(api):
            raise InvalidParameterValueException(
                f"Invalid API name '{api}': use 1 to 64 letters, digits, '-' or '_'.")
        return api

    def _endpoint(self, request: Request, api: str) -> str:
        base = self._settings.endpoint_url
        if request.headers.get("host"):
            base = f"{request.url.scheme}://{request.headers['host']}"
        return f"{base}{PATH_PREFIX}{api}"

    def _wire(self, request: Request, route: HttpRoute) -> dict[str, Any]:
        key = route.key
        return {
            "ApiName": route.api, "RouteKey": route.route_key, "RouteId": route.route_id,
            "FunctionName": route.function_name,
            "FunctionArn": self._registry.arn(route.function_name, route.qualifier),
            "PayloadFormatVersion": route.payload_format,
            "Url": self._endpoint(request, route.api) + (key.path or "/"),
            "CreatedDate": _created_text(route.created),
        }

    def _api_wire(self, request: Request, api: str) -> dict[str, Any]:
        routes = sorted(self._apis.get(api, {}).values(), key=lambda r: r.route_key)
        return {"Name": api, "Endpoint": self._endpoint(request, api),
                "Routes": [self._wire(request, r) for r in routes]}

    async def list_apis(self, request: Request) -> Response:
        await signed_body(request)
        return json_response({"Apis": [self._api_wire(request, api)
                                       for api in sorted(self._apis)]})

    async def get_routes(self, request: Request) -> Response:
        await signed_body(request)
        api = self._api_name(request)
        if api not in self._apis:
            raise ResourceNotFoundException(f"API not found: {api}")
        return json_response(self._api_wire(request, api))

    async def put_route(self, request: Request) -> Response:
        params = await signed_json(request)
        api = self._api_name(request)
        raw_key = params.get("RouteKey")
        if not isinstance(raw_key, str):
            raise InvalidParameterValueException("RouteKey is required.")
        key = parse_route_key(raw_key)
        fmt = params.get("PayloadFormatVersion", "2.0")
        if fmt not in PAYLOAD_FORMATS:
            raise InvalidParameterValueException(
                f"PayloadFormatVersion must be one of {', '.join(PAYLOAD_FORMATS)}.")
        function = params.get("FunctionName")
        if not isinstance(function, str):
            raise InvalidParameterValueException("FunctionName is required.")
        ref = parse_function_name(function)
        qualifier = None if ref.qualifier in (None, LATEST) else ref.qualifier
        self._registry.get(ref.name, qualifier)
        existing = self._apis.get(api, {}).get(key.text)
        route = HttpRoute(api=api, route_key=key.text,
                          route_id=existing.route_id if existing else
                          "".join(secrets.choice(_ID_ALPHABET) for _ in range(7)),
                          function_name=ref.name, qualifier=qualifier, payload_format=str(fmt),
                          created=existing.created if existing else time.time())
        self._tables.execute(
            "INSERT OR REPLACE INTO trigger_http_routes (api, route_key, route_id, "
            "function_name, qualifier, payload_format, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (api, route.route_key, route.route_id, route.function_name, route.qualifier or "",
             route.payload_format, route.created))
        self._put(route)
        return json_response(self._wire(request, route), status=200 if existing else 201)

    async def delete_route(self, request: Request) -> Response:
        await signed_body(request)
        api = self._api_name(request)
        raw_key = request.query_params.get("RouteKey")
        if not raw_key:
            raise InvalidParameterValueException("RouteKey is required.")
        key = parse_route_key(raw_key)
        if not self._drop(api, key.text):
            raise ResourceNotFoundException(f"Route not found: {api} {key.text}")
        self._tables.execute("DELETE FROM trigger_http_routes WHERE api = ? AND route_key = ?",
                             (api, key.text))
        return empty_response(204)

    async def delete_api(self, request: Request) -> Response:
        await signed_body(request)
        api = self._api_name(request)
        if not self._drop(api):
            raise ResourceNotFoundException(f"API not found: {api}")
        self._tables.execute("DELETE FROM trigger_http_routes WHERE api = ?", (api,))
        return empty_response(204)

    # -- the HTTP front --------------------------------------------------------------------------
    async def serve(self, request: Request) -> Response:
        head = request.method == "HEAD"
        api = str(request.path_params["api"])
        keys = self._keys.get(api)
        if not keys:
            return to_response(json_reply(404, {"message": "Not Found"}), head=head)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_REQUEST_BYTES:
            return to_response(json_reply(413, {"message": "Request Entity Too Large"}),
                               head=head)
        body = await request.body()
        req = request_from_scope(request, body, len(PATH_PREFIX) + len(api))
        found = match_route(keys, req.method, req.raw_path)
        if found is None:
            return to_response(json_reply(404, {"message": "Not Found"}), head=head)
        key, params = found
        route = self._apis[api][key.text]
        request_id = new_request_id()
        reply = await self._invoke(route, key, params, req, request_id)
        return to_response(reply, request_id, head=head)

    def event(self, route: HttpRoute, key: RouteKey, params: dict[str, str],
              req: HttpRequest, request_id: str) -> dict[str, Any]:
        domain = req.host or self._settings.endpoint_url.split("://", 1)[1]
        if route.payload_format == "1.0":
            return v1_event(req, resource=key.path if not key.is_default else DEFAULT_ROUTE,
                            api_id=route.api, domain_name=domain,
                            account_id=self._settings.account_id, request_id=request_id,
                            resource_id=route.route_id, path_parameters=params)
        return v2_event(req, route_key=key.text, api_id=route.api, domain_name=domain,
                        domain_prefix=domain.split(".", 1)[0].split(":", 1)[0],
                        account_id=self._settings.account_id, request_id=request_id,
                        path_parameters=params)

    async def _invoke(self, route: HttpRoute, key: RouteKey, params: dict[str, str],
                      req: HttpRequest, request_id: str) -> HttpReply:
        payload = json.dumps(self.event(route, key, params, req, request_id)).encode()
        return await invoke_for_http(
            self._runtime, route.function_name, route.qualifier, payload, request_id,
            where=f"route {route.api} {route.route_key}", message_key="message",
            parse=reply_v1 if route.payload_format == "1.0" else reply_v2, failed=_server_error)


def install(runtime: Runtime) -> HttpRoutes:
    return HttpRoutes(runtime)
