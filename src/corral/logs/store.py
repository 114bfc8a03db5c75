"""Durable storage for log groups, streams, events and metric filters, in Corral's SQLite file.

`SqliteLogStore` creates its own tables in the shared `Database` (WAL) and, like the other
repositories, runs short synchronous statements under `db.lock`. Events get ids from an
AUTOINCREMENT key, so an id is never reused (not even after retention deletes the newest rows)
and ids grow in ingestion order; readers page on the key `(timestamp, id)`.

Schema (all times are epoch milliseconds):

    log_groups(name PK, created, retention_days NULL, stored_bytes)
    log_streams(log_group, name, created, first_event_ts, last_event_ts, last_ingestion,
                upload_sequence; PK (log_group, name))
    log_events(id INTEGER PRIMARY KEY AUTOINCREMENT, log_group, log_stream, timestamp,
               ingestion, message)                 indexes: (log_group, timestamp),
                                                             (log_group, log_stream, timestamp)
    metric_filters(log_group, name, pattern, transformations JSON, created; PK (log_group, name))
    metric_filter_counts(log_group, filter_name, metric_namespace, metric_name, value, matches)

Metric filters are applied inside `append`, in the same transaction as the events they count,
so a count never disagrees with the stored events (retention does not decrement counts: they are
Prometheus-style counters).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from corral.logs.patterns import FilterPattern, compile_pattern, metric_value
from corral.store.api import LogEvent
from corral.store.sqlite import Database

__all__ = [
    "EventKey",
    "EventQuery",
    "LogEvent",
    "LogGroupInfo",
    "LogStreamInfo",
    "MetricFilterCount",
    "MetricFilterInfo",
    "NewEvent",
    "SqliteLogStore",
]

DAY_MS = 86_400_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log_groups (
    name TEXT PRIMARY KEY,
    created INTEGER NOT NULL,
    retention_days INTEGER,
    stored_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS log_streams (
    log_group TEXT NOT NULL REFERENCES log_groups(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    created INTEGER NOT NULL,
    first_event_ts INTEGER,
    last_event_ts INTEGER,
    last_ingestion INTEGER,
    upload_sequence INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (log_group, name)
);
CREATE TABLE IF NOT EXISTS log_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    log_group TEXT NOT NULL,
    log_stream TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    ingestion INTEGER NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS log_events_group_ts ON log_events (log_group, timestamp);
CREATE INDEX IF NOT EXISTS log_events_stream_ts ON log_events (log_group, log_stream, timestamp);
CREATE TABLE IF NOT EXISTS metric_filters (
    log_group TEXT NOT NULL REFERENCES log_groups(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    pattern TEXT NOT NULL,
    transformations TEXT NOT NULL,
    created INTEGER NOT NULL,
    PRIMARY KEY (log_group, name)
);
CREATE TABLE IF NOT EXISTS metric_filter_counts (
    log_group TEXT NOT NULL,
    filter_name TEXT NOT NULL,
    metric_namespace TEXT NOT NULL,
    metric_name TEXT NOT NULL,
    value REAL NOT NULL DEFAULT 0,
    matches INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (log_group, filter_name, metric_namespace, metric_name),
    FOREIGN KEY (log_group, filter_name) REFERENCES metric_filters(log_group, name)
        ON DELETE CASCADE
);
"""

EventKey = tuple[int, int]
"""The paging key of an event: (timestamp ms, event id)."""

NewEvent = tuple[str, str, int, str]
"""An event to append: (group, stream, timestamp ms, message)."""


@dataclass(frozen=True)
class LogGroupInfo:
    name: str
    created_ms: int
    retention_days: int | None
    stored_bytes: int
    metric_filter_count: int


@dataclass(frozen=True)
class LogStreamInfo:
    group: str
    name: str
    created_ms: int
    first_event_ms: int | None
    last_event_ms: int | None
    last_ingestion_ms: int | None
    upload_sequence: int


@dataclass(frozen=True)
class MetricFilterInfo:
    group: str
    name: str
    pattern: str
    transformations: list[dict[str, Any]]
    created_ms: int


@dataclass(frozen=True)
class MetricFilterCount:
    """Running totals of one metric transformation of one metric filter."""

    group: str
    filter_name: str
    metric_namespace: str
    metric_name: str
    value: float  # sum of metricValue over matching events
    matches: int  # number of matching events


@dataclass(frozen=True)
class EventQuery:
    """Which events a scan considers; `end_ms` is inclusive."""

    group: str
    streams: Sequence[str] | None = None
    stream_prefix: str | None = None
    start_ms: int | None = None
    end_ms: int | None = None

    def where(self) -> tuple[list[str], list[object]]:
        clauses = ["log_group = ?"]
        args: list[object] = [self.group]
        if self.streams is not None:
            clauses.append(f"log_stream IN ({', '.join('?' * len(self.streams))})")
            args.extend(self.streams)
        if self.stream_prefix:
            clauses.append("substr(log_stream, 1, ?) = ?")
            args.extend([len(self.stream_prefix), self.stream_prefix])
        if self.start_ms is not None:
            clauses.append("timestamp >= ?")
            args.append(self.start_ms)
        if self.end_ms is not None:
            clauses.append("timestamp <= ?")
            args.append(self.end_ms)
        return clauses, args


@dataclass
class _CompiledFilter:
    name: str
    pattern: FilterPattern
    transformations: list[dict[str, Any]] = field(default_factory=list)


_EVENT_COLUMNS = "id, log_group, log_stream, timestamp, ingestion, message"
_GROUP_COLUMNS = (
    "name, created, retention_days, stored_bytes,"
    " (SELECT COUNT(*) FROM metric_filters f WHERE f.log_group = log_groups.name)"
)
_STREAM_COLUMNS = (
    "log_group, name, created, first_event_ts, last_event_ts, last_ingestion, upload_sequence"
)


def _event(row: tuple[Any, ...]) -> LogEvent:
    return LogEvent(int(row[0]), row[1], row[2], int(row[3]), int(row[4]), row[5])


def _group(row: tuple[Any, ...]) -> LogGroupInfo:
    return LogGroupInfo(row[0], int(row[1]), row[2], int(row[3]), int(row[4]))


def _stream(row: tuple[Any, ...]) -> LogStreamInfo:
    return LogStreamInfo(*row)


def _prefix_clause(column: str, prefix: str | None) -> tuple[str, list[object]]:
    if not prefix:
        return "1", []
    return f"substr({column}, 1, ?) = ?", [len(prefix), prefix]


class SqliteLogStore:
    """Log groups, streams, events and metric filters in the shared SQLite database."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._filters: dict[str, list[_CompiledFilter]] = {}
        self._data_version = -1
        with db.lock:
            db.conn.executescript(_SCHEMA)

    @property
    def db(self) -> Database:
        return self._db

    # -- transactions ------------------------------------------------------------------------

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Hold the lock and one read transaction, so several reads see the same state."""
        conn = self._db.conn
        with self._db.lock:
            own = not conn.in_transaction
            if own:
                conn.execute("BEGIN")
            try:
                yield
            finally:
                if own:
                    conn.execute("COMMIT")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._db.conn
        with self._db.lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._db.lock:
            return self._db.conn.execute(sql, args).fetchall()

    # -- groups ------------------------------------------------------------------------------

    def create_group(self, name: str, created_ms: int, retention_days: int | None = None) -> bool:
        """Create a group; False if it already exists."""
        with self._write() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO log_groups (name, created, retention_days) VALUES (?, ?, ?)",
                (name, created_ms, retention_days),
            )
        return cur.rowcount > 0

    def delete_group(self, name: str) -> bool:
        """Delete a group with its streams, events, metric filters and counts."""
        with self._write() as conn:
            conn.execute("DELETE FROM log_events WHERE log_group = ?", (name,))
            conn.execute("DELETE FROM metric_filter_counts WHERE log_group = ?", (name,))
            cur = conn.execute("DELETE FROM log_groups WHERE name = ?", (name,))
            self._filters.pop(name, None)
        return cur.rowcount > 0

    def get_group(self, name: str) -> LogGroupInfo | None:
        rows = self._query(f"SELECT {_GROUP_COLUMNS} FROM log_groups WHERE name = ?", (name,))
        return _group(rows[0]) if rows else None

    def list_groups(self, *, prefix: str | None = None, contains: str | None = None,
                    after: str | None = None, limit: int = 50) -> list[LogGroupInfo]:
        """Groups ordered by name, those after `after`, optionally filtered by prefix/substring."""
        clause, args = _prefix_clause("name", prefix)
        sql = f"SELECT {_GROUP_COLUMNS} FROM log_groups WHERE {clause}"
        if contains:
            sql += " AND instr(name, ?) > 0"
            args.append(contains)
        if after is not None:
            sql += " AND name > ?"
            args.append(after)
        sql += " ORDER BY name LIMIT ?"
        args.append(limit)
        return [_group(row) for row in self._query(sql, args)]

    def set_retention(self, name: str, days: int | None) -> bool:
        """Set (or with None remove) a group's retention; False if the group does not exist."""
        with self._write() as conn:
            cur = conn.execute("UPDATE log_groups SET retention_days = ? WHERE name = ?",
                               (days, name))
        return cur.rowcount > 0

    # -- streams -----------------------------------------------------------------------------

    def create_stream(self, group: str, name: str, created_ms: int) -> bool:
        """Create a stream in an existing group; False if it already exists."""
        with self._write() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO log_streams (log_group, name, created) VALUES (?, ?, ?)",
                (group, name, created_ms),
            )
        return cur.rowcount > 0

    def delete_stream(self, group: str, name: str) -> bool:
        """Delete a stream and its events."""
        with self._write() as conn:
            conn.execute("DELETE FROM log_events WHERE log_group = ? AND log_stream = ?",
                         (group, name))
            cur = conn.execute("DELETE FROM log_streams WHERE log_group = ? AND name = ?",
                               (group, name))
        return cur.rowcount > 0

    def get_stream(self, group: str, name: str) -> LogStreamInfo | None:
        rows = self._query(
            f"SELECT {_STREAM_COLUMNS} FROM log_streams WHERE log_group = ? AND name = ?",
            (group, name),
        )
        return _stream(rows[0]) if rows else None

    def list_streams(self, group: str, *, prefix: str | None = None,
                     order_by_last_event: bool = False, descending: bool = False,
                     after: tuple[int, str] | str | None = None,
                     limit: int = 50) -> list[LogStreamInfo]:
        """A page of a group's streams.

        Ordered by name, or by (last event timestamp, name) with `order_by_last_event` (streams
        without events count as timestamp 0). `after` is the key of the previous page's last
        stream: a name, or (last event timestamp, name).
        """
        clause, args = _prefix_clause("name", prefix)
        direction = "DESC" if descending else "ASC"
        compare = "<" if descending else ">"
        sql = f"SELECT {_STREAM_COLUMNS} FROM log_streams WHERE log_group = ? AND {clause}"
        args.insert(0, group)
        if order_by_last_event:
            key = "COALESCE(last_event_ts, 0)"
            if isinstance(after, tuple):
                sql += f" AND ({key}, name) {compare} (?, ?)"
                args.extend(after)
            sql += f" ORDER BY {key} {direction}, name {direction}"
        else:
            if isinstance(after, str):
                sql += f" AND name {compare} ?"
                args.append(after)
            sql += f" ORDER BY name {direction}"
        sql += " LIMIT ?"
        args.append(limit)
        return [_stream(row) for row in self._query(sql, args)]

    # -- events ------------------------------------------------------------------------------

    def append(self, events: Sequence[NewEvent], ingestion_ms: int) -> list[LogEvent]:
        """Store events in one transaction, creating missing groups and streams.

        Updates stream statistics and applies the groups' metric filters. Returns the stored
        events with their ids, in the order given.
        """
        if not events:
            return []
        rows = [(g, s, ts, ingestion_ms, m) for g, s, ts, m in events]
        spans: dict[tuple[str, str], list[int]] = {}
        sizes: dict[str, int] = {}
        for group, stream, ts, message in events:
            span = spans.get((group, stream))
            if span is None:
                spans[(group, stream)] = [ts, ts]
            else:
                span[0] = min(span[0], ts)
                span[1] = max(span[1], ts)
            sizes[group] = sizes.get(group, 0) + len(message.encode("utf-8", "replace"))
        with self._write() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO log_groups (name, created) VALUES (?, ?)",
                [(group, ingestion_ms) for group in sizes],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO log_streams (log_group, name, created) VALUES (?, ?, ?)",
                [(group, stream, ingestion_ms) for group, stream in spans],
            )
            conn.executemany(
                "INSERT INTO log_events (log_group, log_stream, timestamp, ingestion, message)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            # AUTOINCREMENT under an exclusive write lock hands out consecutive ids.
            last_id = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
            conn.executemany(
                "UPDATE log_streams SET first_event_ts = min(COALESCE(first_event_ts, ?), ?),"
                " last_event_ts = max(COALESCE(last_event_ts, ?), ?), last_ingestion = ?,"
                " upload_sequence = upload_sequence + 1 WHERE log_group = ? AND name = ?",
                [(lo, lo, hi, hi, ingestion_ms, group, stream)
                 for (group, stream), (lo, hi) in spans.items()],
            )
            conn.executemany(
                "UPDATE log_groups SET stored_bytes = stored_bytes + ? WHERE name = ?",
                [(size, group) for group, size in sizes.items()],
            )
            stored = [
                LogEvent(last_id - len(rows) + 1 + i, g, s, ts, ingestion_ms, m)
                for i, (g, s, ts, m) in enumerate(events)
            ]
            self._count_metrics(conn, stored)
        return stored

    def latest_timestamp(self, group: str) -> int | None:
        """The newest event timestamp stored in a group."""
        rows = self._query("SELECT MAX(timestamp) FROM log_events WHERE log_group = ?", (group,))
        return None if rows[0][0] is None else int(rows[0][0])

    def max_event_id(self) -> int:
        """The largest event id currently stored (0 when there are none)."""
        rows = self._query("SELECT MAX(id) FROM log_events")
        return int(rows[0][0] or 0)

    def scan_events(self, query: EventQuery, *, after: EventKey | None = None,
                    limit: int = 1000) -> list[LogEvent]:
        """Events with key (timestamp, id) > `after`, ascending by key."""
        clauses, args = query.where()
        if after is not None:
            clauses.append("(timestamp, id) > (?, ?)")
            args.extend(after)
        sql = (f"SELECT {_EVENT_COLUMNS} FROM log_events WHERE {' AND '.join(clauses)}"
               " ORDER BY timestamp, id LIMIT ?")
        return [_event(row) for row in self._query(sql, [*args, limit])]

    def scan_events_before(self, query: EventQuery, *, before: EventKey | None = None,
                           limit: int = 1000) -> list[LogEvent]:
        """Events with key (timestamp, id) < `before`, descending by key."""
        clauses, args = query.where()
        if before is not None:
            clauses.append("(timestamp, id) < (?, ?)")
            args.extend(before)
        sql = (f"SELECT {_EVENT_COLUMNS} FROM log_events WHERE {' AND '.join(clauses)}"
               " ORDER BY timestamp DESC, id DESC LIMIT ?")
        return [_event(row) for row in self._query(sql, [*args, limit])]

    def scan_late_events(self, query: EventQuery, *, upto: EventKey, above_id: int,
                         max_id: int, limit: int = 1000) -> list[LogEvent]:
        """Events ingested with id in (above_id, max_id] whose key is <= `upto`, by id.

        These are the events that arrived, with old timestamps, behind a reader's cursor.
        The scan walks the id range (recent ingestions), not the timestamp index.
        """
        clauses, args = query.where()
        clauses = ["id > ?", "id <= ?", *clauses, "(timestamp, id) <= (?, ?)"]
        args = [above_id, max_id, *args, *upto]
        sql = (f"SELECT {_EVENT_COLUMNS} FROM log_events NOT INDEXED"
               f" WHERE {' AND '.join(clauses)} ORDER BY id LIMIT ?")
        return [_event(row) for row in self._query(sql, [*args, limit])]

    # -- retention ---------------------------------------------------------------------------

    def delete_expired(self, now_ms: int, batch: int = 5000) -> int:
        """Delete events older than their group's retention; returns how many were deleted.

        Works in transactions of at most `batch` events. Streams whose every event has expired
        (or that never had one and were created before the cutoff) are deleted too.
        """
        groups = self._query(
            "SELECT name, retention_days FROM log_groups WHERE retention_days IS NOT NULL"
        )
        deleted = 0
        for name, days in groups:
            cutoff = now_ms - int(days) * DAY_MS
            while True:
                with self._write() as conn:
                    rows = conn.execute(
                        "SELECT id, length(CAST(message AS BLOB)) FROM log_events"
                        " WHERE log_group = ? AND timestamp < ? LIMIT ?",
                        (name, cutoff, batch),
                    ).fetchall()
                    conn.executemany("DELETE FROM log_events WHERE id = ?",
                                     [(row[0],) for row in rows])
                    conn.execute(
                        "UPDATE log_groups SET stored_bytes = max(0, stored_bytes - ?)"
                        " WHERE name = ?", (sum(int(row[1]) for row in rows), name),
                    )
                deleted += len(rows)
                if len(rows) < batch:
                    break
            with self._write() as conn:
                conn.execute(
                    "DELETE FROM log_streams WHERE log_group = ?"
                    " AND COALESCE(last_event_ts, created) < ?", (name, cutoff),
                )
        return deleted

    # -- metric filters ----------------------------------------------------------------------

    def put_metric_filter(self, group: str, name: str, pattern: str,
                          transformations: list[dict[str, Any]], created_ms: int) -> None:
        """Create or replace a metric filter; counts of metrics it no longer emits are dropped."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO metric_filters (log_group, name, pattern, transformations, created)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (log_group, name) DO UPDATE SET"
                " pattern = excluded.pattern, transformations = excluded.transformations",
                (group, name, pattern, json.dumps(transformations), created_ms),
            )
            keep = {(t["metricNamespace"], t["metricName"]) for t in transformations}
            for namespace, metric in conn.execute(
                "SELECT metric_namespace, metric_name FROM metric_filter_counts"
                " WHERE log_group = ? AND filter_name = ?", (group, name),
            ).fetchall():
                if (namespace, metric) not in keep:
                    conn.execute(
                        "DELETE FROM metric_filter_counts WHERE log_group = ? AND filter_name = ?"
                        " AND metric_namespace = ? AND metric_name = ?",
                        (group, name, namespace, metric),
                    )
            self._filters.pop(group, None)

    def delete_metric_filter(self, group: str, name: str) -> bool:
        """Delete a metric filter and its counts; False if it does not exist."""
        with self._write() as conn:
            conn.execute(
                "DELETE FROM metric_filter_counts WHERE log_group = ? AND filter_name = ?",
                (group, name),
            )
            cur = conn.execute("DELETE FROM metric_filters WHERE log_group = ? AND name = ?",
                               (group, name))
            self._filters.pop(group, None)
        return cur.rowcount > 0

    def list_metric_filters(self, group: str | None = None, *, name_prefix: str | None = None,
                            metric_name: str | None = None, metric_namespace: str | None = None,
                            after: tuple[str, str] | None = None,
                            limit: int = 50) -> list[MetricFilterInfo]:
        """Metric filters ordered by (group, name), those after `after`."""
        clause, args = _prefix_clause("name", name_prefix)
        sql = ("SELECT log_group, name, pattern, transformations, created FROM metric_filters"
               f" WHERE {clause}")
        if group is not None:
            sql += " AND log_group = ?"
            args.append(group)
        if after is not None:
            sql += " AND (log_group, name) > (?, ?)"
            args.extend(after)
        sql += " ORDER BY log_group, name"
        result: list[MetricFilterInfo] = []
        for row in self._query(sql, args):
            transformations = json.loads(row[3])
            if metric_name is not None and not any(
                t.get("metricName") == metric_name
                and (metric_namespace is None or t.get("metricNamespace") == metric_namespace)
                for t in transformations
            ):
                continue
            result.append(MetricFilterInfo(row[0], row[1], row[2], transformations, int(row[4])))
            if len(result) >= limit:
                break
        return result

    def metric_filter_counts(self) -> list[MetricFilterCount]:
        """Every metric filter transformation's running totals (zero before any match)."""
        rows = self._query(
            "SELECT f.log_group, f.name, f.transformations, c.metric_namespace, c.metric_name,"
            " c.value, c.matches FROM metric_filters f LEFT JOIN metric_filter_counts c"
            " ON c.log_group = f.log_group AND c.filter_name = f.name"
            " ORDER BY f.log_group, f.name"
        )
        seen: dict[tuple[str, str, str, str], MetricFilterCount] = {}
        for group, name, transformations, namespace, metric, value, matches in rows:
            for t in json.loads(transformations):
                key = (group, name, t["metricNamespace"], t["metricName"])
                if key not in seen:
                    seen[key] = MetricFilterCount(*key, 0.0, 0)
            if namespace is not None:
                key = (group, name, namespace, metric)
                seen[key] = MetricFilterCount(*key, float(value), int(matches))
        return list(seen.values())

    def _compiled_filters(self, conn: sqlite3.Connection, group: str) -> list[_CompiledFilter]:
        version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        if version != self._data_version:  # another connection committed: reload lazily
            self._filters.clear()
            self._data_version = version
        cached = self._filters.get(group)
        if cached is None:
            cached = []
            for name, pattern, transformations in conn.execute(
                "SELECT name, pattern, transformations FROM metric_filters WHERE log_group = ?",
                (group,),
            ).fetchall():
                cached.append(_CompiledFilter(name, compile_pattern(pattern),
                                              json.loads(transformations)))
            self._filters[group] = cached
        return cached

    def _count_metrics(self, conn: sqlite3.Connection, events: Sequence[LogEvent]) -> None:
        totals: dict[tuple[str, str, str, str], list[float]] = {}
        by_group: dict[str, list[_CompiledFilter]] = {}
        for event in events:
            filters = by_group.get(event.group)
            if filters is None:
                filters = by_group[event.group] = self._compiled_filters(conn, event.group)
            for flt in filters:
                fields = flt.pattern.extract(event.message)
                if fields is None:
                    continue
                for t in flt.transformations:
                    key = (event.group, flt.name, t["metricNamespace"], t["metricName"])
                    total = totals.setdefault(key, [0.0, 0])
                    value = metric_value(str(t.get("metricValue", "1")), event.message, fields)
                    if value is not None:
                        total[0] += value
                    total[1] += 1
        if totals:
            conn.executemany(
                "INSERT INTO metric_filter_counts (log_group, filter_name, metric_namespace,"
                " metric_name, value, matches) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (log_group, filter_name, metric_namespace, metric_name) DO UPDATE"
                " SET value = value + excluded.value, matches = matches + excluded.matches",
                [(*key, value, int(matches)) for key, (value, matches) in totals.items()],
            )
