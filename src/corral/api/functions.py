"""Lambda's function resource: create, read, update, delete, list; the code download URL."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.api.common import (
    empty_response,
    function_ref,
    json_response,
    parse_json,
    services,
    signed_body,
    signed_json,
)
from corral.api.wire import function_configuration
from corral.control.arns import parse_function_name, resolve_qualifier
from corral.errors import (
    InvalidParameterValueException,
    RequestEntityTooLargeException,
    ResourceNotFoundException,
)
from corral.model import LATEST, FunctionConfig
from corral.services import Services

# Lambda refuses CreateFunction bodies beyond the base64 size of a 50 MB package.
CREATE_BODY_LIMIT = 70167211
UPDATE_CODE_BODY_LIMIT = 70167211
_PAGE_MAX = 50


def _config_json(svc: Services, config: FunctionConfig) -> dict[str, Any]:
    """$LATEST is shown with the unqualified ARN, versions with their number."""
    qualifier = None if config.version == LATEST else config.version
    return function_configuration(config, svc.registry.arn(config.name, qualifier))


def _check_size(request: Request, limit: int, operation: str) -> None:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestEntityTooLargeException(
            f"Request must be smaller than {limit} bytes for the {operation} operation")


def code_token(svc: Services, sha256_hex: str) -> str:
    return hmac.new(svc.code_token_key, sha256_hex.encode(), hashlib.sha256).hexdigest()[:32]


async def create_function(request: Request) -> Response:
    _check_size(request, CREATE_BODY_LIMIT, "CreateFunction")
    svc = services(request)
    params = await signed_json(request)
    raw_name = params.get("FunctionName")
    if not isinstance(raw_name, str):
        raise InvalidParameterValueException("FunctionName is required.")
    ref = parse_function_name(raw_name)
    if ref.qualifier:
        raise InvalidParameterValueException(
            "A function name with a qualifier cannot be used to create a function.")
    if len(ref.name) > 64:
        raise InvalidParameterValueException("Function name must be 64 characters or fewer.")
    code = params.get("Code")
    fetched = await _fetch_from_bucket(code) if isinstance(code, dict) else None
    config = svc.registry.create(params, ref.name, fetched)
    return json_response(_config_json(svc, config), status=201)


async def _fetch_from_bucket(code: dict[str, Any]) -> bytes | None:
    """`S3Bucket`/`S3Key` packages come from the S3 endpoint the SDK configuration names,
    fetched off the event loop."""
    if "ZipFile" in code or not ("S3Bucket" in code and "S3Key" in code):
        return None
    from corral.triggers.s3code import code_location, fetch_zip_async

    return await fetch_zip_async(*code_location(code))


def _qualified(request: Request) -> tuple[str, str | None]:
    ref = function_ref(request)
    return ref.name, resolve_qualifier(ref, request.query_params.get("Qualifier"))


async def get_function(request: Request) -> Response:
    svc = services(request)
    await signed_body(request)
    name, qualifier = _qualified(request)
    config = svc.registry.get(name, qualifier)
    sha = config.code.sha256_hex
    location = (f"{svc.settings.endpoint_url}/_corral/code/{sha}.zip"
                f"?token={code_token(svc, sha)}")
    body: dict[str, Any] = {
        "Configuration": _config_json(svc, config),
        "Code": {"RepositoryType": "S3", "Location": location},
        "Tags": svc.registry.tags(name),
    }
    reserved = svc.reserved.reserved.get(name)
    if reserved is not None:
        body["Concurrency"] = {"ReservedConcurrentExecutions": reserved}
    return json_response(body)


async def get_configuration(request: Request) -> Response:
    svc = services(request)
    await signed_body(request)
    name, qualifier = _qualified(request)
    return json_response(_config_json(svc, svc.registry.get(name, qualifier)))


async def update_code(request: Request) -> Response:
    _check_size(request, UPDATE_CODE_BODY_LIMIT, "UpdateFunctionCode")
    svc = services(request)
    params = await signed_json(request)
    name = function_ref(request).name
    svc.registry.get(name)
    fetched = await _fetch_from_bucket(params)
    config = svc.registry.update_code(name, params, fetched)
    return json_response(_config_json(svc, config))


async def update_configuration(request: Request) -> Response:
    svc = services(request)
    params = await signed_json(request)
    config = svc.registry.update_configuration(function_ref(request).name, params)
    return json_response(_config_json(svc, config))


async def delete_function(request: Request) -> Response:
    svc = services(request)
    await signed_body(request)
    name, qualifier = _qualified(request)
    svc.registry.delete(name, qualifier)
    return empty_response(204)


async def list_functions(request: Request) -> Response:
    svc = services(request)
    await signed_body(request)
    marker = request.query_params.get("Marker")
    max_items = request.query_params.get("MaxItems")
    limit = _PAGE_MAX
    if max_items is not None:
        if not max_items.isdigit() or not 1 <= int(max_items) <= 10000:
            raise InvalidParameterValueException(
                f"1 validation error detected: Value '{max_items}' at 'maxItems' failed to "
                "satisfy constraint: Member must have value between 1 and 10000")
        limit = min(int(max_items), _PAGE_MAX)
    functions = svc.registry.all_functions()
    if marker:
        functions = [f for f in functions if f.name > marker]
    page = functions[:limit]
    body: dict[str, Any] = {"Functions": [_config_json(svc, f) for f in page]}
    if len(functions) > limit:
        body["NextMarker"] = page[-1].name
    return json_response(body)


async def download_code(request: Request) -> Response:
    """The `Code.Location` URL: unsigned like a presigned S3 URL, guarded by a token."""
    svc = services(request)
    sha = request.path_params["sha"]
    token = request.query_params.get("token", "")
    if not hmac.compare_digest(token, code_token(svc, sha)):
        raise ResourceNotFoundException("Code package not found.")
    try:
        data = svc.registry.code.read_zip(sha)
    except (FileNotFoundError, ValueError) as exc:
        raise ResourceNotFoundException("Code package not found.") from exc
    return Response(data, media_type="application/zip")


routes = [
    Route("/2015-03-31/functions", create_function, methods=["POST"]),
    Route("/2015-03-31/functions/", list_functions, methods=["GET"]),
    Route("/2015-03-31/functions", list_functions, methods=["GET"]),
    Route("/2015-03-31/functions/{name}", get_function, methods=["GET"]),
    Route("/2015-03-31/functions/{name}", delete_function, methods=["DELETE"]),
    Route("/2015-03-31/functions/{name}/configuration", get_configuration, methods=["GET"]),
    Route("/2015-03-31/functions/{name}/configuration", update_configuration, methods=["PUT"]),
    Route("/2015-03-31/functions/{name}/code", update_code, methods=["PUT"]),
    Route("/_corral/code/{sha}.zip", download_code, methods=["GET"]),
]

__all__ = ["parse_json", "routes"]
