"""Plain dataclasses shared by the layers: function configuration, invocations, results.

These carry no behaviour beyond rendering to Lambda's wire shapes; the API, the scheduler and the
store all speak them.
"""

from __future__ import annotations

import dataclasses
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

LATEST = "$LATEST"


def lambda_timestamp(epoch: float | None = None) -> str:
    """AWS's `LastModified` format: `2020-04-10T19:06:32.563+0000`."""
    moment = datetime.fromtimestamp(time.time() if epoch is None else epoch, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


_ids = random.Random()  # seeded from os.urandom once; no syscall per id as uuid4() makes


def new_request_id() -> str:
    """A random (version 4) UUID for a request id: unique, not a secret."""
    value = _ids.getrandbits(128) & ~(0xF000 << 64) | (0x4000 << 64)
    h = f"{value & ~(0xC000 << 48) | (0x8000 << 48):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True)
class CodeInfo:
    """A stored, validated code package."""

    sha256_hex: str
    sha256_b64: str  # Lambda's CodeSha256
    size: int  # zipped bytes (CodeSize)
    unzipped_size: int


@dataclass(frozen=True)
class FunctionConfig:
    """One version of a function (`$LATEST` or a published number)."""

    name: str
    runtime: str
    handler: str
    role: str
    code: CodeInfo
    memory_mb: int = 128
    timeout_s: int = 3
    ephemeral_mb: int = 512
    environment: dict[str, str] = field(default_factory=dict)
    description: str = ""
    version: str = LATEST
    revision_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    last_modified: str = field(default_factory=lambda_timestamp)
    architectures: tuple[str, ...] = ("x86_64",)
    log_format: str = "Text"
    application_log_level: str | None = None
    system_log_level: str | None = None
    log_group: str | None = None
    tracing_mode: str = "PassThrough"
    dead_letter_target: str | None = None
    layers: tuple[str, ...] = ()
    state: str = "Active"
    last_update_status: str = "Successful"

    def evolve(self, **changes: Any) -> FunctionConfig:
        return dataclasses.replace(self, **changes)

    @property
    def log_group_name(self) -> str:
        return self.log_group or f"/aws/lambda/{self.name}"

    def to_json(self) -> dict[str, Any]:
        """The storable form (not the wire form)."""
        data = dataclasses.asdict(self)
        data["architectures"] = list(self.architectures)
        data["layers"] = list(self.layers)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FunctionConfig:
        data = dict(data)
        data["code"] = CodeInfo(**data["code"])
        data["architectures"] = tuple(data.get("architectures", ("x86_64",)))
        data["layers"] = tuple(data.get("layers", ()))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Invocation:
    """One request to run a function version, as the scheduler receives it."""

    request_id: str
    function: FunctionConfig
    payload: bytes
    invoked_arn: str
    client_context: str | None = None  # decoded JSON text
    cognito_identity: str | None = None
    trace_id: str | None = None
    tail_log: bool = False


@dataclass
class InvocationResult:
    """What an invocation produced, whatever the outcome."""

    request_id: str
    payload: bytes
    content_type: str = "application/json"
    function_error: str | None = None  # "Unhandled" when set
    error_type: str | None = None
    executed_version: str = LATEST
    log_tail: bytes = b""
    duration_ms: float = 0.0
    billed_duration_ms: int = 0
    init_duration_ms: float | None = None
    max_memory_used_mb: int = 0
    cold_start: bool = False
    instance_id: str = ""
