"""The embedded store: one SQLite database (WAL) in the data directory.

`Database` owns the connection and the schema; the repositories below each handle one kind of
record. All calls run on the event-loop thread; SQLite's own locking covers the CLI reading the
same file from another process.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.model import LATEST, FunctionConfig
from corral.store.api import AsyncEvent

_SCHEMA = """
CREATE TABLE IF NOT EXISTS functions (
    name TEXT PRIMARY KEY,
    tags TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
    version TEXT NOT NULL,
    config TEXT NOT NULL,
    code_sha TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS async_events (
    event_id TEXT PRIMARY KEY,
    function_name TEXT NOT NULL,
    qualifier TEXT NOT NULL,
    payload BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    enqueued_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    leased INTEGER NOT NULL DEFAULT 0,
    kind TEXT NOT NULL DEFAULT 'invoke',
    throttles INTEGER NOT NULL DEFAULT 0,
    last_result TEXT
);
CREATE INDEX IF NOT EXISTS async_events_due ON async_events (leased, next_attempt_at);
"""


class Database:
    """A SQLite connection in WAL mode with Corral's schema applied."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.execute("PRAGMA busy_timeout=5000")
        self.lock = threading.RLock()
        self.conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self.lock:
            self.conn.close()


class SqliteFunctionRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    def put(self, config: FunctionConfig, tags: dict[str, str] | None, create: bool) -> None:
        conn = self._db.conn
        with self._db.lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if create:
                    conn.execute("INSERT INTO functions (name, tags, created) VALUES (?, ?, ?)",
                                 (config.name, json.dumps(tags or {}), time.time()))
                elif tags is not None:
                    conn.execute("UPDATE functions SET tags = ? WHERE name = ?",
                                 (json.dumps(tags), config.name))
                conn.execute(
                    "INSERT OR REPLACE INTO versions (name, version, config, code_sha) "
                    "VALUES (?, ?, ?, ?)",
                    (config.name, config.version, json.dumps(config.to_json()),
                     config.code.sha256_hex),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def get(self, name: str, version: str = LATEST) -> FunctionConfig | None:
        with self._db.lock:
            row = self._db.conn.execute(
                "SELECT config FROM versions WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
        return FunctionConfig.from_json(json.loads(row[0])) if row else None

    def list_latest(self) -> list[FunctionConfig]:
        with self._db.lock:
            rows = self._db.conn.execute(
                "SELECT config FROM versions WHERE version = ? ORDER BY name", (LATEST,)
            ).fetchall()
        return [FunctionConfig.from_json(json.loads(row[0])) for row in rows]

    def list_versions(self, name: str) -> list[FunctionConfig]:
        with self._db.lock:
            rows = self._db.conn.execute(
                "SELECT config FROM versions WHERE name = ?", (name,)
            ).fetchall()
        return [FunctionConfig.from_json(json.loads(row[0])) for row in rows]

    def delete(self, name: str) -> bool:
        with self._db.lock:
            cur = self._db.conn.execute("DELETE FROM functions WHERE name = ?", (name,))
        return cur.rowcount > 0

    def delete_version(self, name: str, version: str) -> None:
        with self._db.lock:
            self._db.conn.execute("DELETE FROM versions WHERE name = ? AND version = ?",
                                  (name, version))

    def get_tags(self, name: str) -> dict[str, str]:
        with self._db.lock:
            row = self._db.conn.execute(
                "SELECT tags FROM functions WHERE name = ?", (name,)
            ).fetchone()
        return dict(json.loads(row[0])) if row else {}

    def set_tags(self, name: str, tags: dict[str, str]) -> None:
        with self._db.lock:
            self._db.conn.execute(
                "UPDATE functions SET tags = ? WHERE name = ?", (json.dumps(tags), name)
            )

    def referenced_code(self) -> set[str]:
        with self._db.lock:
            rows = self._db.conn.execute("SELECT DISTINCT code_sha FROM versions").fetchall()
        return {row[0] for row in rows}


class SqliteEventQueue:
    """The durable asynchronous-invocation queue.

    A row is an invocation to make (`kind` "invoke": `function_name` and `qualifier`) or a
    message to hand to another service (`kind` "sqs": `function_name` holds the target ARN).
    `attempts` counts function runs that ended in an error, `throttles` the tries that were
    refused or failed in the platform (backed off without using an attempt); `last_result`
    keeps the latest function error (JSON) for the invocation record. `complete` removes a row
    and inserts the rows that follow from it (destinations, dead-letter deliveries) in one
    transaction, so a crash never loses or duplicates them.
    """

    @dataclass(frozen=True)
    class Queued(AsyncEvent):
        """A claimed row: the event plus the dispatcher's bookkeeping."""

        kind: str = "invoke"
        throttles: int = 0
        last_result: str | None = None

    _COLUMNS = ("event_id, function_name, qualifier, payload, attempts, enqueued_at,"
                " next_attempt_at, kind, throttles, last_result")
    _ADDED = (("kind", "TEXT NOT NULL DEFAULT 'invoke'"),
              ("throttles", "INTEGER NOT NULL DEFAULT 0"),
              ("last_result", "TEXT"))

    def __init__(self, db: Database) -> None:
        self._db = db
        with db.lock:
            present = {row[1] for row in db.conn.execute("PRAGMA table_info(async_events)")}
            for column, ddl in self._ADDED:  # data dirs created before these columns
                if column not in present:
                    db.conn.execute(f"ALTER TABLE async_events ADD COLUMN {column} {ddl}")

    def _insert(self, event: AsyncEvent, kind: str) -> None:
        self._db.conn.execute(
            "INSERT INTO async_events (event_id, function_name, qualifier, payload, attempts,"
            " enqueued_at, next_attempt_at, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (event.event_id, event.function_name, event.qualifier, event.payload,
             event.attempts, event.enqueued_at, event.next_attempt_at, kind),
        )

    def enqueue(self, event: AsyncEvent, kind: str = "invoke") -> None:
        with self._db.lock:
            self._insert(event, kind)

    def enqueue_many(self, events: list[AsyncEvent]) -> None:
        """Insert invoke events in one transaction (one commit for many accepted events)."""
        conn = self._db.conn
        with self._db.lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for event in events:
                    self._insert(event, "invoke")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def claim(self, now: float, limit: int) -> list[SqliteEventQueue.Queued]:
        conn = self._db.conn
        with self._db.lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = conn.execute(
                    f"SELECT {self._COLUMNS} FROM async_events WHERE leased = 0"
                    " AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?", (now, limit),
                ).fetchall()
                conn.executemany("UPDATE async_events SET leased = 1 WHERE event_id = ?",
                                 [(row[0],) for row in rows])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return [self.Queued(*row) for row in rows]

    def next_due(self) -> float | None:
        with self._db.lock:
            row = self._db.conn.execute(
                "SELECT MIN(next_attempt_at) FROM async_events WHERE leased = 0"
            ).fetchone()
        return row[0] if row else None

    def complete(self, event_id: str,
                 follow_ups: Sequence[tuple[AsyncEvent, str]] = ()) -> None:
        """Remove the event and enqueue `(event, kind)` follow-ups, atomically."""
        conn = self._db.conn
        with self._db.lock:
            if not follow_ups:
                conn.execute("DELETE FROM async_events WHERE event_id = ?", (event_id,))
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM async_events WHERE event_id = ?", (event_id,))
                for event, kind in follow_ups:
                    self._insert(event, kind)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def complete_many(self, event_ids: Sequence[str]) -> None:
        """Remove finished events in one transaction."""
        conn = self._db.conn
        with self._db.lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("DELETE FROM async_events WHERE event_id = ?",
                                 [(event_id,) for event_id in event_ids])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def retry(self, event_id: str, attempts: int, next_attempt_at: float,
              throttles: int | None = None, last_result: str | None = None) -> None:
        """Release the event for another try at `next_attempt_at`."""
        with self._db.lock:
            self._db.conn.execute(
                "UPDATE async_events SET attempts = ?, next_attempt_at = ?, leased = 0,"
                " throttles = COALESCE(?, throttles), last_result = COALESCE(?, last_result)"
                " WHERE event_id = ?",
                (attempts, next_attempt_at, throttles, last_result, event_id),
            )

    def release_all_leases(self) -> int:
        with self._db.lock:
            cur = self._db.conn.execute("UPDATE async_events SET leased = 0 WHERE leased = 1")
        return cur.rowcount

    def pending(self) -> int:
        with self._db.lock:
            row = self._db.conn.execute("SELECT COUNT(*) FROM async_events").fetchone()
        return int(row[0])
