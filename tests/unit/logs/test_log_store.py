"""SqliteLogStore on a real SQLite file: events, stream statistics, retention, metric filters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.logs.store import DAY_MS, EventQuery, MetricFilterCount, SqliteLogStore
from corral.store.sqlite import Database

NOW = 1_700_000_000_000
G = "/aws/lambda/fn"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "corral.db")
    yield database
    database.close()


@pytest.fixture
def store(db: Database) -> SqliteLogStore:
    return SqliteLogStore(db)


def test_append_creates_group_and_stream_and_assigns_increasing_ids(
        store: SqliteLogStore) -> None:
    """Appending to unknown names creates them; ids are consecutive in the order given."""
    first = store.append([(G, "s1", NOW + 5, "a"), (G, "s2", NOW + 1, "b")], NOW + 10)
    second = store.append([(G, "s1", NOW + 3, "c")], NOW + 20)
    ids = [e.event_id for e in first + second]
    assert ids == list(range(ids[0], ids[0] + 3))
    assert [e.message for e in first] == ["a", "b"]
    assert store.get_group(G) is not None
    s1 = store.get_stream(G, "s1")
    assert s1 is not None
    assert (s1.first_event_ms, s1.last_event_ms) == (NOW + 3, NOW + 5)
    assert s1.last_ingestion_ms == NOW + 20
    assert s1.upload_sequence == 2
    assert s1.created_ms == NOW + 10


def test_stored_bytes_count_utf8(store: SqliteLogStore) -> None:
    """A group's stored bytes are the UTF-8 size of its messages."""
    store.append([(G, "s", NOW, "é"), (G, "s", NOW, "abc")], NOW)
    group = store.get_group(G)
    assert group is not None and group.stored_bytes == 5


def test_event_ids_are_never_reused(store: SqliteLogStore) -> None:
    """Deleting the newest events does not let a later event take their ids."""
    store.create_group(G, NOW)
    old = store.append([(G, "s", NOW, "x")], NOW)[0]
    store.delete_stream(G, "s")
    new = store.append([(G, "s", NOW, "y")], NOW)[0]
    assert new.event_id > old.event_id


def test_scans_are_ordered_by_timestamp_then_id(store: SqliteLogStore) -> None:
    """scan_events pages ascending by (timestamp, id); scan_events_before descending."""
    store.append([(G, "a", NOW + 2, "1"), (G, "b", NOW + 1, "2"), (G, "a", NOW + 1, "3")], NOW)
    query = EventQuery(G)
    assert [e.message for e in store.scan_events(query)] == ["2", "3", "1"]
    first = store.scan_events(query, limit=1)[0]
    rest = store.scan_events(query, after=(first.timestamp_ms, first.event_id))
    assert [e.message for e in rest] == ["3", "1"]
    assert [e.message for e in store.scan_events_before(query)] == ["1", "3", "2"]
    assert [e.message for e in store.scan_events(EventQuery(G, streams=["a"]))] == ["3", "1"]
    assert [e.message for e in store.scan_events(EventQuery(G, stream_prefix="b"))] == ["2"]
    window = EventQuery(G, start_ms=NOW + 2, end_ms=NOW + 2)
    assert [e.message for e in store.scan_events(window)] == ["1"]


def test_late_events_scan_finds_old_timestamps_ingested_later(store: SqliteLogStore) -> None:
    """scan_late_events returns events newer than an id mark whose key is behind a cursor."""
    store.append([(G, "s", NOW + 10, "a"), (G, "s", NOW + 20, "b")], NOW)
    mark = store.max_event_id()
    store.append([(G, "s", NOW + 5, "late"), (G, "s", NOW + 30, "new")], NOW)
    late = store.scan_late_events(EventQuery(G), upto=(NOW + 20, mark), above_id=mark,
                                  max_id=store.max_event_id())
    assert [e.message for e in late] == ["late"]


def test_retention_deletes_only_expired_events(store: SqliteLogStore) -> None:
    """delete_expired removes events older than the group's retention, in batches."""
    store.create_group(G, NOW - 10 * DAY_MS, retention_days=1)
    store.create_group("/keep", NOW - 10 * DAY_MS)
    events = [(G, "old", NOW - 3 * DAY_MS + i, f"old{i}") for i in range(5)]
    events += [(G, "mixed", NOW - 2 * DAY_MS, "expired"), (G, "mixed", NOW - 1000, "fresh")]
    events += [("/keep", "s", NOW - 100 * DAY_MS, "forever")]
    store.append(events, NOW)
    before = store.get_group(G)
    assert before is not None

    assert store.delete_expired(NOW, batch=2) == 6

    remaining = [e.message for e in store.scan_events(EventQuery(G))]
    assert remaining == ["fresh"]
    assert store.get_stream(G, "old") is None  # every event expired: the stream goes too
    assert store.get_stream(G, "mixed") is not None
    assert [e.message for e in store.scan_events(EventQuery("/keep"))] == ["forever"]
    after = store.get_group(G)
    assert after is not None and after.stored_bytes == len("fresh")
    assert store.delete_expired(NOW) == 0


def test_delete_group_removes_everything(store: SqliteLogStore) -> None:
    """Deleting a group removes its streams, events, metric filters and counts."""
    store.create_group(G, NOW)
    store.put_metric_filter(G, "f", "", [{"metricName": "m", "metricNamespace": "n",
                                          "metricValue": "1"}], NOW)
    store.append([(G, "s", NOW, "x")], NOW)
    assert store.delete_group(G)
    assert store.get_group(G) is None
    assert store.get_stream(G, "s") is None
    assert store.scan_events(EventQuery(G)) == []
    assert store.metric_filter_counts() == []
    assert not store.delete_group(G)


def test_metric_filters_count_matching_events_as_written(store: SqliteLogStore) -> None:
    """Each append adds matching events' metric values to the filter's running totals."""
    store.create_group(G, NOW)
    store.put_metric_filter(G, "errors", "ERROR", [
        {"metricName": "Errors", "metricNamespace": "App", "metricValue": "1"}], NOW)
    store.put_metric_filter(G, "latency", "{ $.latency > 0 }", [
        {"metricName": "Latency", "metricNamespace": "App", "metricValue": "$.latency"}], NOW)
    assert {c.metric_name: (c.value, c.matches) for c in store.metric_filter_counts()} == {
        "Errors": (0.0, 0), "Latency": (0.0, 0)}

    store.append([(G, "s", NOW, "ERROR one"), (G, "s", NOW, "fine"),
                  (G, "s", NOW, '{"latency": 12.5}')], NOW)
    store.append([(G, "s", NOW, "ERROR two"), (G, "s", NOW, '{"latency": 7.5}'),
                  ("/other", "s", NOW, "ERROR elsewhere")], NOW)

    counts = {c.metric_name: c for c in store.metric_filter_counts()}
    assert counts["Errors"] == MetricFilterCount(G, "errors", "App", "Errors", 2.0, 2)
    assert counts["Latency"] == MetricFilterCount(G, "latency", "App", "Latency", 20.0, 2)


def test_replacing_and_deleting_metric_filters(store: SqliteLogStore) -> None:
    """Re-putting a filter changes what it counts from then on; deleting drops its counts."""
    store.create_group(G, NOW)
    t1 = [{"metricName": "A", "metricNamespace": "N", "metricValue": "1"}]
    store.put_metric_filter(G, "f", "x", t1, NOW)
    store.append([(G, "s", NOW, "x")], NOW)
    store.put_metric_filter(G, "f", "y", t1, NOW)
    store.append([(G, "s", NOW, "x"), (G, "s", NOW, "y")], NOW)
    assert [(c.metric_name, c.matches) for c in store.metric_filter_counts()] == [("A", 2)]

    t2 = [{"metricName": "B", "metricNamespace": "N", "metricValue": "1"}]
    store.put_metric_filter(G, "f", "y", t2, NOW)
    assert [(c.metric_name, c.matches) for c in store.metric_filter_counts()] == [("B", 0)]
    assert store.delete_metric_filter(G, "f")
    assert store.metric_filter_counts() == []
    assert not store.delete_metric_filter(G, "f")


def test_filters_added_by_another_connection_are_applied(tmp_path: Path) -> None:
    """A metric filter committed through another connection is picked up on the next append."""
    one = Database(tmp_path / "c.db")
    two = Database(tmp_path / "c.db")
    try:
        writer, other = SqliteLogStore(one), SqliteLogStore(two)
        writer.append([(G, "s", NOW, "x")], NOW)  # caches "no filters" for G
        other.put_metric_filter(G, "f", "x", [
            {"metricName": "X", "metricNamespace": "N", "metricValue": "1"}], NOW)
        writer.append([(G, "s", NOW, "x")], NOW)
        assert [c.matches for c in writer.metric_filter_counts()] == [1]
    finally:
        one.close()
        two.close()


def test_list_streams_orders_and_pages(store: SqliteLogStore) -> None:
    """Streams list by name or by last event time, either direction, after a key."""
    store.append([(G, "b", NOW + 3, "x"), (G, "a", NOW + 9, "x"), (G, "c", NOW + 1, "x")], NOW)
    names = [s.name for s in store.list_streams(G)]
    assert names == ["a", "b", "c"]
    assert [s.name for s in store.list_streams(G, descending=True)] == ["c", "b", "a"]
    assert [s.name for s in store.list_streams(G, after="a")] == ["b", "c"]
    by_time = store.list_streams(G, order_by_last_event=True, descending=True)
    assert [s.name for s in by_time] == ["a", "b", "c"]
    after = store.list_streams(G, order_by_last_event=True, after=(NOW + 1, "c"))
    assert [s.name for s in after] == ["b", "a"]
    assert [s.name for s in store.list_streams(G, prefix="b")] == ["b"]


def test_list_groups_prefix_contains_and_paging(store: SqliteLogStore) -> None:
    """Groups list by name with a prefix or a case-sensitive substring, after a name."""
    for name in ["/aws/lambda/a", "/aws/lambda/b", "/app/DataLogs", "/app/datalogs"]:
        store.create_group(name, NOW)
    assert [g.name for g in store.list_groups(prefix="/aws/")] == [
        "/aws/lambda/a", "/aws/lambda/b"]
    assert [g.name for g in store.list_groups(contains="DataLogs")] == ["/app/DataLogs"]
    assert [g.name for g in store.list_groups(after="/aws/lambda/a")] == ["/aws/lambda/b"]
    assert not store.create_group("/aws/lambda/a", NOW)
