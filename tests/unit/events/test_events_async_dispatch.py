"""The asynchronous dispatcher with a real queue, a scripted runner and an injected clock."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from corral.config import AsyncSettings
from corral.errors import ResourceNotFoundException, ThrottleReason, TooManyRequestsException
from corral.events.destinations import SQS_KIND, follow_ups
from corral.invoke.async_queue import AsyncInvoker, Condition, EventPolicy, FinalOutcome
from corral.model import InvocationResult
from corral.store.api import AsyncEvent
from corral.store.sqlite import Database, SqliteEventQueue

DEST = "arn:aws:lambda:us-east-1:000000000000:function:dest"
QUEUE = "arn:aws:sqs:us-east-1:000000000000:dlq"


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


def ok(payload: Any = "done") -> InvocationResult:
    return InvocationResult(request_id="r", payload=json.dumps(payload).encode())


def error(message: str = "boom") -> InvocationResult:
    return InvocationResult(request_id="r", payload=json.dumps(
        {"errorMessage": message, "errorType": "ValueError"}).encode(),
        function_error="Unhandled")


def throttle() -> TooManyRequestsException:
    return TooManyRequestsException("Rate Exceeded.",
                                    ThrottleReason.RESERVED_FUNCTION_CONCURRENCY)


class Harness:
    def __init__(self, db: Database, policy: EventPolicy | None = None) -> None:
        self.clock = Clock()
        self.queue = SqliteEventQueue(db)
        self.script: dict[str, list[Any]] = {}
        self.runs: list[tuple[str, dict]] = []
        self.outcomes: list[FinalOutcome] = []
        self.policy = policy or EventPolicy(2, 21600)
        self.invoker = AsyncInvoker(self.queue, AsyncSettings(retry_delays_s=(60.0, 120.0)),
                                    self.run, clock=self.clock)
        self.invoker.policy_for = lambda event: self.policy
        self.invoker.router = self.route

    async def run(self, event: AsyncEvent) -> InvocationResult:
        self.runs.append((event.function_name, json.loads(event.payload)))
        step = self.script[event.function_name].pop(0)
        if isinstance(step, Exception):
            raise step
        result: InvocationResult = step
        return result

    def route(self, outcome: FinalOutcome) -> list:
        self.outcomes.append(outcome)
        return follow_ups(outcome, lambda name, q: f"arn:fn:{name}:{q}")

    def submit(self, name: str = "work", payload: dict | None = None) -> None:
        self.invoker.submit("req-1", name, "$LATEST", json.dumps(payload or {"n": 1}).encode())

    async def at(self, offset: float) -> int:
        """Move the clock `offset` seconds on and deliver what is due."""
        self.clock.now += offset
        return await self.invoker.deliver_due()


@pytest.fixture
def db(tmp_path: Path):
    database = Database(tmp_path / "corral.db")
    yield database
    database.close()


async def test_function_errors_retry_after_the_delays(db):
    """Two retries after 60 s and 120 s, then RetriesExhausted with the last error."""
    h = Harness(db)
    h.script["work"] = [error("one"), error("two"), error("three")]
    h.submit()
    assert await h.at(0) == 1
    assert await h.at(59) == 0
    assert await h.at(1) == 1
    assert await h.at(119) == 0
    assert await h.at(1) == 1
    (outcome,) = h.outcomes
    assert outcome.condition == Condition.RETRIES_EXHAUSTED and outcome.attempts == 3
    assert outcome.response is not None and b"three" in outcome.response.payload
    assert h.queue.pending() == 0


async def test_zero_retries(db):
    """MaximumRetryAttempts 0: the first error is final."""
    h = Harness(db, EventPolicy(0, 21600))
    h.script["work"] = [error()]
    h.submit()
    await h.at(0)
    assert [o.attempts for o in h.outcomes] == [1]
    assert await h.at(1000) == 0 and len(h.runs) == 1


async def test_throttles_back_off_without_using_attempts(db):
    """Throttles are retried after 1 s, 2 s, ... and the event keeps its attempts."""
    h = Harness(db, EventPolicy(0, 21600))
    h.script["work"] = [throttle(), throttle(), error()]
    h.submit()
    await h.at(0)
    assert await h.at(0.9) == 0
    assert await h.at(0.1) == 1  # second throttle
    assert await h.at(1.9) == 0
    assert await h.at(0.1) == 1  # runs, fails, no retries left
    (outcome,) = h.outcomes
    assert outcome.condition == Condition.RETRIES_EXHAUSTED and outcome.attempts == 1


async def test_event_older_than_its_age_is_not_run(db):
    """An event found past its maximum age ends as EventAgeExceeded without running."""
    h = Harness(db, EventPolicy(2, 60))
    h.script["work"] = [throttle()]
    h.submit()
    await h.at(0)  # throttled, next try in 1 s
    h.clock.now += 3600  # the server was down
    await h.invoker.deliver_due()
    (outcome,) = h.outcomes
    assert outcome.condition == Condition.EVENT_AGE_EXCEEDED
    assert outcome.attempts == 0 and outcome.response is None
    assert len(h.runs) == 1


async def test_retry_past_the_age_ends_at_once(db):
    """When the next retry would be past the maximum age the event ends right away."""
    h = Harness(db, EventPolicy(2, 90, on_failure=DEST))
    h.script["work"] = [error(), error()]
    h.submit()
    await h.at(0)
    assert h.outcomes == []  # the first retry (60 s) is within the age
    await h.at(60)  # the second (120 s later) would not be
    (outcome,) = h.outcomes
    assert outcome.condition == Condition.EVENT_AGE_EXCEEDED and outcome.attempts == 2
    assert outcome.response is not None and outcome.response.function_error == "Unhandled"


async def test_destination_runs_through_the_queue(db):
    """OnSuccess enqueues an invoke of the destination with the invocation record."""
    h = Harness(db)
    h.invoker.policy_for = lambda event: EventPolicy(
        2, 21600, on_success=DEST if event.function_name == "work" else None)
    h.script["work"] = [ok({"answer": 42})]
    h.script["dest"] = [ok()]
    h.submit(payload={"q": "?"})
    assert await h.at(0) == 2  # the work, then its destination
    name, record = h.runs[1]
    assert name == "dest"
    assert record["requestContext"]["condition"] == "Success"
    assert record["requestContext"]["functionArn"] == "arn:fn:work:$LATEST"
    assert record["requestPayload"] == {"q": "?"}
    assert record["responsePayload"] == {"answer": 42}


async def test_missing_function_is_dropped(db):
    """An event whose function is gone is removed without reaching any destination."""
    h = Harness(db, EventPolicy(2, 21600, on_failure=DEST))
    h.script["work"] = [ResourceNotFoundException("Function not found")]
    h.submit()
    await h.at(0)
    assert h.outcomes == [] and h.queue.pending() == 0


async def test_bookkeeping_survives_a_restart(db):
    """Attempts and the last error are kept in the store for the next server run."""
    h = Harness(db, EventPolicy(2, 21600))
    h.script["work"] = [error("first")]
    h.submit()
    await h.at(0)
    again = Harness(db, EventPolicy(2, 100))  # a new server with a shorter age
    again.clock.now = h.clock.now + 3600
    assert again.invoker.recover() == 0
    await again.invoker.deliver_due()
    (outcome,) = again.outcomes
    assert outcome.condition == Condition.EVENT_AGE_EXCEEDED and outcome.attempts == 1
    assert outcome.response is not None and b"first" in outcome.response.payload


async def test_queue_deliveries_use_the_sender(db):
    """A dead-letter queue delivery goes to the SQS sender, retried when it fails."""
    h = Harness(db, EventPolicy(0, 21600, dead_letter=QUEUE))
    h.script["work"] = [error()]
    sent: list[tuple[str, dict]] = []
    failures = [RuntimeError("endpoint down")]

    def sender(arn: str, payload: bytes) -> None:
        if failures:
            raise failures.pop()
        sent.append((arn, json.loads(payload)))

    h.invoker.senders[SQS_KIND] = sender
    h.submit(payload={"order": 7})
    await h.at(0)
    assert sent == [] and h.queue.pending() == 1
    await h.at(1)
    ((arn, message),) = sent
    assert arn == QUEUE and json.loads(message["MessageBody"]) == {"order": 7}
    assert message["MessageAttributes"]["RequestID"]["StringValue"] == "req-1"
    assert h.queue.pending() == 0


async def test_policy_lookup_failure_uses_defaults(db):
    """A failing policy lookup falls back to the operator's defaults."""
    h = Harness(db)

    def broken(event: AsyncEvent) -> EventPolicy:
        raise RuntimeError("no config")

    h.invoker.policy_for = broken
    h.script["work"] = [error(), ok()]
    h.submit()
    await h.at(0)
    await h.at(60)
    assert [o.condition for o in h.outcomes] == [Condition.SUCCESS]


def test_old_queue_tables_gain_the_new_columns(tmp_path: Path):
    """A data dir made before kind/throttles/last_result existed is migrated in place."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE async_events (event_id TEXT PRIMARY KEY, function_name TEXT NOT"
                 " NULL, qualifier TEXT NOT NULL, payload BLOB NOT NULL, attempts INTEGER NOT"
                 " NULL DEFAULT 0, enqueued_at REAL NOT NULL, next_attempt_at REAL NOT NULL,"
                 " leased INTEGER NOT NULL DEFAULT 0)")
    conn.execute("INSERT INTO async_events VALUES ('e', 'f', '$LATEST', x'7b7d', 1, 5, 5, 0)")
    conn.commit()
    conn.close()
    db = Database(path)
    try:
        (event,) = SqliteEventQueue(db).claim(10, 5)
        assert (event.event_id, event.attempts, event.kind, event.throttles) == ("e", 1,
                                                                                "invoke", 0)
    finally:
        db.close()
