"""Lambda function URLs: the five control-plane operations and the HTTP front serving them.

Control plane (rest-json, as botocore's model defines it):

    POST   /2021-10-31/functions/{FunctionName}/url    CreateFunctionUrlConfig   201
    GET    /2021-10-31/functions/{FunctionName}/url    GetFunctionUrlConfig      200
    PUT    /2021-10-31/functions/{FunctionName}/url    UpdateFunctionUrlConfig   200
    DELETE /2021-10-31/functions/{FunctionName}/url    DeleteFunctionUrlConfig   204
    GET    /2021-10-31/functions/{FunctionName}/urls   ListFunctionUrlConfigs    200

A function has at most one URL per qualifier; the qualifier must be an alias (none, or
`$LATEST`, means the unqualified function). Configurations live in `trigger_function_urls` and
are dropped with their function.

Serving: `FunctionUrl` is `http://<host>:<port>/lambda-url/<url-id>/` on the main endpoint
(`<host>:<port>` is the address the API request came in on); requests with the Host
`<url-id>.lambda-url.<region>.localhost[:port]` are served too, from the root. Each request
becomes a payload-2.0 event (`httpmap.v2_event`), is invoked synchronously, and the result is
mapped with the 2.0 rules. Function errors and malformed results answer 502
`{"Message":"Internal Server Error"}`, throttles 429. `AuthType: AWS_IAM` requires a SigV4
signature by a Corral key (service `lambda`), else 403 `{"Message":"Forbidden"}`. With a `Cors`
configuration, preflight `OPTIONS` requests are answered from it and responses carry the
`Access-Control-*` headers (replacing any the function set). `InvokeMode: RESPONSE_STREAM` is
accepted and served buffered.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import string
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Host, Route, Router

from corral.api.auth import authenticate
from corral.api.common import empty_response, function_ref, json_response, signed_json
from corral.control.arns import resolve_qualifier
from corral.errors import (
    InvalidParameterValueException,
    LambdaApiError,
    ResourceConflictException,
    ResourceNotFoundException,
)
from corral.feature import WithoutBackgroundWork
from corral.iam.sigv4 import Identity
from corral.model import LATEST, new_request_id
from corral.triggers.httpinvoke import invoke_for_http
from corral.triggers.httpmap import (
    ALL_METHODS,
    MAX_REQUEST_BYTES,
    HttpReply,
    HttpRequest,
    json_reply,
    reply_v2,
    request_from_scope,
    to_response,
    v2_event,
)
from corral.triggers.store import Tables

if TYPE_CHECKING:
    from corral.server import Runtime

log = logging.getLogger(__name__)

AUTH_TYPES = ("NONE", "AWS_IAM")
INVOKE_MODES = ("BUFFERED", "RESPONSE_STREAM")
_QUALIFIER = re.compile(r"^(?!\d+$)[0-9a-zA-Z_-]{1,128}$")
_URL_ID_ALPHABET = string.ascii_lowercase + string.digits
_METHODS = frozenset({"GET", "PUT", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS", "*"})
_PAGE_MAX = 50
PATH_PREFIX = "/lambda-url/"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _invalid(field: str, value: Any, constraint: str) -> InvalidParameterValueException:
    return InvalidParameterValueException(
        f"1 validation error detected: Value '{value}' at '{field}' failed to satisfy "
        f"constraint: {constraint}")


def _string_list(cors: dict[str, Any], key: str, limit: int, item_max: int) -> list[str] | None:
    value = cors.get(key)
    if value is None:
        return None
    field = f"cors.{key[0].lower()}{key[1:]}"
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid(field, value, "Member must be a list of strings")
    if len(value) > limit:
        raise _invalid(field, value, f"Member must have length less than or equal to {limit}")
    for item in value:
        if not 1 <= len(item) <= item_max:
            raise _invalid(field, item, f"Member must have length less than or equal to "
                                        f"{item_max}")
    return list(value)


def validate_cors(value: Any) -> dict[str, Any] | None:
    """The `Cors` structure, checked against the model's constraints."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidParameterValueException("Cors must be an object.")
    cors: dict[str, Any] = {}
    credentials = value.get("AllowCredentials")
    if credentials is not None:
        if not isinstance(credentials, bool):
            raise _invalid("cors.allowCredentials", credentials, "Member must be a boolean")
        cors["AllowCredentials"] = credentials
    headers = _string_list(value, "AllowHeaders", 100, 1024)
    if headers is not None:
        cors["AllowHeaders"] = headers
    methods = _string_list(value, "AllowMethods", 6, 6)
    if methods is not None:
        for method in methods:
            if method.upper() not in _METHODS:
                raise _invalid("cors.allowMethods", method,
                               "Member must satisfy regular expression pattern: .*")
        cors["AllowMethods"] = [m.upper() for m in methods]
    origins = _string_list(value, "AllowOrigins", 100, 253)
    if origins is not None:
        cors["AllowOrigins"] = origins
    expose = _string_list(value, "ExposeHeaders", 100, 1024)
    if expose is not None:
        cors["ExposeHeaders"] = expose
    max_age = value.get("MaxAge")
    if max_age is not None:
        if isinstance(max_age, bool) or not isinstance(max_age, int):
            raise _invalid("cors.maxAge", max_age, "Member must be an integer")
        if not 0 <= max_age <= 86400:
            raise _invalid("cors.maxAge", max_age,
                           "Member must have value less than or equal to 86400")
        cors["MaxAge"] = max_age
    return cors


def _auth_type(value: Any, required: bool) -> str | None:
    if value is None:
        if required:
            raise _invalid("authType", None, "Member must not be null")
        return None
    if value not in AUTH_TYPES:
        raise _invalid("authType", value, "Member must satisfy enum value set: [NONE, AWS_IAM]")
    return str(value)


def _invoke_mode(value: Any) -> str | None:
    if value is None:
        return None
    if value not in INVOKE_MODES:
        raise _invalid("invokeMode", value,
                       "Member must satisfy enum value set: [BUFFERED, RESPONSE_STREAM]")
    return str(value)


@dataclass(frozen=True)
class UrlConfig:
    function_name: str
    qualifier: str | None
    url_id: str
    auth_type: str
    cors: dict[str, Any] | None
    invoke_mode: str
    creation_time: str
    last_modified_time: str


# -- CORS ----------------------------------------------------------------------------------------

def allowed_origin(cors: dict[str, Any], origin: str | None) -> str | None:
    """The `Access-Control-Allow-Origin` value for `origin`, or None if it is not allowed."""
    if not origin:
        return None
    origins = cors.get("AllowOrigins") or []
    if "*" in origins:
        return origin if cors.get("AllowCredentials") else "*"
    lowered = origin.lower()
    return origin if any(o.lower() == lowered for o in origins) else None


def preflight_headers(cors: dict[str, Any], origin: str | None) -> list[tuple[str, str]]:
    allow = allowed_origin(cors, origin)
    if allow is None:
        return []
    headers = [("access-control-allow-origin", allow)]
    if cors.get("AllowMethods"):
        headers.append(("access-control-allow-methods", ",".join(cors["AllowMethods"])))
    if cors.get("AllowHeaders"):
        headers.append(("access-control-allow-headers", ",".join(cors["AllowHeaders"])))
    if cors.get("MaxAge") is not None:
        headers.append(("access-control-max-age", str(cors["MaxAge"])))
    if cors.get("AllowCredentials"):
        headers.append(("access-control-allow-credentials", "true"))
    if allow != "*":
        headers.append(("vary", "Origin"))
    return headers


def apply_cors(reply: HttpReply, cors: dict[str, Any], origin: str | None) -> None:
    """Replace the function's CORS headers with the configured ones."""
    reply.headers = [(k, v) for k, v in reply.headers
                     if not k.lower().startswith("access-control-")]
    allow = allowed_origin(cors, origin)
    if allow is None:
        return
    reply.headers.append(("access-control-allow-origin", allow))
    if cors.get("ExposeHeaders"):
        reply.headers.append(("access-control-expose-headers", ",".join(cors["ExposeHeaders"])))
    if cors.get("AllowCredentials"):
        reply.headers.append(("access-control-allow-credentials", "true"))
    if allow != "*":
        reply.headers.append(("vary", "Origin"))


def _server_error(reason: str) -> HttpReply:
    """A function URL's 502: the reason is only in the server log."""
    return json_reply(502, {"Message": "Internal Server Error"})


# -- the feature ---------------------------------------------------------------------------------

class FunctionUrls(WithoutBackgroundWork):
    """Function URL configurations (persisted, cached by URL id) and their HTTP front."""

    name = "function-urls"

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._settings = runtime.settings
        self._registry = runtime.registry
        self._tables = Tables(runtime.db)
        self._by_id: dict[str, UrlConfig] = {}
        for (text,) in self._tables.rows("SELECT config FROM trigger_function_urls"):
            config = UrlConfig(**json.loads(text))
            self._by_id[config.url_id] = config
        self._registry.on_change(self._function_changed)
        url_router = Router(routes=[Route("/{rest:path}", self.serve_by_host, methods=ALL_METHODS)])
        self.routes: list[BaseRoute] = [
            Host("{url_id}.lambda-url.{region}.localhost", app=url_router),
            Route("/2021-10-31/functions/{name}/url", self.create, methods=["POST"]),
            Route("/2021-10-31/functions/{name}/url", self.get, methods=["GET"]),
            Route("/2021-10-31/functions/{name}/url", self.update, methods=["PUT"]),
            Route("/2021-10-31/functions/{name}/url", self.delete, methods=["DELETE"]),
            Route("/2021-10-31/functions/{name}/urls", self.list_configs, methods=["GET"]),
            Route("/lambda-url/{url_id}", self.serve_by_path, methods=ALL_METHODS),
            Route("/lambda-url/{url_id}/{rest:path}", self.serve_by_path, methods=ALL_METHODS),
        ]


    # -- storage ---------------------------------------------------------------------------------
    def _find(self, name: str, qualifier: str | None) -> UrlConfig | None:
        for config in self._by_id.values():
            if config.function_name == name and config.qualifier == qualifier:
                return config
        return None

    def _save(self, config: UrlConfig) -> None:
        self._tables.execute(
            "INSERT OR REPLACE INTO trigger_function_urls (function_name, qualifier, url_id, "
            "config) VALUES (?, ?, ?, ?)",
            (config.function_name, config.qualifier or "", config.url_id,
             json.dumps(asdict(config))))
        self._by_id[config.url_id] = config

    def _remove(self, config: UrlConfig) -> None:
        self._tables.execute("DELETE FROM trigger_function_urls WHERE url_id = ?",
                             (config.url_id,))
        self._by_id.pop(config.url_id, None)

    def _function_changed(self, name: str) -> None:
        if self._registry.exists(name):
            return
        for config in [c for c in self._by_id.values() if c.function_name == name]:
            self._remove(config)

    def _new_url_id(self) -> str:
        while True:
            url_id = "".join(secrets.choice(_URL_ID_ALPHABET) for _ in range(32))
            if url_id not in self._by_id:
                return url_id

    # -- control plane ---------------------------------------------------------------------------
    def _target(self, request: Request) -> tuple[str, str | None]:
        ref = function_ref(request)
        qualifier = resolve_qualifier(ref, request.query_params.get("Qualifier"))
        if qualifier in (None, LATEST):
            self._registry.get(ref.name)
            return ref.name, None
        assert qualifier is not None
        if not _QUALIFIER.match(qualifier):
            raise _invalid("qualifier", qualifier, "Member must satisfy regular expression "
                           "pattern: ((?!^\\d+$)^[0-9a-zA-Z-_]+$)")
        self._registry.get(ref.name, qualifier)
        return ref.name, qualifier

    def function_url(self, request: Request | None, config: UrlConfig) -> str:
        base = self._settings.endpoint_url
        if request is not None and request.headers.get("host"):
            base = f"{request.url.scheme}://{request.headers['host']}"
        return f"{base}{PATH_PREFIX}{config.url_id}/"

    def _wire(self, request: Request, config: UrlConfig, with_modified: bool = True) \
            -> dict[str, Any]:
        data: dict[str, Any] = {
            "FunctionUrl": self.function_url(request, config),
            "FunctionArn": self._registry.arn(config.function_name, config.qualifier),
            "AuthType": config.auth_type,
        }
        if config.cors is not None:
            data["Cors"] = config.cors
        data["CreationTime"] = config.creation_time
        if with_modified:
            data["LastModifiedTime"] = config.last_modified_time
        data["InvokeMode"] = config.invoke_mode
        return data

    def _existing(self, name: str, qualifier: str | None) -> UrlConfig:
        config = self._find(name, qualifier)
        if config is None:
            raise ResourceNotFoundException("The resource you requested does not exist.")
        return config

    async def create(self, request: Request) -> Response:
        params = await signed_json(request)
        name, qualifier = self._target(request)
        auth_type = _auth_type(params.get("AuthType"), required=True)
        assert auth_type is not None
        cors = validate_cors(params.get("Cors"))
        invoke_mode = _invoke_mode(params.get("InvokeMode")) or "BUFFERED"
        if self._find(name, qualifier) is not None:
            arn = self._registry.arn(name, qualifier)
            raise ResourceConflictException(
                f"Failed to create function url config for [functionArn = {arn}]. Error "
                "message:  FunctionUrlConfig exists for this Lambda function")
        now = _now()
        config = UrlConfig(function_name=name, qualifier=qualifier, url_id=self._new_url_id(),
                           auth_type=auth_type, cors=cors, invoke_mode=invoke_mode,
                           creation_time=now, last_modified_time=now)
        self._save(config)
        return json_response(self._wire(request, config, with_modified=False), status=201)

    async def get(self, request: Request) -> Response:
        await signed_json(request)
        name, qualifier = self._target(request)
        return json_response(self._wire(request, self._existing(name, qualifier)))

    async def update(self, request: Request) -> Response:
        params = await signed_json(request)
        name, qualifier = self._target(request)
        config = self._existing(name, qualifier)
        changes: dict[str, Any] = {}
        auth_type = _auth_type(params.get("AuthType"), required=False)
        if auth_type is not None:
            changes["auth_type"] = auth_type
        if "Cors" in params:
            changes["cors"] = validate_cors(params["Cors"])
        invoke_mode = _invoke_mode(params.get("InvokeMode"))
        if invoke_mode is not None:
            changes["invoke_mode"] = invoke_mode
        config = replace(config, last_modified_time=_now(), **changes)
        self._save(config)
        return json_response(self._wire(request, config))

    async def delete(self, request: Request) -> Response:
        await signed_json(request)
        name, qualifier = self._target(request)
        self._remove(self._existing(name, qualifier))
        return empty_response(204)

    async def list_configs(self, request: Request) -> Response:
        await signed_json(request)
        ref = function_ref(request)
        self._registry.get(ref.name)
        configs = sorted((c for c in self._by_id.values() if c.function_name == ref.name),
                         key=lambda c: (c.qualifier or "", c.url_id))
        max_items = request.query_params.get("MaxItems")
        limit = _PAGE_MAX
        if max_items is not None:
            if not max_items.isdigit() or not 1 <= int(max_items) <= _PAGE_MAX:
                raise _invalid("maxItems", max_items,
                               f"Member must have value less than or equal to {_PAGE_MAX}")
            limit = int(max_items)
        marker = request.query_params.get("Marker")
        start = 0
        if marker:
            ids = [c.url_id for c in configs]
            if marker not in ids:
                raise InvalidParameterValueException("Invalid marker.")
            start = ids.index(marker)
        page = configs[start:start + limit]
        data: dict[str, Any] = {"FunctionUrlConfigs": [self._wire(request, c) for c in page]}
        if start + limit < len(configs):
            data["NextMarker"] = configs[start + limit].url_id
        return json_response(data)

    # -- the HTTP front --------------------------------------------------------------------------
    async def serve_by_path(self, request: Request) -> Response:
        url_id = request.path_params["url_id"]
        return await self._serve(request, url_id, len(PATH_PREFIX) + len(url_id))

    async def serve_by_host(self, request: Request) -> Response:
        return await self._serve(request, request.path_params["url_id"], 0)

    def _identity(self, identity: Identity) -> dict[str, Any]:
        account = self._settings.account_id
        key = self._runtime.keys.get(identity.access_key)
        user = key.user if key is not None else "root"
        arn = f"arn:aws:iam::{account}:root" if user == "root" else \
            f"arn:aws:iam::{account}:user/{user}"
        caller = account if user == "root" else user
        return {"iam": {"accessKey": identity.access_key, "accountId": account,
                        "callerId": caller, "cognitoIdentity": None, "principalOrgId": None,
                        "userArn": arn, "userId": caller}}

    async def _serve(self, request: Request, url_id: str, prefix_len: int) -> Response:
        head = request.method == "HEAD"
        config = self._by_id.get(url_id)
        if config is None:
            return to_response(json_reply(404, {"Message": "Not Found"}), head=head)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_REQUEST_BYTES:
            return to_response(json_reply(413, {"Message": "Request Entity Too Large"}),
                               head=head)
        body = await request.body()
        req = request_from_scope(request, body, prefix_len)
        origin = req.header("origin")
        if (config.cors is not None and req.method == "OPTIONS" and origin
                and req.header("access-control-request-method")):
            return to_response(HttpReply(200, preflight_headers(config.cors, origin), b""))
        authorizer = None
        if config.auth_type == "AWS_IAM":
            try:
                identity, _ = await authenticate(request, self._runtime.services.verifier)
                if identity.service != "lambda":
                    raise InvalidParameterValueException("wrong service")
            except LambdaApiError:
                return to_response(json_reply(403, {"Message": "Forbidden"}), head=head)
            authorizer = self._identity(identity)
        request_id = new_request_id()
        reply = await self._invoke(config, req, request_id, authorizer)
        if config.cors is not None:
            apply_cors(reply, config.cors, origin)
        return to_response(reply, request_id, head=head)

    async def _invoke(self, config: UrlConfig, req: HttpRequest, request_id: str,
                      authorizer: dict[str, Any] | None) -> HttpReply:
        region = self._settings.region
        event = v2_event(req, route_key="$default", api_id=config.url_id,
                         domain_name=f"{config.url_id}.lambda-url.{region}.on.aws",
                         domain_prefix=config.url_id, account_id=self._settings.account_id,
                         request_id=request_id, function_url=True, authorizer=authorizer)
        return await invoke_for_http(
            self._runtime, config.function_name, config.qualifier, json.dumps(event).encode(),
            request_id, where=f"function URL {config.url_id}", message_key="Message",
            parse=reply_v2, failed=_server_error)


def install(runtime: Runtime) -> FunctionUrls:
    return FunctionUrls(runtime)
