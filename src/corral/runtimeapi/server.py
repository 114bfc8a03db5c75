"""The host side of the Lambda Runtime API (2018-06-01), one server per function instance.

`RuntimeApiServer.start(sock, backend)` serves HTTP/1.1 on a listening socket made by the
sandbox layer; every connection on it belongs to that one instance and each Runtime API call
becomes one call on the instance's `RuntimeApiBackend`. The official runtime clients work
against it unmodified: awslambdaric (libcurl with keep-alive, `http.client` for
`/runtime/init/error`) and aws-lambda-ric.

Design: one asyncio protocol plus one task per connection. h11 parses requests (a fresh parser
per request, seeded with the bytes the previous one had buffered, so pipelining works);
responses are serialised here directly, since every header is ours and h11's send path cost as
much as its parser on this warm-invoke path.

Routes (everything else: 404 JSON; a known path with another method: 405 JSON + `Allow`):

    GET  /2018-06-01/runtime/invocation/next         200 event + Lambda-Runtime-* headers
    POST /2018-06-01/runtime/invocation/{id}/response 202 {"status":"OK"}
    POST /2018-06-01/runtime/invocation/{id}/error    202 {"status":"OK"}
    POST /2018-06-01/runtime/init/error               202 {"status":"OK"}
    GET  /2018-06-01/ping                             200 pong
    PUT  /2020-08-15/logs, PUT /2022-07-01/telemetry  202 RIE stub bodies (*.NotSupported)
    /2020-01-01/extension/{register,event/next,init/error,exit/error}
                                                      403 Extension.Unsupported

Behaviour where the interface documents are silent (chosen here):

* Every response carries `Content-Length` and `Date`; error bodies are
  `{"errorMessage","errorType"}`. Keep-alive and pipelining are supported: requests on one
  connection are handled strictly one after another.
* Bodies (`Content-Length` or chunked; `Expect: 100-continue` is answered) of `/response`,
  `/error` and `/init/error` are limited to `backend.max_response_bytes`. An oversize body is
  drained (up to `_DISCARD_SLACK` more bytes, so the 413 reaches a client that writes its whole
  body before reading) and answered 413; for an invocation the backend is told first with
  `post_error(id, "Function.ResponseSizeTooLarge", ...)`, so the invoke completes even if the
  runtime carries on; for `/init/error` with `post_init_error`. A declared `Content-Length`
  beyond the slack, or one announced with `Expect: 100-continue`, is refused without reading
  and the connection is closed.
* `Lambda-Runtime-Function-Error-Type` is sanitised like RAPID (kept when it is a
  `Runtime.X`/`Function.X` name, matched on the whole value; else `Function.Unknown` /
  `Runtime.Unknown`); an absent or empty header gives `None` (awslambdaric sends none for
  handler errors; the body's `errorType` is then authoritative).
* `Lambda-Runtime-Function-Response-Mode: streaming` bodies are buffered like any other; an
  error announced in the trailers (`Lambda-Runtime-Function-Error-Type`/`-Error-Body`,
  base64) becomes `post_error`. Any other response mode: 400 `InvalidFunctionResponseMode`
  and `post_error(id, "Runtime.InvalidResponseModeHeader", ...)`, as RAPID does.
* A runtime that disconnects or half-closes its connection while its `/next` waits gets the
  wait cancelled (like Go's net/http request context): the connection task is cancelled
  inside `backend.next_invocation()`, which must be cancellation-safe (see the backend
  docstring). Nothing is left running. If the event had already been returned, it is written
  anyway (and lost); the backend sees the process exit or the deadline.
* `/next` header values are made header-safe: whitespace controls become spaces and NUL is
  dropped (harmless for the JSON texts of client context / cognito identity); empty values
  are omitted.
* `/error` bodies go to the backend as sent: the X-Ray cause header and the
  `application/vnd.aws.lambda.error.cause+json` content type are not interpreted.
* Malformed HTTP: 400 (431 for oversized headers) and close. Headers may total 2 MiB:
  awslambdaric's `Lambda-Runtime-Function-XRay-Error-Cause` can approach 1 MiB.
* `close()` stops accepting, aborts every connection (a pending `/next` is cancelled, its
  runtime sees the connection drop) and waits for every connection task; it closes `sock`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import socket
import time
from collections.abc import Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import cast
from urllib.parse import unquote

import h11

from corral.errors import FunctionErrorType
from corral.runtimeapi.backend import (
    InvalidRequestId,
    InvalidStateTransition,
    NextInvocation,
    PayloadTooLarge,
    RuntimeApiBackend,
)

__all__ = ["RuntimeApiServer", "sanitize_error_type"]

logger = logging.getLogger("corral.runtimeapi")

_MAX_HEADER_BYTES = 2 * 1024 * 1024
_DISCARD_SLACK = 32 * 1024 * 1024  # bytes beyond the limit drained to deliver a clean 413
_READ_HIGH_WATER = 1024 * 1024  # unconsumed input before the socket stops being read
_COALESCE_MAX = 64 * 1024  # bodies up to this size are written together with the head

# Route kinds.
_NEXT, _RESPONSE, _ERROR, _INIT_ERROR, _PING, _LOGS, _TELEMETRY, _EXTENSION = range(8)

_ROUTES: dict[bytes, tuple[bytes, int]] = {
    b"/2018-06-01/runtime/invocation/next": (b"GET", _NEXT),
    b"/2018-06-01/runtime/init/error": (b"POST", _INIT_ERROR),
    b"/2018-06-01/ping": (b"GET", _PING),
    b"/2020-08-15/logs": (b"PUT", _LOGS),
    b"/2022-07-01/telemetry": (b"PUT", _TELEMETRY),
    b"/2020-01-01/extension/register": (b"POST", _EXTENSION),
    b"/2020-01-01/extension/event/next": (b"GET", _EXTENSION),
    b"/2020-01-01/extension/init/error": (b"POST", _EXTENSION),
    b"/2020-01-01/extension/exit/error": (b"POST", _EXTENSION),
}
_INVOCATION_PREFIX = b"/2018-06-01/runtime/invocation/"
_INVOCATION_PREFIX_LEN = len(_INVOCATION_PREFIX)

_JSON = b"application/json"
_TEXT = b"text/plain; charset=utf-8"
_ACCEPTED = b'{"status":"OK"}'
_INVALID_REQUEST_ID = b'{"errorMessage":"Invalid request ID","errorType":"InvalidRequestID"}'
_INTERNAL_ERROR = b'{"errorMessage":"Internal Server Error","errorType":"InternalServerError"}'
_NOT_FOUND = b'{"errorMessage":"Not Found","errorType":"NotFound"}'
_METHOD_NOT_ALLOWED = b'{"errorMessage":"Method Not Allowed","errorType":"MethodNotAllowed"}'
_INVALID_RESPONSE_MODE = (
    b'{"errorMessage":"Invalid function response mode","errorType":"InvalidFunctionResponseMode"}'
)
_LOGS_STUB = b'{"errorMessage":"Logs API is not supported","errorType":"Logs.NotSupported"}'
_TELEMETRY_STUB = (
    b'{"errorMessage":"Telemetry API is not supported","errorType":"Telemetry.NotSupported"}'
)
_EXTENSIONS_UNSUPPORTED = (
    b'{"errorMessage":"Lambda extensions are not supported by Corral",'
    b'"errorType":"Extension.Unsupported"}'
)
_PONG = b"pong"

_REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}

_ERROR_TYPE_RE = re.compile(r"(?:Runtime|Function)\.[A-Z][a-zA-Z]+")
_UNSAFE_HEADER_VALUE = re.compile(rb"[\x00\t\n\r\x0b\x0c]|^ | $")
_HEADER_SAFE = bytes.maketrans(b"\t\n\r\x0b\x0c", b"     ")

_date_second = 0
_date_value = b""


def _http_date() -> bytes:
    """The IMF-fixdate of now, recomputed at most once a second."""
    global _date_second, _date_value
    now = int(time.time())
    if now != _date_second:
        _date_value = formatdate(now, usegmt=True).encode()
        _date_second = now
    return _date_value


def sanitize_error_type(value: str) -> str:
    """RAPID's filter for `Lambda-Runtime-Function-Error-Type` (whole-value match)."""
    if _ERROR_TYPE_RE.fullmatch(value):
        return value
    return "Function.Unknown" if value.startswith("Function.") else "Runtime.Unknown"


def _error_type_header(value: bytes | None) -> str | None:
    if not value:
        return None
    return sanitize_error_type(value.decode("latin-1"))


def _error_body(message: str, error_type: str) -> bytes:
    return json.dumps(
        {"errorMessage": message, "errorType": error_type}, separators=(",", ":")
    ).encode()


def _too_large_body(limit: int) -> bytes:
    return _error_body(
        f"Exceeded maximum allowed payload size ({limit} bytes).", "RequestEntityTooLarge"
    )


def _header_value(value: str) -> bytes | None:
    """`value` as a safe header value (no CR/LF/NUL, no edge spaces), or None if empty."""
    raw = value.encode()
    if _UNSAFE_HEADER_VALUE.search(raw):
        raw = raw.translate(_HEADER_SAFE, b"\x00").strip(b" ")
    return raw or None


def _next_head(inv: NextInvocation, length: int, extra: bytes) -> bytes:
    """The head of the `/next` 200 response (RIE `renderInvokeHeaders`, plus framing)."""
    parts = [
        b"HTTP/1.1 200 OK\r\ncontent-type: ",
        _header_value(inv.content_type) or _JSON,
        b"\r\ncontent-length: %d\r\ndate: %s\r\nlambda-runtime-deadline-ms: %d\r\n"
        % (length, _http_date(), inv.deadline_ms),
    ]
    for name, value in (
        (b"lambda-runtime-aws-request-id: ", inv.request_id),
        (b"lambda-runtime-invoked-function-arn: ", inv.invoked_function_arn),
        (b"lambda-runtime-trace-id: ", inv.trace_id),
        (b"lambda-runtime-client-context: ", inv.client_context),
        (b"lambda-runtime-cognito-identity: ", inv.cognito_identity),
        (b"lambda-runtime-aws-tenant-id: ", inv.tenant_id),
    ):
        if value:
            raw = _header_value(value)
            if raw is not None:
                parts += (name, raw, b"\r\n")
    parts += (extra, b"\r\n")
    return b"".join(parts)


_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))
        _STATUS_LINES[status] = line
    return line


def _new_parser() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEADER_BYTES)


class _RequestHeaders:
    """The request headers the Runtime API looks at, found in one pass."""

    __slots__ = ("close", "content_length", "content_type", "error_type", "response_mode")

    def __init__(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        self.content_type: bytes | None = None
        self.error_type: bytes | None = None
        self.response_mode: bytes | None = None
        self.content_length = -1
        self.close = False
        for raw_name, value in headers:
            name = raw_name.lower()
            if name == b"content-type":
                self.content_type = value
            elif name == b"content-length":
                self.content_length = int(value)
            elif name == b"lambda-runtime-function-error-type":
                self.error_type = value
            elif name == b"lambda-runtime-function-response-mode":
                self.response_mode = value
            elif name == b"connection":
                self.close = b"close" in (t.strip() for t in value.lower().split(b","))


class _Abandon(Exception):
    """The connection cannot continue (peer gone, or the request could not be read)."""


class RuntimeApiServer:
    """The Runtime API of one function instance, served on a socket handed over by the sandbox."""

    def __init__(self, backend: RuntimeApiBackend) -> None:
        self._backend = backend
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._closing = False
        self._closed: asyncio.Event | None = None

    @classmethod
    async def start(cls, sock: socket.socket, backend: RuntimeApiBackend) -> RuntimeApiServer:
        """Serve the Runtime API on `sock` (a listening TCP socket, owned from now on)."""
        self = cls(backend)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock)
        return self

    @property
    def active_connections(self) -> int:
        """How many runtime connections are open right now."""
        return len(self._connections)

    async def close(self) -> None:
        """Stop accepting, abort all connections (cancelling a pending /next); idempotent."""
        if self._closed is not None:
            await self._closed.wait()
            return
        self._closed = asyncio.Event()
        self._closing = True
        try:
            if self._server is not None:
                self._server.close()
            connections = list(self._connections)
            for conn in connections:
                conn.abort()
            tasks = [conn.task for conn in connections if conn.task is not None]
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if self._server is not None:
                await self._server.wait_closed()
        finally:
            self._closed.set()


class _Connection(asyncio.Protocol):
    """One runtime connection: a protocol buffering input and a task serving requests in turn.

    The task owns the h11 parser; `data_received` only queues bytes and wakes it. Response
    headers are rendered here (backend-provided values go through `_header_value`).
    """

    __slots__ = (
        "_backend",
        "_eof",
        "_h11",
        "_head_only",
        "_in_next",
        "_inbuf",
        "_inlen",
        "_keep_alive",
        "_lost",
        "_read_paused",
        "_responded",
        "_server",
        "_starved",
        "_transport",
        "_waiter",
        "_write_paused",
        "task",
    )

    def __init__(self, server: RuntimeApiServer) -> None:
        self._server = server
        self._backend = server._backend
        self._h11 = _new_parser()
        self._starved = True  # the parser has nothing to parse until data arrives
        self._transport: asyncio.Transport | None = None
        self._inbuf: list[bytes] = []
        self._inlen = 0
        self._eof = False
        self._lost = False
        self._read_paused = False
        self._write_paused = False
        self._in_next = False
        self._keep_alive = True
        self._head_only = False
        self._responded = False
        self._waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check here.
        self._transport = cast(asyncio.Transport, transport)
        if self._server._closing:
            cast(asyncio.Transport, transport).abort()
            return
        self._server._connections.add(self)
        self.task = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data: bytes) -> None:
        self._inbuf.append(data)
        self._inlen += len(data)
        if self._inlen > _READ_HIGH_WATER and not self._read_paused and self._transport:
            self._read_paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        if self._in_next and self.task is not None:
            self.task.cancel()  # the runtime went away while waiting for an event
        self._wake()
        return True  # keep our side open to answer requests already received

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._eof = True
        if self.task is not None:
            self.task.cancel()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake()

    # -- plumbing ------------------------------------------------------------------------

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        if self.task is not None:
            self.task.cancel()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    async def _next_event(self) -> h11.Event | type[h11.PAUSED]:
        conn = self._h11
        while True:
            if self._inbuf:
                for chunk in self._inbuf:
                    conn.receive_data(chunk)
                self._inbuf.clear()
                self._inlen = 0
                self._starved = False
                if self._read_paused and self._transport is not None and not self._lost:
                    self._read_paused = False
                    self._transport.resume_reading()
            elif self._starved:
                # The parser cannot make progress without more input: wait, don't re-parse.
                if not self._eof:
                    await self._wait()
                    continue
                if conn.trailing_data[1]:
                    raise _Abandon  # cannot happen: h11 never needs data after EOF
                conn.receive_data(b"")
                self._starved = False
            event = conn.next_event()
            if event is h11.NEED_DATA:
                self._starved = True
                continue
            return cast("h11.Event | type[h11.PAUSED]", event)

    def _respond(
        self,
        status: int,
        body: bytes,
        content_type: bytes = _JSON,
        extra: bytes = b"",
        close: bool = False,
    ) -> None:
        """Write a complete response; `extra` holds pre-rendered `name: value\r\n` lines."""
        if close:
            self._keep_alive = False
        if not self._keep_alive:
            extra += b"connection: close\r\n"
        head = b"%scontent-type: %s\r\ncontent-length: %d\r\ndate: %s\r\n%s\r\n" % (
            _status_line(status),
            content_type,
            len(body),
            _http_date(),
            extra,
        )
        self._write(head, body)

    def _write(self, head: bytes, body: bytes) -> None:
        transport = self._transport
        assert transport is not None
        self._responded = True
        if self._head_only or not body:
            transport.write(head)
        elif len(body) <= _COALESCE_MAX:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)

    # -- request handling ----------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while await self._serve_one():
                pass
        except (asyncio.CancelledError, _Abandon):
            pass  # the peer went away, or the server is closing
        except Exception:
            logger.exception("Runtime API connection failed")
        finally:
            self._server._connections.discard(self)
            transport = self._transport
            if transport is not None and not transport.is_closing():
                if self._lost or self._server._closing:
                    transport.abort()
                else:
                    transport.close()

    async def _serve_one(self) -> bool:
        """Serve one request; False when the connection must be closed."""
        while self._write_paused:
            await self._wait()
        self._responded = False
        try:
            event = await self._next_event()
            if not isinstance(event, h11.Request):
                return False  # ConnectionClosed
            self._keep_alive = event.http_version == b"1.1"
            self._head_only = event.method == b"HEAD"
            await self._dispatch(event)
        except h11.RemoteProtocolError as exc:
            if not self._responded:
                body = _error_body(f"Bad request: {exc}", "BadRequest")
                self._respond(exc.error_status_hint, body, close=True)
            return False
        except (asyncio.CancelledError, _Abandon):
            raise
        except Exception:
            logger.exception("Runtime API request failed")
            if not self._responded:
                self._respond(500, _INTERNAL_ERROR, close=True)
            return False
        if not self._keep_alive:
            return False
        # Next request: a fresh parser, seeded with what this one buffered beyond the request.
        data, closed = self._h11.trailing_data
        conn = _new_parser()
        if data:
            conn.receive_data(data)
        if closed:
            conn.receive_data(b"")
        self._h11 = conn
        self._starved = not (data or closed)
        return True

    async def _dispatch(self, request: h11.Request) -> None:
        headers = _RequestHeaders(request.headers.raw_items())
        if headers.close:
            self._keep_alive = False
        target = request.target
        query = target.find(b"?")
        path = target if query < 0 else target[:query]
        route = _ROUTES.get(path)
        request_id = ""
        if route is not None:
            allowed, kind = route
        elif path.startswith(_INVOCATION_PREFIX):
            rest = path[_INVOCATION_PREFIX_LEN:]
            if rest.endswith(b"/response"):
                kind, raw_id = _RESPONSE, rest[:-9]
            elif rest.endswith(b"/error"):
                kind, raw_id = _ERROR, rest[:-6]
            else:
                await self._reply_after_body(404, _NOT_FOUND)
                return
            if b"/" in raw_id:
                await self._reply_after_body(404, _NOT_FOUND)
                return
            allowed = b"POST"
            request_id = raw_id.decode("ascii")
            if "%" in request_id:
                request_id = unquote(request_id)
        else:
            await self._reply_after_body(404, _NOT_FOUND)
            return

        if request.method != allowed:
            await self._reply_after_body(405, _METHOD_NOT_ALLOWED, extra=b"allow: %s\r\n" % allowed)
            return
        if kind == _NEXT:
            await self._handle_next()
        elif kind in (_RESPONSE, _ERROR, _INIT_ERROR):
            await self._handle_post(kind, headers, request_id)
        elif kind == _PING:
            await self._reply_after_body(200, _PONG, _TEXT)
        elif kind == _LOGS:
            await self._reply_after_body(202, _LOGS_STUB)
        elif kind == _TELEMETRY:
            await self._reply_after_body(202, _TELEMETRY_STUB)
        else:
            await self._reply_after_body(403, _EXTENSIONS_UNSUPPORTED)

    async def _reply_after_body(
        self,
        status: int,
        body: bytes,
        content_type: bytes = _JSON,
        extra: bytes = b"",
    ) -> None:
        """Drain the request body (bounded), then answer."""
        _, _, eom = await self._read_body(self._backend.max_response_bytes)
        self._respond(status, body, content_type, extra, close=eom is None)

    async def _read_body(self, limit: int) -> tuple[bytes | None, int, h11.EndOfMessage | None]:
        """Read the request body: (body, size, end).

        `body` is None when the body exceeds `limit` (the rest is drained and dropped); `end`
        is None when even draining was abandoned (the connection must then be closed).
        """
        if self._h11.they_are_waiting_for_100_continue:
            transport = self._transport
            assert transport is not None
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        chunks: list[bytes | bytearray] = []  # h11 hands out bytearrays
        size = 0
        over = False
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                data = event.data
                size += len(data)
                if over:
                    if size > limit + _DISCARD_SLACK:
                        return None, size, None
                elif size > limit:
                    over = True
                    chunks.clear()
                else:
                    chunks.append(data)
            elif isinstance(event, h11.EndOfMessage):
                if over:
                    return None, size, event
                return b"".join(chunks), size, event
            else:
                raise _Abandon  # ConnectionClosed mid-body

    async def _handle_next(self) -> None:
        _, _, eom = await self._read_body(self._backend.max_response_bytes)
        if eom is None:
            self._respond(413, _too_large_body(self._backend.max_response_bytes), close=True)
            return
        if self._eof:
            raise _Abandon  # half-closed before we started waiting: treat as gone
        self._in_next = True
        try:
            inv = await self._backend.next_invocation()
        except Exception as exc:
            status, body = self._map_backend_error(exc)
            self._respond(status, body)
            return
        finally:
            self._in_next = False
        body = inv.body
        head = _next_head(inv, len(body), b"" if self._keep_alive else b"connection: close\r\n")
        self._write(head, body)

    async def _handle_post(self, kind: int, headers: _RequestHeaders, request_id: str) -> None:
        backend = self._backend
        limit = backend.max_response_bytes
        if kind != _INIT_ERROR and not request_id:
            await self._reply_after_body(400, _INVALID_REQUEST_ID)
            return

        eom: h11.EndOfMessage | None
        declared = headers.content_length
        if declared > limit and (
            declared > limit + _DISCARD_SLACK or self._h11.they_are_waiting_for_100_continue
        ):
            body, size, eom = None, declared, None  # refuse without reading
        else:
            body, size, eom = await self._read_body(limit)
        close = eom is None

        try:
            if body is None:
                self._report_too_large(kind, request_id, headers.error_type, size, limit)
                self._respond(413, _too_large_body(limit), close=close)
                return
            if kind == _RESPONSE:
                mode = headers.response_mode
                if mode is not None and mode != b"streaming":
                    backend.post_error(
                        request_id,
                        "Runtime.InvalidResponseModeHeader",
                        _error_body(
                            "Invalid function response mode", "Runtime.InvalidResponseModeHeader"
                        ),
                    )
                    self._respond(400, _INVALID_RESPONSE_MODE, close=close)
                    return
                trailer_error = _trailer_error(eom) if eom is not None and eom.headers else None
                if trailer_error is not None:
                    backend.post_error(request_id, trailer_error[0], trailer_error[1])
                else:
                    content_type = headers.content_type
                    backend.post_response(
                        request_id,
                        body,
                        content_type.decode("latin-1") if content_type is not None else None,
                    )
            elif kind == _ERROR:
                backend.post_error(request_id, _error_type_header(headers.error_type), body)
            else:
                backend.post_init_error(_error_type_header(headers.error_type), body)
        except Exception as exc:
            status, payload = self._map_backend_error(exc)
            self._respond(status, payload, close=close)
            return
        self._respond(202, _ACCEPTED, close=close)

    def _report_too_large(
        self, kind: int, request_id: str, error_type: bytes | None, size: int, limit: int
    ) -> None:
        """Tell the backend that the runtime's answer was refused as too large."""
        if kind == _INIT_ERROR:
            self._backend.post_init_error(
                _error_type_header(error_type),
                _error_body(
                    f"Init error payload size ({size} bytes) exceeded maximum allowed payload "
                    f"size ({limit} bytes).",
                    _error_type_header(error_type) or "Runtime.Unknown",
                ),
            )
            return
        too_large = FunctionErrorType.RESPONSE_TOO_LARGE.value
        self._backend.post_error(
            request_id,
            too_large,
            _error_body(
                f"Response payload size ({size} bytes) exceeded maximum allowed payload size "
                f"({limit} bytes).",
                too_large,
            ),
        )

    def _map_backend_error(self, exc: Exception) -> tuple[int, bytes]:
        if isinstance(exc, InvalidRequestId):
            return 400, _INVALID_REQUEST_ID
        if isinstance(exc, InvalidStateTransition):
            return 403, _error_body(str(exc), "InvalidStateTransition")
        if isinstance(exc, PayloadTooLarge):
            return 413, _too_large_body(self._backend.max_response_bytes)
        logger.error("Runtime API backend failed", exc_info=exc)
        return 500, _INTERNAL_ERROR


def _trailer_error(eom: h11.EndOfMessage) -> tuple[str, bytes] | None:
    """An error reported in a streamed response's trailers: (error type, error body)."""
    error_type: bytes | None = None
    error_body = b""
    for name, value in eom.headers:
        if name == b"lambda-runtime-function-error-type":
            error_type = value
        elif name == b"lambda-runtime-function-error-body":
            try:
                error_body = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                error_body = b""
    if not error_type:
        return None
    return sanitize_error_type(error_type.decode("latin-1")), error_body
