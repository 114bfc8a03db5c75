"""Event invoke configurations: how a function's asynchronous events are retried and routed.

Lambda's Put/Get/Update/Delete/ListFunctionEventInvokeConfig(s) (rest-json,
`/2019-09-25/functions/{FunctionName}/event-invoke-config[/list]`), persisted in the
`event_invoke_configs` table (one row per function and qualifier, removed with the function).
A configuration without a qualifier belongs to `$LATEST`; one on an alias or version applies
to events invoked through that qualifier.

Put replaces the whole configuration (settings left out are removed), Update changes only the
settings it names. `MaximumRetryAttempts` is 0-2, `MaximumEventAgeInSeconds` 60-21600; the
destinations are validated by `destinations.parse_target` (Lambda functions and SQS queues).
`policy_for(event)` turns the configuration (or the operator's defaults) and the function's
`DeadLetterConfig` into the dispatcher's `EventPolicy`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from corral.api.common import empty_response, function_ref, json_response, signed_json
from corral.config import AsyncSettings
from corral.control.arns import resolve_qualifier
from corral.control.registry import Registry
from corral.errors import (
    InvalidParameterValueException,
    LambdaApiError,
    ResourceNotFoundException,
)
from corral.events.destinations import parse_target
from corral.invoke.async_queue import EventPolicy
from corral.model import LATEST
from corral.store.api import AsyncEvent
from corral.store.sqlite import Database

__all__ = ["EventInvokeConfigApi", "InvokeConfig", "InvokeConfigStore", "parse_settings"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS event_invoke_configs (
    function_name TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
    qualifier TEXT NOT NULL,
    max_retry_attempts INTEGER,
    max_event_age_s INTEGER,
    on_success TEXT,
    on_failure TEXT,
    last_modified REAL NOT NULL,
    PRIMARY KEY (function_name, qualifier)
);
"""
RETRY_RANGE = (0, 2)
AGE_RANGE = (60, 21600)
_PAGE_MAX = 50
_UNSET: Any = object()


@dataclass(frozen=True)
class InvokeConfig:
    function_name: str
    qualifier: str
    max_retry_attempts: int | None = None
    max_event_age_s: int | None = None
    on_success: str | None = None
    on_failure: str | None = None
    last_modified: float = 0.0


class InvokeConfigStore:
    """The `event_invoke_configs` table (read per event: SQLite answers in microseconds)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        with db.lock:
            db.conn.executescript(_SCHEMA)

    def get(self, name: str, qualifier: str) -> InvokeConfig | None:
        with self._db.lock:
            row = self._db.conn.execute(
                "SELECT function_name, qualifier, max_retry_attempts, max_event_age_s,"
                " on_success, on_failure, last_modified FROM event_invoke_configs"
                " WHERE function_name = ? AND qualifier = ?", (name, qualifier)).fetchone()
        return InvokeConfig(*row) if row else None

    def put(self, config: InvokeConfig) -> None:
        with self._db.lock:
            self._db.conn.execute(
                "INSERT OR REPLACE INTO event_invoke_configs VALUES (?, ?, ?, ?, ?, ?, ?)",
                (config.function_name, config.qualifier, config.max_retry_attempts,
                 config.max_event_age_s, config.on_success, config.on_failure,
                 config.last_modified))

    def delete(self, name: str, qualifier: str) -> bool:
        with self._db.lock:
            cur = self._db.conn.execute(
                "DELETE FROM event_invoke_configs WHERE function_name = ? AND qualifier = ?",
                (name, qualifier))
        return cur.rowcount > 0

    def list_for(self, name: str) -> list[InvokeConfig]:
        with self._db.lock:
            rows = self._db.conn.execute(
                "SELECT function_name, qualifier, max_retry_attempts, max_event_age_s,"
                " on_success, on_failure, last_modified FROM event_invoke_configs"
                " WHERE function_name = ? ORDER BY qualifier", (name,)).fetchall()
        return [InvokeConfig(*row) for row in rows]


def _bounded(params: dict[str, Any], key: str, wire: str, bounds: tuple[int, int]) -> Any:
    if key not in params or params[key] is None:
        return _UNSET
    value = params[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidParameterValueException(
            f"1 validation error detected: Value '{value}' at '{wire}' failed to satisfy "
            "constraint: Member must be an integer")
    low, high = bounds
    if value < low:
        raise InvalidParameterValueException(
            f"1 validation error detected: Value '{value}' at '{wire}' failed to satisfy "
            f"constraint: Member must have value greater than or equal to {low}")
    if value > high:
        raise InvalidParameterValueException(
            f"1 validation error detected: Value '{value}' at '{wire}' failed to satisfy "
            f"constraint: Member must have value less than or equal to {high}")
    return value


def _destination(config: dict[str, Any], key: str) -> Any:
    if key not in config:
        return _UNSET
    entry = config[key]
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise InvalidParameterValueException(f"DestinationConfig.{key} must be an object.")
    arn = entry.get("Destination")
    if arn in (None, ""):
        return None
    parse_target(arn, f"destinationConfig.{key[0].lower()}{key[1:]}.destination")
    return str(arn)


def parse_settings(params: dict[str, Any]) -> dict[str, Any]:
    """The settings a Put/Update request names (absent ones left out), validated."""
    found: dict[str, Any] = {
        "max_retry_attempts": _bounded(params, "MaximumRetryAttempts",
                                       "maximumRetryAttempts", RETRY_RANGE),
        "max_event_age_s": _bounded(params, "MaximumEventAgeInSeconds",
                                    "maximumEventAgeInSeconds", AGE_RANGE),
    }
    destinations = params.get("DestinationConfig")
    if destinations is not None:
        if not isinstance(destinations, dict):
            raise InvalidParameterValueException("DestinationConfig must be an object.")
        found["on_success"] = _destination(destinations, "OnSuccess")
        found["on_failure"] = _destination(destinations, "OnFailure")
    return {k: v for k, v in found.items() if v is not _UNSET}


class EventInvokeConfigApi:
    """The five operations, bound to the store and the registry."""

    def __init__(self, store: InvokeConfigStore, registry: Registry,
                 settings: AsyncSettings) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings

    # the dispatcher's view --------------------------------------------------------------------
    def policy_for(self, event: AsyncEvent) -> EventPolicy:
        """The event's retry/age limits and destinations, and the function's DLQ target."""
        config = self.store.get(event.function_name, event.qualifier or LATEST)
        dead_letter = None
        try:
            qualifier = None if event.qualifier in ("", LATEST) else event.qualifier
            dead_letter = self.registry.get(event.function_name, qualifier).dead_letter_target
        except LambdaApiError:
            pass
        if config is None:
            return EventPolicy(self.settings.max_retry_attempts, self.settings.max_event_age_s,
                               dead_letter=dead_letter or None)
        return EventPolicy(
            self.settings.max_retry_attempts if config.max_retry_attempts is None
            else config.max_retry_attempts,
            self.settings.max_event_age_s if config.max_event_age_s is None
            else config.max_event_age_s,
            on_success=config.on_success, on_failure=config.on_failure,
            dead_letter=dead_letter or None)

    # HTTP ---------------------------------------------------------------------------------------
    def _target(self, request: Request) -> tuple[str, str]:
        ref = function_ref(request)
        qualifier = resolve_qualifier(ref, request.query_params.get("Qualifier"))
        self.registry.get(ref.name, qualifier)  # ResourceNotFoundException if absent
        return ref.name, qualifier or LATEST

    def _missing(self, name: str, qualifier: str) -> ResourceNotFoundException:
        return ResourceNotFoundException(
            f"The function {self.registry.arn(name, qualifier)} doesn't have an "
            "EventInvokeConfig")

    def render(self, config: InvokeConfig) -> dict[str, Any]:
        out: dict[str, Any] = {
            "LastModified": config.last_modified,
            "FunctionArn": self.registry.arn(config.function_name, config.qualifier),
            "DestinationConfig": {
                "OnSuccess": {"Destination": config.on_success} if config.on_success else {},
                "OnFailure": {"Destination": config.on_failure} if config.on_failure else {},
            },
        }
        if config.max_retry_attempts is not None:
            out["MaximumRetryAttempts"] = config.max_retry_attempts
        if config.max_event_age_s is not None:
            out["MaximumEventAgeInSeconds"] = config.max_event_age_s
        return out

    async def put(self, request: Request) -> Response:
        params = await signed_json(request)
        name, qualifier = self._target(request)
        config = InvokeConfig(name, qualifier, last_modified=time.time(),
                              **parse_settings(params))
        self.store.put(config)
        return json_response(self.render(config))

    async def update(self, request: Request) -> Response:
        params = await signed_json(request)
        name, qualifier = self._target(request)
        current = self.store.get(name, qualifier)
        if current is None:
            raise self._missing(name, qualifier)
        config = replace(current, last_modified=time.time(), **parse_settings(params))
        self.store.put(config)
        return json_response(self.render(config))

    async def get(self, request: Request) -> Response:
        await signed_json(request)
        name, qualifier = self._target(request)
        config = self.store.get(name, qualifier)
        if config is None:
            raise self._missing(name, qualifier)
        return json_response(self.render(config))

    async def delete(self, request: Request) -> Response:
        await signed_json(request)
        name, qualifier = self._target(request)
        if not self.store.delete(name, qualifier):
            raise self._missing(name, qualifier)
        return empty_response(204)

    async def list_configs(self, request: Request) -> Response:
        await signed_json(request)
        ref = function_ref(request)
        self.registry.get(ref.name)
        max_items = _PAGE_MAX
        raw = request.query_params.get("MaxItems")
        if raw is not None:
            if not raw.isdigit() or not 1 <= int(raw) <= _PAGE_MAX:
                raise InvalidParameterValueException(
                    f"1 validation error detected: Value '{raw}' at 'maxItems' failed to "
                    f"satisfy constraint: Member must have value between 1 and {_PAGE_MAX}")
            max_items = int(raw)
        configs = self.store.list_for(ref.name)
        marker = request.query_params.get("Marker")
        if marker:
            configs = [c for c in configs if c.qualifier > marker]
        page = configs[:max_items]
        out: dict[str, Any] = {"FunctionEventInvokeConfigs": [self.render(c) for c in page]}
        if len(configs) > max_items:
            out["NextMarker"] = page[-1].qualifier
        return json_response(out)

    async def dispatch(self, request: Request) -> Response:
        handler = {"PUT": self.put, "POST": self.update, "GET": self.get,
                   "DELETE": self.delete}[request.method]
        return await handler(request)

    def routes(self) -> list[BaseRoute]:
        base = "/2019-09-25/functions/{name}/event-invoke-config"
        return [
            Route(base + "/list", self.list_configs, methods=["GET"]),
            Route(base, self.dispatch, methods=["GET", "PUT", "POST", "DELETE"]),
        ]
