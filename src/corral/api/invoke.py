"""Invoke (RequestResponse, Event, DryRun) and the deprecated InvokeAsync.

The hot path: authenticate, resolve the function from the registry's memory, check the payload,
hand the invocation to the scheduler, answer with the runtime's bytes as they came.
"""

from __future__ import annotations

import base64
import binascii
import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.api.common import function_ref, services, signed_body
from corral.control.arns import resolve_qualifier
from corral.errors import (
    InvalidParameterValueException,
    InvalidRequestContentException,
    RequestEntityTooLargeException,
)
from corral.model import LATEST, Invocation, new_request_id
from corral.services import Services

_INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")


def _check_payload(body: bytes) -> bytes:
    """Lambda requires a JSON payload; an empty one is passed on as `{}`."""
    if not body.strip():
        return b"{}"
    try:
        json.loads(body)
    except ValueError as exc:
        raise InvalidRequestContentException(
            f"Could not parse request body into json: Could not parse payload into json: {exc}"
        ) from exc
    return body


def _client_context(header: str | None) -> str | None:
    if not header:
        return None
    try:
        text = base64.b64decode(header, validate=True).decode()
        json.loads(text)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestContentException(
            "Client context must be a valid Base64-encoded JSON object.") from exc
    return text


def _enqueue(svc: Services, name: str, qualifier: str | None, payload: bytes) -> str:
    limit = svc.settings.limits.async_payload_max_bytes
    if len(payload) > limit:
        raise RequestEntityTooLargeException(
            f"{len(payload)} byte payload is too large for the Event invocation type "
            f"(limit {limit} bytes)")
    request_id = new_request_id()
    svc.async_invoker.submit(request_id, name, qualifier or LATEST, _check_payload(payload))
    return request_id


async def invoke(request: Request) -> Response:
    svc = services(request)
    body = await signed_body(request)
    ref = function_ref(request)
    qualifier = resolve_qualifier(ref, request.query_params.get("Qualifier"))
    config = svc.registry.resolve(ref.name, qualifier)
    headers = request.headers
    invocation_type = headers.get("x-amz-invocation-type", "RequestResponse")
    if invocation_type not in _INVOCATION_TYPES:
        raise InvalidParameterValueException(
            f"1 validation error detected: Value '{invocation_type}' at 'invocationType' failed "
            "to satisfy constraint: Member must satisfy enum value set: "
            "[Event, RequestResponse, DryRun]")
    if invocation_type == "DryRun":
        return Response(b"", status_code=204, headers={
            "x-amzn-RequestId": new_request_id(), "X-Amz-Executed-Version": config.version})
    if invocation_type == "Event":
        request_id = _enqueue(svc, ref.name, qualifier, body)
        return Response(b"", status_code=202, headers={
            "x-amzn-RequestId": request_id, "X-Amz-Executed-Version": config.version})
    limit = svc.settings.limits.sync_payload_max_bytes
    if len(body) > limit:
        raise RequestEntityTooLargeException(
            f"Request must be smaller than {limit} bytes for the InvokeFunction operation")
    invocation = Invocation(
        request_id=new_request_id(), function=config, payload=_check_payload(body),
        invoked_arn=svc.registry.arn(ref.name, qualifier),
        client_context=_client_context(headers.get("x-amz-client-context")),
        trace_id=headers.get("x-amzn-trace-id"),
        tail_log=headers.get("x-amz-log-type") == "Tail")
    result = await svc.scheduler.invoke(invocation)
    out = {"x-amzn-RequestId": result.request_id, "X-Amz-Executed-Version":
           result.executed_version}
    if result.function_error:
        out["X-Amz-Function-Error"] = result.function_error
    if invocation.tail_log:
        out["X-Amz-Log-Result"] = base64.b64encode(result.log_tail).decode()
    return Response(result.payload, status_code=200, headers=out,
                    media_type=result.content_type)


async def invoke_async(request: Request) -> Response:
    """The deprecated InvokeAsync: the same durable queue as `InvocationType=Event`."""
    svc = services(request)
    body = await signed_body(request)
    ref = function_ref(request)
    svc.registry.get(ref.name, ref.qualifier)
    request_id = _enqueue(svc, ref.name, ref.qualifier, body)
    return Response(json.dumps({"Status": 202}), status_code=202,
                    headers={"x-amzn-RequestId": request_id}, media_type="application/json")


routes = [
    Route("/2015-03-31/functions/{name}/invocations", invoke, methods=["POST"]),
    Route("/2014-11-13/functions/{name}/invoke-async/", invoke_async, methods=["POST"]),
    Route("/2014-11-13/functions/{name}/invoke-async", invoke_async, methods=["POST"]),
]
