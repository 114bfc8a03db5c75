"""The framed control protocol between the host and a built-in runtime (stdlib only).

This module runs on both sides: inside the sandbox (imported by the bootstraps) and in the
server. A frame is

    >II  header length, body length   (8 bytes, big endian)
    header                            UTF-8 JSON object with at least "type"
    body                              raw bytes (event, result or error JSON), never re-encoded

Host -> runtime:
    {"type": "invoke", "id", "deadline_ms", "arn", "trace_id"?, "client_context"?,
     "cognito_identity"?, "tenant_id"?}                          body = event
Runtime -> host:
    {"type": "ready"}                                            init finished (= first /next)
    {"type": "init_error", "error_type"}                         body = error JSON; then exit
    {"type": "response", "id", "content_type"}                   body = result
    {"type": "error", "id", "error_type"}                        body = error JSON

The protocol has the same states as the HTTP Runtime API, so both drive one instance state
machine on the host.
"""

from __future__ import annotations

import json
import struct

_PREFIX = struct.Struct(">II")
PREFIX_SIZE = _PREFIX.size
MAX_HEADER = 64 * 1024


def encode(header: dict, body: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return _PREFIX.pack(len(head), len(body)) + head + body


def decode_prefix(prefix: bytes) -> tuple[int, int]:
    head_len, body_len = _PREFIX.unpack(prefix)
    if head_len > MAX_HEADER:
        raise ValueError(f"frame header too large: {head_len}")
    return head_len, body_len


def _recv_exact(sock, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise EOFError("control channel closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(sock) -> tuple[dict, bytes]:
    """Blocking read of one frame from a socket (runtime side)."""
    head_len, body_len = decode_prefix(_recv_exact(sock, PREFIX_SIZE))
    header = json.loads(_recv_exact(sock, head_len))
    body = _recv_exact(sock, body_len) if body_len else b""
    return header, body


def write_frame(sock, header: dict, body: bytes = b"") -> None:
    """Blocking write of one frame to a socket (runtime side)."""
    sock.sendall(encode(header, body))
