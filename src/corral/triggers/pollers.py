"""The pollers behind event source mappings: SQS queues and DynamoDB streams.

One asyncio task per enabled mapping; every boto3 call runs on a daemon thread
(`aws.in_thread`), and every wait (long poll, idle sleep, backoff) races the stop signal, so a
poller stops at once when its mapping is disabled or deleted or the server shuts down. An
invocation already running is allowed to finish (the mapping's owner cancels it after a grace
period).

SQS (interface spec §6.5): `ReceiveMessage` long-polls up to 20 s for up to
`min(10, BatchSize)` messages at a time; with `MaximumBatchingWindowInSeconds` > 0 the poller
keeps receiving until the batch is full or the window has passed, otherwise it invokes with what
the first receive returned. The batch is invoked synchronously (split if it would exceed the
6 MB payload limit). Success deletes the messages; a function error (or a throttle) leaves them
to reappear after the queue's visibility timeout; with `ReportBatchItemFailures` the function's
`{"batchItemFailures": [{"itemIdentifier": <messageId>}]}` keeps just those (an invalid reply
fails the whole batch, an empty or absent list succeeds it, as Lambda documents).

DynamoDB streams: `DescribeStream` (every 10 s, for new shards; parents before children),
`GetShardIterator` (`StartingPosition` for the shards present when the poller starts,
`TRIM_HORIZON` for shards that appear later, `AFTER_SEQUENCE_NUMBER` from the checkpoint when
there is one), `GetRecords` up to `BatchSize` (1000 at most per call). After a successful invoke
the last sequence number is checkpointed in the store; a failed batch is retried (backoff 1, 2,
4 ... 30 s) until it succeeds or `MaximumRetryAttempts` is exhausted (-1: forever); records older
than `MaximumRecordAgeInSeconds` are skipped. `ReportBatchItemFailures` (itemIdentifier = the
sequence number) checkpoints up to the first failed record and retries from there.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from corral.errors import LambdaApiError, ResourceNotFoundException, TooManyRequestsException
from corral.model import Invocation, InvocationResult, new_request_id
from corral.triggers.aws import in_thread, make_client

if TYPE_CHECKING:
    from corral.triggers.esm import EventSourceMappings, Mapping

log = logging.getLogger(__name__)
T = TypeVar("T")

POLL_WAIT_S = 20
SHARD_REFRESH_S = 10.0
STREAM_IDLE_S = 0.5
MAX_BACKOFF_S = 30.0
SHARD_END = "SHARD_END"


class Stopped(Exception):
    """The poller was asked to stop while waiting."""


# -- record formats ------------------------------------------------------------------------------

def _message_attribute(value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "StringValue" in value:
        out["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        raw = value["BinaryValue"]
        out["binaryValue"] = base64.b64encode(raw).decode() if isinstance(raw, bytes) else raw
    out["stringListValues"] = list(value.get("StringListValues") or [])
    out["binaryListValues"] = [base64.b64encode(v).decode() if isinstance(v, bytes) else v
                               for v in value.get("BinaryListValues") or []]
    out["dataType"] = value.get("DataType", "String")
    return out


def sqs_record(message: dict[str, Any], source_arn: str, region: str) -> dict[str, Any]:
    """One SQS message as Lambda delivers it (spec §6.5)."""
    record: dict[str, Any] = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": {k: str(v) for k, v in (message.get("Attributes") or {}).items()},
        "messageAttributes": {name: _message_attribute(value) for name, value in
                              (message.get("MessageAttributes") or {}).items()},
    }
    if message.get("MD5OfMessageAttributes"):
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    record.update({"md5OfBody": message.get("MD5OfBody", ""), "eventSource": "aws:sqs",
                   "eventSourceARN": source_arn, "awsRegion": region})
    return record


def jsonable(value: Any) -> Any:
    """boto3's parsed values back to the JSON Lambda events carry."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, datetime):
        stamp = value.timestamp()
        return int(stamp) if stamp == int(stamp) else stamp
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def dynamodb_record(record: dict[str, Any], source_arn: str, region: str) -> dict[str, Any]:
    """One stream record as Lambda delivers it."""
    out: dict[str, Any] = {
        "eventID": record.get("eventID"),
        "eventName": record.get("eventName"),
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": region,
        "dynamodb": jsonable(record.get("dynamodb") or {}),
        "eventSourceARN": source_arn,
    }
    if record.get("userIdentity"):
        out["userIdentity"] = jsonable(record["userIdentity"])
    return out


def batch_item_failures(payload: bytes, valid: set[str]) -> set[str] | None:
    """The identifiers a function reported as failed; None means the whole batch failed."""
    try:
        data = json.loads(payload) if payload.strip() else None
    except ValueError:
        return None
    if not isinstance(data, dict):
        return set()
    failures = data.get("batchItemFailures")
    if failures is None:
        return set()
    if not isinstance(failures, list):
        return None
    failed: set[str] = set()
    for item in failures:
        if not isinstance(item, dict):
            return None
        identifier = item.get("itemIdentifier")
        if not isinstance(identifier, str) or not identifier or identifier not in valid:
            return None
        failed.add(identifier)
    return failed


def split_by_size(records: list[dict[str, Any]], limit: int) -> list[list[dict[str, Any]]]:
    """Consecutive chunks whose `{"Records": [...]}` JSON stays under `limit` bytes."""
    chunks: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = len(b'{"Records": []}')
    for record in records:
        record_size = len(json.dumps(record).encode()) + 2
        if current and size + record_size > limit:
            chunks.append(current)
            current, size = [], len(b'{"Records": []}')
        current.append(record)
        size += record_size
    if current:
        chunks.append(current)
    return chunks


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _describe(exc: BaseException) -> str:
    code = _error_code(exc)
    return f"{code}: {exc}" if code else f"{type(exc).__name__}: {exc}"


# -- pollers -------------------------------------------------------------------------------------

class Poller:
    """The common part: stop handling, function invocation, result reporting."""

    def __init__(self, owner: EventSourceMappings, mapping_uuid: str) -> None:
        self.owner = owner
        self.uuid = mapping_uuid
        self.task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._main())

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def mapping(self) -> Mapping | None:
        """The current configuration, or None once the poller should end."""
        mapping = self.owner.mappings.get(self.uuid)
        if self.stopping or mapping is None or not mapping.enabled or \
                mapping.state == "Deleting":
            return None
        return mapping

    async def guarded(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable` unless a stop is requested first (then raise `Stopped`)."""
        if self.stopping:
            if asyncio.isfuture(awaitable) or asyncio.iscoroutine(awaitable):
                asyncio.ensure_future(awaitable).cancel()
            raise Stopped
        work = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if work.done():
            return work.result()
        work.cancel()
        raise Stopped

    async def sleep(self, seconds: float) -> None:
        await self.guarded(asyncio.sleep(seconds))

    def report(self, result: str) -> None:
        self.owner.report(self.uuid, result)

    async def _main(self) -> None:
        try:
            await self.run()
        except Stopped:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event source mapping %s: poller failed", self.uuid)
            self.report("PROBLEM: Internal poller error")

    async def run(self) -> None:
        raise NotImplementedError

    async def invoke(self, mapping: Mapping, payload: bytes) -> InvocationResult | None:
        """Invoke the mapped function synchronously; None if it could not run."""
        registry = self.owner.registry
        try:
            config = registry.resolve(mapping.function_name, mapping.qualifier)
            return await self.owner.runtime.scheduler.invoke(Invocation(
                request_id=new_request_id(), function=config, payload=payload,
                invoked_arn=registry.arn(mapping.function_name, mapping.qualifier)))
        except TooManyRequestsException:
            self.report("PROBLEM: Function call throttled.")
        except ResourceNotFoundException:
            self.report("PROBLEM: Function not found.")
        except LambdaApiError as exc:
            self.report(f"PROBLEM: {exc.message}")
        return None

    def function_exists(self, mapping: Mapping) -> bool:
        try:
            self.owner.registry.get(mapping.function_name, mapping.qualifier)
        except ResourceNotFoundException:
            return False
        return True


class SqsPoller(Poller):
    async def run(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        mapping = self.mapping()
        if mapping is None:
            return
        source = mapping.source
        client = await self.guarded(in_thread(make_client, "sqs", source.region,
                                              read_timeout=POLL_WAIT_S + 20))
        queue_url: str | None = None
        backoff = 1.0
        while (mapping := self.mapping()) is not None:
            if not self.function_exists(mapping):
                self.report("PROBLEM: Function not found.")
                await self.sleep(5)
                continue
            try:
                if queue_url is None:
                    found = await self.guarded(in_thread(client.get_queue_url,
                                                         QueueName=source.name))
                    queue_url = str(found["QueueUrl"])
                batch = await self.collect(client, queue_url, mapping)
                if batch:
                    await self.process(client, queue_url, batch)
                backoff = 1.0
            except (ClientError, BotoCoreError) as exc:
                if "NonExistentQueue" in _error_code(exc) or \
                        "QueueDoesNotExist" in _error_code(exc):
                    queue_url = None
                self.report(f"PROBLEM: {_describe(exc)}")
                log.warning("event source mapping %s: %s", self.uuid, _describe(exc))
                await self.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def collect(self, client: Any, queue_url: str, mapping: Mapping) \
            -> list[dict[str, Any]]:
        """Receive one batch, honouring the batch size and the batching window."""
        batch: dict[str, dict[str, Any]] = {}
        first_at: float | None = None
        while len(batch) < mapping.batch_size:
            if first_at is not None:
                if mapping.window_s == 0:
                    break
                remaining = mapping.window_s - (time.monotonic() - first_at)
                if remaining <= 0:
                    break
                wait = min(POLL_WAIT_S, max(1, math.ceil(remaining)))
            else:
                wait = POLL_WAIT_S if mapping.window_s == 0 else \
                    min(POLL_WAIT_S, max(1, mapping.window_s))
            response = await self.guarded(in_thread(
                client.receive_message, QueueUrl=queue_url,
                MaxNumberOfMessages=min(10, mapping.batch_size - len(batch)),
                WaitTimeSeconds=wait, MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"]))
            messages = response.get("Messages") or []
            if not messages:
                if first_at is None:
                    return []
                if mapping.window_s == 0:
                    break
                continue
            if first_at is None:
                first_at = time.monotonic()
            for message in messages:
                batch[message["MessageId"]] = message
            mapping = self.mapping() or mapping
        return list(batch.values())

    async def process(self, client: Any, queue_url: str, batch: list[dict[str, Any]]) -> None:
        mapping = self.owner.mappings.get(self.uuid)
        if mapping is None:
            return
        source = mapping.source
        records = [sqs_record(m, source.arn, source.region) for m in batch]
        handles = {m["MessageId"]: m["ReceiptHandle"] for m in batch}
        limit = self.owner.settings.limits.sync_payload_max_bytes
        for chunk in split_by_size(records, limit):
            payload = json.dumps({"Records": chunk}).encode()
            result = await self.invoke(mapping, payload)
            if result is None:
                continue  # throttled or gone: the messages reappear after the timeout
            ids = {r["messageId"] for r in chunk}
            if result.function_error:
                self.report("PROBLEM: Function call failed")
                continue
            failed: set[str] | None = set()
            if mapping.reports_item_failures:
                failed = batch_item_failures(result.payload, ids)
            if failed is None:
                self.report("PROBLEM: Invalid batchItemFailures response; the batch will be "
                            "retried")
                continue
            done = [(i, handles[m]) for i, m in enumerate(sorted(ids - failed))]
            await self.delete(client, queue_url, done)
            self.report("OK")

    async def delete(self, client: Any, queue_url: str, entries: list[tuple[int, str]]) -> None:
        """Delete processed messages (not interruptible: a stop must not cause duplicates)."""
        for start in range(0, len(entries), 10):
            chunk = [{"Id": str(i), "ReceiptHandle": h} for i, h in entries[start:start + 10]]
            response = await in_thread(client.delete_message_batch, QueueUrl=queue_url,
                                       Entries=chunk)
            for failure in response.get("Failed") or []:
                log.warning("event source mapping %s: could not delete a message: %s",
                            self.uuid, failure.get("Message") or failure.get("Code"))


@dataclass
class _Shard:
    id: str
    parent: str | None
    start: str  # TRIM_HORIZON or LATEST when no checkpoint exists
    iterator: str | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    done: bool = False


def _sequence(record: dict[str, Any]) -> str:
    return str((record.get("dynamodb") or {}).get("SequenceNumber", ""))


def _created_epoch(record: dict[str, Any]) -> float | None:
    created = (record.get("dynamodb") or {}).get("ApproximateCreationDateTime")
    if isinstance(created, datetime):
        return created.timestamp()
    if isinstance(created, int | float):
        return float(created)
    return None


class DynamoDBStreamPoller(Poller):
    async def run(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        mapping = self.mapping()
        if mapping is None:
            return
        source = mapping.source
        client = await self.guarded(in_thread(make_client, "dynamodbstreams", source.region))
        shards: dict[str, _Shard] = {}
        first_listing = True
        next_listing = 0.0
        backoff = 1.0
        while (mapping := self.mapping()) is not None:
            try:
                if time.monotonic() >= next_listing:
                    await self.discover(client, mapping, shards, first_listing)
                    first_listing = False
                    next_listing = time.monotonic() + SHARD_REFRESH_S
                busy = False
                for shard in list(shards.values()):
                    parent = shards.get(shard.parent or "")
                    if shard.done or (parent is not None and not parent.done):
                        continue
                    current = self.mapping()
                    if current is None:
                        return
                    busy = await self.poll_shard(client, current, shard) or busy
                backoff = 1.0
                if not busy:
                    await self.sleep(STREAM_IDLE_S)
            except (ClientError, BotoCoreError) as exc:
                self.report(f"PROBLEM: {_describe(exc)}")
                log.warning("event source mapping %s: %s", self.uuid, _describe(exc))
                await self.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def discover(self, client: Any, mapping: Mapping, shards: dict[str, _Shard],
                       first_listing: bool) -> None:
        start_id: str | None = None
        while True:
            args: dict[str, Any] = {"StreamArn": mapping.source_arn}
            if start_id:
                args["ExclusiveStartShardId"] = start_id
            response = await self.guarded(in_thread(client.describe_stream, **args))
            description = response.get("StreamDescription") or {}
            for shard in description.get("Shards") or []:
                shard_id = shard["ShardId"]
                if shard_id in shards:
                    continue
                checkpoint = self.owner.checkpoint(self.uuid, shard_id)
                start = (mapping.starting_position or "TRIM_HORIZON") if first_listing \
                    else "TRIM_HORIZON"
                shards[shard_id] = _Shard(id=shard_id, parent=shard.get("ParentShardId"),
                                          start=start, done=checkpoint == SHARD_END)
            start_id = description.get("LastEvaluatedShardId")
            if not start_id:
                return

    async def _iterator(self, client: Any, mapping: Mapping, shard: _Shard) -> str | None:
        args: dict[str, Any] = {"StreamArn": mapping.source_arn, "ShardId": shard.id}
        checkpoint = self.owner.checkpoint(self.uuid, shard.id)
        if checkpoint and checkpoint != SHARD_END:
            args.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=checkpoint)
        else:
            args["ShardIteratorType"] = shard.start
        response = await self.guarded(in_thread(client.get_shard_iterator, **args))
        iterator = response.get("ShardIterator")
        return str(iterator) if iterator else None

    async def _read(self, client: Any, mapping: Mapping, shard: _Shard, limit: int) \
            -> list[dict[str, Any]]:
        from botocore.exceptions import ClientError

        if shard.iterator is None:
            shard.iterator = await self._iterator(client, mapping, shard)
            if shard.iterator is None:
                shard.done = True
                return []
        try:
            response = await self.guarded(in_thread(
                client.get_records, ShardIterator=shard.iterator, Limit=min(limit, 1000)))
        except ClientError as exc:
            if _error_code(exc) in ("ExpiredIteratorException", "TrimmedDataAccessException"):
                shard.iterator = None
                return []
            raise
        shard.iterator = response.get("NextShardIterator")
        records: list[dict[str, Any]] = list(response.get("Records") or [])
        if shard.iterator is None and not records:
            shard.done = True
            self.owner.set_checkpoint(self.uuid, shard.id, SHARD_END)
        return records

    async def poll_shard(self, client: Any, mapping: Mapping, shard: _Shard) -> bool:
        """Read and deliver one batch from `shard`; True if there was work."""
        records = shard.pending
        if not records:
            records = await self._read(client, mapping, shard, mapping.batch_size)
            if mapping.window_s > 0 and records:
                deadline = time.monotonic() + mapping.window_s
                while len(records) < mapping.batch_size and not shard.done and \
                        time.monotonic() < deadline:
                    await self.sleep(min(STREAM_IDLE_S, max(0.0, deadline - time.monotonic())))
                    records += await self._read(client, mapping, shard,
                                                mapping.batch_size - len(records))
            if not records:
                return False
        records = self._drop_expired(mapping, shard, records)
        if not records:
            return True
        source = mapping.source
        event = {"Records": [dynamodb_record(r, source.arn, source.region) for r in records]}
        result = await self.invoke(mapping, json.dumps(event).encode())
        failed_at: int | None
        if result is None:
            shard.pending = records
            await self.sleep(1.0)
            return True
        if result.function_error:
            failed_at = 0
        elif mapping.reports_item_failures:
            sequences = [_sequence(r) for r in records]
            failed = batch_item_failures(result.payload, set(sequences))
            if failed is None:
                failed_at = 0
            elif failed:
                failed_at = min(sequences.index(s) for s in failed)
            else:
                failed_at = None
        else:
            failed_at = None
        if failed_at is None:
            self._advance(shard, records)
            self.report("OK")
            return True
        if failed_at > 0:
            self.owner.set_checkpoint(self.uuid, shard.id, _sequence(records[failed_at - 1]))
        remaining = records[failed_at:]
        shard.attempts += 1
        if 0 <= mapping.maximum_retry_attempts < shard.attempts:
            log.warning("event source mapping %s: discarding %d records of shard %s after %d "
                        "attempts", self.uuid, len(remaining), shard.id, shard.attempts)
            self._advance(shard, remaining)
            self.report("PROBLEM: Function call failed; records discarded after the maximum "
                        "retry attempts")
            return True
        shard.pending = remaining
        self.report("PROBLEM: Function call failed")
        await self.sleep(min(2.0 ** (shard.attempts - 1), MAX_BACKOFF_S))
        return True

    def _advance(self, shard: _Shard, records: Iterable[dict[str, Any]]) -> None:
        last = ""
        for record in records:
            last = _sequence(record) or last
        if last:
            self.owner.set_checkpoint(self.uuid, shard.id, last)
        shard.pending = []
        shard.attempts = 0

    def _drop_expired(self, mapping: Mapping, shard: _Shard,
                      records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if mapping.maximum_record_age_s < 0:
            return records
        oldest = time.time() - mapping.maximum_record_age_s
        keep = [r for r in records if (_created_epoch(r) or time.time()) >= oldest]
        if len(keep) < len(records):
            expired = [r for r in records if r not in keep]
            log.warning("event source mapping %s: skipping %d records older than %d s",
                        self.uuid, len(expired), mapping.maximum_record_age_s)
            if not keep:
                self._advance(shard, expired)
        return keep


def make_poller(owner: EventSourceMappings, mapping_uuid: str) -> Poller:
    from corral.triggers.esm import SQS

    mapping = owner.mappings[mapping_uuid]
    if mapping.kind == SQS:
        return SqsPoller(owner, mapping_uuid)
    return DynamoDBStreamPoller(owner, mapping_uuid)
