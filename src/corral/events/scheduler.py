"""The schedule loop: fires enabled rules at their times as asynchronous invokes.

Each firing delivers, to every target of the rule, the scheduled event (spec §6.6)

    {"version": "0", "id": <uuid>, "detail-type": "Scheduled Event", "source": "aws.events",
     "account": <account>, "time": "2019-03-01T01:23:00Z", "region": <region>,
     "resources": ["arn:aws:events:<region>:<account>:rule/<name>"], "detail": {}}

(`time` is the run's scheduled time; one `id` per run, shared by its targets) or the target's
constant `Input`, through `submit(event_id, function_name, qualifier, payload)` (the durable
async queue). The events and the rule's new `last_fired` are written in one transaction.

Missed runs (the rule Corral follows, like EventBridge, which never backfills):

* runs that fell while the server was down are not delivered: after a start, a rule next fires
  at its first scheduled time strictly after the start (and after its `last_fired`, so a run is
  never fired twice, even if the clock went backwards or the server restarted within a run's
  minute);
* while the server runs, a run is fired once when its time comes; if the loop was held up
  past several runs (the machine slept, the loop stalled), only the latest of them is fired,
  late, and the others are skipped.

The clock and the sleep are injected (`clock() -> epoch seconds`, `async sleep(seconds)`), so
tests drive the loop through hours of schedule in milliseconds; the default sleep wakes early
when a rule changes. `time_scale` makes the default sleep wait `seconds / time_scale` (for an
operator clock that runs faster than real time, `CORRAL_SCHEDULE_TIME_SCALE`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from corral.errors import LambdaApiError
from corral.events.eventbridge import Rule, RuleStore, function_target, rule_arn
from corral.events.schedule_expr import Schedule, ScheduleError, parse

__all__ = ["Fired", "RuleScheduler", "Submit", "scheduled_event"]

log = logging.getLogger(__name__)

Submit = Callable[[str, str, str, bytes], None]  # event_id, function name, qualifier, payload
MAX_SLEEP_S = 60.0


@dataclass(frozen=True)
class Fired:
    """One run of a rule: when it was scheduled, when it fired, how many targets got it."""

    rule: str
    scheduled_at: float
    fired_at: float
    targets: int


def scheduled_event(event_id: str, at: float, region: str, account: str, rule: str) -> bytes:
    """The §6.6 scheduled event for a run of `rule` scheduled at `at`."""
    return json.dumps({
        "version": "0",
        "id": event_id,
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [rule_arn(region, account, rule)],
        "detail": {},
    }).encode()


class RuleScheduler:
    def __init__(self, store: RuleStore, submit: Submit, region: str, account: str,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] | None = None,
                 time_scale: float = 1.0) -> None:
        self._store = store
        self._submit = submit
        self._region = region
        self._account = account
        self._clock = clock
        self._sleep = sleep or self._wait
        self._scale = time_scale
        self._wakeup = asyncio.Event()
        self._closing = False
        self._next: dict[str, float] = {}
        self._schedules: dict[str, Schedule] = {}
        self.fired: list[Fired] = []  # the latest runs, for tests and diagnostics
        self.loaded = False

    # planning -----------------------------------------------------------------------------------
    def load(self) -> None:
        """Plan every enabled rule from now on (no backfill of runs missed while down)."""
        now = self._clock()
        self._next.clear()
        self._schedules.clear()
        for rule in self._store.list_rules():
            self._plan(rule, now)
        self.loaded = True

    def _plan(self, rule: Rule, now: float) -> None:
        self._next.pop(rule.name, None)
        if not rule.enabled:
            return
        try:
            schedule = parse(rule.schedule)
        except ScheduleError as exc:
            log.error("rule %s has an invalid schedule %r: %s", rule.name, rule.schedule, exc)
            return
        self._schedules[rule.name] = schedule
        after = now if rule.last_fired is None else max(now, rule.last_fired)
        found = schedule.next_after(after, anchor=rule.anchor)
        if found is not None:
            self._next[rule.name] = found

    def rule_changed(self, name: str) -> None:
        """Re-plan `name` after PutRule, DeleteRule, EnableRule or DisableRule."""
        rule = self._store.get(name)
        if rule is None:
            self._next.pop(name, None)
            self._schedules.pop(name, None)
        else:
            self._plan(rule, self._clock())
        self._wakeup.set()

    def next_fire(self, name: str) -> float | None:
        """When `name` fires next (None: disabled, unknown, or no run left)."""
        return self._next.get(name)

    # firing -------------------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> list[Fired]:
        """Fire every rule that is due at `now` (default: the clock); returns the runs."""
        now = self._clock() if now is None else now
        fired = []
        for name, at in sorted(self._next.items(), key=lambda item: item[1]):
            if at <= now:
                run = self._fire(name, at, now)
                if run is not None:
                    fired.append(run)
        return fired

    def _fire(self, name: str, at: float, now: float) -> Fired | None:
        schedule = self._schedules[name]
        rule = self._store.get(name)
        if rule is None or not rule.enabled:
            self._next.pop(name, None)
            return None
        # A backlog (the loop was held up past several runs) collapses into its latest run.
        while True:
            later = schedule.next_after(at, anchor=rule.anchor)
            if later is None or later > now:
                break
            at = later
        targets = self._store.targets(name)
        event_id = str(uuid.uuid4())
        try:
            with self._store.transaction():
                for target in targets:
                    payload = target.input.encode() if target.input is not None else \
                        scheduled_event(event_id, at, self._region, self._account, name)
                    function_name, qualifier = function_target(target.arn)
                    self._submit(str(uuid.uuid4()), function_name, qualifier, payload)
                self._store.mark_fired(name, at)
        except LambdaApiError as exc:
            log.error("rule %s could not fire: %s", name, exc.message)
        except Exception:
            log.exception("rule %s could not fire", name)
        following = schedule.next_after(max(at, now), anchor=rule.anchor)
        if following is None:
            self._next.pop(name, None)
        else:
            self._next[name] = following
        run = Fired(name, at, now, len(targets))
        self.fired = [*self.fired[-99:], run]
        if targets:
            log.info("rule %s fired for %s (%d target(s))", name,
                     datetime.fromtimestamp(at, tz=UTC).isoformat(), len(targets))
        return run

    # the loop -----------------------------------------------------------------------------------
    async def run(self) -> None:
        """Fire rules until `close`; sleeps until the next run (at most a minute at a time)."""
        if not self.loaded:
            self.load()
        while not self._closing:
            try:
                self.tick()
            except Exception:  # the loop must survive anything
                log.exception("schedule tick failed")
            now = self._clock()
            due = min(self._next.values(), default=None)
            delay = MAX_SLEEP_S if due is None else max(0.0, min(MAX_SLEEP_S, due - now))
            await self._sleep(delay)

    async def _wait(self, seconds: float) -> None:
        self._wakeup.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds / self._scale)

    def close(self) -> None:
        self._closing = True
        self._wakeup.set()
