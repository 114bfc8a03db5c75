"""The metering feature: billing records, Prometheus metrics, and log retention upkeep.

`install(runtime)` hooks the scheduler's observers (billing, metrics, throttles) and serves:

    GET /metrics                         Prometheus text format, unauthenticated (firewall it)
    GET /_corral/stats                   the per-function numbers as JSON (signed; `corral stats`)
    GET /_corral/billing?month=YYYY-MM[&function=NAME]
                                         the month's bill as JSON (signed; `corral bill`)
    GET /_corral/billing/records?request_id=ID|function=NAME[&month=YYYY-MM][&limit=N]
                                         billing records, newest first (signed)

A background task flushes buffered billing records every `FLUSH_INTERVAL_S` and runs
`logs_api.enforce_retention()` at start and then every `RETENTION_INTERVAL_S` (60 s, or the
`CORRAL_RETENTION_INTERVAL` environment variable, in seconds), both in worker threads. Reads of
billing data flush first, so a report includes every invocation that had finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from corral.api.common import json_response, signed_body
from corral.errors import InvalidParameterValueException
from corral.metering.billing import BillingRecorder, BillingStore, Month, monthly_report
from corral.metering.metrics import Metrics
from corral.metering.prices import PriceTable, load_prices

if TYPE_CHECKING:
    from corral.server import Runtime

__all__ = ["FLUSH_INTERVAL_S", "MeteringFeature", "install", "retention_interval"]

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 1.0
DEFAULT_RETENTION_INTERVAL_S = 60.0
MAX_RECORDS = 1000
_ACTIVE_STATES = frozenset({"starting", "busy"})


def retention_interval() -> float:
    """Seconds between retention sweeps: CORRAL_RETENTION_INTERVAL, default 60."""
    value = os.environ.get("CORRAL_RETENTION_INTERVAL")
    if not value:
        return DEFAULT_RETENTION_INTERVAL_S
    try:
        seconds = float(value)
    except ValueError:
        log.warning("ignoring CORRAL_RETENTION_INTERVAL=%r: not a number", value)
        return DEFAULT_RETENTION_INTERVAL_S
    return max(seconds, 0.1)


class MeteringFeature:
    """Billing, metrics and retention for one server run."""

    name = "metering"

    def __init__(self, runtime: Runtime, prices: PriceTable | None = None) -> None:
        self._runtime = runtime
        settings = runtime.settings
        self.prices = prices or load_prices(settings.data_dir)
        self.store = BillingStore(runtime.db)
        self.recorder = BillingRecorder(self.store, self.prices, settings.billing_granularity_ms)
        scheduler = runtime.scheduler
        self.metrics = Metrics(
            concurrency=self._concurrency_by_function,
            account_concurrency=lambda: scheduler.concurrent_executions,
            concurrency_limit=settings.limits.account_concurrency,
            log_counts=runtime.logs_api.metric_filter_counts)
        scheduler.observers.append(self.recorder.observe)
        scheduler.observers.append(self.metrics.observe)
        scheduler.throttle_observers.append(self.metrics.observe_throttle)
        self.retention_interval_s = retention_interval()
        self.flush_interval_s = FLUSH_INTERVAL_S
        self._task: asyncio.Task[None] | None = None
        self.routes: list[BaseRoute] = [
            Route("/metrics", self.metrics_endpoint, methods=["GET"]),
            Route("/_corral/stats", self.stats_endpoint, methods=["GET"]),
            Route("/_corral/billing", self.billing_endpoint, methods=["GET"]),
            Route("/_corral/billing/records", self.records_endpoint, methods=["GET"]),
        ]

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._maintain())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(self.recorder.close)

    async def _maintain(self) -> None:
        next_retention = 0.0  # a sweep at start catches what expired while the server was down
        while True:
            now = time.monotonic()
            if now >= next_retention:
                next_retention = now + self.retention_interval_s
                try:
                    deleted = await asyncio.to_thread(self._runtime.logs_api.enforce_retention)
                    if deleted:
                        log.info("retention: deleted %d expired log events", deleted)
                except Exception:
                    log.exception("enforcing log retention failed")
            try:
                await asyncio.to_thread(self.recorder.flush)
            except Exception:
                log.exception("flushing billing records failed")
            await asyncio.sleep(self.flush_interval_s)

    # -- sources ------------------------------------------------------------------------------

    def _concurrency_by_function(self) -> dict[str, int]:
        """Instances starting or busy, per function (read on the event-loop thread)."""
        scheduler = self._runtime.scheduler
        names = {c.name for c in self._runtime.registry.all_functions()}
        names.update(self.metrics.snapshot())
        return {name: sum(1 for inst in scheduler.instances(name)
                          if inst.state.value in _ACTIVE_STATES)
                for name in names}

    # -- HTTP ---------------------------------------------------------------------------------

    async def metrics_endpoint(self, request: Request) -> Response:
        """Prometheus exposition; log metric counts are read in a worker thread first."""
        if self.metrics.log_metrics is not None:
            try:
                counts = await asyncio.to_thread(self._runtime.logs_api.metric_filter_counts)
            except Exception:
                log.exception("reading metric filter counts failed")
                counts = []
            self.metrics.log_metrics.prime(counts)
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def stats_endpoint(self, request: Request) -> Response:
        await signed_body(request)
        return json_response(self.metrics.stats())

    async def billing_endpoint(self, request: Request) -> Response:
        await signed_body(request)
        params = request.query_params
        month = Month.parse(params["month"]) if params.get("month") else Month.current()
        function = params.get("function") or None
        report = await asyncio.to_thread(self.report, month, function)
        return json_response(report)

    async def records_endpoint(self, request: Request) -> Response:
        await signed_body(request)
        params = request.query_params
        request_id = params.get("request_id") or None
        function = params.get("function") or None
        month = Month.parse(params["month"]) if params.get("month") else None
        try:
            limit = int(params.get("limit") or 100)
        except ValueError:
            limit = -1
        if not 1 <= limit <= MAX_RECORDS:
            raise InvalidParameterValueException(f"limit must be 1 to {MAX_RECORDS}")
        if request_id is None and function is None and month is None:
            raise InvalidParameterValueException("give request_id, function or month")

        def read() -> list[dict[str, Any]]:
            self.recorder.flush()
            return [r.to_json() for r in self.store.records(
                request_id=request_id, function=function, month=month, limit=limit)]

        return json_response({"records": await asyncio.to_thread(read)})

    def report(self, month: Month, function: str | None = None) -> dict[str, Any]:
        """The month's bill (flushes pending records first); runs in a worker thread."""
        self.recorder.flush()
        return monthly_report(month, self.store.usage(month), self.prices,
                              self.recorder.granularity_ms, function)


def install(runtime: Runtime) -> MeteringFeature:
    """The `install(runtime) -> Feature` entry point server.FEATURES names."""
    return MeteringFeature(runtime)
