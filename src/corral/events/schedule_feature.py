"""The schedules feature: the EventBridge rules API and the loop that fires the rules.

`install(runtime)` registers the `AWSEvents` JSON 1.1 target on the endpoint and starts a
`RuleScheduler` that submits each run to the durable asynchronous queue.

`CORRAL_SCHEDULE_TIME_SCALE` (default 1) is an operator and test knob: the schedule clock runs
that many times faster than real time from the server's start (60 makes `rate(1 minute)` fire
every real second). Leave it unset in production.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.routing import BaseRoute

from corral.errors import ConfigError
from corral.events.eventbridge import EventsApi, RuleStore
from corral.events.scheduler import RuleScheduler

if TYPE_CHECKING:
    from corral.server import Runtime

TIME_SCALE_ENV = "CORRAL_SCHEDULE_TIME_SCALE"


def scaled_clock(scale: float, real: Callable[[], float] = time.time) -> Callable[[], float]:
    """A clock that starts at the real time now and runs `scale` times faster."""
    if scale == 1.0:
        return real
    origin = real()
    return lambda: origin + (real() - origin) * scale


def time_scale(environ: dict[str, str] | None = None) -> float:
    env = os.environ if environ is None else environ
    raw = env.get(TIME_SCALE_ENV)
    if not raw:
        return 1.0
    try:
        scale = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{TIME_SCALE_ENV} must be a number, not {raw!r}") from exc
    if scale <= 0:
        raise ConfigError(f"{TIME_SCALE_ENV} must be positive")
    return scale


class ScheduleFeature:
    name = "schedules"

    def __init__(self, scheduler: RuleScheduler, api: EventsApi) -> None:
        self.scheduler = scheduler
        self.api = api
        self.routes: list[BaseRoute] = []
        self._task: asyncio.Task[Any] | None = None

    async def start(self) -> None:
        self.scheduler.load()
        self._task = asyncio.ensure_future(self.scheduler.run())

    async def stop(self) -> None:
        self.scheduler.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def install(runtime: Runtime) -> ScheduleFeature:
    settings = runtime.settings
    scale = time_scale()
    clock = scaled_clock(scale)
    store = RuleStore(runtime.db)
    scheduler = RuleScheduler(store, runtime.async_invoker.submit, settings.region,
                              settings.account_id, clock=clock, time_scale=scale)
    api = EventsApi(store, settings.region, settings.account_id, clock=clock,
                    on_change=scheduler.rule_changed)
    runtime.services.json_targets["AWSEvents"] = api
    runtime.services.extras["schedules"] = scheduler
    return ScheduleFeature(scheduler, api)
