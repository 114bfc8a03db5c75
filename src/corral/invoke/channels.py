"""The two ways the host talks to a runtime, behind one interface.

* `FramedChannel`: Corral's built-in runtimes, length-prefixed frames on a Unix socketpair
  (`runtime/framing.py`); the payload bytes are never re-encoded.
* `RuntimeApiChannel`: custom runtimes and the official runtime interface clients, the HTTP
  Runtime API 2018-06-01 served on the instance's own listening socket.

Both give the instance the same three steps: wait until the runtime is ready (or reports an init
error), hand it one invocation, receive one reply.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from corral.runtime import framing
from corral.runtimeapi.backend import (
    InvalidRequestId,
    InvalidStateTransition,
    NextInvocation,
)


class ChannelClosed(Exception):
    """The runtime went away (closed its end) before answering."""


@dataclass(frozen=True)
class Reply:
    """What the runtime answered: a result, a function error, or an init error."""

    kind: str  # "ready" | "response" | "error" | "init_error"
    body: bytes = b""
    content_type: str = "application/json"
    error_type: str | None = None
    init_ms: float | None = None  # "ready": the handler's init time (less CPU waits), if reported


class RuntimeChannel(Protocol):
    """Both methods return a future (no task per call: this is the warm path)."""

    def wait_ready(self) -> asyncio.Future[Reply]:
        """Resolves to `ready` once init is done, or `init_error`."""
        ...

    def invoke(self, invocation: NextInvocation) -> asyncio.Future[Reply]:
        """Deliver one event; resolves to `response` or `error`."""
        ...

    async def close(self) -> None: ...


def _error_type_from_body(body: bytes) -> str | None:
    try:
        value = json.loads(body).get("errorType")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _reply(header: dict[str, object], body: bytes) -> Reply:
    kind = str(header.get("type"))
    error_type = header.get("error_type")
    if kind in ("error", "init_error") and not isinstance(error_type, str):
        error_type = _error_type_from_body(body)
    init_ms = header.get("init_ms") if kind == "ready" else None  # once per instance
    return Reply(kind, body, str(header.get("content_type") or "application/json"),
                 error_type if isinstance(error_type, str) else None,
                 float(init_ms) if isinstance(init_ms, int | float) else None)


class _FrameProtocol(asyncio.Protocol):
    """Parses frames as bytes arrive and hands each to the waiting future, in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._frames: deque[Reply] = deque()
        self._waiter: asyncio.Future[Reply] | None = None
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= framing.PREFIX_SIZE:
            try:
                head_len, body_len = framing.decode_prefix(bytes(buffer[:framing.PREFIX_SIZE]))
            except ValueError:
                self._fail()
                return
            end = framing.PREFIX_SIZE + head_len + body_len
            if len(buffer) < end:
                return
            try:
                header = json.loads(buffer[framing.PREFIX_SIZE:framing.PREFIX_SIZE + head_len])
            except ValueError:
                self._fail()
                return
            body = bytes(buffer[framing.PREFIX_SIZE + head_len:end])
            del buffer[:end]
            self._deliver(_reply(header, body))

    def _deliver(self, reply: Reply) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_result(reply)
        else:
            self._frames.append(reply)

    def _fail(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ChannelClosed("runtime closed the control channel"))

    def next_frame(self) -> asyncio.Future[Reply]:
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        if self._frames:
            future.set_result(self._frames.popleft())
        elif self._closed:
            future.set_exception(ChannelClosed("runtime closed the control channel"))
        else:
            self._waiter = future
        return future


class FramedChannel:
    """Frames over the control socketpair."""

    def __init__(self, protocol: _FrameProtocol) -> None:
        self._protocol = protocol

    @classmethod
    async def open(cls, sock: socket.socket) -> FramedChannel:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_unix_connection(_FrameProtocol, sock=sock)
        return cls(protocol)

    def wait_ready(self) -> asyncio.Future[Reply]:
        return self._protocol.next_frame()

    def invoke(self, invocation: NextInvocation) -> asyncio.Future[Reply]:
        header: dict[str, object] = {
            "type": "invoke", "id": invocation.request_id, "deadline_ms": invocation.deadline_ms,
            "arn": invocation.invoked_function_arn, "content_type": invocation.content_type,
        }
        for key, value in (("trace_id", invocation.trace_id),
                           ("client_context", invocation.client_context),
                           ("cognito_identity", invocation.cognito_identity),
                           ("tenant_id", invocation.tenant_id)):
            if value is not None:
                header[key] = value
        reply = self._protocol.next_frame()
        transport = self._protocol.transport
        if transport is None or transport.is_closing():
            if not reply.done():
                reply.set_exception(ChannelClosed("runtime closed the control channel"))
        else:
            transport.write(framing.encode(header, invocation.body))
        return reply

    async def close(self) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.close()


class RuntimeApiChannel:
    """Backs the HTTP Runtime API server of one instance (implements RuntimeApiBackend)."""

    def __init__(self, max_response_bytes: int) -> None:
        self.max_response_bytes = max_response_bytes
        loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[Reply] = loop.create_future()
        self._pending: asyncio.Queue[NextInvocation] = asyncio.Queue()
        self._current: str | None = None  # the invocation awaiting a reply
        self._delivered: str | None = None  # the last invocation handed to the runtime
        self._reply: asyncio.Future[Reply] | None = None
        self._server: object | None = None

    async def serve(self, sock: socket.socket) -> None:
        from corral.runtimeapi.server import RuntimeApiServer

        self._server = await RuntimeApiServer.start(sock, self)

    # RuntimeApiBackend -------------------------------------------------------------------------
    async def next_invocation(self) -> NextInvocation:
        if not self._ready.done():
            self._ready.set_result(Reply("ready"))
        if self._delivered is not None and self._delivered == self._current and \
                self._reply is not None and not self._reply.done():
            # The runtime asks for the next event without answering the one it was given.
            self._reply.set_exception(ChannelClosed("runtime asked for the next event early"))
        invocation = await self._pending.get()
        self._delivered = invocation.request_id
        return invocation

    def _take(self, request_id: str) -> asyncio.Future[Reply]:
        if request_id != self._current or self._reply is None or self._reply.done():
            raise InvalidRequestId(request_id)
        self._current = None
        return self._reply

    def post_response(self, request_id: str, body: bytes, content_type: str | None) -> None:
        # Oversized bodies never get here: the server reports them through post_error as
        # Function.ResponseSizeTooLarge.
        self._take(request_id).set_result(Reply("response", body, content_type or
                                                "application/json"))

    def post_error(self, request_id: str, error_type: str | None, body: bytes) -> None:
        future = self._take(request_id)
        future.set_result(Reply("error", body, "application/json",
                                error_type or _error_type_from_body(body)))

    def post_init_error(self, error_type: str | None, body: bytes) -> None:
        if self._ready.done():
            raise InvalidStateTransition("State transition from Ready to InitError failed")
        self._ready.set_result(Reply("init_error", body, "application/json",
                                     error_type or _error_type_from_body(body)))

    # RuntimeChannel ----------------------------------------------------------------------------
    def wait_ready(self) -> asyncio.Future[Reply]:
        return self._ready

    def invoke(self, invocation: NextInvocation) -> asyncio.Future[Reply]:
        self._current = invocation.request_id
        self._reply = reply = asyncio.get_running_loop().create_future()
        self._pending.put_nowait(invocation)
        return reply

    async def close(self) -> None:
        server = self._server
        if server is not None:
            self._server = None
            await server.close()  # type: ignore[attr-defined]
