"""LogsApi.handle on a real SQLite store: errors, paging, retention, metric filters, tailing.

Most tests call `handle` directly; a few go through boto3 against a minimal JSON 1.1 shim
(`X-Amz-Target` -> handle) so botocore's parsers and paginators check the response shapes.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from corral.errors import LambdaApiError
from corral.logs.api import (
    GROUP_EXISTS,
    GROUP_NOT_FOUND,
    RETENTION_DAYS,
    STREAM_EXISTS,
    STREAM_NOT_FOUND,
    InvalidParameterException,
    LimitExceededException,
    LogsApi,
    LogsApiError,
    ResourceAlreadyExistsException,
    ResourceNotFoundException,
    UnknownOperationException,
)
from corral.logs.store import DAY_MS, SqliteLogStore
from corral.logs.writer import BufferedLogWriter
from corral.store.sqlite import Database

G = "/aws/lambda/fn"
START = 1_700_000_000.0
START_MS = int(START * 1000)


class Clock:
    """A settable wall clock in epoch seconds."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "corral.db")
    yield database
    database.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db: Database) -> SqliteLogStore:
    return SqliteLogStore(db)


@pytest.fixture
def api(store: SqliteLogStore, clock: Clock) -> LogsApi:
    return LogsApi(store, "us-east-1", "123456789012", clock)


def call(api: LogsApi, operation: str, **params: Any) -> dict[str, Any]:
    return api.handle(operation, params)


def make_stream(api: LogsApi, group: str = G, stream: str = "s") -> None:
    if api.store.get_group(group) is None:
        call(api, "CreateLogGroup", logGroupName=group)
    call(api, "CreateLogStream", logGroupName=group, logStreamName=stream)


def put(api: LogsApi, timestamps: list[int], stream: str = "s", group: str = G,
        prefix: str = "m") -> dict[str, Any]:
    events = [{"timestamp": ts, "message": f"{prefix}{ts}"} for ts in timestamps]
    return call(api, "PutLogEvents", logGroupName=group, logStreamName=stream, logEvents=events)


def filter_all(api: LogsApi, **params: Any) -> tuple[list[dict[str, Any]], int]:
    """Follow nextToken to the end; returns the events and the number of pages."""
    events: list[dict[str, Any]] = []
    pages = 0
    token = None
    while True:
        extra: dict[str, Any] = {"nextToken": token} if token else {}
        page = call(api, "FilterLogEvents", logGroupName=G, **params, **extra)
        pages += 1
        events.extend(page["events"])
        token = page.get("nextToken")
        if token is None:
            return events, pages


# -- errors -----------------------------------------------------------------------------------


def test_errors_are_lambda_api_errors_with_status_400(api: LogsApi) -> None:
    """Every client error is a LambdaApiError subclass with status 400 and a `message` key."""
    with pytest.raises(ResourceNotFoundException) as caught:
        call(api, "DeleteLogGroup", logGroupName="/nope")
    error = caught.value
    assert isinstance(error, LambdaApiError) and isinstance(error, LogsApiError)
    assert (error.code, error.status, error.message) == (
        "ResourceNotFoundException", 400, GROUP_NOT_FOUND)
    assert error.body()["message"] == GROUP_NOT_FOUND


def test_unknown_operation(api: LogsApi) -> None:
    """An operation outside the subset is UnknownOperationException (400)."""
    with pytest.raises(UnknownOperationException) as caught:
        call(api, "StartLiveTail")
    assert (caught.value.code, caught.value.status) == ("UnknownOperationException", 400)


def test_group_and_stream_lifecycle_errors(api: LogsApi) -> None:
    """Creating twice, or using missing groups/streams, gives the CloudWatch errors."""
    call(api, "CreateLogGroup", logGroupName=G)
    with pytest.raises(ResourceAlreadyExistsException, match=GROUP_EXISTS):
        call(api, "CreateLogGroup", logGroupName=G)
    with pytest.raises(ResourceNotFoundException, match=GROUP_NOT_FOUND):
        call(api, "CreateLogStream", logGroupName="/missing", logStreamName="s")
    call(api, "CreateLogStream", logGroupName=G, logStreamName="s")
    with pytest.raises(ResourceAlreadyExistsException, match=STREAM_EXISTS):
        call(api, "CreateLogStream", logGroupName=G, logStreamName="s")
    with pytest.raises(ResourceNotFoundException, match=STREAM_NOT_FOUND):
        put(api, [START_MS], stream="other")
    with pytest.raises(ResourceNotFoundException, match=STREAM_NOT_FOUND):
        call(api, "GetLogEvents", logGroupName=G, logStreamName="other")
    with pytest.raises(ResourceNotFoundException, match=GROUP_NOT_FOUND):
        call(api, "FilterLogEvents", logGroupName="/missing")
    call(api, "DeleteLogStream", logGroupName=G, logStreamName="s")
    call(api, "DeleteLogGroup", logGroupName=G)
    with pytest.raises(ResourceNotFoundException, match=GROUP_NOT_FOUND):
        call(api, "DescribeLogStreams", logGroupName=G)


@pytest.mark.parametrize(
    ("operation", "params"),
    [
        ("CreateLogGroup", {}),
        ("CreateLogGroup", {"logGroupName": "bad name with spaces"}),
        ("CreateLogGroup", {"logGroupName": "x" * 513}),
        ("CreateLogStream", {"logGroupName": G, "logStreamName": "a:b"}),
        ("DescribeLogGroups", {"limit": 51}),
        ("DescribeLogGroups", {"logGroupNamePrefix": "/a", "logGroupNamePattern": "b"}),
        ("DescribeLogStreams", {}),
        ("DescribeLogStreams", {"logGroupName": G, "orderBy": "Size"}),
        ("DescribeLogStreams", {"logGroupName": G, "orderBy": "LastEventTime",
                                "logStreamNamePrefix": "x"}),
        ("FilterLogEvents", {"logGroupName": G, "logGroupIdentifier": G}),
        ("FilterLogEvents", {"logGroupName": G, "logStreamNames": ["a"],
                             "logStreamNamePrefix": "a"}),
        ("FilterLogEvents", {"logGroupName": G, "filterPattern": "{ $.a = "}),
        ("FilterLogEvents", {"logGroupName": G, "nextToken": "garbage!"}),
        ("FilterLogEvents", {"logGroupName": G, "limit": 0}),
        ("GetLogEvents", {"logGroupName": G, "logStreamName": "s", "nextToken": "x/1/2"}),
        ("PutRetentionPolicy", {"logGroupName": G, "retentionInDays": 2}),
        ("PutRetentionPolicy", {"logGroupName": G}),
        ("PutLogEvents", {"logGroupName": G, "logStreamName": "s", "logEvents": []}),
        ("PutLogEvents", {"logGroupName": G, "logStreamName": "s",
                          "logEvents": [{"timestamp": 2, "message": "b"},
                                        {"timestamp": 1, "message": "a"}]}),
        ("PutLogEvents", {"logGroupName": G, "logStreamName": "s",
                          "logEvents": [{"timestamp": 1, "message": ""}]}),
        ("PutLogEvents", {"logGroupName": G, "logStreamName": "s",
                          "logEvents": [{"timestamp": 1, "message": "a"},
                                        {"timestamp": 1 + DAY_MS + 1, "message": "b"}]}),
        ("PutMetricFilter", {"logGroupName": G, "filterName": "f", "filterPattern": "",
                             "metricTransformations": []}),
        ("PutMetricFilter", {"logGroupName": G, "filterName": "f", "filterPattern": "",
                             "metricTransformations": [{"metricName": "m",
                                                        "metricNamespace": "n",
                                                        "metricValue": "lots"}]}),
        ("DescribeMetricFilters", {"metricName": "m"}),
    ],
)
def test_invalid_parameters(api: LogsApi, operation: str, params: dict[str, Any]) -> None:
    """Malformed or contradictory parameters are InvalidParameterException."""
    make_stream(api)
    with pytest.raises(InvalidParameterException):
        api.handle(operation, params)


# -- groups and streams -----------------------------------------------------------------------


def test_describe_log_groups_prefix_and_paging(api: LogsApi, clock: Clock) -> None:
    """DescribeLogGroups filters by prefix and pages with nextToken until exhausted."""
    names = [f"/aws/lambda/f{i:02d}" for i in range(7)] + ["/other"]
    for name in names:
        call(api, "CreateLogGroup", logGroupName=name)
    call(api, "PutRetentionPolicy", logGroupName="/other", retentionInDays=14)
    seen: list[str] = []
    token = None
    while True:
        extra: dict[str, Any] = {"nextToken": token} if token else {}
        page = call(api, "DescribeLogGroups", logGroupNamePrefix="/aws/", limit=3, **extra)
        seen += [g["logGroupName"] for g in page["logGroups"]]
        token = page.get("nextToken")
        if not token:
            break
    assert seen == names[:-1]
    (other,) = call(api, "DescribeLogGroups", logGroupNamePrefix="/o")["logGroups"]
    assert other["retentionInDays"] == 14
    assert other["creationTime"] == START_MS
    assert other["arn"] == "arn:aws:logs:us-east-1:123456789012:log-group:/other:*"
    assert other["logGroupArn"] == "arn:aws:logs:us-east-1:123456789012:log-group:/other"
    chosen = call(api, "DescribeLogGroups",
                  logGroupIdentifiers=[other["logGroupArn"], names[1], "/missing"])
    assert [g["logGroupName"] for g in chosen["logGroups"]] == [names[1], "/other"]


def test_describe_log_streams_ordering(api: LogsApi) -> None:
    """DescribeLogStreams orders by name or by last event time, ascending or descending."""
    call(api, "CreateLogGroup", logGroupName=G)
    for name, ts in [("b", 30), ("a", 10), ("c", 20)]:
        call(api, "CreateLogStream", logGroupName=G, logStreamName=name)
        put(api, [START_MS - ts], stream=name)
    call(api, "CreateLogStream", logGroupName=G, logStreamName="empty")

    def names(**params: Any) -> list[str]:
        page = call(api, "DescribeLogStreams", logGroupName=G, **params)
        return [s["logStreamName"] for s in page["logStreams"]]

    assert names() == ["a", "b", "c", "empty"]
    assert names(descending=True) == ["empty", "c", "b", "a"]
    assert names(orderBy="LastEventTime") == ["empty", "b", "c", "a"]
    assert names(orderBy="LastEventTime", descending=True) == ["a", "c", "b", "empty"]
    assert names(logStreamNamePrefix="b") == ["b"]

    first = call(api, "DescribeLogStreams", logGroupName=G, orderBy="LastEventTime",
                 descending=True, limit=2)
    assert [s["logStreamName"] for s in first["logStreams"]] == ["a", "c"]
    rest = call(api, "DescribeLogStreams", logGroupName=G, orderBy="LastEventTime",
                descending=True, limit=2, nextToken=first["nextToken"])
    assert [s["logStreamName"] for s in rest["logStreams"]] == ["b", "empty"]
    assert "nextToken" not in rest

    (a,) = call(api, "DescribeLogStreams", logGroupIdentifier=G + ":*".removeprefix(":*"),
                logStreamNamePrefix="a")["logStreams"]
    assert a["firstEventTimestamp"] == a["lastEventTimestamp"] == START_MS - 10
    assert a["lastIngestionTime"] == START_MS
    assert a["arn"].endswith(f"log-group:{G}:log-stream:a")


def test_log_group_identifier_accepts_arns(api: LogsApi) -> None:
    """logGroupIdentifier may be the group's name or either form of its ARN."""
    make_stream(api)
    put(api, [START_MS])
    arn = api.group_arn(G)
    for identifier in (G, arn, arn + ":*"):
        page = call(api, "FilterLogEvents", logGroupIdentifier=identifier)
        assert len(page["events"]) == 1


# -- PutLogEvents -----------------------------------------------------------------------------


def test_put_log_events_rejects_too_old_too_new_and_expired(api: LogsApi) -> None:
    """Events outside the accepted window are reported by index, the others stored."""
    make_stream(api)
    result = put(api, [START_MS - 15 * DAY_MS + 1, START_MS - 15 * DAY_MS + 2,
                       START_MS - 14 * DAY_MS + 1])
    assert result["rejectedLogEventsInfo"] == {"tooOldLogEventEndIndex": 2}
    result = put(api, [START_MS - 1000, START_MS + 3 * 3_600_000])
    assert result["rejectedLogEventsInfo"] == {"tooNewLogEventStartIndex": 1}
    call(api, "PutRetentionPolicy", logGroupName=G, retentionInDays=1)
    result = put(api, [START_MS - DAY_MS - 100, START_MS - 500])
    assert result["rejectedLogEventsInfo"] == {"expiredLogEventEndIndex": 1}
    assert "rejectedLogEventsInfo" not in put(api, [START_MS])
    events, _ = filter_all(api)
    assert [e["timestamp"] for e in events] == [
        START_MS - 14 * DAY_MS + 1, START_MS - 1000, START_MS - 500, START_MS]


# -- FilterLogEvents --------------------------------------------------------------------------


def test_filter_log_events_shape_and_order(api: LogsApi) -> None:
    """Events interleave streams ordered by (timestamp, id) with string eventIds."""
    make_stream(api, stream="a")
    make_stream(api, stream="b")
    put(api, [START_MS - 5, START_MS - 3], stream="a")
    put(api, [START_MS - 4, START_MS - 3], stream="b")
    page = call(api, "FilterLogEvents", logGroupName=G)
    assert [(e["logStreamName"], e["timestamp"]) for e in page["events"]] == [
        ("a", START_MS - 5), ("b", START_MS - 4), ("a", START_MS - 3), ("b", START_MS - 3)]
    event = page["events"][0]
    assert set(event) == {"logStreamName", "timestamp", "message", "ingestionTime", "eventId"}
    assert isinstance(event["eventId"], str)
    assert event["ingestionTime"] == START_MS
    assert page["searchedLogStreams"] == []
    assert "nextToken" not in page
    ids = [e["eventId"] for e in page["events"]]
    assert len(set(ids)) == 4
    assert call(api, "FilterLogEvents", logGroupName=G)["events"] == page["events"]


def test_filter_log_events_time_range_streams_and_pattern(api: LogsApi) -> None:
    """startTime/endTime are inclusive; stream names, prefixes and patterns narrow results."""
    make_stream(api, stream="2024/01/01/[$LATEST]aaa")
    make_stream(api, stream="2024/01/01/[$LATEST]bbb")
    call(api, "PutLogEvents", logGroupName=G, logStreamName="2024/01/01/[$LATEST]aaa",
         logEvents=[{"timestamp": START_MS - 30, "message": '{"level": "ERROR", "n": 1}'},
                    {"timestamp": START_MS - 20, "message": '{"level": "INFO", "n": 2}'},
                    {"timestamp": START_MS - 10, "message": "ERROR plain text"}])
    call(api, "PutLogEvents", logGroupName=G, logStreamName="2024/01/01/[$LATEST]bbb",
         logEvents=[{"timestamp": START_MS - 20, "message": '{"level": "ERROR", "n": 3}'}])

    def messages(**params: Any) -> list[str]:
        return [e["message"] for e in filter_all(api, **params)[0]]

    assert len(messages(startTime=START_MS - 20, endTime=START_MS - 10)) == 3
    assert len(messages(startTime=START_MS - 19)) == 1
    assert messages(filterPattern='{ $.level = "ERROR" }') == [
        '{"level": "ERROR", "n": 1}', '{"level": "ERROR", "n": 3}']
    assert messages(filterPattern="ERROR -plain") == [
        '{"level": "ERROR", "n": 1}', '{"level": "ERROR", "n": 3}']
    assert messages(logStreamNames=["2024/01/01/[$LATEST]bbb"]) == [
        '{"level": "ERROR", "n": 3}']
    assert len(messages(logStreamNamePrefix="2024/01/01/[$LATEST]a")) == 3
    assert messages(filterPattern="{ $.n > 1 && $.level = INFO }") == [
        '{"level": "INFO", "n": 2}']


def test_filter_paging_has_no_gaps_or_duplicates(api: LogsApi) -> None:
    """Following nextToken with small limits returns every event exactly once, in order."""
    make_stream(api, stream="a")
    make_stream(api, stream="b")
    put(api, [START_MS - 100 + i for i in range(0, 50, 2)], stream="a")
    put(api, [START_MS - 100 + i for i in range(0, 50, 5)], stream="b")  # shared timestamps
    expected, _ = filter_all(api)
    assert len(expected) == 25 + 10
    for limit in (1, 2, 3, 7, 34, 35, 36):
        events, pages = filter_all(api, limit=limit)
        assert events == expected
        assert pages == -(-len(expected) // limit) if limit < 35 else pages == 1
    keys = [(e["timestamp"], e["eventId"]) for e in expected]
    assert keys == sorted(keys)


def test_filter_paging_with_pattern_and_scan_budget(api: LogsApi,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages stop at the scan budget with a token; the chain still finds every match once."""
    monkeypatch.setattr("corral.logs.api.SCAN_BUDGET", 10)
    monkeypatch.setattr("corral.logs.api.SCAN_CHUNK", 4)
    make_stream(api)
    api.store.append([(G, "s", START_MS - 1000 + i, "hit" if i % 9 == 0 else "miss")
                      for i in range(100)], START_MS)
    events, pages = filter_all(api, filterPattern="hit", limit=3)
    assert [e["timestamp"] for e in events] == [START_MS - 1000 + i for i in range(0, 100, 9)]
    assert pages > 4  # some pages were cut by the budget, possibly empty


def test_filter_paging_includes_late_events_behind_the_cursor(api: LogsApi) -> None:
    """Events ingested mid-pagination with older timestamps still appear, exactly once."""
    make_stream(api)
    put(api, [START_MS - 100 + i for i in range(10)])
    first = call(api, "FilterLogEvents", logGroupName=G, limit=4)
    assert len(first["events"]) == 4
    # A backfill lands both behind the cursor and ahead of it.
    put(api, [START_MS - 200, START_MS - 97, START_MS - 50], prefix="late")
    collected = list(first["events"])
    token = first["nextToken"]
    while token:
        page = call(api, "FilterLogEvents", logGroupName=G, limit=4, nextToken=token)
        page_keys = [(e["timestamp"], e["eventId"]) for e in page["events"]]
        assert page_keys == sorted(page_keys)
        collected += page["events"]
        token = page.get("nextToken")
    ids = [e["eventId"] for e in collected]
    assert len(ids) == len(set(ids)) == 13
    assert {e["message"] for e in collected} >= {
        f"late{START_MS - 200}", f"late{START_MS - 97}", f"late{START_MS - 50}"}


def test_filter_start_from_head_false_returns_newest_first(api: LogsApi) -> None:
    """startFromHead=false pages from the newest event backwards."""
    make_stream(api)
    put(api, [START_MS - 5 + i for i in range(5)])
    events, pages = filter_all(api, startFromHead=False, limit=2)
    assert [e["timestamp"] for e in events] == [START_MS - 1 - i for i in range(5)]
    assert pages == 3


def tail_follow(api: LogsApi, start_ms: int, polls: int,
                between_polls: Any) -> list[dict[str, Any]]:
    """What `aws logs tail --follow` does: poll FilterLogEvents, dedupe the newest timestamp."""
    kwargs: dict[str, Any] = {"logGroupName": G, "interleaved": True, "startTime": start_ms}
    ids_per_timestamp: dict[int, set[str]] = defaultdict(set)
    shown: list[dict[str, Any]] = []
    for poll in range(polls):
        response = api.handle("FilterLogEvents", kwargs)
        for event in response["events"]:
            if event["eventId"] not in ids_per_timestamp[event["timestamp"]]:
                ids_per_timestamp[event["timestamp"]].add(event["eventId"])
                shown.append(event)
        if ids_per_timestamp:
            newest = max(ids_per_timestamp)
            ids_per_timestamp = defaultdict(set, {newest: ids_per_timestamp[newest]})
        if "nextToken" in response:
            kwargs["nextToken"] = response["nextToken"]
        else:
            if ids_per_timestamp:
                kwargs["startTime"] = max(ids_per_timestamp)
            kwargs.pop("nextToken", None)
            between_polls(poll)
    return shown


def test_tail_follow_sees_every_written_line_once(api: LogsApi, clock: Clock) -> None:
    """The CLI's follow loop over writer output shows each line once, none missing.

    Lines arrive in bursts, several in the same millisecond, some stamped before lines that
    were already visible (the writer raises those to the group's newest timestamp).
    """
    writer = BufferedLogWriter(api.store, clock, batch_size=3)
    written: list[str] = []
    counter = iter(range(10_000))

    def emit(ts: int) -> None:
        message = f"line {next(counter)}"
        written.append(message)
        writer.emit(G, f"stream{len(written) % 2}", ts, message)

    for _ in range(4):
        emit(START_MS)
    writer.flush()

    def between_polls(poll: int) -> None:
        clock.now += 5
        now = int(clock.now * 1000)
        emit(now)
        emit(now)
        emit(now - 10_000)  # stamped late
        emit(now + 1)
        writer.flush()

    shown = tail_follow(api, START_MS - 60_000, 12, between_polls)
    messages = [e["message"] for e in shown]
    # The last poll's lines are written after the last request; everything before is shown,
    # once each (in timestamp order, so a late line comes before its burst).
    assert len(messages) == len(set(messages))
    assert sorted(messages) == sorted(written[: len(written) - 4])


def test_tail_follow_during_a_long_pagination(api: LogsApi, clock: Clock) -> None:
    """Lines written while the follower is paging through a backlog are not lost."""
    make_stream(api)
    api.store.append([(G, "s", START_MS - 1000 + i, f"old {i}") for i in range(25)], START_MS)
    writer = BufferedLogWriter(api.store, clock)
    original = api.handle
    calls = iter(range(1000))

    def handle_and_write(operation: str, params: Any) -> dict[str, Any]:
        result = original(operation, {**params, "limit": 10})
        n = next(calls)
        writer.emit(G, "s", START_MS + n, f"new {n}")
        writer.flush()
        return result

    api.handle = handle_and_write  # type: ignore[method-assign]
    shown = tail_follow(api, START_MS - 5000, 8, lambda poll: None)
    messages = [e["message"] for e in shown]
    assert messages[:25] == [f"old {i}" for i in range(25)]
    news = [m for m in messages if m.startswith("new")]
    assert news == [f"new {i}" for i in range(len(news))]
    assert len(news) >= 5
    assert len(messages) == len(set(messages))


# -- GetLogEvents -----------------------------------------------------------------------------


def test_get_log_events_tokens(api: LogsApi) -> None:
    """Backward/forward tokens page a stream; at the end the same token comes back."""
    make_stream(api)
    put(api, [START_MS - 10 + i for i in range(10)])

    latest = call(api, "GetLogEvents", logGroupName=G, logStreamName="s", limit=4)
    assert [e["timestamp"] for e in latest["events"]] == [START_MS - 4 + i for i in range(4)]
    older = call(api, "GetLogEvents", logGroupName=G, logStreamName="s", limit=4,
                 nextToken=latest["nextBackwardToken"])
    assert [e["timestamp"] for e in older["events"]] == [START_MS - 8 + i for i in range(4)]

    seen: list[int] = []
    token: str | None = None
    for _ in range(10):
        extra: dict[str, Any] = {"nextToken": token} if token else {}
        page = call(api, "GetLogEvents", logGroupName=G, logStreamName="s", limit=3,
                    startFromHead=True, **extra)
        seen += [e["timestamp"] for e in page["events"]]
        if page["nextForwardToken"] == token:
            # At the end: empty page, same token back, both tokens at the same position.
            assert page["events"] == []
            assert token is not None and page["nextBackwardToken"][2:] == token[2:]
            break
        token = page["nextForwardToken"]
    assert seen == [START_MS - 10 + i for i in range(10)]
    assert token is not None
    back = call(api, "GetLogEvents", logGroupName=G, logStreamName="s", limit=2,
                nextToken=token.replace("f/", "b/", 1))
    assert [e["timestamp"] for e in back["events"]] == [START_MS - 2, START_MS - 1]
    start = call(api, "GetLogEvents", logGroupName=G, logStreamName="s", startFromHead=True,
                 limit=2)
    before_start = call(api, "GetLogEvents", logGroupName=G, logStreamName="s",
                        nextToken=start["nextBackwardToken"])
    assert before_start["events"] == []
    assert before_start["nextBackwardToken"] == start["nextBackwardToken"]
    again = call(api, "GetLogEvents", logGroupName=G, logStreamName="s", limit=2,
                 nextToken=before_start["nextForwardToken"])
    assert again["events"] == start["events"]

    put(api, [START_MS + 1])
    more = call(api, "GetLogEvents", logGroupName=G, logStreamName="s", nextToken=token,
                startFromHead=True)
    assert [e["timestamp"] for e in more["events"]] == [START_MS + 1]
    event = more["events"][0]
    assert set(event) == {"timestamp", "message", "ingestionTime"}


def test_get_log_events_time_range_end_is_exclusive(api: LogsApi) -> None:
    """GetLogEvents includes startTime and excludes endTime."""
    make_stream(api)
    put(api, [START_MS - 3, START_MS - 2, START_MS - 1])
    page = call(api, "GetLogEvents", logGroupName=G, logStreamName="s",
                startTime=START_MS - 3, endTime=START_MS - 1, startFromHead=True)
    assert [e["timestamp"] for e in page["events"]] == [START_MS - 3, START_MS - 2]


def test_get_log_events_on_empty_stream_then_new_events(api: LogsApi) -> None:
    """Polling the forward token of an empty stream picks up events written later."""
    make_stream(api)
    empty = call(api, "GetLogEvents", logGroupName=G, logStreamName="s")
    assert empty["events"] == []
    assert empty["nextForwardToken"][2:] == empty["nextBackwardToken"][2:]
    again = call(api, "GetLogEvents", logGroupName=G, logStreamName="s",
                 nextToken=empty["nextForwardToken"])
    assert again["nextForwardToken"] == empty["nextForwardToken"]
    put(api, [START_MS])
    later = call(api, "GetLogEvents", logGroupName=G, logStreamName="s",
                 nextToken=empty["nextForwardToken"])
    assert len(later["events"]) == 1


# -- retention --------------------------------------------------------------------------------


def test_retention_policy_really_deletes(api: LogsApi, clock: Clock) -> None:
    """After PutRetentionPolicy, enforce_retention deletes events older than the period."""
    make_stream(api)
    for ts in (START_MS - 5 * DAY_MS, START_MS - 2 * DAY_MS, START_MS - 1000):
        put(api, [ts])
    call(api, "PutRetentionPolicy", logGroupName=G, retentionInDays=3)
    (group,) = call(api, "DescribeLogGroups")["logGroups"]
    assert group["retentionInDays"] == 3

    assert api.enforce_retention() == 1
    assert [e["timestamp"] for e in filter_all(api)[0]] == [START_MS - 2 * DAY_MS,
                                                            START_MS - 1000]
    clock.now += 2 * 86400
    assert api.enforce_retention() == 1
    assert api.enforce_retention(START + 100 * 86400) == 1
    assert filter_all(api)[0] == []

    call(api, "DeleteRetentionPolicy", logGroupName=G)
    (group,) = call(api, "DescribeLogGroups")["logGroups"]
    assert "retentionInDays" not in group
    with pytest.raises(ResourceNotFoundException):
        call(api, "DeleteRetentionPolicy", logGroupName="/missing")


@pytest.mark.parametrize("days", RETENTION_DAYS)
def test_every_aws_retention_value_is_accepted(api: LogsApi, days: int) -> None:
    """Each of CloudWatch's retention values is valid."""
    call(api, "CreateLogGroup", logGroupName=G)
    call(api, "PutRetentionPolicy", logGroupName=G, retentionInDays=days)


# -- metric filters ---------------------------------------------------------------------------


def put_filter(api: LogsApi, name: str, pattern: str, metric: str, value: str = "1") -> None:
    call(api, "PutMetricFilter", logGroupName=G, filterName=name, filterPattern=pattern,
         metricTransformations=[{"metricName": metric, "metricNamespace": "App",
                                 "metricValue": value}])


def test_metric_filters_count_matching_events(api: LogsApi, clock: Clock) -> None:
    """PutMetricFilter counts later matching events, from PutLogEvents and the writer alike."""
    make_stream(api)
    put_filter(api, "errors", '{ $.level = "ERROR" }', "Errors")
    put_filter(api, "latency", "{ $.latency > 0 }", "Latency", "$.latency")
    call(api, "PutLogEvents", logGroupName=G, logStreamName="s", logEvents=[
        {"timestamp": START_MS, "message": '{"level": "ERROR", "latency": 10}'},
        {"timestamp": START_MS, "message": '{"level": "INFO", "latency": 5}'},
    ])
    writer = BufferedLogWriter(api.store, clock)
    writer.emit(G, "other", START_MS, '{"level": "ERROR"}')
    writer.flush()
    counts = {c.metric_name: (c.value, c.matches) for c in api.metric_filter_counts()}
    assert counts == {"Errors": (2.0, 2), "Latency": (15.0, 2)}
    (group,) = call(api, "DescribeLogGroups")["logGroups"]
    assert group["metricFilterCount"] == 2


def test_describe_and_delete_metric_filters(api: LogsApi) -> None:
    """DescribeMetricFilters lists, filters by prefix or metric, pages; delete removes."""
    call(api, "CreateLogGroup", logGroupName=G)
    for i in range(5):
        put_filter(api, f"f{i}", "ERROR", f"M{i % 2}")
    listed = call(api, "DescribeMetricFilters", logGroupName=G)["metricFilters"]
    assert [f["filterName"] for f in listed] == [f"f{i}" for i in range(5)]
    assert listed[0]["metricTransformations"] == [
        {"metricName": "M0", "metricNamespace": "App", "metricValue": "1"}]
    assert listed[0]["filterPattern"] == "ERROR"
    assert listed[0]["logGroupName"] == G
    assert listed[0]["creationTime"] == START_MS

    by_metric = call(api, "DescribeMetricFilters", metricName="M1", metricNamespace="App")
    assert [f["filterName"] for f in by_metric["metricFilters"]] == ["f1", "f3"]
    prefixed = call(api, "DescribeMetricFilters", logGroupName=G, filterNamePrefix="f4")
    assert [f["filterName"] for f in prefixed["metricFilters"]] == ["f4"]
    page = call(api, "DescribeMetricFilters", logGroupName=G, limit=3)
    rest = call(api, "DescribeMetricFilters", logGroupName=G, limit=3,
                nextToken=page["nextToken"])
    assert [f["filterName"] for f in page["metricFilters"] + rest["metricFilters"]] == [
        f"f{i}" for i in range(5)]

    call(api, "DeleteMetricFilter", logGroupName=G, filterName="f0")
    with pytest.raises(ResourceNotFoundException):
        call(api, "DeleteMetricFilter", logGroupName=G, filterName="f0")
    assert len(call(api, "DescribeMetricFilters", logGroupName=G)["metricFilters"]) == 4


def test_metric_filter_limit(api: LogsApi, monkeypatch: pytest.MonkeyPatch) -> None:
    """A group holds at most MAX_METRIC_FILTERS filters; replacing one is still allowed."""
    monkeypatch.setattr("corral.logs.api.MAX_METRIC_FILTERS", 2)
    call(api, "CreateLogGroup", logGroupName=G)
    put_filter(api, "a", "", "A")
    put_filter(api, "b", "", "B")
    put_filter(api, "a", "x", "A")
    with pytest.raises(LimitExceededException):
        put_filter(api, "c", "", "C")


def test_test_metric_filter(api: LogsApi) -> None:
    """TestMetricFilter reports which sample messages match, with extracted fields."""
    result = call(api, "TestMetricFilter", filterPattern="[ip, user, status = 4*]",
                  logEventMessages=["1.2.3.4 bob 404", "1.2.3.4 bob 200", "short"])
    assert result["matches"] == [{
        "eventNumber": 1, "eventMessage": "1.2.3.4 bob 404",
        "extractedValues": {"$ip": "1.2.3.4", "$user": "bob", "$status": "404"},
    }]


# -- through boto3 ----------------------------------------------------------------------------


class _Shim(BaseHTTPRequestHandler):
    """A minimal JSON 1.1 endpoint: X-Amz-Target -> LogsApi.handle."""

    api: LogsApi

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        operation = self.headers["X-Amz-Target"].split(".", 1)[1]
        try:
            status, payload = 200, self.api.handle(operation, body)
        except LambdaApiError as exc:
            status, payload = exc.status, {"__type": exc.code, "message": exc.message}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def logs_client(api: LogsApi) -> Iterator[Any]:
    handler = type("Handler", (_Shim,), {"api": api})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield boto3.client(
            "logs", endpoint_url=f"http://127.0.0.1:{server.server_port}",
            region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test",
            config=Config(retries={"max_attempts": 1}),
        )
    finally:
        server.shutdown()
        server.server_close()


def test_boto3_round_trip_and_paginators(api: LogsApi, logs_client: Any) -> None:
    """boto3 parses every response and its paginators walk FilterLogEvents and groups."""
    logs_client.create_log_group(logGroupName=G)
    logs_client.create_log_stream(logGroupName=G, logStreamName="s")
    logs_client.put_log_events(logGroupName=G, logStreamName="s", logEvents=[
        {"timestamp": START_MS - 100 + i, "message": f"ERROR {i}" if i % 2 else f"ok {i}"}
        for i in range(25)])
    logs_client.put_retention_policy(logGroupName=G, retentionInDays=7)
    logs_client.put_metric_filter(
        logGroupName=G, filterName="errors", filterPattern="ERROR",
        metricTransformations=[{"metricName": "E", "metricNamespace": "N", "metricValue": "1"}])

    paginator = logs_client.get_paginator("filter_log_events")
    events = [e for page in paginator.paginate(logGroupName=G, filterPattern="ERROR",
                                               PaginationConfig={"PageSize": 4})
              for e in page["events"]]
    assert [e["message"] for e in events] == [f"ERROR {i}" for i in range(1, 25, 2)]
    assert all(isinstance(e["eventId"], str) for e in events)

    groups = logs_client.describe_log_groups()["logGroups"]
    assert groups[0]["retentionInDays"] == 7 and groups[0]["metricFilterCount"] == 1
    streams = logs_client.describe_log_streams(logGroupName=G, orderBy="LastEventTime",
                                               descending=True)["logStreams"]
    assert streams[0]["lastEventTimestamp"] == START_MS - 76
    got = logs_client.get_log_events(logGroupName=G, logStreamName="s", limit=5)
    assert len(got["events"]) == 5 and got["nextForwardToken"].startswith("f/")
    filters = logs_client.describe_metric_filters(logGroupName=G)["metricFilters"]
    assert filters[0]["filterName"] == "errors"

    with pytest.raises(ClientError) as caught:
        logs_client.create_log_group(logGroupName=G)
    assert caught.value.response["Error"]["Code"] == "ResourceAlreadyExistsException"
    with pytest.raises(logs_client.exceptions.ResourceNotFoundException):
        logs_client.describe_log_streams(logGroupName="/missing")
