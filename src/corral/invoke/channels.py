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
from dataclasses import dataclass
from typing import Protocol

from corral.runtime import framing
from corral.runtimeapi.backend import (
    InvalidRequestId,
    InvalidStateTransition,
    NextInvocation,
    PayloadTooLarge,
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


class RuntimeChannel(Protocol):
    async def wait_ready(self) -> Reply:
        """`ready` once init is done, or `init_error`."""
        ...

    async def invoke(self, invocation: NextInvocation) -> Reply:
        """Deliver one event; return `response` or `error`."""
        ...

    async def close(self) -> None: ...


def _error_type_from_body(body: bytes) -> str | None:
    try:
        value = json.loads(body).get("errorType")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


class FramedChannel:
    """Frames over the control socketpair."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        if self._reader is None:
            self._reader, self._writer = await asyncio.open_unix_connection(
                sock=self._sock, limit=framing.MAX_HEADER)

    async def _read(self) -> tuple[dict[str, object], bytes]:
        assert self._reader is not None
        try:
            prefix = await self._reader.readexactly(framing.PREFIX_SIZE)
            head_len, body_len = framing.decode_prefix(prefix)
            header = json.loads(await self._reader.readexactly(head_len))
            body = await self._reader.readexactly(body_len) if body_len else b""
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise ChannelClosed("runtime closed the control channel") from exc
        return header, body

    def _reply(self, header: dict[str, object], body: bytes) -> Reply:
        kind = str(header.get("type"))
        error_type = header.get("error_type")
        if kind in ("error", "init_error") and not isinstance(error_type, str):
            error_type = _error_type_from_body(body)
        return Reply(kind, body, str(header.get("content_type") or "application/json"),
                     error_type if isinstance(error_type, str) else None)

    async def wait_ready(self) -> Reply:
        await self._open()
        header, body = await self._read()
        return self._reply(header, body)

    async def invoke(self, invocation: NextInvocation) -> Reply:
        assert self._writer is not None
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
        try:
            self._writer.write(framing.encode(header, invocation.body))
            await self._writer.drain()
        except ConnectionError as exc:
            raise ChannelClosed("runtime closed the control channel") from exc
        header_in, body = await self._read()
        return self._reply(header_in, body)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        else:
            self._sock.close()


class RuntimeApiChannel:
    """Backs the HTTP Runtime API server of one instance (implements RuntimeApiBackend)."""

    def __init__(self, max_response_bytes: int) -> None:
        self.max_response_bytes = max_response_bytes
        loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[Reply] = loop.create_future()
        self._pending: asyncio.Queue[NextInvocation] = asyncio.Queue()
        self._current: str | None = None
        self._reply: asyncio.Future[Reply] | None = None
        self._server: object | None = None

    async def serve(self, sock: socket.socket) -> None:
        from corral.runtimeapi.server import RuntimeApiServer

        self._server = await RuntimeApiServer.start(sock, self)

    # RuntimeApiBackend -------------------------------------------------------------------------
    async def next_invocation(self) -> NextInvocation:
        if not self._ready.done():
            self._ready.set_result(Reply("ready"))
        if self._current is not None and self._reply is not None and not self._reply.done():
            # A runtime asking for the next event without answering the current one.
            self._reply.set_exception(ChannelClosed("runtime asked for the next event early"))
        return await self._pending.get()

    def _take(self, request_id: str) -> asyncio.Future[Reply]:
        if request_id != self._current or self._reply is None or self._reply.done():
            raise InvalidRequestId(request_id)
        return self._reply

    def post_response(self, request_id: str, body: bytes, content_type: str | None) -> None:
        future = self._take(request_id)
        if len(body) > self.max_response_bytes:
            future.set_result(Reply("too_large", str(len(body)).encode()))
            raise PayloadTooLarge(request_id)
        future.set_result(Reply("response", body, content_type or "application/json"))

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
    async def wait_ready(self) -> Reply:
        return await asyncio.shield(self._ready)

    async def invoke(self, invocation: NextInvocation) -> Reply:
        self._current = invocation.request_id
        self._reply = asyncio.get_running_loop().create_future()
        self._pending.put_nowait(invocation)
        try:
            return await self._reply
        finally:
            self._current = None

    async def close(self) -> None:
        server = self._server
        if server is not None:
            self._server = None
            await server.close()  # type: ignore[attr-defined]
