"""The store's contract: durable state behind one small interface.

Implementations: `store.sqlite` (one machine, the default): a `Database` (connection and
schema) shared by small repositories, one per kind of record. Every method is a short
synchronous transaction; callers on the event loop may call them directly (SQLite in WAL mode
answers in microseconds) and keep hot data (function configurations) in memory.

Guarantees:
* `put_function(..., create=True)` is atomic: a function row, its tags and its `$LATEST`
  configuration appear together or not at all.
* The async queue is at-least-once: an event stays in the queue until `complete_event` or
  `fail_event` removes it; `claim_events` leases events, and leases held by a crashed server are
  reclaimed at the next start (`release_all_leases`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from corral.model import FunctionConfig


@dataclass(frozen=True)
class AsyncEvent:
    """A queued asynchronous invocation."""

    event_id: str
    function_name: str
    qualifier: str
    payload: bytes
    attempts: int
    enqueued_at: float
    next_attempt_at: float


@dataclass(frozen=True)
class LogEvent:
    event_id: int
    group: str
    stream: str
    timestamp_ms: int
    ingestion_ms: int
    message: str


class FunctionRepo(Protocol):
    def put(self, config: FunctionConfig, tags: dict[str, str] | None, create: bool) -> None:
        """Insert (`create`, fails with KeyError-free ResourceConflict upstream) or replace."""
        ...
    def get(self, name: str, version: str) -> FunctionConfig | None: ...
    def list_latest(self) -> list[FunctionConfig]: ...
    def delete(self, name: str) -> bool: ...
    def get_tags(self, name: str) -> dict[str, str]: ...
    def set_tags(self, name: str, tags: dict[str, str]) -> None: ...
    def referenced_code(self) -> set[str]: ...


class EventQueue(Protocol):
    def enqueue(self, event: AsyncEvent) -> None: ...
    def claim(self, now: float, limit: int) -> list[AsyncEvent]: ...
    def complete(self, event_id: str) -> None: ...
    def retry(self, event_id: str, attempts: int, next_attempt_at: float) -> None: ...
    def release_all_leases(self) -> int: ...
    def pending(self) -> int: ...
