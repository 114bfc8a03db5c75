"""Provisioned concurrency configurations: persisted requests, applied by the scheduler."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from corral.errors import InvalidParameterValueException
from corral.model import LATEST, lambda_timestamp
from corral.store.sqlite import Database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS provisioned_concurrency (
    function_name TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
    qualifier TEXT NOT NULL,
    requested INTEGER NOT NULL,
    last_modified TEXT NOT NULL,
    PRIMARY KEY (function_name, qualifier)
);
"""


@dataclass(frozen=True)
class ProvisionedConfig:
    function_name: str
    qualifier: str
    requested: int
    last_modified: str


class ProvisionedRepo:
    def __init__(self, db: Database) -> None:
        self._db = db
        with db.lock:
            db.conn.executescript(_SCHEMA)

    def put(self, name: str, qualifier: str, params: dict[str, Any]) -> ProvisionedConfig:
        if qualifier in ("", LATEST):
            raise InvalidParameterValueException(
                "Provisioned Concurrency Configs cannot be applied to unpublished function "
                "versions.")
        value = params.get("ProvisionedConcurrentExecutions")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidParameterValueException(
                f"1 validation error detected: Value '{value}' at "
                "'provisionedConcurrentExecutions' failed to satisfy constraint: Member must "
                "have value greater than or equal to 1")
        config = ProvisionedConfig(name, qualifier, value, lambda_timestamp())
        with self._db.lock:
            self._db.conn.execute(
                "INSERT OR REPLACE INTO provisioned_concurrency VALUES (?, ?, ?, ?)",
                (name, qualifier, value, config.last_modified))
        return config

    def get(self, name: str, qualifier: str) -> ProvisionedConfig | None:
        with self._db.lock:
            row = self._db.conn.execute(
                "SELECT * FROM provisioned_concurrency WHERE function_name = ? AND qualifier = ?",
                (name, qualifier)).fetchone()
        return ProvisionedConfig(*row) if row else None

    def list(self, name: str | None = None) -> list[ProvisionedConfig]:
        query = "SELECT * FROM provisioned_concurrency"
        args: tuple[str, ...] = ()
        if name is not None:
            query += " WHERE function_name = ?"
            args = (name,)
        with self._db.lock:
            rows = self._db.conn.execute(query + " ORDER BY function_name, qualifier",
                                         args).fetchall()
        return [ProvisionedConfig(*row) for row in rows]

    def delete(self, name: str, qualifier: str) -> bool:
        with self._db.lock:
            cur = self._db.conn.execute(
                "DELETE FROM provisioned_concurrency WHERE function_name = ? AND qualifier = ?",
                (name, qualifier))
        return cur.rowcount > 0
