"""Asynchronous invocation: a durable queue in the store and the dispatcher that drains it.

`submit` writes the event to the store before the caller gets its 202, so an accepted event
survives a crash: leases held by a dead server are released at the next start and the event is
delivered again (at-least-once). A function error is retried `max_retry_attempts` times with
the configured delays (AWS: 1 and 2 minutes); a throttle is retried without counting an attempt;
events older than the maximum age, or whose function is gone, are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from corral.config import AsyncSettings
from corral.errors import LambdaApiError, ResourceNotFoundException, TooManyRequestsException
from corral.model import InvocationResult
from corral.store.api import AsyncEvent
from corral.store.sqlite import SqliteEventQueue

log = logging.getLogger(__name__)

# Runs one queued event through the scheduler (the same path as a synchronous invoke).
Runner = Callable[[AsyncEvent], Awaitable[InvocationResult]]
_THROTTLE_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass(frozen=True)
class AsyncOutcome:
    event: AsyncEvent
    result: InvocationResult | None
    final: bool  # no more attempts will be made


class AsyncInvoker:
    def __init__(self, queue: SqliteEventQueue, settings: AsyncSettings, runner: Runner,
                 clock: Callable[[], float] = time.time) -> None:
        self._queue = queue
        self._settings = settings
        self._runner = runner
        self._clock = clock
        self._wakeup = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False
        self._throttles: dict[str, int] = {}
        self.listeners: list[Callable[[AsyncOutcome], None]] = []

    def submit(self, event_id: str, function_name: str, qualifier: str, payload: bytes) -> None:
        now = self._clock()
        self._queue.enqueue(AsyncEvent(event_id, function_name, qualifier, payload, 0, now, now))
        self._wakeup.set()

    def recover(self) -> int:
        """Release leases a crashed server held, so those events are delivered again."""
        return self._queue.release_all_leases()

    async def run(self) -> None:
        """Dispatch due events until `close`; at most `workers` run at once."""
        while not self._closing:
            free = self._settings.workers - len(self._running)
            events = self._queue.claim(self._clock(), free) if free > 0 else []
            for event in events:
                task = asyncio.ensure_future(self._deliver(event))
                self._running.add(task)
                task.add_done_callback(self._done)
            if events and len(events) == free:
                await self._wait(0.05)
                continue
            due = self._queue.next_due()
            delay = 1.0 if due is None else max(0.0, min(1.0, due - self._clock()))
            await self._wait(delay)

    async def _wait(self, timeout: float) -> None:
        self._wakeup.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wakeup.set()

    async def _deliver(self, event: AsyncEvent) -> None:
        now = self._clock()
        if now - event.enqueued_at > self._settings.max_event_age_s:
            log.warning("dropping event %s: older than the maximum event age", event.event_id)
            self._finish(event, None)
            return
        try:
            result = await self._runner(event)
        except TooManyRequestsException:
            count = self._throttles.get(event.event_id, 0)
            self._throttles[event.event_id] = count + 1
            delay = _THROTTLE_BACKOFF_S[min(count, len(_THROTTLE_BACKOFF_S) - 1)]
            self._queue.retry(event.event_id, event.attempts, now + delay)
            return
        except ResourceNotFoundException:
            self._finish(event, None)
            return
        except LambdaApiError as exc:
            log.warning("dropping event %s: %s", event.event_id, exc.message)
            self._finish(event, None)
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event %s failed in the platform; retrying", event.event_id)
            self._queue.retry(event.event_id, event.attempts, now + 1.0)
            return
        self._throttles.pop(event.event_id, None)
        attempts = event.attempts + 1
        if result.function_error and attempts <= self._settings.max_retry_attempts:
            delays = self._settings.retry_delays_s
            delay = delays[min(attempts - 1, len(delays) - 1)]
            self._queue.retry(event.event_id, attempts, self._clock() + delay)
            self._notify(AsyncOutcome(event, result, final=False))
            return
        self._finish(event, result)

    def _finish(self, event: AsyncEvent, result: InvocationResult | None) -> None:
        self._queue.complete(event.event_id)
        self._throttles.pop(event.event_id, None)
        self._notify(AsyncOutcome(event, result, final=True))

    def _notify(self, outcome: AsyncOutcome) -> None:
        for listener in self.listeners:
            try:
                listener(outcome)
            except Exception:
                log.exception("async outcome listener failed")

    async def close(self) -> None:
        """Stop dispatching; events in flight stay leased and are redelivered after restart."""
        self._closing = True
        self._wakeup.set()
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
