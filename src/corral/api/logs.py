"""The CloudWatch Logs API subset on the same endpoint (JSON 1.1, `X-Amz-Target`)."""

from __future__ import annotations

import json
import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.api.common import parse_json, services, signed_body
from corral.errors import UnknownOperationException

_PREFIX = "Logs_20140328."


async def json_rpc(request: Request) -> Response:
    """POST / with `X-Amz-Target: Logs_20140328.<Operation>`."""
    svc = services(request)
    body = await signed_body(request)
    target = request.headers.get("x-amz-target", "")
    if not target.startswith(_PREFIX):
        raise UnknownOperationException(f"Unknown operation {target or '(none)'}")
    result = svc.extras["logs_api"].handle(target[len(_PREFIX):], parse_json(body))
    return Response(json.dumps(result), headers={"x-amzn-RequestId": str(uuid.uuid4())},
                    media_type="application/x-amz-json-1.1")


routes = [Route("/", json_rpc, methods=["POST"])]
