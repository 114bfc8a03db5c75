"""Buffered, batched writing of function output to the log store, off the invoke hot path.

`BufferedLogWriter.emit` only appends to an in-memory buffer (about 1.5 us). `run()` (a task
on the server's event loop) writes the buffer every `interval_s` (about 100 ms), or as soon as
`batch_size` events are waiting, one store transaction per batch; with `threaded` (the default)
each batch is written from a worker thread (`asyncio.to_thread`), safe because every user of the
shared connection holds `db.lock`. `close()` stops `run()` and flushes what is left; `flush()`
writes everything synchronously (tests, shutdown without a loop); an `emit` after `close()`
writes at once.

Ordering guarantee for followers: within a log group the writer never makes an event visible
with a timestamp older than one it has already committed; such a late event (a wall-clock step
backwards, or a caller that stamped a line before an await) is stored with the group's newest
committed timestamp instead. `aws logs tail --follow` polls FilterLogEvents with
`startTime` = the newest timestamp it has seen, so without this a late event would never be
shown. Events given to `LogsApi`'s PutLogEvents keep their timestamps, as in CloudWatch Logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence

from corral.logs.store import LogEvent, NewEvent, SqliteLogStore

__all__ = ["MAX_MESSAGE_BYTES", "BufferedLogWriter", "Listener"]

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 262_144 - 26
"""CloudWatch Logs' maximum event size (256 KiB including 26 bytes of overhead)."""

Listener = Callable[[Sequence[LogEvent]], None]
"""Called on the writer's thread with each batch of events just committed."""


def _truncate(message: str) -> str:
    if len(message) * 4 <= MAX_MESSAGE_BYTES:
        return message
    encoded = message.encode("utf-8", "replace")
    if len(encoded) <= MAX_MESSAGE_BYTES:
        return message
    return encoded[:MAX_MESSAGE_BYTES].decode("utf-8", "ignore")


class BufferedLogWriter:
    """Collects log lines from instances and writes them to the store in batches."""

    def __init__(self, store: SqliteLogStore, clock: Callable[[], float] = time.time, *,
                 interval_s: float = 0.1, batch_size: int = 1000,
                 max_buffered: int = 100_000, threaded: bool = True) -> None:
        self._store = store
        self._clock = clock
        self.interval_s = interval_s
        self.batch_size = batch_size
        self.max_buffered = max_buffered
        self.threaded = threaded
        self._buffer: list[NewEvent] = []
        self._mutex = threading.Lock()  # emit may be called from any thread
        self._flush_lock = threading.Lock()  # one batch at a time keeps commit order = order
        self._watermarks: dict[str, int] = {}
        self._listeners: list[Listener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        self._closing = False
        self.written = 0
        self.dropped = 0

    # -- producers ---------------------------------------------------------------------------

    def emit(self, group: str, stream: str, timestamp_ms: int, message: str) -> None:
        """Queue one log event; never blocks except as backpressure when the buffer is full."""
        with self._mutex:
            self._buffer.append((group, stream, int(timestamp_ms), _truncate(message)))
            pending = len(self._buffer)
        stopped = self._closing and (self._stopped is None or self._stopped.is_set())
        if pending >= self.max_buffered or stopped:
            # The store cannot keep up (or nothing will write later): write synchronously.
            self.flush()
        elif pending >= self.batch_size:
            self._wake_runner()

    def add_listener(self, callback: Listener) -> None:
        """Call `callback(events)` after each committed batch (metrics, live followers)."""
        self._listeners.append(callback)

    @property
    def pending(self) -> int:
        """Events buffered and not yet written."""
        with self._mutex:
            return len(self._buffer)

    # -- writing -----------------------------------------------------------------------------

    def flush(self) -> int:
        """Write everything buffered now, in batches; returns how many events were written."""
        total = 0
        while True:
            written = self._write_batch()
            if written <= 0:
                return total
            total += written

    def _take(self) -> list[NewEvent]:
        with self._mutex:
            batch = self._buffer[: self.batch_size]
            del self._buffer[: self.batch_size]
        return batch

    def _write_batch(self) -> int:
        """Write one batch; 0 when the buffer was empty, -1 when the store failed."""
        with self._flush_lock:
            batch = self._take()
            if not batch:
                return 0
            batch = self._clamp(batch)
            try:
                stored = self._store.append(batch, int(self._clock() * 1000))
            except Exception:
                log.exception("writing %d log events failed", len(batch))
                self._requeue(batch)
                return -1
            for event in stored:
                if event.timestamp_ms > self._watermarks.get(event.group, -1):
                    self._watermarks[event.group] = event.timestamp_ms
            self.written += len(stored)
        for listener in self._listeners:
            try:
                listener(stored)
            except Exception:
                log.exception("log listener %r failed", listener)
        return len(stored)

    def _clamp(self, batch: list[NewEvent]) -> list[NewEvent]:
        out: list[NewEvent] = []
        for group, stream, ts, message in batch:
            floor = self._watermarks.get(group)
            if floor is None:
                floor = self._store.latest_timestamp(group)
                self._watermarks[group] = -1 if floor is None else floor
                floor = self._watermarks[group]
            out.append((group, stream, ts if ts >= floor else floor, message))
        return out

    def _requeue(self, batch: list[NewEvent]) -> None:
        with self._mutex:
            room = self.max_buffered - len(self._buffer)
            keep = batch[: max(room, 0)]
            self._buffer[:0] = keep
            self.dropped += len(batch) - len(keep)

    # -- the background task -----------------------------------------------------------------

    def _wake_runner(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)

    async def run(self) -> None:
        """Write batches every `interval_s` (sooner when a batch is full) until `close()`."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        try:
            while not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.interval_s)
                self._wake.clear()
                while not self._closing and await self._write_batch_async() > 0:
                    await asyncio.sleep(0)  # let invocations run between batches
        finally:
            self.flush()
            self._stopped.set()

    async def _write_batch_async(self) -> int:
        if self.threaded:
            # SQLite releases the GIL while it works: the event loop keeps running meanwhile.
            return await asyncio.to_thread(self._write_batch)
        return self._write_batch()

    async def close(self) -> None:
        """Stop `run()` (if it is running) and write everything still buffered."""
        self._closing = True
        stopped = self._stopped
        if stopped is not None and not stopped.is_set():
            self._wake_runner()
            await stopped.wait()
        else:
            self.flush()
