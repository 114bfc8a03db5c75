"""Reserved concurrency per function: validated, persisted, applied to the scheduler."""

from __future__ import annotations

from typing import Any

from corral.config import Limits
from corral.errors import InvalidParameterValueException
from corral.store.sqlite import Database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reserved_concurrency (
    function_name TEXT PRIMARY KEY REFERENCES functions(name) ON DELETE CASCADE,
    reserved INTEGER NOT NULL
);
"""


class ReservedConcurrency:
    """The reservations, kept in memory and in the store; `reserved` is read by the API."""

    def __init__(self, db: Database, limits: Limits) -> None:
        self._db = db
        self._limits = limits
        with db.lock:
            db.conn.executescript(_SCHEMA)
            rows = db.conn.execute(
                "SELECT function_name, reserved FROM reserved_concurrency").fetchall()
        self.reserved: dict[str, int] = {name: value for name, value in rows}

    def put(self, name: str, params: dict[str, Any]) -> int:
        value = params.get("ReservedConcurrentExecutions")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidParameterValueException(
                f"1 validation error detected: Value '{value}' at 'reservedConcurrentExecutions'"
                " failed to satisfy constraint: Member must have value greater than or equal "
                "to 0")
        others = sum(v for fn, v in self.reserved.items() if fn != name)
        unreserved = self._limits.account_concurrency - others - value
        if unreserved < self._limits.unreserved_concurrency_min:
            raise InvalidParameterValueException(
                f"Specified ReservedConcurrentExecutions for function decreases account's "
                f"UnreservedConcurrentExecution below its minimum value of "
                f"[{self._limits.unreserved_concurrency_min}].")
        with self._db.lock:
            self._db.conn.execute(
                "INSERT OR REPLACE INTO reserved_concurrency (function_name, reserved)"
                " VALUES (?, ?)", (name, value))
        self.reserved[name] = value
        return value

    def delete(self, name: str) -> None:
        with self._db.lock:
            self._db.conn.execute("DELETE FROM reserved_concurrency WHERE function_name = ?",
                                  (name,))
        self.reserved.pop(name, None)

    def forget(self, name: str) -> None:
        """The function was deleted (the row went with it)."""
        self.reserved.pop(name, None)
