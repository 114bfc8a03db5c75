"""AWS JSON 1.1 services on the same endpoint: `POST /` with `X-Amz-Target: <Prefix>.<Op>`.

Services register a handler per target prefix (`Logs_20140328` for CloudWatch Logs,
`AWSEvents` for EventBridge) in `Services.json_targets`; a handler maps (operation, params) to a
result dict and raises `LambdaApiError`s, rendered with `__type` by the error boundary.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.api.common import parse_json, services, signed_body
from corral.errors import UnknownOperationException


class JsonHandler(Protocol):
    def handle(self, operation: str, params: dict[str, Any]) -> dict[str, Any]: ...


async def json_rpc(request: Request) -> Response:
    svc = services(request)
    body = await signed_body(request)
    target = request.headers.get("x-amz-target", "")
    prefix, _, operation = target.partition(".")
    handler: JsonHandler | None = svc.json_targets.get(prefix)
    if handler is None or not operation:
        raise UnknownOperationException(f"Unknown operation {target or '(none)'}")
    result = handler.handle(operation, parse_json(body))
    return Response(json.dumps(result), headers={"x-amzn-RequestId": str(uuid.uuid4())},
                    media_type="application/x-amz-json-1.1")


routes = [Route("/", json_rpc, methods=["POST"])]
