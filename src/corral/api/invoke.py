"""Invoke (RequestResponse, Event, DryRun) and the deprecated InvokeAsync.

The hot path: authenticate, resolve the function from the registry's memory, check the payload,
hand the invocation to the scheduler, answer with the runtime's bytes as they came.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from urllib.parse import parse_qs, unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from corral.api.common import function_ref, services, signed_body
from corral.api.errors import error_response
from corral.control.arns import parse_function_name, resolve_qualifier
from corral.errors import (
    InvalidParameterValueException,
    InvalidRequestContentException,
    LambdaApiError,
    RequestEntityTooLargeException,
    ServiceException,
)
from corral.iam.sigv4 import SignedRequest
from corral.model import LATEST, Invocation, new_request_id
from corral.services import Services

log = logging.getLogger(__name__)
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


async def _enqueue(svc: Services, name: str, qualifier: str | None, payload: bytes) -> str:
    limit = svc.settings.limits.async_payload_max_bytes
    if len(payload) > limit:
        raise RequestEntityTooLargeException(
            f"{len(payload)} byte payload is too large for the Event invocation type "
            f"(limit {limit} bytes)")
    request_id = new_request_id()
    await svc.async_invoker.submit_durably(request_id, name, qualifier or LATEST,
                                           _check_payload(payload))
    return request_id


Reply = tuple[int, list[tuple[bytes, bytes]], bytes]


async def handle_invoke(svc: Services, raw_name: str, qualifier_param: str | None,
                        headers: dict[str, str], body: bytes) -> Reply:
    """Invoke with an already authenticated request; returns status, headers and body."""
    ref = parse_function_name(unquote(raw_name))
    qualifier = resolve_qualifier(ref, qualifier_param)
    config = svc.registry.resolve(ref.name, qualifier)
    invocation_type = headers.get("x-amz-invocation-type", "RequestResponse")
    if invocation_type not in _INVOCATION_TYPES:
        raise InvalidParameterValueException(
            f"1 validation error detected: Value '{invocation_type}' at 'invocationType' failed "
            "to satisfy constraint: Member must satisfy enum value set: "
            "[Event, RequestResponse, DryRun]")
    version = config.version.encode()
    if invocation_type == "DryRun":
        return 204, [(b"x-amzn-requestid", new_request_id().encode()),
                     (b"x-amz-executed-version", version)], b""
    if invocation_type == "Event":
        request_id = await _enqueue(svc, ref.name, qualifier, body)
        return 202, [(b"x-amzn-requestid", request_id.encode()),
                     (b"x-amz-executed-version", version)], b""
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
    out = [(b"x-amzn-requestid", result.request_id.encode()),
           (b"x-amz-executed-version", result.executed_version.encode()),
           (b"content-type", result.content_type.encode())]
    if result.function_error:
        out.append((b"x-amz-function-error", result.function_error.encode()))
    if invocation.tail_log:
        out.append((b"x-amz-log-result", base64.b64encode(result.log_tail)))
    return 200, out, result.payload


class InvokeFastPath:
    """Serves Invoke straight from ASGI, ahead of Starlette's router and middleware; every
    other request goes to `app`. Same behaviour, a fraction of the per-request work."""

    _PREFIX = "/2015-03-31/functions/"
    _SUFFIX = "/invocations"

    def __init__(self, app: Starlette, svc: Services) -> None:
        self.app = app  # the Starlette application with every other route
        self.svc = svc

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if (scope["type"] != "http" or scope["method"] != "POST"
                or not path.startswith(self._PREFIX) or not path.endswith(self._SUFFIX)):
            await self.app(scope, receive, send)
            return
        raw_name = path[len(self._PREFIX):-len(self._SUFFIX)]
        if not raw_name or "/" in raw_name:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            name = key.decode("latin-1")
            text = value.decode("latin-1")
            headers[name] = f"{headers[name]},{text}" if name in headers else text
        query = scope["query_string"].decode("latin-1")
        try:
            raw_path = (scope.get("raw_path") or path.encode()).decode("latin-1")
            self.svc.verifier.verify(SignedRequest(scope["method"], raw_path, query, headers,
                                                   body))
            qualifier = parse_qs(query).get("Qualifier", [None])[0] if query else None
            status, out, payload = await handle_invoke(self.svc, raw_name, qualifier, headers,
                                                       body)
        except LambdaApiError as exc:
            status, out, payload = _render(exc)
        except Exception:  # the error boundary of this path, like Starlette's
            log.exception("unhandled error on Invoke")
            status, out, payload = _render(ServiceException("Internal error"))
        out.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": payload})


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _render(exc: LambdaApiError) -> Reply:
    response = error_response(exc)
    return (response.status_code, [(k, v) for k, v in response.raw_headers
                                   if k != b"content-length"], bytes(response.body))


async def invoke_async(request: Request) -> Response:
    """The deprecated InvokeAsync: the same durable queue as `InvocationType=Event`."""
    svc = services(request)
    body = await signed_body(request)
    ref = function_ref(request)
    svc.registry.get(ref.name, ref.qualifier)
    request_id = await _enqueue(svc, ref.name, ref.qualifier, body)
    return Response(json.dumps({"Status": 202}), status_code=202,
                    headers={"x-amzn-RequestId": request_id}, media_type="application/json")


routes = [
    Route("/2014-11-13/functions/{name}/invoke-async/", invoke_async, methods=["POST"]),
    Route("/2014-11-13/functions/{name}/invoke-async", invoke_async, methods=["POST"]),
]
