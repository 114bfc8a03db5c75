"""Asynchronous invocation: a durable queue in the store and the dispatcher that drains it.

`submit` writes the event to the store before the caller gets its 202, so an accepted event
survives a crash: leases held by a dead server are released at the next start and the event is
delivered again (at-least-once).

Per event, the dispatcher asks `policy_for(event)` (the function's event invoke configuration,
installed by `corral.events.async_feature`; the operator's settings otherwise) for the
maximum retry attempts and event age and the destinations, then:

* a function error is retried `max_retry_attempts` times after the configured delays (AWS: 1
  and 2 minutes; `CORRAL_ASYNC_RETRY_DELAYS` scales them down); each run counts as an attempt;
* a throttle (TooManyRequestsException), a function busy being updated (409), a platform
  error (5xx) or a crash inside Corral is retried with exponential backoff (1 s ... 5 min)
  without using an attempt;
* an event older than its maximum age is not run again: it ends as `EventAgeExceeded`, as soon
  as the next try would be past the age (Corral does not wait for that moment to give up);
* an event whose function (or version/alias) is gone is dropped;
* the final outcome (`Success`, `RetriesExhausted`, `EventAgeExceeded`) goes to the `router`,
  which returns follow-up rows (an asynchronous invoke of a destination function, a message
  for a queue); the event's removal and its follow-ups are written in one transaction, so a
  destination is delivered at least once and never lost to a crash.

Follow-up rows of a kind other than "invoke" are handed to `senders[kind]` (blocking, run in
a thread); a sender that raises is retried with the same backoff until the default maximum age.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from corral.config import AsyncSettings
from corral.errors import (
    LambdaApiError,
    ResourceConflictException,
    ResourceNotFoundException,
    TooManyRequestsException,
)
from corral.model import LATEST, InvocationResult
from corral.store.api import AsyncEvent
from corral.store.sqlite import SqliteEventQueue

log = logging.getLogger(__name__)

Queued = SqliteEventQueue.Queued
# Runs one queued event through the scheduler (the same path as a synchronous invoke).
Runner = Callable[[AsyncEvent], Awaitable[InvocationResult]]
# Delivers a follow-up row to another service: (target ARN, payload); raise to retry.
Sender = Callable[[str, bytes], None]
THROTTLE_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Condition(StrEnum):
    """Why an event's processing ended, as AWS's invocation record names it."""

    SUCCESS = "Success"
    RETRIES_EXHAUSTED = "RetriesExhausted"
    EVENT_AGE_EXCEEDED = "EventAgeExceeded"


@dataclass(frozen=True)
class EventPolicy:
    """How to treat one function's asynchronous events."""

    max_retry_attempts: int
    max_event_age_s: float
    on_success: str | None = None  # destination ARNs
    on_failure: str | None = None
    dead_letter: str | None = None


@dataclass(frozen=True)
class AttemptResponse:
    """What the function answered on its latest run."""

    payload: bytes
    function_error: str | None
    executed_version: str = LATEST

    def to_json(self) -> str:
        return json.dumps({"payload": self.payload.decode("utf-8", "replace"),
                           "functionError": self.function_error,
                           "executedVersion": self.executed_version})

    @classmethod
    def from_json(cls, text: str | None) -> AttemptResponse | None:
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(str(data["payload"]).encode(), data.get("functionError"),
                       data.get("executedVersion") or LATEST)
        except (ValueError, KeyError, TypeError):
            return None

    @classmethod
    def of(cls, result: InvocationResult) -> AttemptResponse:
        return cls(result.payload, result.function_error, result.executed_version)


@dataclass(frozen=True)
class FinalOutcome:
    """The end of one event's processing, handed to the router."""

    event: AsyncEvent
    condition: Condition
    response: AttemptResponse | None  # the latest run's answer; None if it never ran
    attempts: int  # function runs made (approximateInvokeCount)
    policy: EventPolicy
    at: float


@dataclass(frozen=True)
class FollowUp:
    """A row the final outcome adds to the queue."""

    kind: str  # "invoke" (target = function name) or a sender's kind (target = its ARN)
    target: str
    payload: bytes
    qualifier: str = LATEST


Router = Callable[[FinalOutcome], Sequence[FollowUp]]
PolicyLookup = Callable[[AsyncEvent], EventPolicy]


@dataclass(frozen=True)
class AsyncOutcome:
    """One run's result, reported to listeners (final: no more attempts will be made)."""

    event: AsyncEvent
    result: InvocationResult | None
    final: bool


class AsyncInvoker:
    def __init__(self, queue: SqliteEventQueue, settings: AsyncSettings, runner: Runner,
                 clock: Callable[[], float] = time.time,
                 throttle_backoff_s: Sequence[float] = THROTTLE_BACKOFF_S) -> None:
        self._queue = queue
        self._settings = settings
        self._runner = runner
        self._clock = clock
        self._backoff = tuple(throttle_backoff_s)
        self._wakeup = asyncio.Event()
        self._batch: list[AsyncEvent] = []
        self._finished: list[str] = []  # event ids to remove in the next batch
        self._batch_done: asyncio.Future[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False
        self.policy_for: PolicyLookup = self.default_policy
        self.router: Router | None = None
        self.senders: dict[str, Sender] = {}
        self.listeners: list[Callable[[AsyncOutcome], None]] = []

    def default_policy(self, event: AsyncEvent) -> EventPolicy:
        """The operator's settings, for functions without an event invoke configuration."""
        return EventPolicy(self._settings.max_retry_attempts, self._settings.max_event_age_s)

    def submit(self, event_id: str, function_name: str, qualifier: str, payload: bytes) -> None:
        now = self._clock()
        self._queue.enqueue(AsyncEvent(event_id, function_name, qualifier, payload, 0, now, now))
        self._wakeup.set()

    async def submit_durably(self, event_id: str, function_name: str, qualifier: str,
                             payload: bytes) -> None:
        """Queue an event; returns once it is committed. Events submitted during the same
        event-loop iteration share one transaction (group commit)."""
        now = self._clock()
        self._batch.append(AsyncEvent(event_id, function_name, qualifier, payload, 0, now, now))
        if self._batch_done is None:
            loop = asyncio.get_running_loop()
            self._batch_done = loop.create_future()
            loop.call_soon(self._commit_batch)
        await asyncio.shield(self._batch_done)

    def _commit_batch(self) -> None:
        events, self._batch = self._batch, []
        done, self._batch_done = self._batch_done, None
        assert done is not None
        try:
            self._queue.enqueue_many(events)
        except Exception as exc:
            done.set_exception(exc)
            return
        done.set_result(None)
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

    async def deliver_due(self) -> int:
        """Claim every event due now and deliver them one at a time (tests and tools)."""
        delivered = 0
        while True:
            events = self._queue.claim(self._clock(), 1)
            if not events:
                if self._finished:
                    self._commit_finished()
                return delivered
            await self._deliver(events[0])
            delivered += 1

    async def _wait(self, timeout: float) -> None:
        self._wakeup.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wakeup.set()

    # delivery ---------------------------------------------------------------------------------
    def _policy(self, event: AsyncEvent) -> EventPolicy:
        try:
            return self.policy_for(event)
        except Exception:
            log.exception("looking up the invoke configuration of %s failed", event.event_id)
            return self.default_policy(event)

    async def _deliver(self, event: Queued) -> None:
        if event.kind != "invoke":
            await self._send(event)
            return
        policy = self._policy(event)
        deadline = event.enqueued_at + policy.max_event_age_s
        if self._clock() > deadline:
            self._final(event, Condition.EVENT_AGE_EXCEEDED,
                        AttemptResponse.from_json(event.last_result), event.attempts, policy)
            return
        try:
            result = await self._runner(event)
        except TooManyRequestsException:
            self._back_off(event, policy, deadline)
            return
        except ResourceNotFoundException as exc:
            log.warning("dropping event %s: %s", event.event_id, exc.message)
            self._final(event, None, None, event.attempts, policy)
            return
        except LambdaApiError as exc:
            if isinstance(exc, ResourceConflictException) or exc.status >= 500:
                log.warning("event %s not run (%s); retrying", event.event_id, exc.message)
                self._back_off(event, policy, deadline)
            else:
                log.warning("event %s cannot run: %s", event.event_id, exc.message)
                self._final(event, Condition.RETRIES_EXHAUSTED, None, event.attempts, policy)
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event %s failed in the platform; retrying", event.event_id)
            self._back_off(event, policy, deadline)
            return
        attempts = event.attempts + 1
        response = AttemptResponse.of(result)
        if not result.function_error:
            self._final(event, Condition.SUCCESS, response, attempts, policy, result)
            return
        if attempts > policy.max_retry_attempts:
            self._final(event, Condition.RETRIES_EXHAUSTED, response, attempts, policy, result)
            return
        delays = self._settings.retry_delays_s
        next_at = self._clock() + delays[min(attempts - 1, len(delays) - 1)]
        if next_at > deadline:
            self._final(event, Condition.EVENT_AGE_EXCEEDED, response, attempts, policy, result)
            return
        self._queue.retry(event.event_id, attempts, next_at, last_result=response.to_json())
        self._notify(AsyncOutcome(event, result, final=False))

    def _back_off(self, event: Queued, policy: EventPolicy, deadline: float) -> None:
        """Try again later without using an attempt, unless that is past the maximum age."""
        next_at = self._clock() + self._backoff[min(event.throttles, len(self._backoff) - 1)]
        if next_at > deadline:
            self._final(event, Condition.EVENT_AGE_EXCEEDED,
                        AttemptResponse.from_json(event.last_result), event.attempts, policy)
            return
        self._queue.retry(event.event_id, event.attempts, next_at, throttles=event.throttles + 1)

    def _final(self, event: AsyncEvent, condition: Condition | None,
               response: AttemptResponse | None, attempts: int, policy: EventPolicy,
               result: InvocationResult | None = None) -> None:
        """Remove the event, enqueueing what its outcome calls for (nothing when dropped)."""
        rows: list[tuple[AsyncEvent, str]] = []
        if condition is not None and self.router is not None:
            now = self._clock()
            outcome = FinalOutcome(event, condition, response, attempts, policy, now)
            try:
                follow_ups = self.router(outcome)
            except Exception:
                log.exception("routing the outcome of event %s failed", event.event_id)
                follow_ups = ()
            rows = [(AsyncEvent(str(uuid.uuid4()), f.target, f.qualifier, f.payload, 0, now,
                                now), f.kind) for f in follow_ups]
        if condition is not None and condition != Condition.SUCCESS:
            log.warning("event %s for %s ended: %s after %d attempt(s)", event.event_id,
                        event.function_name, condition.value, attempts)
        if rows:
            self._queue.complete(event.event_id, rows)
            self._wakeup.set()
        else:
            self._complete_soon(event.event_id)
        self._notify(AsyncOutcome(event, result, final=True))

    def _complete_soon(self, event_id: str) -> None:
        """Remove a finished event together with the others finishing in this loop iteration
        (one transaction instead of one per event). A crash before the commit redelivers it:
        at least once, as always."""
        self._finished.append(event_id)
        if len(self._finished) == 1:
            asyncio.get_running_loop().call_soon(self._commit_finished)

    def _commit_finished(self) -> None:
        finished, self._finished = self._finished, []
        if not finished:
            return
        try:
            self._queue.complete_many(finished)
        except Exception:
            log.exception("removing %d finished events failed; they will be redelivered",
                          len(finished))

    async def _send(self, event: Queued) -> None:
        sender = self.senders.get(event.kind)
        if sender is None:
            log.error("dropping %s delivery %s to %s: no sender for it", event.kind,
                      event.event_id, event.function_name)
            self._complete_soon(event.event_id)
            return
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, sender, event.function_name, event.payload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            next_at = self._clock() + self._backoff[min(event.throttles, len(self._backoff) - 1)]
            if next_at > event.enqueued_at + self._settings.max_event_age_s:
                log.error("dropping %s delivery %s to %s after %d tries: %s", event.kind,
                          event.event_id, event.function_name, event.throttles + 1, exc)
                self._complete_soon(event.event_id)
            else:
                log.warning("%s delivery %s to %s failed (%s); retrying", event.kind,
                            event.event_id, event.function_name, exc)
                self._queue.retry(event.event_id, event.attempts, next_at,
                                  throttles=event.throttles + 1)
            return
        self._complete_soon(event.event_id)

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
        if self._finished:  # finished events whose removal was not committed yet
            self._commit_finished()
