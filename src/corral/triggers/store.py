"""The triggers' tables in the server's SQLite database, and small helpers to use them.

Every table belongs to one trigger module and is created (if missing) when the feature is
installed; statements are short and run under the database's lock, on the event-loop thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from corral.store.sqlite import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS trigger_function_urls (
    function_name TEXT NOT NULL,
    qualifier TEXT NOT NULL DEFAULT '',
    url_id TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,
    PRIMARY KEY (function_name, qualifier)
);
CREATE TABLE IF NOT EXISTS trigger_http_routes (
    api TEXT NOT NULL,
    route_key TEXT NOT NULL,
    route_id TEXT NOT NULL,
    function_name TEXT NOT NULL,
    qualifier TEXT NOT NULL DEFAULT '',
    payload_format TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (api, route_key)
);
CREATE TABLE IF NOT EXISTS trigger_s3_subscriptions (
    id TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    config TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS trigger_event_source_mappings (
    uuid TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS trigger_esm_checkpoints (
    uuid TEXT NOT NULL,
    shard_id TEXT NOT NULL,
    sequence_number TEXT NOT NULL,
    PRIMARY KEY (uuid, shard_id)
);
"""


class Tables:
    """Statements against the triggers' tables, serialised by the database lock."""

    def __init__(self, db: Database) -> None:
        self._db = db
        with db.lock:
            db.conn.executescript(SCHEMA)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._db.lock:
            cur = self._db.conn.execute(sql, tuple(params))
        return cur.rowcount

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._db.lock:
            return list(self._db.conn.execute(sql, tuple(params)).fetchall())

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        with self._db.lock:
            row = self._db.conn.execute(sql, tuple(params)).fetchone()
        return tuple(row) if row is not None else None
