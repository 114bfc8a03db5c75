"""The CloudWatch Logs API subset, as plain Python: operation name + parameters -> result.

The HTTP layer (JSON 1.1, `X-Amz-Target: Logs_20140328.<Operation>`) decodes the body, calls
`LogsApi.handle(operation, params)` and encodes the returned dict; errors are `LogsApiError`s
(a `LambdaApiError` with status 400 and `message`), rendered as `{"__type", "message"}`.

Operations: CreateLogGroup, DeleteLogGroup, DescribeLogGroups, CreateLogStream, DeleteLogStream,
DescribeLogStreams, PutLogEvents, GetLogEvents, FilterLogEvents, PutRetentionPolicy,
DeleteRetentionPolicy, PutMetricFilter, DescribeMetricFilters, DeleteMetricFilter,
TestMetricFilter.

Paging FilterLogEvents (what `aws logs tail --follow` relies on): events come ordered by
(timestamp, event id); `eventId` is the zero-padded store id, stable for the event's lifetime.
A `nextToken` carries the cursor (the key of the last event considered) and the highest event id
that existed when that page was read. The next page first returns the events that have arrived
since then *behind* the cursor (older timestamps, by PutLogEvents), then continues after the
cursor. So a chain of pages never repeats an event and never skips one, whatever order events
are ingested in; each page is itself ordered by (timestamp, id).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from corral.errors import LambdaApiError
from corral.logs.patterns import (
    FilterPattern,
    FilterPatternError,
    compile_pattern,
    validate_metric_value,
)
from corral.logs.store import (
    DAY_MS,
    EventKey,
    EventQuery,
    LogEvent,
    LogGroupInfo,
    LogStreamInfo,
    MetricFilterCount,
    MetricFilterInfo,
    SqliteLogStore,
)

__all__ = [
    "GROUP_EXISTS",
    "GROUP_NOT_FOUND",
    "RETENTION_DAYS",
    "STREAM_EXISTS",
    "STREAM_NOT_FOUND",
    "InvalidParameterException",
    "LimitExceededException",
    "LogsApi",
    "LogsApiError",
    "ResourceAlreadyExistsException",
    "ResourceNotFoundException",
    "UnknownOperationException",
    "format_event_id",
]

Params = Mapping[str, Any]
Result = dict[str, Any]


# -- errors -----------------------------------------------------------------------------------


class LogsApiError(LambdaApiError):
    """A CloudWatch Logs error: HTTP 400, rendered as {"__type": code, "message": ...}."""

    code = "InvalidParameterException"
    status = 400
    message_key = "message"


class InvalidParameterException(LogsApiError):
    code = "InvalidParameterException"


class ResourceNotFoundException(LogsApiError):
    code = "ResourceNotFoundException"


class ResourceAlreadyExistsException(LogsApiError):
    code = "ResourceAlreadyExistsException"


class LimitExceededException(LogsApiError):
    code = "LimitExceededException"


class UnknownOperationException(LogsApiError):
    code = "UnknownOperationException"


GROUP_NOT_FOUND = "The specified log group does not exist."
STREAM_NOT_FOUND = "The specified log stream does not exist."
FILTER_NOT_FOUND = "The specified metric filter does not exist."
GROUP_EXISTS = "The specified log group already exists"
STREAM_EXISTS = "The specified log stream already exists"
BAD_TOKEN = "The specified nextToken is invalid."

RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827,
                  2192, 2557, 2922, 3288, 3653)

MAX_EVENTS = 10_000
MAX_RESPONSE_BYTES = 1_048_576
MAX_BATCH_BYTES = 1_048_576
EVENT_OVERHEAD_BYTES = 26
MAX_BATCH_SPAN_MS = DAY_MS
TOO_NEW_MS = 2 * 3_600_000
TOO_OLD_MS = 14 * DAY_MS
MAX_METRIC_FILTERS = 100
SCAN_CHUNK = 1000
SCAN_BUDGET = 10_000  # rows examined per FilterLogEvents call before returning a nextToken

_GROUP_NAME = re.compile(r"[.\-_/#A-Za-z0-9]+")
_STREAM_NAME = re.compile(r"[^:*]*")
_METRIC_NAME = re.compile(r"[^:*$]*")


def format_event_id(event_id: int) -> str:
    """The wire form of an event id: zero-padded decimal, so it also sorts as a string."""
    return f"{event_id:020d}"


def _invalid(field: str, value: object, constraint: str) -> InvalidParameterException:
    shown = "null" if value is None else f"'{value}'"
    return InvalidParameterException(
        f"1 validation error detected: Value {shown} at '{field}' failed to satisfy "
        f"constraint: {constraint}"
    )


# -- parameter access -------------------------------------------------------------------------


def _str(params: Params, key: str, *, required: bool = False, max_len: int = 512,
         min_len: int = 1, pattern: re.Pattern[str] | None = None) -> str | None:
    value = params.get(key)
    if value is None:
        if required:
            raise _invalid(key, None, "Member must not be null")
        return None
    if not isinstance(value, str):
        raise InvalidParameterException(f"Value at '{key}' must be a string")
    if len(value) < min_len:
        raise _invalid(key, value, f"Member must have length greater than or equal to {min_len}")
    if len(value) > max_len:
        raise _invalid(key, value, f"Member must have length less than or equal to {max_len}")
    if pattern is not None and not pattern.fullmatch(value):
        raise _invalid(key, value,
                       f"Member must satisfy regular expression pattern: {pattern.pattern}")
    return value


def _int(params: Params, key: str, *, minimum: int | None = None,
         maximum: int | None = None) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InvalidParameterException(f"Value at '{key}' must be an integer")
    if minimum is not None and value < minimum:
        raise _invalid(key, value, f"Member must have value greater than or equal to {minimum}")
    if maximum is not None and value > maximum:
        raise _invalid(key, value, f"Member must have value less than or equal to {maximum}")
    return value


def _bool(params: Params, key: str, default: bool) -> bool:
    value = params.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidParameterException(f"Value at '{key}' must be a boolean")
    return value


def _str_list(params: Params, key: str, *, max_items: int = 100) -> list[str] | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidParameterException(f"Value at '{key}' must be a list of strings")
    if not 1 <= len(value) <= max_items:
        raise _invalid(key, value, f"Member must have length between 1 and {max_items}")
    return list(value)


def _encode_token(payload: object) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: object) -> Any:
    if not isinstance(token, str) or not token:
        raise InvalidParameterException(BAD_TOKEN)
    try:
        return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidParameterException(BAD_TOKEN) from None


def _compile(pattern: str | None) -> FilterPattern:
    try:
        return compile_pattern(pattern or "")
    except FilterPatternError as exc:
        raise InvalidParameterException(f"Invalid filter pattern: {exc}") from None


def _message_bytes(message: str) -> int:
    return len(message.encode("utf-8", "replace")) + EVENT_OVERHEAD_BYTES


# -- the API ----------------------------------------------------------------------------------


class LogsApi:
    """CloudWatch Logs operations over a `SqliteLogStore`.

    `handle` may run on any thread (the store serializes on `db.lock`). A FilterLogEvents call
    examines at most SCAN_BUDGET rows (roughly 100 ms with a JSON pattern) before it returns a
    page, possibly empty, with a nextToken; callers that mind may run it in `asyncio.to_thread`.
    """

    def __init__(self, store: SqliteLogStore, region: str, account_id: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.region = region
        self.account_id = account_id
        self._clock = clock
        self._operations: dict[str, Callable[[Params], Result]] = {
            "CreateLogGroup": self.create_log_group,
            "DeleteLogGroup": self.delete_log_group,
            "DescribeLogGroups": self.describe_log_groups,
            "CreateLogStream": self.create_log_stream,
            "DeleteLogStream": self.delete_log_stream,
            "DescribeLogStreams": self.describe_log_streams,
            "PutLogEvents": self.put_log_events,
            "GetLogEvents": self.get_log_events,
            "FilterLogEvents": self.filter_log_events,
            "PutRetentionPolicy": self.put_retention_policy,
            "DeleteRetentionPolicy": self.delete_retention_policy,
            "PutMetricFilter": self.put_metric_filter,
            "DescribeMetricFilters": self.describe_metric_filters,
            "DeleteMetricFilter": self.delete_metric_filter,
            "TestMetricFilter": self.test_metric_filter,
        }

    @property
    def operations(self) -> frozenset[str]:
        """The operation names `handle` accepts."""
        return frozenset(self._operations)

    def handle(self, operation: str, params: Params) -> Result:
        """Run one operation; raises a LogsApiError for client errors."""
        handler = self._operations.get(operation)
        if handler is None:
            raise UnknownOperationException(f"Unknown operation {operation}")
        if not isinstance(params, Mapping):
            raise InvalidParameterException("The request body must be a JSON object")
        return handler(params)

    def enforce_retention(self, now: float | None = None) -> int:
        """Delete events past their group's retention (now in epoch seconds); returns count."""
        return self.store.delete_expired(self._now_ms() if now is None else int(now * 1000))

    def metric_filter_counts(self) -> list[MetricFilterCount]:
        """Running totals of every metric filter, for the Prometheus exporter."""
        return self.store.metric_filter_counts()

    # -- helpers ---------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def group_arn(self, name: str) -> str:
        return f"arn:aws:logs:{self.region}:{self.account_id}:log-group:{name}"

    def _group_name(self, params: Params) -> str:
        name = _str(params, "logGroupName", pattern=_GROUP_NAME)
        identifier = _str(params, "logGroupIdentifier", max_len=2048)
        if name is not None and identifier is not None:
            raise InvalidParameterException(
                "LogGroup name and LogGroup ARN are mutually exclusive parameters.")
        if identifier is not None:
            if identifier.startswith("arn:"):
                parts = identifier.split(":", 6)
                if len(parts) < 7 or parts[2] != "logs" or parts[5] != "log-group":
                    raise InvalidParameterException(
                        f"Invalid log group identifier: {identifier}")
                name = parts[6].removesuffix(":*")
            else:
                name = identifier
        if name is None:
            raise InvalidParameterException(
                "Either logGroupName or logGroupIdentifier must be specified.")
        return name

    def _require_group(self, name: str) -> LogGroupInfo:
        group = self.store.get_group(name)
        if group is None:
            raise ResourceNotFoundException(GROUP_NOT_FOUND)
        return group

    def _require_stream(self, group: str, name: str) -> LogStreamInfo:
        self._require_group(group)
        stream = self.store.get_stream(group, name)
        if stream is None:
            raise ResourceNotFoundException(STREAM_NOT_FOUND)
        return stream

    def _group_json(self, group: LogGroupInfo) -> Result:
        arn = self.group_arn(group.name)
        out: Result = {
            "logGroupName": group.name,
            "creationTime": group.created_ms,
            "metricFilterCount": group.metric_filter_count,
            "arn": f"{arn}:*",
            "storedBytes": group.stored_bytes,
            "logGroupClass": "STANDARD",
            "logGroupArn": arn,
        }
        if group.retention_days is not None:
            out["retentionInDays"] = group.retention_days
        return out

    def _stream_json(self, stream: LogStreamInfo) -> Result:
        out: Result = {
            "logStreamName": stream.name,
            "creationTime": stream.created_ms,
            "uploadSequenceToken": str(stream.upload_sequence + 1),
            "arn": f"{self.group_arn(stream.group)}:log-stream:{stream.name}",
            "storedBytes": 0,
        }
        if stream.first_event_ms is not None:
            out["firstEventTimestamp"] = stream.first_event_ms
        if stream.last_event_ms is not None:
            out["lastEventTimestamp"] = stream.last_event_ms
        if stream.last_ingestion_ms is not None:
            out["lastIngestionTime"] = stream.last_ingestion_ms
        return out

    @staticmethod
    def _filter_json(flt: MetricFilterInfo) -> Result:
        return {
            "filterName": flt.name,
            "filterPattern": flt.pattern,
            "metricTransformations": flt.transformations,
            "creationTime": flt.created_ms,
            "logGroupName": flt.group,
            "applyOnTransformedLogs": False,
        }

    # -- groups ----------------------------------------------------------------------------

    def create_log_group(self, params: Params) -> Result:
        name = _str(params, "logGroupName", required=True, pattern=_GROUP_NAME)
        assert name is not None
        if not self.store.create_group(name, self._now_ms()):
            raise ResourceAlreadyExistsException(GROUP_EXISTS)
        return {}

    def delete_log_group(self, params: Params) -> Result:
        name = _str(params, "logGroupName", required=True, pattern=_GROUP_NAME)
        assert name is not None
        if not self.store.delete_group(name):
            raise ResourceNotFoundException(GROUP_NOT_FOUND)
        return {}

    def describe_log_groups(self, params: Params) -> Result:
        prefix = _str(params, "logGroupNamePrefix", pattern=_GROUP_NAME)
        contains = _str(params, "logGroupNamePattern", min_len=0)
        if prefix is not None and contains is not None:
            raise InvalidParameterException(
                "logGroupNamePrefix and logGroupNamePattern are mutually exclusive parameters.")
        limit = _int(params, "limit", minimum=1, maximum=50) or 50
        after: str | None = None
        if params.get("nextToken") is not None:
            decoded = _decode_token(params["nextToken"])
            if not isinstance(decoded, dict) or not isinstance(decoded.get("g"), str):
                raise InvalidParameterException(BAD_TOKEN)
            after = decoded["g"]
        identifiers = _str_list(params, "logGroupIdentifiers", max_items=50)
        if identifiers is not None:
            names = {self._group_name({"logGroupIdentifier": i}) for i in identifiers}
            found = [self.store.get_group(name) for name in sorted(names)]
            return {"logGroups": [self._group_json(g) for g in found if g is not None]}
        groups = self.store.list_groups(prefix=prefix, contains=contains or None, after=after,
                                        limit=limit + 1)
        result: Result = {"logGroups": [self._group_json(g) for g in groups[:limit]]}
        if len(groups) > limit:
            result["nextToken"] = _encode_token({"g": groups[limit - 1].name})
        return result

    def put_retention_policy(self, params: Params) -> Result:
        name = _str(params, "logGroupName", required=True, pattern=_GROUP_NAME)
        assert name is not None
        days = params.get("retentionInDays")
        if days is None:
            raise _invalid("retentionInDays", None, "Member must not be null")
        if isinstance(days, bool) or not isinstance(days, int) or days not in RETENTION_DAYS:
            raise _invalid(
                "retentionInDays", days,
                f"Member must satisfy enum value set: [{', '.join(map(str, RETENTION_DAYS))}]",
            )
        if not self.store.set_retention(name, days):
            raise ResourceNotFoundException(GROUP_NOT_FOUND)
        return {}

    def delete_retention_policy(self, params: Params) -> Result:
        name = _str(params, "logGroupName", required=True, pattern=_GROUP_NAME)
        assert name is not None
        if not self.store.set_retention(name, None):
            raise ResourceNotFoundException(GROUP_NOT_FOUND)
        return {}

    # -- streams ---------------------------------------------------------------------------

    def create_log_stream(self, params: Params) -> Result:
        group = _str(params, "logGroupName", required=True, pattern=_GROUP_NAME)
        stream = _str(params, "logStreamName", required=True, pattern=_STREAM_NAME)
        assert group is not None and stream is not None
        self._require_group(group)
        if not self.store.create_stream(group, stream, self._now_ms()):
            raise ResourceAlreadyExistsException(STREAM_EXISTS)
        return {}

    def delete_log_stream(self, params: Params) -> Result:
        group = _str(params, "logGroupName", required=True, pattern=_GROUP_NAME)
        stream = _str(params, "logStreamName", required=True, pattern=_STREAM_NAME)
        assert group is not None and stream is not None
        self._require_group(group)
        if not self.store.delete_stream(group, stream):
            raise ResourceNotFoundException(STREAM_NOT_FOUND)
        return {}

    def describe_log_streams(self, params: Params) -> Result:
        group = self._group_name(params)
        prefix = _str(params, "logStreamNamePrefix", pattern=_STREAM_NAME)
        order_by = _str(params, "orderBy") or "LogStreamName"
        if order_by not in ("LogStreamName", "LastEventTime"):
            raise _invalid("orderBy", order_by,
                           "Member must satisfy enum value set: [LogStreamName, LastEventTime]")
        by_time = order_by == "LastEventTime"
        if by_time and prefix is not None:
            raise InvalidParameterException(
                "Cannot order by LastEventTime with a logStreamNamePrefix.")
        descending = _bool(params, "descending", False)
        limit = _int(params, "limit", minimum=1, maximum=50) or 50
        after: tuple[int, str] | str | None = None
        if params.get("nextToken") is not None:
            decoded = _decode_token(params["nextToken"])
            key = decoded.get("s") if isinstance(decoded, dict) else None
            if by_time and isinstance(key, list) and len(key) == 2 \
                    and isinstance(key[0], int) and isinstance(key[1], str):
                after = (key[0], key[1])
            elif not by_time and isinstance(key, str):
                after = key
            else:
                raise InvalidParameterException(BAD_TOKEN)
        self._require_group(group)
        streams = self.store.list_streams(group, prefix=prefix, order_by_last_event=by_time,
                                          descending=descending, after=after, limit=limit + 1)
        result: Result = {"logStreams": [self._stream_json(s) for s in streams[:limit]]}
        if len(streams) > limit:
            last = streams[limit - 1]
            token_key: object = [last.last_event_ms or 0, last.name] if by_time else last.name
            result["nextToken"] = _encode_token({"s": token_key})
        return result

    # -- events ----------------------------------------------------------------------------

    def put_log_events(self, params: Params) -> Result:
        group = _str(params, "logGroupName", required=True, pattern=_GROUP_NAME)
        stream = _str(params, "logStreamName", required=True, pattern=_STREAM_NAME)
        assert group is not None and stream is not None
        raw = params.get("logEvents")
        if raw is None:
            raise _invalid("logEvents", None, "Member must not be null")
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_EVENTS:
            raise _invalid("logEvents", "[...]",
                           f"Member must have length between 1 and {MAX_EVENTS}")
        events: list[tuple[int, str]] = []
        size = 0
        for index, item in enumerate(raw, start=1):
            field = f"logEvents.{index}.member"
            if not isinstance(item, Mapping):
                raise InvalidParameterException(f"Value at '{field}' must be a structure")
            timestamp = _int(item, "timestamp", minimum=0)
            message = item.get("message")
            if timestamp is None:
                raise _invalid(f"{field}.timestamp", None, "Member must not be null")
            if not isinstance(message, str):
                raise _invalid(f"{field}.message", message, "Member must not be null")
            if not message:
                raise _invalid(f"{field}.message", message,
                               "Member must have length greater than or equal to 1")
            size += _message_bytes(message)
            events.append((timestamp, message))
        if size > MAX_BATCH_BYTES:
            raise InvalidParameterException(
                f"Upload too large: {size} bytes exceeds limit of {MAX_BATCH_BYTES}")
        if any(b[0] < a[0] for a, b in itertools.pairwise(events)):
            raise InvalidParameterException(
                "Log events in a single PutLogEvents request must be in chronological order.")
        if events[-1][0] - events[0][0] > MAX_BATCH_SPAN_MS:
            raise InvalidParameterException(
                "The batch of log events in a single PutLogEvents request cannot span more "
                "than 24 hours.")
        info = self._require_group(group)
        stream_info = self.store.get_stream(group, stream)
        if stream_info is None:
            raise ResourceNotFoundException(STREAM_NOT_FOUND)

        now = self._now_ms()
        too_old_end = sum(1 for ts, _ in events if ts < now - TOO_OLD_MS)
        expired_end = 0
        if info.retention_days is not None:
            expired_end = sum(1 for ts, _ in events if ts < now - info.retention_days * DAY_MS)
        too_new_start = next((i for i, (ts, _) in enumerate(events) if ts > now + TOO_NEW_MS),
                             len(events))
        first = max(too_old_end, expired_end)
        accepted = events[first:too_new_start] if first < too_new_start else []
        self.store.append([(group, stream, ts, msg) for ts, msg in accepted], now)
        result: Result = {"nextSequenceToken": str(stream_info.upload_sequence + 2)}
        rejected: Result = {}
        if too_new_start < len(events):
            rejected["tooNewLogEventStartIndex"] = too_new_start
        if too_old_end:
            rejected["tooOldLogEventEndIndex"] = too_old_end
        if expired_end:
            rejected["expiredLogEventEndIndex"] = expired_end
        if rejected:
            result["rejectedLogEventsInfo"] = rejected
        return result

    def get_log_events(self, params: Params) -> Result:
        group = self._group_name(params)
        stream = _str(params, "logStreamName", required=True, pattern=_STREAM_NAME)
        assert stream is not None
        start = _int(params, "startTime", minimum=0)
        end = _int(params, "endTime", minimum=0)
        limit = _int(params, "limit", minimum=1, maximum=MAX_EVENTS) or MAX_EVENTS
        from_head = _bool(params, "startFromHead", False)
        token = params.get("nextToken")
        direction, position = ("f" if from_head else "b"), None
        if token is not None:
            direction, position = self._parse_stream_token(token)
        self._require_stream(group, stream)
        query = EventQuery(group, streams=[stream], start_ms=start,
                           end_ms=None if end is None else end - 1)

        # A token names a gap between events: f/P reads the events after P, b/P those up to
        # and including P, in the (timestamp, id) order. On an empty page both tokens name the
        # same gap, and the token passed in comes back unchanged (clients stop on a repeat).
        if direction == "f":
            rows = self.store.scan_events(query, after=position, limit=limit)
        else:
            before = None if position is None else (position[0], position[1] + 1)
            rows = self.store.scan_events_before(query, before=before, limit=limit)
        rows = _cap_bytes(rows)
        if direction == "b":
            rows.reverse()

        if rows:
            forward = _stream_token("f", (rows[-1].timestamp_ms, rows[-1].event_id))
            backward = _stream_token("b", (rows[0].timestamp_ms, rows[0].event_id - 1))
        else:
            # Nothing in range (yet): the forward token starts before everything, so polling
            # it picks up events as they arrive.
            gap = position or (-1, 0)
            forward = _stream_token("f", gap)
            backward = _stream_token("b", gap)
            if isinstance(token, str):
                forward, backward = (token, backward) if direction == "f" else (forward, token)
        return {
            "events": [
                {"timestamp": e.timestamp_ms, "message": e.message,
                 "ingestionTime": e.ingestion_ms}
                for e in rows
            ],
            "nextForwardToken": forward,
            "nextBackwardToken": backward,
        }

    @staticmethod
    def _parse_stream_token(token: object) -> tuple[str, EventKey]:
        if isinstance(token, str):
            parts = token.split("/")
            if len(parts) == 3 and parts[0] in ("f", "b"):
                try:
                    return parts[0], (int(parts[1]), int(parts[2]))
                except ValueError:
                    pass
        raise InvalidParameterException(BAD_TOKEN)

    def filter_log_events(self, params: Params) -> Result:
        group = self._group_name(params)
        names = _str_list(params, "logStreamNames")
        prefix = _str(params, "logStreamNamePrefix", pattern=_STREAM_NAME)
        if names is not None and prefix is not None:
            raise InvalidParameterException(
                "logStreamNames and logStreamNamePrefix are mutually exclusive parameters.")
        start = _int(params, "startTime", minimum=0)
        end = _int(params, "endTime", minimum=0)
        limit = _int(params, "limit", minimum=1, maximum=MAX_EVENTS) or MAX_EVENTS
        pattern = _compile(_str(params, "filterPattern", min_len=0, max_len=1024))
        from_head = _bool(params, "startFromHead", True)
        cursor = _FilterCursor.parse(params.get("nextToken"), from_head)
        self._require_group(group)
        query = EventQuery(group, streams=names, stream_prefix=prefix, start_ms=start,
                           end_ms=end)
        with self.store.snapshot():
            events, next_cursor = self._filter_page(query, pattern, limit, cursor)
        result: Result = {
            "events": [
                {"logStreamName": e.stream, "timestamp": e.timestamp_ms, "message": e.message,
                 "ingestionTime": e.ingestion_ms, "eventId": format_event_id(e.event_id)}
                for e in events
            ],
            "searchedLogStreams": [],
        }
        if next_cursor is not None:
            result["nextToken"] = next_cursor.encode()
        return result

    def _filter_page(self, query: EventQuery, pattern: FilterPattern, limit: int,
                     cursor: _FilterCursor) -> tuple[list[LogEvent], _FilterCursor | None]:
        """One page of FilterLogEvents and the cursor of the next page (None at the end)."""
        page = _Page(limit, max(SCAN_BUDGET, limit + 1), pattern)
        if not cursor.forward:
            while True:
                rows = self.store.scan_events_before(query, before=cursor.key, limit=SCAN_CHUNK)
                for row in rows:
                    if not page.offer(row):
                        return page.events, cursor
                    cursor = _FilterCursor(False, (row.timestamp_ms, row.event_id), 0)
                if len(rows) < SCAN_CHUNK:
                    return page.events, None

        high = self.store.max_event_id()
        if cursor.key is not None:
            # Events that arrived behind the cursor since the previous page (old timestamps).
            seen = cursor.high
            while True:
                rows = self.store.scan_late_events(query, upto=cursor.key, above_id=seen,
                                                   max_id=high, limit=SCAN_CHUNK)
                for row in rows:
                    if not page.offer(row):
                        page.events.sort(key=lambda e: (e.timestamp_ms, e.event_id))
                        return page.events, _FilterCursor(True, cursor.key, seen)
                    seen = row.event_id
                if len(rows) < SCAN_CHUNK:
                    break
            page.events.sort(key=lambda e: (e.timestamp_ms, e.event_id))
        key = cursor.key
        while True:
            rows = self.store.scan_events(query, after=key, limit=SCAN_CHUNK)
            for row in rows:
                if not page.offer(row):
                    return page.events, _FilterCursor(True, key, high)
                key = (row.timestamp_ms, row.event_id)
            if len(rows) < SCAN_CHUNK:
                return page.events, None

    # -- metric filters --------------------------------------------------------------------

    def put_metric_filter(self, params: Params) -> Result:
        group = _str(params, "logGroupName", required=True, pattern=_GROUP_NAME)
        name = _str(params, "filterName", required=True, pattern=_STREAM_NAME)
        pattern_text = _str(params, "filterPattern", required=True, min_len=0, max_len=1024)
        assert group is not None and name is not None and pattern_text is not None
        _compile(pattern_text)
        transformations = self._transformations(params.get("metricTransformations"))
        self._require_group(group)
        existing = self.store.list_metric_filters(group, limit=MAX_METRIC_FILTERS + 1)
        if len(existing) >= MAX_METRIC_FILTERS and all(f.name != name for f in existing):
            raise LimitExceededException("Resource limit exceeded.")
        self.store.put_metric_filter(group, name, pattern_text, transformations,
                                     self._now_ms())
        return {}

    @staticmethod
    def _transformations(raw: object) -> list[dict[str, Any]]:
        if raw is None:
            raise _invalid("metricTransformations", None, "Member must not be null")
        if not isinstance(raw, list) or len(raw) != 1:
            raise _invalid("metricTransformations", "[...]",
                           "Member must have length between 1 and 1")
        out: list[dict[str, Any]] = []
        for index, item in enumerate(raw, start=1):
            field = f"metricTransformations.{index}.member"
            if not isinstance(item, Mapping):
                raise InvalidParameterException(f"Value at '{field}' must be a structure")
            metric = _str(item, "metricName", required=True, max_len=255, pattern=_METRIC_NAME)
            namespace = _str(item, "metricNamespace", required=True, max_len=255,
                             pattern=_METRIC_NAME)
            value = _str(item, "metricValue", required=True, max_len=100)
            assert metric is not None and namespace is not None and value is not None
            try:
                validate_metric_value(value)
            except FilterPatternError as exc:
                raise InvalidParameterException(str(exc)) from None
            transformation: dict[str, Any] = {
                "metricName": metric, "metricNamespace": namespace, "metricValue": value,
            }
            default = item.get("defaultValue")
            if default is not None:
                if isinstance(default, bool) or not isinstance(default, int | float):
                    raise InvalidParameterException(f"Value at '{field}.defaultValue' must be "
                                                    "a number")
                transformation["defaultValue"] = float(default)
            dimensions = item.get("dimensions")
            if dimensions is not None:
                if not isinstance(dimensions, Mapping) or len(dimensions) > 3 or not all(
                        isinstance(k, str) and isinstance(v, str)
                        for k, v in dimensions.items()):
                    raise InvalidParameterException(
                        f"Value at '{field}.dimensions' must map at most 3 names to fields")
                if default is not None:
                    raise InvalidParameterException(
                        "You cannot specify a default value for a metric with dimensions.")
                transformation["dimensions"] = dict(dimensions)
            unit = _str(item, "unit", max_len=64)
            if unit is not None:
                transformation["unit"] = unit
            out.append(transformation)
        return out

    def describe_metric_filters(self, params: Params) -> Result:
        group = _str(params, "logGroupName", pattern=_GROUP_NAME)
        name_prefix = _str(params, "filterNamePrefix", pattern=_STREAM_NAME)
        metric = _str(params, "metricName", max_len=255)
        namespace = _str(params, "metricNamespace", max_len=255)
        if (metric is None) != (namespace is None):
            raise InvalidParameterException(
                "metricName and metricNamespace must be specified together.")
        limit = _int(params, "limit", minimum=1, maximum=50) or 50
        after: tuple[str, str] | None = None
        if params.get("nextToken") is not None:
            decoded = _decode_token(params["nextToken"])
            key = decoded.get("m") if isinstance(decoded, dict) else None
            if not (isinstance(key, list) and len(key) == 2
                    and all(isinstance(k, str) for k in key)):
                raise InvalidParameterException(BAD_TOKEN)
            after = (key[0], key[1])
        if group is not None:
            self._require_group(group)
        filters = self.store.list_metric_filters(
            group, name_prefix=name_prefix if group is not None else None,
            metric_name=metric, metric_namespace=namespace, after=after, limit=limit + 1,
        )
        result: Result = {"metricFilters": [self._filter_json(f) for f in filters[:limit]]}
        if len(filters) > limit:
            last = filters[limit - 1]
            result["nextToken"] = _encode_token({"m": [last.group, last.name]})
        return result

    def delete_metric_filter(self, params: Params) -> Result:
        group = _str(params, "logGroupName", required=True, pattern=_GROUP_NAME)
        name = _str(params, "filterName", required=True, pattern=_STREAM_NAME)
        assert group is not None and name is not None
        self._require_group(group)
        if not self.store.delete_metric_filter(group, name):
            raise ResourceNotFoundException(FILTER_NOT_FOUND)
        return {}

    def test_metric_filter(self, params: Params) -> Result:
        pattern = _compile(_str(params, "filterPattern", required=True, min_len=0,
                                max_len=1024))
        messages = _str_list(params, "logEventMessages", max_items=50)
        if messages is None:
            raise _invalid("logEventMessages", None, "Member must not be null")
        matches = []
        for number, message in enumerate(messages, start=1):
            fields = pattern.extract(message)
            if fields is not None:
                matches.append({
                    "eventNumber": number,
                    "eventMessage": message,
                    "extractedValues": {f"${k}": v for k, v in fields.items()},
                })
        return {"matches": matches}


# -- paging helpers ---------------------------------------------------------------------------


def _stream_token(direction: str, key: EventKey) -> str:
    return f"{direction}/{key[0]}/{key[1]}"


def _cap_bytes(rows: Sequence[LogEvent]) -> list[LogEvent]:
    """Keep rows (in scan order) while the response stays within 1 MB; at least one."""
    out: list[LogEvent] = []
    size = 0
    for row in rows:
        size += _message_bytes(row.message)
        if out and size > MAX_RESPONSE_BYTES:
            break
        out.append(row)
    return out


class _FilterCursor:
    """Where a FilterLogEvents page chain stands.

    Forward: every event with key <= `key` and id <= `high` has been considered (returned or
    filtered out); events with larger keys, and events with id > `high` behind the key, have
    not. Backward (startFromHead=false): every event with key >= `key` has been considered.
    """

    def __init__(self, forward: bool, key: EventKey | None, high: int) -> None:
        self.forward = forward
        self.key = key
        self.high = high

    @classmethod
    def parse(cls, token: object, from_head: bool) -> _FilterCursor:
        if token is None:
            return cls(from_head, None, 0)
        decoded = _decode_token(token)
        if isinstance(decoded, dict) and decoded.get("d") in ("f", "b"):
            key, high = decoded.get("k"), decoded.get("h", 0)
            if (isinstance(key, list) and len(key) == 2 and all(type(k) is int for k in key)
                    and type(high) is int):
                return cls(decoded["d"] == "f", (key[0], key[1]), high)
        raise InvalidParameterException(BAD_TOKEN)

    def encode(self) -> str:
        assert self.key is not None
        return _encode_token({"d": "f" if self.forward else "b", "k": list(self.key),
                              "h": self.high})


class _Page:
    """Collects matching events up to the count, byte and scan budgets of one response."""

    def __init__(self, limit: int, budget: int, pattern: FilterPattern) -> None:
        self.events: list[LogEvent] = []
        self._limit = limit
        self._budget = budget
        self._pattern = pattern
        self._bytes = 0
        self._scanned = 0

    def offer(self, row: LogEvent) -> bool:
        """Consider one row; False means the page is full and `row` was not consumed."""
        if self._scanned >= self._budget:
            return False
        if not self._pattern.matches(row.message):
            self._scanned += 1
            return True
        size = _message_bytes(row.message)
        if len(self.events) >= self._limit or (
                self.events and self._bytes + size > MAX_RESPONSE_BYTES):
            return False
        self._scanned += 1
        self._bytes += size
        self.events.append(row)
        return True
