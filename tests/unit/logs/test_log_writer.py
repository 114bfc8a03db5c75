"""BufferedLogWriter: buffering, batching, the background task, flush on close, ordering."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from corral.logs.store import EventQuery, LogEvent, NewEvent, SqliteLogStore
from corral.logs.writer import MAX_MESSAGE_BYTES, BufferedLogWriter
from corral.store.sqlite import Database

G = "/aws/lambda/fn"
NOW = 1_700_000_000.0


class CountingStore(SqliteLogStore):
    """A real store that records the size of every append (one append = one transaction)."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.batches: list[int] = []
        self.fail_next = 0

    def append(self, events: Sequence[NewEvent], ingestion_ms: int) -> list[LogEvent]:
        if self.fail_next:
            self.fail_next -= 1
            raise OSError("disk full")
        self.batches.append(len(events))
        return super().append(events, ingestion_ms)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CountingStore]:
    db = Database(tmp_path / "corral.db")
    yield CountingStore(db)
    db.close()


def messages(store: SqliteLogStore, group: str = G) -> list[str]:
    return [e.message for e in store.scan_events(EventQuery(group), limit=100_000)]


def test_emit_only_buffers(store: CountingStore) -> None:
    """emit() writes nothing by itself; flush() writes in batches of batch_size."""
    writer = BufferedLogWriter(store, lambda: NOW, batch_size=4)
    for i in range(10):
        writer.emit(G, "s", int(NOW * 1000) + i, f"line {i}")
    assert store.batches == []
    assert writer.pending == 10
    assert writer.flush() == 10
    assert store.batches == [4, 4, 2]
    assert messages(store) == [f"line {i}" for i in range(10)]
    assert writer.pending == 0
    assert writer.written == 10


def test_flush_uses_clock_for_ingestion_time(store: CountingStore) -> None:
    """Events are stamped with the writer clock's time of the write as ingestion time."""
    writer = BufferedLogWriter(store, lambda: NOW + 1.5)
    writer.emit(G, "s", int(NOW * 1000), "x")
    writer.flush()
    (event,) = store.scan_events(EventQuery(G))
    assert event.ingestion_ms == int((NOW + 1.5) * 1000)
    assert event.timestamp_ms == int(NOW * 1000)


@pytest.mark.parametrize("threaded", [True, False])
def test_run_writes_periodically_and_close_flushes(store: CountingStore, threaded: bool) -> None:
    """The background task writes within its interval; close() writes what is left."""

    async def scenario() -> None:
        writer = BufferedLogWriter(store, lambda: NOW, interval_s=0.02, threaded=threaded)
        task = asyncio.create_task(writer.run())
        writer.emit(G, "s", 1, "first")
        for _ in range(100):
            await asyncio.sleep(0.01)
            if store.batches:
                break
        assert messages(store) == ["first"]
        writer.emit(G, "s", 2, "last")
        await writer.close()
        assert messages(store) == ["first", "last"]
        await asyncio.wait_for(task, 1)

    asyncio.run(scenario())


def test_full_batch_wakes_the_writer_early(store: CountingStore) -> None:
    """Reaching batch_size triggers a write without waiting for the interval."""

    async def scenario() -> None:
        writer = BufferedLogWriter(store, lambda: NOW, interval_s=60, batch_size=50)
        task = asyncio.create_task(writer.run())
        await asyncio.sleep(0)
        for i in range(120):
            writer.emit(G, "s", i, str(i))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if sum(store.batches) >= 100:
                break
        assert store.batches[:2] == [50, 50]
        await writer.close()
        assert sum(store.batches) == 120
        await task

    asyncio.run(scenario())


def test_emit_from_another_thread_wakes_the_writer(store: CountingStore) -> None:
    """emit() is safe from other threads and still wakes the loop when a batch is full."""

    async def scenario() -> None:
        writer = BufferedLogWriter(store, lambda: NOW, interval_s=60, batch_size=10)
        task = asyncio.create_task(writer.run())
        await asyncio.sleep(0)

        def produce() -> None:
            for i in range(10):
                writer.emit(G, "s", i, str(i))

        thread = threading.Thread(target=produce)
        thread.start()
        thread.join()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if store.batches:
                break
        assert store.batches == [10]
        await writer.close()
        await task

    asyncio.run(scenario())


def test_close_without_run_flushes(store: CountingStore) -> None:
    """close() also works when run() was never started."""
    writer = BufferedLogWriter(store, lambda: NOW)
    writer.emit(G, "s", 1, "x")
    asyncio.run(writer.close())
    assert messages(store) == ["x"]


def test_late_timestamps_are_raised_to_the_group_watermark(store: CountingStore) -> None:
    """An event older than one already committed in its group is stored at that timestamp."""
    writer = BufferedLogWriter(store, lambda: NOW)
    writer.emit(G, "a", 1000, "first")
    writer.flush()
    writer.emit(G, "b", 990, "late, other stream")
    writer.emit(G, "a", 1005, "newer")
    writer.emit("/other", "a", 5, "other group unaffected")
    writer.flush()
    stamps = {e.message: e.timestamp_ms for e in store.scan_events(EventQuery(G))}
    assert stamps == {"first": 1000, "late, other stream": 1000, "newer": 1005}
    assert [e.timestamp_ms for e in store.scan_events(EventQuery("/other"))] == [5]


def test_watermark_survives_a_restart(store: CountingStore) -> None:
    """A new writer starts from the newest timestamp already stored in the group."""
    store.append([(G, "s", 5000, "before restart")], 5000)
    writer = BufferedLogWriter(store, lambda: NOW)
    writer.emit(G, "s", 4000, "clock went back")
    writer.flush()
    assert [e.timestamp_ms for e in store.scan_events(EventQuery(G))] == [5000, 5000]


def test_listeners_receive_committed_events(store: CountingStore) -> None:
    """Listeners get each committed batch with ids; a failing listener does not stop others."""
    seen: list[LogEvent] = []

    def broken(events: Sequence[LogEvent]) -> None:
        raise RuntimeError("boom")

    writer = BufferedLogWriter(store, lambda: NOW)
    writer.add_listener(broken)
    writer.add_listener(seen.extend)
    writer.emit(G, "s", 1, "x")
    writer.flush()
    assert [(e.message, e.event_id > 0) for e in seen] == [("x", True)]


def test_failed_write_is_retried(store: CountingStore) -> None:
    """When the store fails the batch stays buffered and the next flush writes it."""
    writer = BufferedLogWriter(store, lambda: NOW)
    writer.emit(G, "s", 1, "x")
    store.fail_next = 1
    assert writer.flush() == 0
    assert writer.pending == 1
    assert writer.flush() == 1
    assert messages(store) == ["x"]


def test_full_buffer_applies_backpressure(store: CountingStore) -> None:
    """At max_buffered events emit() writes synchronously instead of growing the buffer."""
    writer = BufferedLogWriter(store, lambda: NOW, batch_size=5, max_buffered=8)
    for i in range(8):
        writer.emit(G, "s", i, str(i))
    assert writer.pending == 0
    assert sum(store.batches) == 8


def test_oversized_messages_are_truncated(store: CountingStore) -> None:
    """Messages beyond CloudWatch's event size are cut to the limit (on a UTF-8 boundary)."""
    writer = BufferedLogWriter(store, lambda: NOW)
    writer.emit(G, "s", 1, "é" * MAX_MESSAGE_BYTES)
    writer.flush()
    (stored,) = messages(store)
    assert len(stored.encode()) <= MAX_MESSAGE_BYTES
    assert len(stored.encode()) >= MAX_MESSAGE_BYTES - 1
    assert set(stored) == {"é"}


def test_emit_after_close_writes_synchronously(store: CountingStore) -> None:
    """Once the writer is closed, a straggling emit() is written at once, not lost."""

    async def scenario() -> None:
        writer = BufferedLogWriter(store, lambda: NOW)
        task = asyncio.create_task(writer.run())
        await asyncio.sleep(0)
        await writer.close()
        await task
        writer.emit(G, "s", 1, "straggler")
        assert messages(store) == ["straggler"]

    asyncio.run(scenario())
