"""Tests of the Runtime API HTTP server over real loopback sockets.

The server runs on its own event loop in a background thread with a small `asyncio.Queue`
backend (the stand-in for the instance layer); the tests drive it from the main thread with
`http.client`, raw sockets and, when PyPI is reachable, the real `awslambdaric` runtime client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from corral.runtimeapi.backend import (
    MAX_RESPONSE_BYTES,
    InvalidRequestId,
    InvalidStateTransition,
    NextInvocation,
    PayloadTooLarge,
)
from corral.runtimeapi.server import RuntimeApiServer, sanitize_error_type

T = TypeVar("T")
WAIT = 10.0
RID = "8476a536-e9f4-11e8-9739-2dfe598c3fcd"
ARN = "arn:aws:lambda:us-east-1:123456789012:function:probe"
NEXT = "/2018-06-01/runtime/invocation/next"
REPO = Path(__file__).resolve().parents[3]


class QueueBackend:
    """A minimal instance state machine: a queue of events and a record of what was posted."""

    def __init__(self) -> None:
        self.max_response_bytes = MAX_RESPONSE_BYTES
        self.events: asyncio.Queue[NextInvocation] = asyncio.Queue()
        self.posts: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.current: str | None = None
        self.next_calls = 0
        self.fail_with: Exception | None = None

    async def next_invocation(self) -> NextInvocation:
        self.next_calls += 1
        if self.fail_with is not None:
            raise self.fail_with
        try:
            inv = await self.events.get()
        except asyncio.CancelledError:
            self.posts.put(("cancelled",))
            raise
        self.current = inv.request_id
        return inv

    def _finish(self, request_id: str) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        if request_id != self.current:
            raise InvalidRequestId(request_id)
        self.current = None

    def post_response(self, request_id: str, body: bytes, content_type: str | None) -> None:
        self._finish(request_id)
        self.posts.put(("response", request_id, body, content_type))

    def post_error(self, request_id: str, error_type: str | None, body: bytes) -> None:
        self._finish(request_id)
        self.posts.put(("error", request_id, error_type, body))

    def post_init_error(self, error_type: str | None, body: bytes) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.posts.put(("init_error", error_type, body))


class Harness:
    """The server on a background event loop, bound to a loopback socket made by the test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.backend: QueueBackend = self.call(self._make_backend())
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]
        self.server: RuntimeApiServer = self.call(RuntimeApiServer.start(self.sock, self.backend))

    @staticmethod
    async def _make_backend() -> QueueBackend:
        return QueueBackend()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT)

    def on_loop(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return self.call(run())

    def push(self, inv: NextInvocation) -> None:
        self.loop.call_soon_threadsafe(self.backend.events.put_nowait, inv)

    def post(self) -> tuple[Any, ...]:
        return self.backend.posts.get(timeout=WAIT)

    def http(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)

    def raw(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)
        return s

    def leftover_tasks(self) -> list[asyncio.Task[Any]]:
        async def tasks() -> list[asyncio.Task[Any]]:
            await asyncio.sleep(0)
            return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

        return self.call(tasks())

    def wait_until(self, predicate: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT
        while not self.on_loop(predicate):
            assert time.monotonic() < deadline, "condition not reached"
            time.sleep(0.01)

    def stop(self) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()


@pytest.fixture
def api() -> Iterator[Harness]:
    harness = Harness()
    try:
        yield harness
    finally:
        harness.stop()


def invocation(request_id: str = RID, body: bytes = b'{"x":1}', **kw: Any) -> NextInvocation:
    fields: dict[str, Any] = {"deadline_ms": 1542409706888, "invoked_function_arn": ARN, **kw}
    return NextInvocation(request_id=request_id, body=body, **fields)


def request(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[http.client.HTTPResponse, bytes]:
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp, resp.read()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes, bytes]:
    """Read one Content-Length framed response from a raw socket: (status, headers, body, rest)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed early: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    return status, headers, rest[:length], rest[length:]


def is_closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


# -- round trips ---------------------------------------------------------------------------


def test_next_and_response_round_trip_with_all_headers(api: Harness) -> None:
    """/next renders every Lambda-Runtime-* header and /response reaches the backend."""
    api.push(
        invocation(
            trace_id="Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=1",
            client_context='{"custom":{"a":"b"}}',
            cognito_identity='{"cognitoIdentityId":"cid","cognitoIdentityPoolId":"pid"}',
            tenant_id="tenant-1",
        )
    )
    conn = api.http()
    resp, body = request(conn, "GET", NEXT)
    assert resp.status == 200
    assert body == b'{"x":1}'
    assert resp.getheader("Content-Type") == "application/json"
    assert resp.getheader("Content-Length") == "7"
    assert resp.getheader("Date", "").endswith(" GMT")
    assert resp.getheader("Lambda-Runtime-Aws-Request-Id") == RID
    assert resp.getheader("Lambda-Runtime-Deadline-Ms") == "1542409706888"
    assert resp.getheader("Lambda-Runtime-Invoked-Function-Arn") == ARN
    assert resp.getheader("Lambda-Runtime-Trace-Id", "").startswith("Root=1-5bef4de7")
    assert resp.getheader("Lambda-Runtime-Client-Context") == '{"custom":{"a":"b"}}'
    assert json.loads(resp.getheader("Lambda-Runtime-Cognito-Identity", "")) == {
        "cognitoIdentityId": "cid",
        "cognitoIdentityPoolId": "pid",
    }
    assert resp.getheader("Lambda-Runtime-Aws-Tenant-Id") == "tenant-1"

    resp, body = request(
        conn,
        "POST",
        f"/2018-06-01/runtime/invocation/{RID}/response",
        b'{"ok":true}',
        {"Content-Type": "application/json"},
    )
    assert resp.status == 202
    assert json.loads(body) == {"status": "OK"}
    assert resp.getheader("Date") is not None
    assert api.post() == ("response", RID, b'{"ok":true}', "application/json")


def test_next_omits_unset_headers_and_defaults_content_type(api: Harness) -> None:
    """Unset optional fields produce no header; Content-Type is exactly application/json."""
    api.push(invocation(trace_id=None, client_context="", tenant_id=None))
    resp, _ = request(api.http(), "GET", NEXT)
    names = {name.lower() for name, _ in resp.getheaders()}
    assert "lambda-runtime-trace-id" not in names
    assert "lambda-runtime-client-context" not in names
    assert "lambda-runtime-cognito-identity" not in names
    assert "lambda-runtime-aws-tenant-id" not in names
    assert resp.getheader("Content-Type") == "application/json"


def test_next_header_values_are_made_header_safe(api: Harness) -> None:
    """Line breaks in a JSON client context become spaces instead of breaking the response."""
    api.push(invocation(client_context='{"custom":\r\n {"a": "b"}}\n'))
    resp, _ = request(api.http(), "GET", NEXT)
    assert resp.status == 200
    value = resp.getheader("Lambda-Runtime-Client-Context", "")
    assert json.loads(value) == {"custom": {"a": "b"}}


def test_response_without_content_type_passes_none(api: Harness) -> None:
    """A /response without Content-Type reaches the backend with content_type None."""
    api.push(invocation())
    conn = api.http()
    request(conn, "GET", NEXT)
    conn.putrequest("POST", f"/2018-06-01/runtime/invocation/{RID}/response")
    conn.putheader("Content-Length", "3")
    conn.endheaders(b"abc")
    assert conn.getresponse().status == 202
    assert api.post() == ("response", RID, b"abc", None)


def test_error_without_type_header_passes_none(api: Harness) -> None:
    """awslambdaric's handler errors carry no error-type header: the backend gets None."""
    api.push(invocation())
    conn = api.http()
    request(conn, "GET", NEXT)
    err = b'{"errorMessage":"boom","errorType":"ValueError","stackTrace":[]}'
    resp, body = request(
        conn,
        "POST",
        f"/2018-06-01/runtime/invocation/{RID}/error",
        err,
        {"Content-Type": "application/json", "Lambda-Runtime-Function-XRay-Error-Cause": "{}"},
    )
    assert resp.status == 202
    assert json.loads(body) == {"status": "OK"}
    assert api.post() == ("error", RID, None, err)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Runtime.UnhandledPromiseRejection", "Runtime.UnhandledPromiseRejection"),
        ("Function.MyError", "Function.MyError"),
        ("ValueError", "Runtime.Unknown"),
        ("Function.bad-name", "Function.Unknown"),
        ("Runtime.X", "Runtime.Unknown"),
    ],
)
def test_error_type_header_is_sanitised(api: Harness, header: str, expected: str) -> None:
    """The error-type header is kept only when it is a Runtime.X / Function.X name."""
    api.push(invocation())
    conn = api.http()
    request(conn, "GET", NEXT)
    resp, _ = request(
        conn,
        "POST",
        f"/2018-06-01/runtime/invocation/{RID}/error",
        b"{}",
        {"Lambda-Runtime-Function-Error-Type": header},
    )
    assert resp.status == 202
    assert api.post() == ("error", RID, expected, b"{}")
    assert sanitize_error_type(header) == expected


def test_init_error_like_awslambdaric(api: Harness) -> None:
    """/init/error as awslambdaric sends it (http.client, no Content-Type) is accepted."""
    body = (
        b'{"errorMessage": "Unable to import module \'bad\'", "errorType": '
        b'"Runtime.ImportModuleError", "requestId": "", "stackTrace": []}'
    )
    conn = api.http()
    conn.request(
        "POST",
        "/2018-06-01/runtime/init/error",
        body,
        headers={"Lambda-Runtime-Function-Error-Type": "Runtime.ImportModuleError"},
    )
    resp = conn.getresponse()
    assert resp.status == 202
    assert json.loads(resp.read()) == {"status": "OK"}
    assert api.post() == ("init_error", "Runtime.ImportModuleError", body)


def test_invalid_request_id_is_400(api: Harness) -> None:
    """A /response for an id that is not current is answered 400 InvalidRequestID."""
    api.push(invocation())
    conn = api.http()
    request(conn, "GET", NEXT)
    resp, body = request(conn, "POST", "/2018-06-01/runtime/invocation/other-id/response", b"1")
    assert resp.status == 400
    assert json.loads(body) == {
        "errorMessage": "Invalid request ID",
        "errorType": "InvalidRequestID",
    }
    resp, body = request(conn, "POST", "/2018-06-01/runtime/invocation//response", b"1")
    assert resp.status == 400
    # The connection is still usable and the real id still works.
    resp, _ = request(conn, "POST", f"/2018-06-01/runtime/invocation/{RID}/response", b"1")
    assert resp.status == 202


def test_backend_exceptions_map_to_statuses(api: Harness) -> None:
    """InvalidStateTransition -> 403, PayloadTooLarge -> 413, anything else -> 500."""
    conn = api.http()
    cases: list[tuple[Exception, int, dict[str, str]]] = [
        (
            InvalidStateTransition("State transition from Running to Ready failed"),
            403,
            {
                "errorMessage": "State transition from Running to Ready failed",
                "errorType": "InvalidStateTransition",
            },
        ),
        (
            PayloadTooLarge(),
            413,
            {
                "errorMessage": "Exceeded maximum allowed payload size (6291556 bytes).",
                "errorType": "RequestEntityTooLarge",
            },
        ),
        (
            RuntimeError("bug"),
            500,
            {"errorMessage": "Internal Server Error", "errorType": "InternalServerError"},
        ),
    ]
    for exc, status, expected in cases:
        api.backend.fail_with = exc
        resp, body = request(conn, "GET", NEXT)
        assert (resp.status, json.loads(body)) == (status, expected)
        resp, body = request(conn, "POST", f"/2018-06-01/runtime/invocation/{RID}/response", b"x")
        assert (resp.status, json.loads(body)) == (status, expected)


# -- bodies ----------------------------------------------------------------------------------


def test_oversize_response_is_413_and_reported(api: Harness) -> None:
    """A body over max_response_bytes gets 413, and the backend gets the size error."""
    api.backend.max_response_bytes = 1000
    api.push(invocation())
    conn = api.http()
    request(conn, "GET", NEXT)
    resp, body = request(
        conn, "POST", f"/2018-06-01/runtime/invocation/{RID}/response", b"a" * 2000
    )
    assert resp.status == 413
    assert json.loads(body) == {
        "errorMessage": "Exceeded maximum allowed payload size (1000 bytes).",
        "errorType": "RequestEntityTooLarge",
    }
    kind, rid, error_type, payload = api.post()
    assert (kind, rid, error_type) == ("error", RID, "Function.ResponseSizeTooLarge")
    assert json.loads(payload) == {
        "errorMessage": "Response payload size (2000 bytes) exceeded maximum allowed payload "
        "size (1000 bytes).",
        "errorType": "Function.ResponseSizeTooLarge",
    }
    # The body was drained, so the connection stays usable.
    resp, body = request(conn, "GET", "/2018-06-01/ping")
    assert (resp.status, body) == (200, b"pong")


def test_exactly_max_bytes_is_accepted(api: Harness) -> None:
    """A body of exactly max_response_bytes is accepted."""
    api.backend.max_response_bytes = 1000
    api.push(invocation())
    conn = api.http()
    request(conn, "GET", NEXT)
    resp, _ = request(conn, "POST", f"/2018-06-01/runtime/invocation/{RID}/response", b"a" * 1000)
    assert resp.status == 202
    assert api.post()[2] == b"a" * 1000


def test_oversize_chunked_response_is_413(api: Harness) -> None:
    """A chunked body is counted while it streams in and refused once over the limit."""
    api.backend.max_response_bytes = 1000
    api.push(invocation())
    sock = api.raw()
    sock.sendall(f"GET {NEXT} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert read_response(sock)[0] == 200
    chunk = b"b" * 600
    sock.sendall(
        f"POST /2018-06-01/runtime/invocation/{RID}/response HTTP/1.1\r\nHost: x\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
        + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 3
        + b"0\r\n\r\n"
    )
    status, _, body, _ = read_response(sock)
    assert status == 413
    assert json.loads(body)["errorType"] == "RequestEntityTooLarge"
    assert api.post()[2] == "Function.ResponseSizeTooLarge"
    sock.close()


def test_oversize_with_expect_100_continue_is_refused_unread(api: Harness) -> None:
    """An oversize Content-Length announced with Expect: 100-continue is refused at once."""
    api.backend.max_response_bytes = 1000
    api.push(invocation())
    sock = api.raw()
    sock.sendall(f"GET {NEXT} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert read_response(sock)[0] == 200
    sock.sendall(
        f"POST /2018-06-01/runtime/invocation/{RID}/response HTTP/1.1\r\nHost: x\r\n"
        "Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    status, headers, _, _ = read_response(sock)
    assert status == 413
    assert headers["connection"] == "close"
    assert is_closed(sock)
    assert api.post()[2] == "Function.ResponseSizeTooLarge"


def test_chunked_request_body(api: Harness) -> None:
    """A chunked /response body is reassembled before it reaches the backend."""
    api.push(invocation())
    sock = api.raw()
    sock.sendall(f"GET {NEXT} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert read_response(sock)[0] == 200
    sock.sendall(
        f"POST /2018-06-01/runtime/invocation/{RID}/response HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nhello\r\n".encode()
    )
    time.sleep(0.05)  # the rest arrives in a later segment
    sock.sendall(b"6\r\n world\r\n0\r\n\r\n")
    status, _, body, _ = read_response(sock)
    assert (status, json.loads(body)) == (202, {"status": "OK"})
    assert api.post() == ("response", RID, b"hello world", "text/plain")
    sock.close()


def test_expect_100_continue(api: Harness) -> None:
    """A client sending Expect: 100-continue gets 100 Continue before it sends the body."""
    api.push(invocation())
    sock = api.raw()
    sock.sendall(f"GET {NEXT} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert read_response(sock)[0] == 200
    sock.sendall(
        f"POST /2018-06-01/runtime/invocation/{RID}/response HTTP/1.1\r\nHost: x\r\n"
        "Content-Length: 4\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    interim = sock.recv(1024)
    assert interim.startswith(b"HTTP/1.1 100 ")
    sock.sendall(b"done")
    status, _, _, _ = read_response(sock)
    assert status == 202
    assert api.post() == ("response", RID, b"done", None)
    sock.close()


def test_large_xray_error_cause_header_is_accepted(api: Harness) -> None:
    """awslambdaric's X-Ray cause header may approach 1 MiB; it must not be rejected."""
    api.push(invocation())
    conn = api.http()
    request(conn, "GET", NEXT)
    cause = json.dumps({"working_directory": "/x", "exceptions": [], "paths": ["p" * 900_000]})
    resp, _ = request(
        conn,
        "POST",
        f"/2018-06-01/runtime/invocation/{RID}/error",
        b"{}",
        {"Lambda-Runtime-Function-XRay-Error-Cause": cause},
    )
    assert resp.status == 202
    assert api.post()[0] == "error"


def test_streaming_response_trailer_error_becomes_post_error(api: Harness) -> None:
    """An error announced in a streamed response's trailers is reported as an error."""
    api.push(invocation())
    sock = api.raw()
    sock.sendall(f"GET {NEXT} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert read_response(sock)[0] == 200
    err = base64.b64encode(b'{"errorMessage":"late","errorType":"Error"}')
    sock.sendall(
        f"POST /2018-06-01/runtime/invocation/{RID}/response HTTP/1.1\r\nHost: x\r\n"
        "Lambda-Runtime-Function-Response-Mode: streaming\r\n"
        "Transfer-Encoding: chunked\r\nTrailer: Lambda-Runtime-Function-Error-Type\r\n\r\n"
        "3\r\nabc\r\n0\r\nLambda-Runtime-Function-Error-Type: Function.Late\r\n"
        "Lambda-Runtime-Function-Error-Body: ".encode()
        + err
        + b"\r\n\r\n"
    )
    assert read_response(sock)[0] == 202
    assert api.post() == ("error", RID, "Function.Late", base64.b64decode(err))
    sock.close()


def test_invalid_response_mode_is_400(api: Harness) -> None:
    """A response mode other than streaming is refused like RAPID does."""
    api.push(invocation())
    conn = api.http()
    request(conn, "GET", NEXT)
    resp, body = request(
        conn,
        "POST",
        f"/2018-06-01/runtime/invocation/{RID}/response",
        b"x",
        {"Lambda-Runtime-Function-Response-Mode": "bogus"},
    )
    assert resp.status == 400
    assert json.loads(body)["errorType"] == "InvalidFunctionResponseMode"
    assert api.post()[:3] == ("error", RID, "Runtime.InvalidResponseModeHeader")


# -- connections -------------------------------------------------------------------------------


def test_keep_alive_several_cycles_on_one_connection(api: Harness) -> None:
    """Several /next + /response cycles run over one kept-alive connection."""
    conn = api.http()
    first_socket = None
    for i in range(5):
        rid = f"req-{i}"
        api.push(invocation(request_id=rid, body=b"%d" % i))
        resp, body = request(conn, "GET", NEXT)
        assert (resp.status, body) == (200, b"%d" % i)
        resp, _ = request(conn, "POST", f"/2018-06-01/runtime/invocation/{rid}/response", body)
        assert resp.status == 202
        assert api.post() == ("response", rid, body, None)
        if first_socket is None:
            first_socket = conn.sock
        assert conn.sock is first_socket
    assert api.server.active_connections == 1


def test_pipelined_requests_are_answered_in_order(api: Harness) -> None:
    """Requests sent back to back in one segment are answered one after another, in order."""
    api.push(invocation())
    sock = api.raw()
    sock.sendall(
        f"GET {NEXT} HTTP/1.1\r\nHost: x\r\n\r\n"
        f"POST /2018-06-01/runtime/invocation/{RID}/response HTTP/1.1\r\nHost: x\r\n"
        "Content-Length: 2\r\n\r\nok"
        "GET /2018-06-01/ping HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    status1, _, body1, rest = read_response(sock)
    assert (status1, body1) == (200, b'{"x":1}')
    statuses = []
    bodies = []
    buffered = rest
    for _ in range(2):
        if b"\r\n\r\n" not in buffered:
            buffered += sock.recv(65536)
        head, _, tail = buffered.partition(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        while len(tail) < length:
            tail += sock.recv(65536)
        statuses.append(int(head.split()[1]))
        bodies.append(tail[:length])
        buffered = tail[length:]
    assert statuses == [202, 200]
    assert bodies[1] == b"pong"
    sock.close()


def test_client_disconnect_during_next_cancels_the_wait(api: Harness) -> None:
    """A runtime vanishing while /next waits cancels the wait; no task leaks, no event is lost."""
    sock = api.raw()
    sock.sendall(f"GET {NEXT} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    api.wait_until(lambda: api.backend.next_calls == 1)
    sock.close()
    assert api.post() == ("cancelled",)
    api.wait_until(lambda: api.server.active_connections == 0)
    assert api.leftover_tasks() == []
    # The backend is not confused: the next event goes to the next /next.
    api.push(invocation())
    resp, body = request(api.http(), "GET", NEXT)
    assert (resp.status, body) == (200, b'{"x":1}')


def test_half_close_during_next_cancels_the_wait(api: Harness) -> None:
    """A half-closed connection counts as gone while /next waits (as in Go's net/http)."""
    sock = api.raw()
    sock.sendall(f"GET {NEXT} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    api.wait_until(lambda: api.backend.next_calls == 1)
    sock.shutdown(socket.SHUT_WR)
    assert api.post() == ("cancelled",)
    assert is_closed(sock)
    sock.close()
    api.wait_until(lambda: api.server.active_connections == 0)


def test_close_while_next_is_pending(api: Harness) -> None:
    """close() cancels a pending /next, drops the connection, stops listening; idempotent."""
    conn = api.http()
    errors: list[BaseException] = []

    def wait_next() -> None:
        try:
            request(conn, "GET", NEXT)
        except (OSError, http.client.HTTPException) as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait_next)
    waiter.start()
    api.wait_until(lambda: api.backend.next_calls == 1)
    api.call(api.server.close())
    api.call(api.server.close())
    waiter.join(WAIT)
    assert not waiter.is_alive()
    assert len(errors) == 1
    assert api.post() == ("cancelled",)
    assert api.server.active_connections == 0
    assert api.leftover_tasks() == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", api.port), timeout=1).close()


def test_unknown_path_404_and_wrong_method_405(api: Harness) -> None:
    """Unknown paths get 404 JSON; known paths with another method get 405 JSON + Allow."""
    conn = api.http()
    resp, body = request(conn, "GET", "/2018-06-01/nope")
    assert resp.status == 404
    assert json.loads(body)["errorType"] == "NotFound"
    resp, body = request(conn, "GET", "/2018-06-01/runtime/invocation/abc/other")
    assert resp.status == 404
    resp, body = request(conn, "POST", NEXT, b"{}")
    assert resp.status == 405
    assert resp.getheader("Allow") == "GET"
    assert set(json.loads(body)) == {"errorMessage", "errorType"}
    resp, body = request(conn, "GET", f"/2018-06-01/runtime/invocation/{RID}/response")
    assert (resp.status, resp.getheader("Allow")) == (405, "POST")
    assert resp.getheader("Content-Length") is not None
    assert resp.getheader("Date") is not None


def test_ping_logs_telemetry_and_extensions(api: Harness) -> None:
    """/ping answers pong, Logs/Telemetry answer the RIE stubs, extensions are refused."""
    conn = api.http()
    resp, body = request(conn, "GET", "/2018-06-01/ping")
    assert (resp.status, body) == (200, b"pong")
    resp, body = request(conn, "PUT", "/2020-08-15/logs", b'{"schemaVersion":"2020-08-15"}')
    assert resp.status == 202
    assert json.loads(body) == {
        "errorMessage": "Logs API is not supported",
        "errorType": "Logs.NotSupported",
    }
    resp, body = request(conn, "PUT", "/2022-07-01/telemetry", b"{}")
    assert resp.status == 202
    assert json.loads(body)["errorType"] == "Telemetry.NotSupported"
    resp, body = request(
        conn,
        "POST",
        "/2020-01-01/extension/register",
        b'{"events":["INVOKE"]}',
        {"Lambda-Extension-Name": "ext"},
    )
    assert resp.status == 403
    assert json.loads(body)["errorType"] == "Extension.Unsupported"


def test_connection_close_http10_and_head(api: Harness) -> None:
    """Connection: close and HTTP/1.0 end the connection; a HEAD answer carries no body."""
    for request_line, extra in (
        ("GET /2018-06-01/ping HTTP/1.1", "Connection: close\r\n"),
        ("GET /2018-06-01/ping HTTP/1.0", ""),
    ):
        sock = api.raw()
        sock.sendall(f"{request_line}\r\nHost: x\r\n{extra}\r\n".encode())
        status, headers, body, _ = read_response(sock)
        assert (status, body, headers["connection"]) == (200, b"pong", "close")
        assert is_closed(sock)
        sock.close()
    sock = api.raw()
    sock.sendall(f"HEAD {NEXT} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    time.sleep(0.05)
    sock.sendall(b"GET /2018-06-01/ping HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"pong"):
        chunk = sock.recv(65536)
        assert chunk
        data += chunk
    first, _, second = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 405 ")
    assert b"content-length: " in first.lower()
    assert second.startswith(b"HTTP/1.1 200 ")  # no 405 body in between
    sock.close()


def test_malformed_request_gets_400_and_close(api: Harness) -> None:
    """Garbage on the wire is answered 400 and the connection is closed."""
    sock = api.raw()
    sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
    status, _, body, _ = read_response(sock)
    assert status == 400
    assert json.loads(body)["errorType"] == "BadRequest"
    assert is_closed(sock)
    sock.close()


# -- the real runtime interface client --------------------------------------------------------

APP = """
import os


def handler(event, context):
    if event.get("fail"):
        raise ValueError("boom")
    if event.get("big"):
        return "x" * event["big"]
    cc = context.client_context
    return {
        "echo": event,
        "request_id": context.aws_request_id,
        "arn": context.invoked_function_arn,
        "remaining_positive": context.get_remaining_time_in_millis() > 0,
        "trace": os.environ.get("_X_AMZN_TRACE_ID"),
        "custom": cc.custom if cc else None,
        "cognito": context.identity.cognito_identity_id,
        "memory": context.memory_limit_in_mb,
    }
"""


@pytest.fixture(scope="module")
def awslambdaric_path() -> Path:
    """awslambdaric installed from PyPI under .cache/awslambdaric (once), or skip."""
    target = REPO / ".cache" / "awslambdaric"
    marker = target / ".corral-installed"
    if marker.exists():
        return target
    staging = target.with_name(f"awslambdaric.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    cmd += ["--only-binary=:all:", "--target", str(staging), "awslambdaric"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.skip("awslambdaric: `pip install` from PyPI timed out (PyPI unreachable?)")
    if proc.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        pytest.skip(f"awslambdaric could not be installed from PyPI: {' '.join(tail)}")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    marker.write_text("ok\n")
    return target


def start_ric(api: Harness, ric: Path, code: Path, handler: str) -> subprocess.Popen[bytes]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ric),
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{api.port}",
        "AWS_LAMBDA_FUNCTION_NAME": "probe",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
        "LAMBDA_TASK_ROOT": str(code),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "awslambdaric", handler],
        cwd=code,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen[bytes]) -> str:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    out, _ = proc.communicate(timeout=WAIT)
    return out.decode(errors="replace")


def test_awslambdaric_invoke_and_handler_error(
    api: Harness, awslambdaric_path: Path, tmp_path: Path
) -> None:
    """awslambdaric runs a handler, reports a handler error over one connection, dies on 413."""
    (tmp_path / "app.py").write_text(APP)
    proc = start_ric(api, awslambdaric_path, tmp_path, "app.handler")
    try:
        api.push(
            invocation(
                request_id="11111111-1111-1111-1111-111111111111",
                body=b'{"hello":"world"}',
                deadline_ms=int(time.time() * 1000) + 60_000,
                trace_id="Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Sampled=1",
                client_context='{"custom":{"a":"b"},"env":{},"client":{}}',
                cognito_identity='{"cognitoIdentityId":"cid","cognitoIdentityPoolId":"pid"}',
            )
        )
        kind, rid, body, content_type = api.backend.posts.get(timeout=30)
        assert (kind, rid, content_type) == (
            "response",
            "11111111-1111-1111-1111-111111111111",
            "application/json",
        )
        assert json.loads(body) == {
            "echo": {"hello": "world"},
            "request_id": "11111111-1111-1111-1111-111111111111",
            "arn": ARN,
            "remaining_positive": True,
            "trace": "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Sampled=1",
            "custom": {"a": "b"},
            "cognito": "cid",
            "memory": "128",
        }

        api.push(
            invocation(
                request_id="22222222-2222-2222-2222-222222222222",
                body=b'{"fail":true}',
                deadline_ms=int(time.time() * 1000) + 60_000,
            )
        )
        kind, rid, error_type, body = api.post()
        assert (kind, rid, error_type) == ("error", "22222222-2222-2222-2222-222222222222", None)
        error = json.loads(body)
        assert (error["errorType"], error["errorMessage"]) == ("ValueError", "boom")

        # The runtime survives handler errors and waits in /next on its one connection.
        api.wait_until(lambda: api.backend.next_calls == 3)
        assert proc.poll() is None
        assert api.server.active_connections == 1

        # An oversize result: the invoke fails with the size error and the runtime exits 1.
        api.backend.max_response_bytes = 1000
        api.push(
            invocation(
                request_id="33333333-3333-3333-3333-333333333333",
                body=b'{"big":5000}',
                deadline_ms=int(time.time() * 1000) + 60_000,
            )
        )
        kind, rid, error_type, _ = api.post()
        assert (kind, rid, error_type) == (
            "error",
            "33333333-3333-3333-3333-333333333333",
            "Function.ResponseSizeTooLarge",
        )
        assert proc.wait(timeout=WAIT) == 1
    finally:
        output = stop(proc)
    assert "boom" in output


def test_awslambdaric_import_error_is_an_init_error(
    api: Harness, awslambdaric_path: Path, tmp_path: Path
) -> None:
    """A handler module that fails to import is reported on /init/error and the runtime exits 1."""
    (tmp_path / "bad.py").write_text("import does_not_exist_module_xyz\n")
    proc = start_ric(api, awslambdaric_path, tmp_path, "bad.handler")
    try:
        kind, error_type, body = api.backend.posts.get(timeout=30)
        assert (kind, error_type) == ("init_error", "Runtime.ImportModuleError")
        error = json.loads(body)
        assert error["errorType"] == "Runtime.ImportModuleError"
        assert "does_not_exist_module_xyz" in error["errorMessage"]
        assert proc.wait(timeout=WAIT) == 1
    finally:
        stop(proc)
