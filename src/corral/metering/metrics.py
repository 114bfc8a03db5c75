"""Prometheus metrics per function, and the same numbers as JSON for `corral stats`.

The invoke hot path only bumps plain integers (`Metrics.observe`, a scheduler observer, and
`Metrics.observe_throttle`, a throttle observer, both on the event-loop thread); everything is
turned into metric families when scraped, by collectors registered in a dedicated
`CollectorRegistry` (never prometheus-client's global one):

    corral_invocations_total{function}         invocations that ran (any outcome)
    corral_errors_total{function}              invocations that ended in a function error
                                               (unhandled exception, timeout, crash, init error)
    corral_throttles_total{function}           invocations refused with TooManyRequestsException
    corral_cold_starts_total{function}         invocations that started a new instance
    corral_duration_seconds{function}          histogram of invocation durations (the REPORT
                                               line's Duration), Lambda-ish buckets
    corral_concurrent_executions{function}     instances starting or running an invocation now
    corral_account_concurrent_executions       the same across the account (the scheduler's count)
    corral_account_concurrency_limit           the account's concurrency limit
    corral_log_metric{namespace,name,log_group,filter}
                                               a CloudWatch Logs metric filter's value (the sum
                                               of metricValue over matching events)
    corral_log_metric_matches{namespace,name,log_group,filter}
                                               how many log events matched it

Counters count since the server started (Prometheus handles resets). `/metrics` is served
without authentication, as exporters are: operators should firewall it (docs/billing.md).
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from corral.errors import TooManyRequestsException
from corral.logs.store import MetricFilterCount
from corral.model import Invocation, InvocationResult

__all__ = [
    "DURATION_BUCKETS_S",
    "FunctionStats",
    "LogMetricsCollector",
    "Metrics",
    "quantile",
]

log = logging.getLogger(__name__)

DURATION_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
    900.0)
"""Upper bounds (seconds) of the duration histogram: 1 ms up to Lambda's 900 s maximum."""


def quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """Estimate the q-quantile from per-bucket (not cumulative) counts, as histogram_quantile.

    `counts` has one more entry than `bounds` (the +Inf bucket). Linear interpolation inside
    the bucket holding the rank; the first bucket starts at 0; a rank in +Inf gives the
    highest finite bound. None when there are no observations.
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            if i >= len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * ((rank - seen) / count)
        seen += count
    return bounds[-1]


@dataclass
class FunctionStats:
    """One function's counters since the server started."""

    invocations: int = 0
    errors: int = 0
    throttles: int = 0
    cold_starts: int = 0
    duration_sum_s: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS_S) + 1))

    def percentile_ms(self, q: float) -> float | None:
        value = quantile(q, DURATION_BUCKETS_S, self.buckets)
        return None if value is None else round(value * 1000, 3)

    def to_json(self) -> dict[str, Any]:
        durations = sum(self.buckets)
        return {
            "invocations": self.invocations,
            "errors": self.errors,
            "throttles": self.throttles,
            "cold_starts": self.cold_starts,
            "duration_ms": {
                "count": durations,
                "sum": round(self.duration_sum_s * 1000, 3),
                "avg": round(self.duration_sum_s * 1000 / durations, 3) if durations else None,
                "p50": self.percentile_ms(0.5),
                "p99": self.percentile_ms(0.99),
            },
        }


class _FunctionCollector(Collector):
    """Counters, the duration histogram and concurrency, read when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snapshot = self._metrics.snapshot()
        concurrency = self._metrics.concurrency_by_function()
        names = sorted(set(snapshot) | set(concurrency))
        families = {
            "invocations": CounterMetricFamily(
                "corral_invocations", "Invocations that ran, by function.", labels=["function"]),
            "errors": CounterMetricFamily(
                "corral_errors", "Invocations that ended in a function error, by function.",
                labels=["function"]),
            "throttles": CounterMetricFamily(
                "corral_throttles", "Invocations throttled (TooManyRequestsException), "
                "by function.", labels=["function"]),
            "cold_starts": CounterMetricFamily(
                "corral_cold_starts", "Invocations that started a new instance, by function.",
                labels=["function"]),
        }
        duration = HistogramMetricFamily(
            "corral_duration_seconds", "Invocation duration (the REPORT line's Duration).",
            labels=["function"])
        gauge = GaugeMetricFamily(
            "corral_concurrent_executions",
            "Instances of the function starting or running an invocation now.",
            labels=["function"])
        for name in names:
            stats = snapshot.get(name)
            if stats is not None:
                for attr, family in families.items():
                    family.add_metric([name], getattr(stats, attr))
                cumulative, running = [], 0
                for bound, count in zip((*DURATION_BUCKETS_S, float("inf")), stats.buckets,
                                        strict=True):
                    running += count
                    cumulative.append((_bound_label(bound), running))
                duration.add_metric([name], cumulative, stats.duration_sum_s)
            gauge.add_metric([name], concurrency.get(name, 0))
        yield from families.values()
        yield duration
        yield gauge
        yield GaugeMetricFamily("corral_account_concurrent_executions",
                                "Instances starting or running an invocation, all functions.",
                                value=self._metrics.account_concurrency())
        limit = self._metrics.concurrency_limit
        if limit is not None:
            yield GaugeMetricFamily("corral_account_concurrency_limit",
                                    "The account's concurrent executions limit.", value=limit)


def _bound_label(bound: float) -> str:
    if bound == float("inf"):
        return "+Inf"
    return repr(float(bound))


class LogMetricsCollector(Collector):
    """CloudWatch Logs metric filters' running totals, read from the log store when scraped.

    `prime(counts)` hands over counts read elsewhere (the /metrics handler reads them in a worker
    thread, so the event loop never waits for the database); the next `collect` uses them
    instead of calling `source`.
    """

    def __init__(self, source: Callable[[], Sequence[MetricFilterCount]]) -> None:
        self._source = source
        self._primed: Sequence[MetricFilterCount] | None = None
        self._lock = threading.Lock()

    def prime(self, counts: Sequence[MetricFilterCount]) -> None:
        with self._lock:
            self._primed = counts

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts, self._primed = self._primed, None
        if counts is None:
            try:
                counts = self._source()
            except Exception:
                log.exception("reading metric filter counts failed")
                counts = []
        labels = ["namespace", "name", "log_group", "filter"]
        value = GaugeMetricFamily(
            "corral_log_metric", "A CloudWatch Logs metric filter's value (sum of metricValue "
            "over matching log events).", labels=labels)
        matches = GaugeMetricFamily(
            "corral_log_metric_matches", "Log events a metric filter has matched.", labels=labels)
        for count in counts:
            key = [count.metric_namespace, count.metric_name, count.group, count.filter_name]
            value.add_metric(key, count.value)
            matches.add_metric(key, count.matches)
        yield value
        yield matches


class Metrics:
    """Per-function counters fed by the scheduler's observers, exported to Prometheus."""

    def __init__(self, *,
                 concurrency: Callable[[], Mapping[str, int]] = dict,
                 account_concurrency: Callable[[], int] = lambda: 0,
                 concurrency_limit: int | None = None,
                 log_counts: Callable[[], Sequence[MetricFilterCount]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._functions: dict[str, FunctionStats] = {}
        self._concurrency = concurrency
        self._account_concurrency = account_concurrency
        self.concurrency_limit = concurrency_limit
        self.started_at = clock()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_FunctionCollector(self))
        self.log_metrics: LogMetricsCollector | None = None
        if log_counts is not None:
            self.log_metrics = LogMetricsCollector(log_counts)
            self.registry.register(self.log_metrics)

    # -- observers (hot path: integers only) -------------------------------------------------

    def _stats(self, name: str) -> FunctionStats:
        stats = self._functions.get(name)
        if stats is None:
            stats = self._functions[name] = FunctionStats()
        return stats

    def observe(self, invocation: Invocation, result: InvocationResult) -> None:
        """A scheduler observer: count an invocation that ran."""
        stats = self._stats(invocation.function.name)
        stats.invocations += 1
        if result.function_error:
            stats.errors += 1
        if result.cold_start:
            stats.cold_starts += 1
        seconds = result.duration_ms / 1000
        stats.duration_sum_s += seconds
        stats.buckets[bisect.bisect_left(DURATION_BUCKETS_S, seconds)] += 1

    def observe_throttle(self, invocation: Invocation, exc: TooManyRequestsException) -> None:
        """A throttle observer: count a throttled invocation."""
        self._stats(invocation.function.name).throttles += 1

    # -- reading -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, FunctionStats]:
        """A copy of every function's counters."""
        return {name: FunctionStats(s.invocations, s.errors, s.throttles, s.cold_starts,
                                    s.duration_sum_s, list(s.buckets))
                for name, s in list(self._functions.items())}

    def concurrency_by_function(self) -> dict[str, int]:
        try:
            return dict(self._concurrency())
        except Exception:
            log.exception("reading per-function concurrency failed")
            return {}

    def account_concurrency(self) -> int:
        return self._account_concurrency()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def stats(self) -> dict[str, Any]:
        """The per-function numbers as JSON-ready data (`GET /_corral/stats`)."""
        snapshot = self.snapshot()
        concurrency = self.concurrency_by_function()
        functions = []
        for name in sorted(set(snapshot) | set(concurrency)):
            row = {"function": name, **snapshot.get(name, FunctionStats()).to_json(),
                   "concurrent_executions": concurrency.get(name, 0)}
            functions.append(row)
        totals = FunctionStats()
        for s in snapshot.values():
            totals.invocations += s.invocations
            totals.errors += s.errors
            totals.throttles += s.throttles
            totals.cold_starts += s.cold_starts
            totals.duration_sum_s += s.duration_sum_s
            totals.buckets = [a + b for a, b in zip(totals.buckets, s.buckets, strict=True)]
        return {
            "since": self.started_at,
            "duration_buckets_ms": [b * 1000 for b in DURATION_BUCKETS_S],
            "functions": functions,
            "account": {**totals.to_json(),
                        "concurrent_executions": self.account_concurrency(),
                        "concurrency_limit": self.concurrency_limit},
        }
