"""Helpers every resource module uses: the services, JSON in and out, function references."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response

from corral.api.auth import authenticate
from corral.control.arns import FunctionRef, parse_function_name
from corral.errors import InvalidRequestContentException
from corral.services import Services


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


async def signed_body(request: Request) -> bytes:
    """Authenticate the request and return its body."""
    _, body = await authenticate(request, services(request).verifier)
    return body


def parse_json(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise InvalidRequestContentException(
            f"Could not parse request body into json: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequestContentException("Request body must be a JSON object.")
    return data


async def signed_json(request: Request) -> dict[str, Any]:
    return parse_json(await signed_body(request))


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) \
        -> Response:
    all_headers = {"x-amzn-RequestId": str(uuid.uuid4())}
    if headers:
        all_headers.update(headers)
    return Response(json.dumps(data), status_code=status, headers=all_headers,
                    media_type="application/json")


def empty_response(status: int) -> Response:
    return Response(b"", status_code=status, headers={"x-amzn-RequestId": str(uuid.uuid4())})


def function_ref(request: Request, param: str = "name") -> FunctionRef:
    """The `{FunctionName}` path label, percent-decoded (botocore encodes ARNs)."""
    return parse_function_name(unquote(request.path_params[param]))
