"""Aliases: named pointers to a version, optionally splitting traffic with a second version."""

from __future__ import annotations

import json
import random
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from corral.errors import InvalidParameterValueException
from corral.store.sqlite import Database

_ALIAS_NAME = re.compile(r"^(?!^[0-9]+$)[a-zA-Z0-9-_]{1,128}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS aliases (
    function_name TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    weights TEXT NOT NULL DEFAULT '{}',
    revision_id TEXT NOT NULL,
    PRIMARY KEY (function_name, name)
);
"""


@dataclass(frozen=True)
class Alias:
    function_name: str
    name: str
    version: str
    description: str = ""
    weights: dict[str, float] = field(default_factory=dict)  # additional version -> share
    revision_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def pick_version(self, rand: float | None = None) -> str:
        """Weighted routing: the additional version with its probability, else the main one."""
        roll = random.random() if rand is None else rand
        for version, weight in self.weights.items():
            if roll < weight:
                return version
            roll -= weight
        return self.version

    def wire(self, arn: str) -> dict[str, Any]:
        out: dict[str, Any] = {"AliasArn": arn, "Name": self.name,
                               "FunctionVersion": self.version, "Description": self.description,
                               "RevisionId": self.revision_id}
        if self.weights:
            out["RoutingConfig"] = {"AdditionalVersionWeights": dict(self.weights)}
        return out


def check_alias_name(name: Any) -> str:
    if not isinstance(name, str) or not _ALIAS_NAME.match(name):
        raise InvalidParameterValueException(
            f"1 validation error detected: Value '{name}' at 'name' failed to satisfy "
            "constraint: Member must satisfy regular expression pattern: "
            "(?!^[0-9]+$)([a-zA-Z0-9-_]+)")
    return name


def parse_weights(params: dict[str, Any]) -> dict[str, float] | None:
    routing = params.get("RoutingConfig")
    if routing is None:
        return None
    weights = routing.get("AdditionalVersionWeights", {}) if isinstance(routing, dict) else None
    if not isinstance(weights, dict) or len(weights) > 1:
        raise InvalidParameterValueException(
            "RoutingConfig.AdditionalVersionWeights may name at most one additional version.")
    out: dict[str, float] = {}
    for version, weight in weights.items():
        if not isinstance(weight, int | float) or not 0.0 <= float(weight) <= 1.0:
            raise InvalidParameterValueException(
                f"Invalid weight {weight} for version {version}: must be between 0.0 and 1.0.")
        out[str(version)] = float(weight)
    return out


class SqliteAliasRepo:
    def __init__(self, db: Database) -> None:
        self._db = db
        with db.lock:
            db.conn.executescript(_SCHEMA)

    def put(self, alias: Alias) -> None:
        with self._db.lock:
            self._db.conn.execute(
                "INSERT OR REPLACE INTO aliases (function_name, name, version, description,"
                " weights, revision_id) VALUES (?, ?, ?, ?, ?, ?)",
                (alias.function_name, alias.name, alias.version, alias.description,
                 json.dumps(alias.weights), alias.revision_id))

    def delete(self, function_name: str, name: str) -> None:
        with self._db.lock:
            self._db.conn.execute("DELETE FROM aliases WHERE function_name = ? AND name = ?",
                                  (function_name, name))

    def all(self) -> list[Alias]:
        with self._db.lock:
            rows = self._db.conn.execute(
                "SELECT function_name, name, version, description, weights, revision_id"
                " FROM aliases").fetchall()
        return [Alias(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5]) for r in rows]
