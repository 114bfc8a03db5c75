"""Invoking a function for an HTTP front (HTTP routes, function URLs) and turning what went
wrong into the front's own replies: 413 for an event over the sync payload limit, 429 when
throttled, and the front's 502 when the function or its response fails."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from corral.errors import LambdaApiError, TooManyRequestsException
from corral.model import Invocation
from corral.triggers.httpmap import HttpReply, MalformedResponse, json_reply

if TYPE_CHECKING:
    from corral.server import Runtime

log = logging.getLogger(__name__)


async def invoke_for_http(runtime: Runtime, function_name: str, qualifier: str | None,
                          payload: bytes, request_id: str, *, where: str, message_key: str,
                          parse: Callable[[bytes], HttpReply],
                          failed: Callable[[str], HttpReply]) -> HttpReply:
    """Run the function on `payload` and `parse` its result; `failed(reason)` is the
    front's 502 (`where` names the route or URL in the log; `message_key` is how the front
    spells the key of its error bodies: API Gateway `message`, function URLs `Message`)."""
    if len(payload) > runtime.settings.limits.sync_payload_max_bytes:
        return json_reply(413, {message_key: "Request Entity Too Large"})
    registry = runtime.registry
    try:
        function = registry.resolve(function_name, qualifier)
        result = await runtime.scheduler.invoke(Invocation(
            request_id=request_id, function=function, payload=payload,
            invoked_arn=registry.arn(function_name, qualifier)))
    except TooManyRequestsException:
        return json_reply(429, {message_key: "Too Many Requests"})
    except LambdaApiError as exc:
        log.warning("%s: %s", where, exc.message)
        return failed(exc.message)
    if result.function_error:
        reason = f"The function failed ({result.error_type or result.function_error})"
        log.info("%s: %s", where, reason)
        return failed(reason)
    try:
        return parse(result.payload)
    except MalformedResponse as exc:
        reason = f"Malformed Lambda proxy response: {exc}"
        log.info("%s: %s", where, reason)
        return failed(reason)
