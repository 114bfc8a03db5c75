"""The schedule loop under an injected clock: firing, the scheduled event, missed runs."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from corral.events.eventbridge import EventsApi, RuleStore
from corral.events.scheduler import RuleScheduler
from corral.store.sqlite import Database

REGION, ACCOUNT = "us-east-1", "000000000000"
FN_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:job"


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Clock:
    """A settable clock; `sleep` advances it instead of waiting."""

    def __init__(self, start: float) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class Submitted:
    """A fake asynchronous submitter recording what the loop enqueues."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, dict]] = []
        self.fail = False

    def __call__(self, event_id: str, name: str, qualifier: str, payload: bytes) -> None:
        if self.fail:
            raise RuntimeError("queue unavailable")
        self.calls.append((event_id, name, qualifier, json.loads(payload)))


@pytest.fixture
def db(tmp_path: Path):
    database = Database(tmp_path / "corral.db")
    yield database
    database.close()


class Env:
    def __init__(self, db: Database, start: float) -> None:
        self.db = db
        self.clock = Clock(start)
        self.submitted = Submitted()
        self.store = RuleStore(db)
        self.scheduler = self.new_scheduler()
        self.api = EventsApi(self.store, REGION, ACCOUNT, clock=self.clock,
                             on_change=lambda name: self.scheduler.rule_changed(name))

    def new_scheduler(self) -> RuleScheduler:
        """A scheduler as a (re)started server makes it, over the same database."""
        return RuleScheduler(self.store, self.submitted, REGION, ACCOUNT, clock=self.clock,
                             sleep=self.clock.sleep)

    def rule(self, name: str, expression: str, **target: str) -> None:
        self.api.handle("PutRule", {"Name": name, "ScheduleExpression": expression})
        self.api.handle("PutTargets", {"Rule": name, "Targets": [
            {"Id": "t1", "Arn": FN_ARN, **target}]})

    async def run_until(self, end: float) -> None:
        """Run the loop until the clock passes `end`."""
        task = asyncio.ensure_future(self.scheduler.run())
        while self.clock.now < end:
            await asyncio.sleep(0)
        self.scheduler.close()
        await asyncio.wait_for(task, 5)

    def fired_times(self) -> list[str]:
        return [call[3]["time"] for call in self.submitted.calls]


def make_env(db: Database, start: str) -> Env:
    return Env(db, ts(start))


async def test_cron_rule_fires_through_the_loop(db):
    """A cron rule fires at each scheduled minute as the injected clock advances."""
    env = make_env(db, "2024-01-01T11:58:30")
    env.scheduler.load()
    env.rule("noonish", "cron(0/1 12 * * ? *)")
    await env.run_until(ts("2024-01-01T12:02:30"))
    assert env.fired_times() == ["2024-01-01T12:00:00Z", "2024-01-01T12:01:00Z",
                                 "2024-01-01T12:02:00Z"]
    assert max(env.clock.sleeps) <= 60


async def test_scheduled_event_format(db):
    """The payload is the §6.6 scheduled event for the rule, sent to the target function."""
    env = make_env(db, "2024-03-01T01:22:10")
    env.scheduler.load()
    env.rule("every-minute", "cron(* * * * ? *)")
    env.scheduler.tick(ts("2024-03-01T01:23:00"))
    (event_id, name, qualifier, event), = env.submitted.calls
    assert (name, qualifier) == ("job", "$LATEST")
    assert event == {
        "version": "0", "id": event["id"], "detail-type": "Scheduled Event",
        "source": "aws.events", "account": ACCOUNT, "time": "2024-03-01T01:23:00Z",
        "region": REGION, "resources": [f"arn:aws:events:{REGION}:{ACCOUNT}:rule/every-minute"],
        "detail": {}}
    assert event["id"] != event_id and len(event["id"]) == 36


async def test_constant_input_and_qualified_target(db):
    """A target's Input replaces the event; a qualified ARN keeps its qualifier."""
    env = make_env(db, "2024-01-01T00:00:00")
    env.scheduler.load()
    env.api.handle("PutRule", {"Name": "r", "ScheduleExpression": "rate(1 minute)"})
    env.api.handle("PutTargets", {"Rule": "r", "Targets": [
        {"Id": "a", "Arn": FN_ARN + ":prod", "Input": '{"job": "nightly"}'}]})
    env.scheduler.tick(ts("2024-01-01T00:01:00"))
    assert [(c[1], c[2], c[3]) for c in env.submitted.calls] == [
        ("job", "prod", {"job": "nightly"})]


async def test_rate_rule_counts_from_creation(db):
    """rate(5 minutes) created at 10:02:30 fires at 10:07:30, 10:12:30, ..."""
    env = make_env(db, "2024-01-01T10:02:30")
    env.scheduler.load()
    env.rule("five", "rate(5 minutes)")
    assert env.scheduler.next_fire("five") == ts("2024-01-01T10:07:30")
    await env.run_until(ts("2024-01-01T10:20:00"))
    assert env.fired_times() == ["2024-01-01T10:07:30Z", "2024-01-01T10:12:30Z",
                                 "2024-01-01T10:17:30Z"]


async def test_disabled_rule_does_not_fire(db):
    """DisableRule stops runs, EnableRule resumes them from the next scheduled time."""
    env = make_env(db, "2024-01-01T00:00:30")
    env.scheduler.load()
    env.rule("r", "cron(* * * * ? *)")
    env.api.handle("DisableRule", {"Name": "r"})
    assert env.scheduler.next_fire("r") is None
    env.scheduler.tick(ts("2024-01-01T00:05:00"))
    assert env.submitted.calls == []
    env.clock.now = ts("2024-01-01T00:05:10")
    env.api.handle("EnableRule", {"Name": "r"})
    assert env.scheduler.next_fire("r") == ts("2024-01-01T00:06:00")


async def test_deleted_rule_is_forgotten(db):
    """After its targets are removed and it is deleted, a rule is no longer planned."""
    env = make_env(db, "2024-01-01T00:00:30")
    env.scheduler.load()
    env.rule("r", "cron(* * * * ? *)")
    env.api.handle("RemoveTargets", {"Rule": "r", "Ids": ["t1"]})
    env.api.handle("DeleteRule", {"Name": "r"})
    assert env.scheduler.next_fire("r") is None
    assert env.scheduler.tick(ts("2024-01-02T00:00:00")) == []


class TestMissedRuns:
    async def test_no_backfill_after_downtime(self, db):
        """Runs that fell while the server was down are skipped; the next one fires on time."""
        env = make_env(db, "2024-01-01T08:30:00")
        env.scheduler.load()
        env.rule("hourly", "cron(0 * * * ? *)")
        env.scheduler.tick(ts("2024-01-01T09:00:00"))
        assert env.fired_times() == ["2024-01-01T09:00:00Z"]
        # The server stops, and starts again at 12:30: the 10:00, 11:00 and 12:00 runs are lost.
        env.clock.now = ts("2024-01-01T12:30:00")
        env.scheduler = env.new_scheduler()
        await env.run_until(ts("2024-01-01T14:30:00"))
        assert env.fired_times() == ["2024-01-01T09:00:00Z", "2024-01-01T13:00:00Z",
                                     "2024-01-01T14:00:00Z"]

    async def test_restart_never_fires_a_run_twice(self, db):
        """A restart whose clock reads before the last fired run does not repeat it."""
        env = make_env(db, "2024-01-01T08:59:00")
        env.scheduler.load()
        env.rule("hourly", "cron(0 * * * ? *)")
        env.scheduler.tick(ts("2024-01-01T09:00:05"))
        assert env.store.get("hourly").last_fired == ts("2024-01-01T09:00:00")
        env.clock.now = ts("2024-01-01T08:59:50")  # the clock stepped back
        env.scheduler = env.new_scheduler()
        env.scheduler.load()
        assert env.scheduler.next_fire("hourly") == ts("2024-01-01T10:00:00")
        env.scheduler.tick(ts("2024-01-01T09:00:30"))
        assert env.fired_times() == ["2024-01-01T09:00:00Z"]

    async def test_late_loop_fires_the_latest_run_once(self, db):
        """A loop held up past several runs fires only the latest of them, late."""
        env = make_env(db, "2024-01-01T00:00:30")
        env.scheduler.load()
        env.rule("r", "cron(* * * * ? *)")
        fired = env.scheduler.tick(ts("2024-01-01T00:05:20"))
        assert [(f.scheduled_at, f.fired_at) for f in fired] == [
            (ts("2024-01-01T00:05:00"), ts("2024-01-01T00:05:20"))]
        assert env.fired_times() == ["2024-01-01T00:05:00Z"]
        assert env.scheduler.next_fire("r") == ts("2024-01-01T00:06:00")

    async def test_failed_submit_records_nothing(self, db):
        """If the queue refuses the run, last_fired is not recorded and the loop moves on."""
        env = make_env(db, "2024-01-01T00:00:30")
        env.scheduler.load()
        env.rule("r", "cron(* * * * ? *)")
        env.submitted.fail = True
        env.scheduler.tick(ts("2024-01-01T00:01:00"))
        assert env.store.get("r").last_fired is None
        assert env.scheduler.next_fire("r") == ts("2024-01-01T00:02:00")


async def test_rule_without_targets_fires_nothing(db):
    """A rule without targets advances its schedule without submitting anything."""
    env = make_env(db, "2024-01-01T00:00:30")
    env.scheduler.load()
    env.api.handle("PutRule", {"Name": "empty", "ScheduleExpression": "cron(* * * * ? *)"})
    fired = env.scheduler.tick(ts("2024-01-01T00:01:00"))
    assert [f.targets for f in fired] == [0] and env.submitted.calls == []
