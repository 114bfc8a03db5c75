"""The one place where errors become HTTP responses in Lambda's wire format."""

from __future__ import annotations

import json
import logging
import uuid

from starlette.requests import Request
from starlette.responses import Response

from corral.errors import LambdaApiError, ServiceException

log = logging.getLogger(__name__)


def error_response(exc: LambdaApiError, request_id: str | None = None,
                   json_protocol: bool = False) -> Response:
    """rest-json: `x-amzn-ErrorType` header + `{"Type", "Message"}`; JSON 1.1 adds `__type`."""
    body = exc.body()
    if json_protocol:
        body = {"__type": exc.code, "message": exc.message}
    headers = {"x-amzn-RequestId": request_id or str(uuid.uuid4()),
               "x-amzn-ErrorType": exc.code, **exc.headers()}
    return Response(json.dumps(body), status_code=exc.status, headers=headers,
                    media_type="application/json")


async def handle_lambda_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LambdaApiError)
    return error_response(exc, json_protocol=request.url.path == "/")


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(ServiceException(f"Internal error: {type(exc).__name__}"),
                          json_protocol=request.url.path == "/")
