"""Event source mappings: the Lambda API for them and the pollers they run.

Operations (rest-json, botocore's model):

    POST   /2015-03-31/event-source-mappings          CreateEventSourceMapping  202
    GET    /2015-03-31/event-source-mappings          ListEventSourceMappings   200
    GET    /2015-03-31/event-source-mappings/{UUID}   GetEventSourceMapping     200
    PUT    /2015-03-31/event-source-mappings/{UUID}   UpdateEventSourceMapping  202
    DELETE /2015-03-31/event-source-mappings/{UUID}   DeleteEventSourceMapping  202

Sources: SQS queue ARNs (`arn:aws:sqs:<region>:<account>:<queue>`) and DynamoDB stream ARNs
(`arn:aws:dynamodb:<region>:<account>:table/<table>/stream/<label>`), read on the endpoints the
standard SDK configuration in the server's environment names (see `triggers.aws`). Mappings are
persisted in `trigger_event_source_mappings`; stream positions in `trigger_esm_checkpoints`.

States follow Lambda: a new mapping is returned `Creating` and becomes `Enabled` (or
`Disabled`) right after; an update returns `Updating`/`Enabling`/`Disabling`; a delete returns
`Deleting` and the mapping is gone once its poller stopped. Each enabled mapping has one poller
task (`triggers.pollers`); updates to batch size, window, function and response types take
effect at its next batch. Not supported (rejected with InvalidParameterValueException rather
than silently ignored): `FilterCriteria` with filters, `DestinationConfig` with a destination,
Kafka/MQ/DocumentDB sources, `AT_TIMESTAMP`. `BisectBatchOnFunctionError`,
`ParallelizationFactor` (one poller per shard set), `TumblingWindowInSeconds` and
`ScalingConfig` are stored and returned but have no effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from corral.api.common import json_response, signed_body, signed_json
from corral.control.arns import parse_function_name
from corral.errors import (
    InvalidParameterValueException,
    LambdaApiError,
    ResourceConflictException,
    ResourceNotFoundException,
)
from corral.model import LATEST
from corral.triggers.store import Tables

if TYPE_CHECKING:
    from corral.server import Runtime
    from corral.triggers.pollers import Poller

log = logging.getLogger(__name__)

SQS, DYNAMODB = "sqs", "dynamodb"
_SQS_ARN = re.compile(r"^arn:aws[a-zA-Z-]*:sqs:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):"
                      r"(?P<name>[A-Za-z0-9_-]{1,80}(?:\.fifo)?)$")
_STREAM_ARN = re.compile(r"^arn:aws[a-zA-Z-]*:dynamodb:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):"
                         r"table/(?P<table>[A-Za-z0-9_.-]{3,255})/stream/(?P<label>[^/]+)$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                   r"[0-9a-fA-F]{12}$")
REPORT_BATCH_ITEM_FAILURES = "ReportBatchItemFailures"
STOP_GRACE_S = 10.0


class ResourceInUseException(LambdaApiError):
    """The mapping is being created, updated or deleted (botocore's ResourceInUseException)."""

    code = "ResourceInUseException"
    status = 400


def _invalid(field_name: str, value: Any, constraint: str) -> InvalidParameterValueException:
    return InvalidParameterValueException(
        f"1 validation error detected: Value '{value}' at '{field_name}' failed to satisfy "
        f"constraint: {constraint}")


@dataclass(frozen=True)
class SourceArn:
    arn: str
    kind: str  # SQS or DYNAMODB
    region: str
    account: str
    name: str  # queue name or table name


def parse_source_arn(value: Any) -> SourceArn:
    if not isinstance(value, str) or not value:
        raise InvalidParameterValueException(
            "Unrecognized event source, must be an SQS queue ARN or a DynamoDB stream ARN "
            "(EventSourceArn is required).")
    found = _SQS_ARN.match(value)
    if found:
        return SourceArn(value, SQS, found["region"], found["account"], found["name"])
    found = _STREAM_ARN.match(value)
    if found:
        return SourceArn(value, DYNAMODB, found["region"], found["account"], found["table"])
    raise InvalidParameterValueException(
        f"Unrecognized event source, must be an SQS queue ARN or a DynamoDB stream ARN: {value}")


@dataclass(frozen=True)
class Mapping:
    uuid: str
    function_name: str
    qualifier: str | None
    source_arn: str
    kind: str
    batch_size: int
    window_s: int
    enabled: bool
    state: str
    last_modified: float
    function_response_types: tuple[str, ...] = ()
    starting_position: str | None = None
    maximum_retry_attempts: int = -1
    maximum_record_age_s: int = -1
    bisect_on_error: bool = False
    parallelization_factor: int = 1
    tumbling_window_s: int = 0
    scaling_config: dict[str, Any] | None = None
    state_reason: str = "USER_INITIATED"
    last_result: str = "No records processed"

    @property
    def source(self) -> SourceArn:
        return parse_source_arn(self.source_arn)

    @property
    def reports_item_failures(self) -> bool:
        return REPORT_BATCH_ITEM_FAILURES in self.function_response_types

    def to_json(self) -> str:
        data = asdict(self)
        data["function_response_types"] = list(self.function_response_types)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> Mapping:
        data = json.loads(text)
        data["function_response_types"] = tuple(data.get("function_response_types") or ())
        return cls(**data)


# -- parameter checks ----------------------------------------------------------------------------

def _int(params: dict[str, Any], key: str, field_name: str, low: int, high: int) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(field_name, value, "Member must be an integer")
    if value < low:
        raise _invalid(field_name, value, f"Member must have value greater than or equal to "
                                          f"{low}")
    if value > high:
        raise _invalid(field_name, value, f"Member must have value less than or equal to {high}")
    return value


def _response_types(params: dict[str, Any]) -> tuple[str, ...] | None:
    value = params.get("FunctionResponseTypes")
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > 1 or \
            any(v != REPORT_BATCH_ITEM_FAILURES for v in value):
        raise _invalid("functionResponseTypes", value,
                       "Member must satisfy enum value set: [ReportBatchItemFailures]")
    return tuple(value)


def _check_unsupported(params: dict[str, Any]) -> None:
    criteria = params.get("FilterCriteria")
    if isinstance(criteria, dict) and criteria.get("Filters"):
        raise InvalidParameterValueException(
            "FilterCriteria is not supported by this server; filter in the function.")
    destination = params.get("DestinationConfig")
    if isinstance(destination, dict) and any(
            isinstance(v, dict) and v.get("Destination") for v in destination.values()):
        raise InvalidParameterValueException(
            "DestinationConfig destinations for event source mappings are not supported by "
            "this server.")
    for key in ("Topics", "Queues", "SelfManagedEventSource", "AmazonManagedKafkaEventSourceConfig",
                "SelfManagedKafkaEventSourceConfig", "DocumentDBEventSourceConfig"):
        if params.get(key):
            raise InvalidParameterValueException(
                f"{key}: only SQS queues and DynamoDB streams are supported as event sources.")


def _batch_rules(kind: str, batch_size: int, window_s: int, fifo: bool) -> None:
    if kind == SQS:
        limit = 10 if fifo else 10000
        if batch_size > limit:
            raise InvalidParameterValueException(
                f"BatchSize must be less than or equal to {limit} for this event source.")
        if batch_size > 10 and window_s < 1:
            raise InvalidParameterValueException(
                "Maximum batch window in seconds must be greater than 0 if maximum batch size "
                "is greater than 10")


class EventSourceMappings:
    """Mappings (persisted, cached), their API, and one poller task per enabled mapping."""

    name = "event-source-mappings"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.registry = runtime.registry
        self.tables = Tables(runtime.db)
        self.mappings: dict[str, Mapping] = {}
        for (text,) in self.tables.rows(
                "SELECT config FROM trigger_event_source_mappings ORDER BY created"):
            mapping = Mapping.from_json(text)
            self.mappings[mapping.uuid] = mapping
        self._pollers: dict[str, Poller] = {}
        self._started = False
        self._pending: set[asyncio.Task[None]] = set()
        self.routes: list[BaseRoute] = [
            Route("/2015-03-31/event-source-mappings", self.create, methods=["POST"]),
            Route("/2015-03-31/event-source-mappings/", self.create, methods=["POST"]),
            Route("/2015-03-31/event-source-mappings", self.list_mappings, methods=["GET"]),
            Route("/2015-03-31/event-source-mappings/", self.list_mappings, methods=["GET"]),
            Route("/2015-03-31/event-source-mappings/{uuid}", self.get, methods=["GET"]),
            Route("/2015-03-31/event-source-mappings/{uuid}", self.update, methods=["PUT"]),
            Route("/2015-03-31/event-source-mappings/{uuid}", self.delete, methods=["DELETE"]),
        ]

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._started = True
        for mapping in list(self.mappings.values()):
            if mapping.state == "Deleting":
                self._forget(mapping.uuid)
                continue
            settled = "Enabled" if mapping.enabled else "Disabled"
            if mapping.state != settled:
                self.save(replace(mapping, state=settled))
            if mapping.enabled:
                self._start_poller(mapping.uuid)

    async def stop(self) -> None:
        self._started = False
        for task in list(self._pending):
            task.cancel()
        pollers = list(self._pollers.values())
        self._pollers.clear()
        for poller in pollers:
            poller.request_stop()
        tasks = [p.task for p in pollers if p.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _start_poller(self, mapping_uuid: str) -> None:
        from corral.triggers.pollers import make_poller

        if not self._started or mapping_uuid in self._pollers:
            return
        poller = make_poller(self, mapping_uuid)
        self._pollers[mapping_uuid] = poller
        poller.start()

    async def _stop_poller(self, mapping_uuid: str) -> None:
        poller = self._pollers.pop(mapping_uuid, None)
        if poller is None:
            return
        poller.request_stop()
        if poller.task is not None:
            done, _ = await asyncio.wait({poller.task}, timeout=STOP_GRACE_S)
            if not done:
                poller.task.cancel()
            with contextlib.suppress(BaseException):
                await poller.task

    def _later(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _settle(self, mapping_uuid: str) -> None:
        """Finish a transition: Creating/Updating/Enabling/Disabling → Enabled/Disabled."""
        await asyncio.sleep(0)
        mapping = self.mappings.get(mapping_uuid)
        if mapping is None:
            return
        if mapping.state == "Deleting":
            await self._stop_poller(mapping_uuid)
            self._forget(mapping_uuid)
            return
        if mapping.enabled:
            self.save(replace(mapping, state="Enabled"))
            self._start_poller(mapping_uuid)
        else:
            await self._stop_poller(mapping_uuid)
            current = self.mappings.get(mapping_uuid)
            if current is not None and current.state != "Deleting":
                self.save(replace(current, state="Disabled"))

    # -- storage ---------------------------------------------------------------------------------
    def save(self, mapping: Mapping) -> None:
        self.tables.execute(
            "INSERT OR REPLACE INTO trigger_event_source_mappings (uuid, config, created) "
            "VALUES (?, ?, COALESCE((SELECT created FROM trigger_event_source_mappings "
            "WHERE uuid = ?), ?))",
            (mapping.uuid, mapping.to_json(), mapping.uuid, time.time()))
        self.mappings[mapping.uuid] = mapping

    def _forget(self, mapping_uuid: str) -> None:
        self.tables.execute("DELETE FROM trigger_event_source_mappings WHERE uuid = ?",
                            (mapping_uuid,))
        self.tables.execute("DELETE FROM trigger_esm_checkpoints WHERE uuid = ?",
                            (mapping_uuid,))
        self.mappings.pop(mapping_uuid, None)

    def report(self, mapping_uuid: str, result: str) -> None:
        """Record `LastProcessingResult` (persisted only when it changes)."""
        mapping = self.mappings.get(mapping_uuid)
        if mapping is not None and mapping.last_result != result:
            self.save(replace(mapping, last_result=result))

    def checkpoint(self, mapping_uuid: str, shard_id: str) -> str | None:
        row = self.tables.one("SELECT sequence_number FROM trigger_esm_checkpoints "
                              "WHERE uuid = ? AND shard_id = ?", (mapping_uuid, shard_id))
        return str(row[0]) if row else None

    def set_checkpoint(self, mapping_uuid: str, shard_id: str, sequence_number: str) -> None:
        if mapping_uuid not in self.mappings:
            return
        self.tables.execute(
            "INSERT OR REPLACE INTO trigger_esm_checkpoints (uuid, shard_id, sequence_number) "
            "VALUES (?, ?, ?)", (mapping_uuid, shard_id, sequence_number))

    # -- wire ------------------------------------------------------------------------------------
    def wire(self, mapping: Mapping) -> dict[str, Any]:
        data: dict[str, Any] = {"UUID": mapping.uuid}
        if mapping.kind == DYNAMODB:
            data["StartingPosition"] = mapping.starting_position
            data["ParallelizationFactor"] = mapping.parallelization_factor
        data.update({
            "BatchSize": mapping.batch_size,
            "MaximumBatchingWindowInSeconds": mapping.window_s,
            "EventSourceArn": mapping.source_arn,
            "FunctionArn": self.registry.arn(mapping.function_name, mapping.qualifier),
            "LastModified": round(mapping.last_modified, 3),
            "State": mapping.state,
            "StateTransitionReason": mapping.state_reason,
        })
        if mapping.kind == DYNAMODB:
            data.update({
                "LastProcessingResult": mapping.last_result,
                "DestinationConfig": {"OnFailure": {}},
                "MaximumRecordAgeInSeconds": mapping.maximum_record_age_s,
                "BisectBatchOnFunctionError": mapping.bisect_on_error,
                "MaximumRetryAttempts": mapping.maximum_retry_attempts,
                "TumblingWindowInSeconds": mapping.tumbling_window_s,
            })
        if mapping.scaling_config:
            data["ScalingConfig"] = mapping.scaling_config
        data["FunctionResponseTypes"] = list(mapping.function_response_types)
        data["EventSourceMappingArn"] = (
            f"arn:aws:lambda:{self.settings.region}:{self.settings.account_id}:"
            f"event-source-mapping:{mapping.uuid}")
        return data

    # -- operations ------------------------------------------------------------------------------
    def _function(self, value: Any) -> tuple[str, str | None]:
        if not isinstance(value, str) or not value:
            raise _invalid("functionName", value, "Member must not be null")
        ref = parse_function_name(value)
        qualifier = None if ref.qualifier in (None, LATEST) else ref.qualifier
        self.registry.get(ref.name, qualifier)
        return ref.name, qualifier

    def _lookup(self, request: Request) -> Mapping:
        mapping_uuid = str(request.path_params["uuid"])
        mapping = self.mappings.get(mapping_uuid) if _UUID.match(mapping_uuid) else None
        if mapping is None:
            raise ResourceNotFoundException("The resource you requested does not exist.")
        return mapping

    @staticmethod
    def _stream_options(params: dict[str, Any]) -> dict[str, Any]:
        options: dict[str, Any] = {}
        for key, attr, field_name, low, high in (
                ("MaximumRetryAttempts", "maximum_retry_attempts", "maximumRetryAttempts",
                 -1, 10000),
                ("MaximumRecordAgeInSeconds", "maximum_record_age_s",
                 "maximumRecordAgeInSeconds", -1, 604800),
                ("ParallelizationFactor", "parallelization_factor", "parallelizationFactor",
                 1, 10),
                ("TumblingWindowInSeconds", "tumbling_window_s", "tumblingWindowInSeconds",
                 0, 900)):
            value = _int(params, key, field_name, low, high)
            if value is not None:
                options[attr] = value
        bisect = params.get("BisectBatchOnFunctionError")
        if bisect is not None:
            options["bisect_on_error"] = bool(bisect)
        return options

    async def create(self, request: Request) -> Response:
        params = await signed_json(request)
        _check_unsupported(params)
        name, qualifier = self._function(params.get("FunctionName"))
        source = parse_source_arn(params.get("EventSourceArn"))
        for existing in self.mappings.values():
            if existing.source_arn == source.arn and existing.function_name == name and \
                    existing.qualifier == qualifier:
                raise ResourceConflictException(
                    f'The event source arn (" {source.arn} ") and function (" {name} ") '
                    "provided mapping already exists. Please update or delete the existing "
                    f"mapping with UUID {existing.uuid}")
        default_batch = 10 if source.kind == SQS else 100
        batch_size = _int(params, "BatchSize", "batchSize", 1, 10000) or default_batch
        window = _int(params, "MaximumBatchingWindowInSeconds",
                      "maximumBatchingWindowInSeconds", 0, 300) or 0
        _batch_rules(source.kind, batch_size, window, source.name.endswith(".fifo"))
        position = params.get("StartingPosition")
        options: dict[str, Any] = {}
        if source.kind == SQS:
            if position is not None:
                raise InvalidParameterValueException(
                    "StartingPosition is not valid for SQS event sources.")
        else:
            if position is None:
                raise InvalidParameterValueException(
                    "StartingPosition is required for DynamoDB stream event sources.")
            if position not in ("TRIM_HORIZON", "LATEST"):
                raise _invalid("startingPosition", position,
                               "Member must satisfy enum value set: [TRIM_HORIZON, LATEST]")
            options = self._stream_options(params)
        enabled = params.get("Enabled", True)
        if not isinstance(enabled, bool):
            raise _invalid("enabled", enabled, "Member must be a boolean")
        scaling = params.get("ScalingConfig")
        mapping = Mapping(
            uuid=str(uuid.uuid4()), function_name=name, qualifier=qualifier,
            source_arn=source.arn, kind=source.kind, batch_size=batch_size, window_s=window,
            enabled=enabled, state="Creating", last_modified=time.time(),
            function_response_types=_response_types(params) or (),
            starting_position=position if source.kind == DYNAMODB else None,
            scaling_config=scaling if isinstance(scaling, dict) and scaling else None,
            **options)
        self.save(mapping)
        self._later(self._settle(mapping.uuid))
        return json_response(self.wire(mapping), status=202)

    async def get(self, request: Request) -> Response:
        await signed_body(request)
        return json_response(self.wire(self._lookup(request)))

    async def list_mappings(self, request: Request) -> Response:
        await signed_body(request)
        query = request.query_params
        mappings = list(self.mappings.values())
        if query.get("EventSourceArn"):
            mappings = [m for m in mappings if m.source_arn == query["EventSourceArn"]]
        if query.get("FunctionName"):
            ref = parse_function_name(query["FunctionName"])
            qualifier = None if ref.qualifier in (None, LATEST) else ref.qualifier
            mappings = [m for m in mappings if m.function_name == ref.name and
                        (ref.qualifier is None or m.qualifier == qualifier)]
        limit = 100
        if query.get("MaxItems") is not None:
            raw = query["MaxItems"]
            if not raw.isdigit() or not 1 <= int(raw) <= 10000:
                raise _invalid("maxItems", raw, "Member must have value less than or equal to "
                                                "10000")
            limit = int(raw)
        start = 0
        marker = query.get("Marker")
        if marker:
            ids = [m.uuid for m in mappings]
            if marker not in ids:
                raise InvalidParameterValueException("Invalid marker.")
            start = ids.index(marker)
        page = mappings[start:start + limit]
        data: dict[str, Any] = {"EventSourceMappings": [self.wire(m) for m in page]}
        if start + limit < len(mappings):
            data["NextMarker"] = mappings[start + limit].uuid
        return json_response(data)

    async def update(self, request: Request) -> Response:
        params = await signed_json(request)
        mapping = self._lookup(request)
        if mapping.state in ("Creating", "Deleting"):
            raise ResourceInUseException(
                f"Cannot update the event source mapping because it is in use: {mapping.state}")
        _check_unsupported(params)
        changes: dict[str, Any] = {}
        if params.get("FunctionName") is not None:
            changes["function_name"], changes["qualifier"] = self._function(
                params["FunctionName"])
        batch_size = _int(params, "BatchSize", "batchSize", 1, 10000)
        if batch_size is not None:
            changes["batch_size"] = batch_size
        window = _int(params, "MaximumBatchingWindowInSeconds",
                      "maximumBatchingWindowInSeconds", 0, 300)
        if window is not None:
            changes["window_s"] = window
        response_types = _response_types(params)
        if response_types is not None:
            changes["function_response_types"] = response_types
        if mapping.kind == DYNAMODB:
            changes.update(self._stream_options(params))
        scaling = params.get("ScalingConfig")
        if isinstance(scaling, dict):
            changes["scaling_config"] = scaling or None
        state = "Updating"
        enabled = params.get("Enabled")
        if enabled is not None:
            if not isinstance(enabled, bool):
                raise _invalid("enabled", enabled, "Member must be a boolean")
            if enabled != mapping.enabled:
                state = "Enabling" if enabled else "Disabling"
            changes["enabled"] = enabled
        updated = replace(mapping, state=state, last_modified=time.time(), **changes)
        source = updated.source
        _batch_rules(source.kind, updated.batch_size, updated.window_s,
                     source.name.endswith(".fifo"))
        self.save(updated)
        self._later(self._settle(updated.uuid))
        return json_response(self.wire(updated), status=202)

    async def delete(self, request: Request) -> Response:
        await signed_body(request)
        mapping = self._lookup(request)
        if mapping.state == "Deleting":
            raise ResourceInUseException(
                "Cannot delete the event source mapping because it is in use: Deleting")
        deleting = replace(mapping, state="Deleting", last_modified=time.time())
        self.save(deleting)
        self._later(self._settle(mapping.uuid))
        return json_response(self.wire(deleting), status=202)


def install(runtime: Runtime) -> EventSourceMappings:
    return EventSourceMappings(runtime)
