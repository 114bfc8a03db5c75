"""Prometheus metrics: counters, the duration histogram, concurrency and log metric filters."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from corral.errors import ThrottleReason, TooManyRequestsException
from corral.logs.store import MetricFilterCount
from corral.metering.metrics import DURATION_BUCKETS_S, Metrics, quantile
from corral.model import CodeInfo, FunctionConfig, Invocation, InvocationResult


def _invocation(name: str) -> Invocation:
    config = FunctionConfig(name=name, runtime="python3.11", handler="app.handler",
                            role="arn:aws:iam::000000000000:role/r",
                            code=CodeInfo("0" * 64, "x", 1, 1))
    return Invocation(request_id="r", function=config, payload=b"{}", invoked_arn="arn")


def _result(duration_ms: float, **kw: Any) -> InvocationResult:
    return InvocationResult(request_id="r", payload=b"1", duration_ms=duration_ms, **kw)


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _fn(name: str, **labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"function": name, **labels}.items()))


def test_counters_and_histogram_parse_with_prometheus_client() -> None:
    """Invocations, errors, cold starts and durations come out per function, parseable."""
    metrics = Metrics()
    metrics.observe(_invocation("a"), _result(3.0, cold_start=True))
    metrics.observe(_invocation("a"), _result(40.0, function_error="Unhandled"))
    metrics.observe(_invocation("a"), _result(2000.0))
    metrics.observe(_invocation("b"), _result(0.5))
    samples = _samples(metrics)
    assert samples[("corral_invocations_total", _fn("a"))] == 3
    assert samples[("corral_errors_total", _fn("a"))] == 1
    assert samples[("corral_cold_starts_total", _fn("a"))] == 1
    assert samples[("corral_invocations_total", _fn("b"))] == 1
    assert samples[("corral_errors_total", _fn("b"))] == 0
    assert samples[("corral_duration_seconds_count", _fn("a"))] == 3
    assert samples[("corral_duration_seconds_sum", _fn("a"))] == pytest.approx(2.043)
    assert samples[("corral_duration_seconds_bucket", _fn("a", le="0.005"))] == 1
    assert samples[("corral_duration_seconds_bucket", _fn("a", le="0.05"))] == 2
    assert samples[("corral_duration_seconds_bucket", _fn("a", le="2.5"))] == 3
    assert samples[("corral_duration_seconds_bucket", _fn("a", le="+Inf"))] == 3
    assert samples[("corral_duration_seconds_bucket", _fn("b", le="0.001"))] == 1


def test_throttles_are_counted_per_function() -> None:
    """A throttle observer call counts one throttle for the function and no invocation."""
    metrics = Metrics()
    exc = TooManyRequestsException("Rate Exceeded.", ThrottleReason.CONCURRENT_INVOCATION_LIMIT)
    metrics.observe_throttle(_invocation("t"), exc)
    samples = _samples(metrics)
    assert samples[("corral_throttles_total", _fn("t"))] == 1
    assert samples[("corral_invocations_total", _fn("t"))] == 0


def test_concurrency_gauges_are_read_when_scraped() -> None:
    """Per-function and account concurrency come from their sources at each scrape."""
    current = {"a": 2}
    metrics = Metrics(concurrency=lambda: current, account_concurrency=lambda: sum(
        current.values()), concurrency_limit=10)
    samples = _samples(metrics)
    assert samples[("corral_concurrent_executions", _fn("a"))] == 2
    assert samples[("corral_account_concurrent_executions", ())] == 2
    assert samples[("corral_account_concurrency_limit", ())] == 10
    current["a"] = 0
    assert _samples(metrics)[("corral_concurrent_executions", _fn("a"))] == 0


def test_log_metric_filters_are_exported_with_their_labels() -> None:
    """Metric filter totals become corral_log_metric{namespace,name,log_group,filter}."""
    counts = [MetricFilterCount("/aws/lambda/a", "errs", "App", "Errors", 3.0, 3),
              MetricFilterCount("/aws/lambda/a", "lat", "App", "Latency", 125.5, 2)]
    metrics = Metrics(log_counts=lambda: counts)
    samples = _samples(metrics)
    labels = tuple(sorted({"namespace": "App", "name": "Errors", "log_group": "/aws/lambda/a",
                           "filter": "errs"}.items()))
    assert samples[("corral_log_metric", labels)] == 3.0
    assert samples[("corral_log_metric_matches", labels)] == 3
    latency = tuple(sorted({"namespace": "App", "name": "Latency",
                            "log_group": "/aws/lambda/a", "filter": "lat"}.items()))
    assert samples[("corral_log_metric", latency)] == 125.5


def test_primed_log_counts_are_used_once() -> None:
    """Counts handed over with prime() serve the next scrape instead of the source."""
    calls = []

    def source() -> list[MetricFilterCount]:
        calls.append(1)
        return []

    metrics = Metrics(log_counts=source)
    assert metrics.log_metrics is not None
    metrics.log_metrics.prime([MetricFilterCount("g", "f", "N", "M", 1.0, 1)])
    assert "corral_log_metric{" in metrics.render().decode()
    assert calls == []
    metrics.render()
    assert calls == [1]


def test_a_failing_log_source_does_not_break_the_scrape() -> None:
    """If the log store cannot be read, the other metrics are still exported."""
    def broken() -> list[MetricFilterCount]:
        raise RuntimeError("database closed")

    metrics = Metrics(log_counts=broken)
    metrics.observe(_invocation("a"), _result(1.0))
    assert _samples(metrics)[("corral_invocations_total", _fn("a"))] == 1


def test_metrics_use_a_dedicated_registry() -> None:
    """Nothing is registered in prometheus-client's global registry."""
    metrics = Metrics()
    metrics.observe(_invocation("dedicated"), _result(1.0))
    assert REGISTRY.get_sample_value("corral_invocations_total",
                                     {"function": "dedicated"}) is None
    assert metrics.registry is not REGISTRY


def test_quantile_interpolates_inside_the_bucket() -> None:
    """Like histogram_quantile: linear inside the bucket, the top bound for +Inf, None if empty."""
    bounds = (0.1, 0.2, 0.4)
    assert quantile(0.5, bounds, [0, 0, 0, 0]) is None
    assert quantile(0.5, bounds, [10, 0, 0, 0]) == pytest.approx(0.05)
    assert quantile(0.5, bounds, [0, 10, 0, 0]) == pytest.approx(0.15)
    assert quantile(0.99, bounds, [50, 0, 0, 50]) == 0.4
    assert quantile(0.75, bounds, [50, 0, 50, 0]) == pytest.approx(0.3)


def test_stats_json_has_percentiles_and_totals() -> None:
    """stats() gives per-function numbers, p50/p99 estimates and account totals."""
    metrics = Metrics(concurrency=lambda: {"a": 1, "idle": 0}, account_concurrency=lambda: 1)
    for _ in range(99):
        metrics.observe(_invocation("a"), _result(7.0))
    metrics.observe(_invocation("a"), _result(700.0, function_error="Unhandled"))
    data = metrics.stats()
    [a, idle] = data["functions"]
    assert a["function"] == "a" and a["invocations"] == 100 and a["errors"] == 1
    assert 5.0 <= a["duration_ms"]["p50"] <= 10.0
    assert 5.0 <= a["duration_ms"]["p99"] <= 10.0
    assert a["concurrent_executions"] == 1
    assert idle == {"function": "idle", **idle, "invocations": 0, "concurrent_executions": 0}
    assert data["account"]["invocations"] == 100
    assert data["account"]["concurrent_executions"] == 1
    assert len(data["duration_buckets_ms"]) == len(DURATION_BUCKETS_S)
