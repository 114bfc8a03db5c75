"""The contract between the Runtime API HTTP server and the instance layer.

`corral.runtimeapi.server.RuntimeApiServer` speaks HTTP to one function instance's runtime
(awslambdaric, aws-lambda-ric, a `provided` bootstrap) and turns each Runtime API call into
one call on a `RuntimeApiBackend`, which the instance layer implements. The server owns the
wire (routing, parsing, body limits, status codes, headers); the backend owns the state
machine (which request id is current, whether init is done, what the caller receives).

Exceptions raised by the backend become Runtime API errors:

    InvalidRequestId        400 {"errorMessage":"Invalid request ID","errorType":"InvalidRequestID"}
    InvalidStateTransition  403 {"errorMessage": str(e), "errorType":"InvalidStateTransition"}
    PayloadTooLarge         413 {"errorMessage":"Exceeded maximum allowed payload size
                                 (<max_response_bytes> bytes).","errorType":"RequestEntityTooLarge"}
    anything else           500 {"errorMessage":"Internal Server Error",
                                 "errorType":"InternalServerError"} (and logged)

All backend methods run on the server's event loop; the synchronous ones must not block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from corral.errors import CorralError

#: RAPID's `interop.MaxPayloadSize` (6 MiB + 100 bytes): the default response limit.
MAX_RESPONSE_BYTES = 6 * 1024 * 1024 + 100


@dataclass(frozen=True, slots=True)
class NextInvocation:
    """One event handed to the runtime by `GET /runtime/invocation/next`.

    Every optional field is rendered as its `Lambda-Runtime-*` header only when it is set
    (not None and not empty), as RAPID does. `content_type` defaults to exactly
    `application/json`, which awslambdaric needs to JSON-decode the event.
    """

    request_id: str
    body: bytes
    deadline_ms: int  # Unix epoch milliseconds
    invoked_function_arn: str
    trace_id: str | None = None
    client_context: str | None = None  # JSON text (already base64-decoded)
    cognito_identity: str | None = None  # JSON text
    tenant_id: str | None = None
    content_type: str = "application/json"


class InvalidRequestId(CorralError):
    """The request id in the URL is not the current invocation's, or it was already answered."""


class InvalidStateTransition(CorralError):
    """The call is not allowed in the instance's current state; str(e) is sent to the runtime."""


class PayloadTooLarge(CorralError):
    """The backend refuses a body as too large (the server enforces `max_response_bytes` itself)."""


class RuntimeApiBackend(Protocol):
    """What one function instance exposes to its Runtime API server.

    The server calls these methods in the order the runtime makes its requests; concurrent
    connections of one runtime may interleave calls, so the backend validates every call
    against its own state and raises `InvalidRequestId` / `InvalidStateTransition`.
    """

    #: Largest body accepted on `/response`, `/error` and `/init/error`; 6291556 by default.
    max_response_bytes: int

    async def next_invocation(self) -> NextInvocation:
        """Block until the next event is ready and return it.

        The first call also means "init done". The server cancels the awaiting task when the
        runtime's connection drops (or half-closes) while it waits, and when the server is
        closed. The backend must be cancellation-safe: if the call is cancelled before it
        returned, no invocation counts as delivered (an event it had already picked must stay
        pending for the next call, e.g. `asyncio.Queue.get()` behaves that way). Once the call
        has returned, the server writes the event even if the connection is gone; the backend
        then learns about the loss through the process exiting or the invoke deadline.
        """
        ...

    def post_response(self, request_id: str, body: bytes, content_type: str | None) -> None:
        """The runtime's result for `request_id` (`content_type` is the request's header)."""
        ...

    def post_error(self, request_id: str, error_type: str | None, body: bytes) -> None:
        """The runtime reports that invocation `request_id` failed.

        `error_type` is the sanitised `Lambda-Runtime-Function-Error-Type` header (a
        `Runtime.X`/`Function.X` name, else `Runtime.Unknown`/`Function.Unknown`), or None when
        the header is absent, as with awslambdaric's handler errors: then the body's
        `errorType` is authoritative. The server also calls this with
        `Function.ResponseSizeTooLarge` when a `/response` or `/error` body exceeds
        `max_response_bytes`, before answering 413.
        """
        ...

    def post_init_error(self, error_type: str | None, body: bytes) -> None:
        """The runtime failed to initialize (it exits next). `error_type` as for `post_error`."""
        ...
