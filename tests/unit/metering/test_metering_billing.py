"""Billing records, their storage and batching, UTC months, and monthly reports' free tier."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from corral.errors import InvalidParameterValueException
from corral.metering.billing import (
    ALLOCATION_QUANTUM,
    BillingRecorder,
    BillingStore,
    FunctionUsage,
    Month,
    allocate,
    make_record,
    monthly_report,
)
from corral.metering.prices import DEFAULT_PRICES, InitBilling, PriceTable
from corral.model import CodeInfo, FunctionConfig, Invocation, InvocationResult
from corral.store.sqlite import Database

P = DEFAULT_PRICES
GB_S = 1_024_000  # MB-ms per GB-second


def ms(*args: int) -> int:
    """Epoch milliseconds of a UTC date and time."""
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]


def record(**overrides: Any) -> Any:
    values: dict[str, Any] = dict(
        request_id="r1", function="fn", version="$LATEST", memory_mb=128, runtime="python3.11",
        duration_ms=250.0, billed_ms=300, init_ms=None, cold_start=False, error_type=None,
        timestamp_ms=ms(2024, 5, 10), prices=P, granularity_ms=100)
    values.update(overrides)
    return make_record(**values)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "corral.db")
    yield database
    database.close()


# -- records ----------------------------------------------------------------------------------


def test_record_of_250ms_at_128mb() -> None:
    """A 250 ms invocation billed 300 ms at 128 MB: 0.0375 GB-s, $0.0000002 + $0.00000062500125."""
    rec = record()
    assert rec.billed_duration_ms == 300
    assert rec.gb_seconds == Decimal("0.0375")
    assert rec.request_cost == Decimal("0.0000002")
    assert rec.compute_cost == Decimal("0.00000062500125")
    assert rec.cost == Decimal("0.00000082500125")
    assert rec.mb_ms == 128 * 300


def test_record_takes_the_reports_billed_duration() -> None:
    """The record's billed duration is the one the REPORT line printed, not recomputed."""
    rec = record(duration_ms=250.0, billed_ms=251, granularity_ms=1)
    assert rec.billed_duration_ms == 251
    assert rec.gb_seconds == Decimal("0.031375")


def test_init_is_not_billed_by_default() -> None:
    """A cold start's 180 ms init costs nothing under the default `never` rule."""
    rec = record(init_ms=180.0, cold_start=True)
    assert rec.init_billed_ms == 0
    assert rec.gb_seconds == Decimal("0.0375")


def test_init_billed_when_the_rule_says_so() -> None:
    """Under `always` a 180 ms init bills 200 ms more: 128 MB x 500 ms is 0.0625 GB-s."""
    rec = record(init_ms=180.0, cold_start=True, prices=PriceTable(init_billing=InitBilling.ALWAYS))
    assert rec.billed_duration_ms == 300  # still the REPORT line's number
    assert rec.init_billed_ms == 200
    assert rec.gb_seconds == Decimal("0.0625")


def test_init_billed_for_custom_runtimes_only_under_that_rule() -> None:
    """`custom-runtimes` bills a provided.al2023 init and not a python3.11 one."""
    prices = PriceTable(init_billing=InitBilling.CUSTOM_RUNTIMES)
    assert record(init_ms=50.0, runtime="provided.al2023", prices=prices).init_billed_ms == 100
    assert record(init_ms=50.0, runtime="python3.11", prices=prices).init_billed_ms == 0


# -- months -----------------------------------------------------------------------------------


def test_month_parse_and_bounds_in_utc() -> None:
    """2024-02 (a leap year) runs from Feb 1 00:00 UTC to Mar 1 00:00 UTC, end exclusive."""
    month = Month.parse("2024-02")
    assert (month.start_ms, month.end_ms) == (ms(2024, 2, 1), ms(2024, 3, 1))
    assert month.end_ms - month.start_ms == 29 * 86_400_000
    assert str(month) == "2024-02"


def test_month_of_the_last_and_first_millisecond() -> None:
    """23:59:59.999 on Jan 31 is January; 00:00:00.000 on Feb 1 is February (UTC)."""
    assert Month.of(ms(2024, 2, 1) - 1) == Month(2024, 1)
    assert Month.of(ms(2024, 2, 1)) == Month(2024, 2)


def test_december_rolls_into_the_next_year() -> None:
    """December's end is January 1 of the next year."""
    assert Month(2023, 12).next() == Month(2024, 1)
    assert Month(2023, 12).end_ms == ms(2024, 1, 1)


@pytest.mark.parametrize("text", ["2024-13", "2024-00", "2024-1", "24-01", "2024/01", "", "x"])
def test_invalid_months_are_refused(text: str) -> None:
    """Anything but YYYY-MM with a month 01 to 12 is an InvalidParameterValueException."""
    with pytest.raises(InvalidParameterValueException):
        Month.parse(text)


# -- storage and the recorder -----------------------------------------------------------------


def test_store_usage_respects_month_boundaries(db: Database) -> None:
    """Records on either side of midnight UTC between months are billed to their own month."""
    store = BillingStore(db)
    store.insert([
        record(request_id="a", timestamp_ms=ms(2024, 1, 31, 23, 59, 59) + 999),
        record(request_id="b", timestamp_ms=ms(2024, 2, 1)),
        record(request_id="c", function="other", timestamp_ms=ms(2024, 2, 29, 12)),
        record(request_id="d", timestamp_ms=ms(2024, 3, 1)),
    ])
    assert store.usage(Month(2024, 1)) == [FunctionUsage("fn", 1, 128 * 300)]
    assert store.usage(Month(2024, 2)) == [FunctionUsage("fn", 1, 128 * 300),
                                           FunctionUsage("other", 1, 128 * 300)]
    assert store.usage(Month(2024, 3)) == [FunctionUsage("fn", 1, 128 * 300)]
    assert store.usage(Month(2024, 4)) == []


def test_store_records_round_trip(db: Database) -> None:
    """A stored record reads back equal, found by request id, function or month."""
    store = BillingStore(db)
    rec = record(request_id="req-1", init_ms=12.5, cold_start=True, error_type="Runtime.Exit")
    store.insert([rec, record(request_id="req-2", function="g")])
    assert store.records(request_id="req-1") == [rec]
    assert [r.request_id for r in store.records(function="g")] == ["req-2"]
    assert len(store.records(month=Month(2024, 5))) == 2
    assert rec.to_json()["gb_seconds"] == "0.0375"
    assert rec.to_json()["month"] == "2024-05"


def _invocation(name: str = "fn", memory: int = 128) -> Invocation:
    code = CodeInfo("0" * 64, "x", 1, 1)
    config = FunctionConfig(name=name, runtime="python3.11", handler="app.handler",
                            role="arn:aws:iam::000000000000:role/r", code=code, memory_mb=memory)
    return Invocation(request_id="req", function=config, payload=b"{}",
                      invoked_arn=f"arn:aws:lambda:us-east-1:000000000000:function:{name}")


def _result(request_id: str, duration: float, billed: int, **kw: Any) -> InvocationResult:
    return InvocationResult(request_id=request_id, payload=b"1", duration_ms=duration,
                            billed_duration_ms=billed, **kw)


def test_recorder_buffers_until_flushed(db: Database) -> None:
    """observe() only buffers; flush() writes every buffered record in one batch."""
    store = BillingStore(db)
    recorder = BillingRecorder(store, P, 100, clock=lambda: ms(2024, 5, 1) / 1000)
    for i in range(3):
        recorder.observe(_invocation(), _result(f"r{i}", 250.0, 300))
    assert recorder.pending == 3
    assert store.records(function="fn") == []
    assert recorder.flush() == 3
    assert recorder.pending == 0
    records = store.records(function="fn")
    assert sorted(r.request_id for r in records) == ["r0", "r1", "r2"]
    assert {r.billed_duration_ms for r in records} == {300}
    assert {r.timestamp_ms for r in records} == {ms(2024, 5, 1)}


def test_recorder_writes_at_once_after_close(db: Database) -> None:
    """After close() an observation (an invocation ending during shutdown) is written at once."""
    store = BillingStore(db)
    recorder = BillingRecorder(store, P, 100)
    recorder.close()
    recorder.observe(_invocation(), _result("late", 10.0, 100, cold_start=True,
                                            init_duration_ms=30.0))
    [rec] = store.records(request_id="late")
    assert rec.cold_start and rec.init_duration_ms == 30.0 and rec.init_billed_ms == 0


def test_recorder_keeps_records_when_the_store_fails(db: Database) -> None:
    """A failed write puts the batch back; the next flush writes it."""
    store = BillingStore(db)
    recorder = BillingRecorder(store, P, 100)
    recorder.observe(_invocation(), _result("r", 250.0, 300))
    real_insert = store.insert

    def broken(records: Any) -> None:
        raise OSError("disk full")

    store.insert = broken  # type: ignore[method-assign]
    assert recorder.flush() == 0
    assert recorder.pending == 1
    store.insert = real_insert  # type: ignore[method-assign]
    assert recorder.flush() == 1


# -- the free tier ----------------------------------------------------------------------------


def _report(*usage: FunctionUsage, prices: PriceTable = P, function: str | None = None) \
        -> dict[str, Any]:
    return monthly_report(Month(2024, 5), list(usage), prices, 100, function)


def _line(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(line for line in report["functions"] if line["function"] == name)


def test_exactly_one_million_requests_are_free() -> None:
    """1,000,000 requests cost $0.20 and the free tier deducts exactly $0.20."""
    acc = _report(FunctionUsage("fn", 1_000_000, 0))["account"]
    assert acc["request_cost"] == "0.2"
    assert acc["free_tier_request_deduction"] == "0.2"
    assert acc["total"] == "0"


def test_one_request_over_the_free_tier_costs_one_request() -> None:
    """1,000,001 requests leave exactly one request's price, $0.0000002, to pay."""
    acc = _report(FunctionUsage("fn", 1_000_001, 0))["account"]
    assert acc["request_cost"] == "0.2000002"
    assert acc["free_tier_request_deduction"] == "0.2"
    assert acc["total"] == "0.0000002"


def test_exactly_400000_gb_seconds_are_free() -> None:
    """400,000 GB-s cost $6.66668 and are deducted entirely (1 request well inside too)."""
    report = _report(FunctionUsage("fn", 1, 400_000 * GB_S))
    acc = report["account"]
    assert acc["gb_seconds"] == "400000"
    assert acc["compute_cost"] == "6.66668"
    assert acc["free_tier_compute_deduction"] == "6.66668"
    assert acc["total"] == "0"
    assert report["free_tier"]["gb_seconds_applied"] == "400000"


def test_one_invocation_over_the_free_gb_seconds() -> None:
    """400,000 GB-s plus one 128 MB x 300 ms invocation leave 0.0375 GB-s to pay."""
    acc = _report(FunctionUsage("fn", 2, 400_000 * GB_S + 128 * 300))["account"]
    assert acc["gb_seconds"] == "400000.0375"
    assert acc["free_tier_compute_deduction"] == "6.66668"
    assert acc["total"] == "0.00000062500125"


def test_free_tier_is_allocated_in_proportion_to_use() -> None:
    """1.5M and 0.5M requests share the $0.20 request deduction 3:1; GB-s share 3:2."""
    report = _report(FunctionUsage("big", 1_500_000, 300_000 * GB_S),
                     FunctionUsage("small", 500_000, 200_000 * GB_S))
    big, small = _line(report, "big"), _line(report, "small")
    assert (big["free_tier_request_deduction"], small["free_tier_request_deduction"]) == \
        ("0.15", "0.05")
    assert (big["compute_cost"], small["compute_cost"]) == ("5.00001", "3.33334")
    assert (big["free_tier_compute_deduction"], small["free_tier_compute_deduction"]) == \
        ("4.000008", "2.666672")
    assert (big["total"], small["total"]) == ("1.150002", "0.716668")
    acc = report["account"]
    assert acc["free_tier_deduction"] == "6.86668"
    assert Decimal(acc["total"]) == Decimal(big["total"]) + Decimal(small["total"])
    assert acc["total"] == "1.86667"


def test_inside_the_free_tier_every_function_pays_nothing() -> None:
    """When the account stays inside the free tier, every function's total is exactly 0."""
    report = _report(FunctionUsage("a", 7, 3 * 128 * 300 + 1),
                     FunctionUsage("b", 3, 1000 * 100),
                     FunctionUsage("c", 1, 1))
    assert [line["total"] for line in report["functions"]] == ["0", "0", "0"]
    assert report["account"]["total"] == "0"


def test_allocation_of_a_non_terminating_ratio_sums_exactly() -> None:
    """Three equal users of a $0.20 deduction get shares within a picodollar summing to $0.20."""
    weights = {"a": 1, "b": 1, "c": 1}
    caps = {k: Decimal(1) for k in weights}
    shares = allocate(Decimal("0.20"), weights, caps)
    assert sum(shares.values()) == Decimal("0.20")
    for share in shares.values():
        assert abs(Fraction(share) - Fraction(1, 15)) < Fraction(ALLOCATION_QUANTUM)
    assert shares["a"] == Decimal("0.066666666667")  # the leftover quantum, by name order


def test_allocation_is_exact_and_capped_for_random_usage() -> None:
    """Random usage over the free tier: shares sum to the deduction, never exceed a cost."""
    rng = random.Random(5)
    for _ in range(200):
        usage = [FunctionUsage(f"f{i}", rng.randint(1, 900_000), rng.randint(1, 10**12))
                 for i in range(rng.randint(1, 6))]
        report = _report(*usage)
        acc = report["account"]
        lines = report["functions"]
        for key in ("free_tier_request_deduction", "free_tier_compute_deduction", "total"):
            assert sum(Decimal(line[key]) for line in lines) == Decimal(acc[key])
        for line in lines:
            assert Decimal(line["free_tier_request_deduction"]) <= Decimal(line["request_cost"])
            assert Decimal(line["free_tier_compute_deduction"]) <= Decimal(line["compute_cost"])
            assert Decimal(line["total"]) >= 0
        free_requests = min(sum(u.requests for u in usage), P.free_tier_requests)
        assert Decimal(acc["free_tier_request_deduction"]) == P.request_cost(free_requests)


def test_free_tier_counts_the_whole_account_when_one_function_is_asked_for() -> None:
    """?function= shows that function's share of the account's free tier; unknown names are 0."""
    usage = (FunctionUsage("big", 1_500_000, 0), FunctionUsage("small", 500_000, 0))
    report = _report(*usage, function="small")
    assert [line["function"] for line in report["functions"]] == ["small"]
    assert report["functions"][0]["free_tier_request_deduction"] == "0.05"
    assert report["account"]["requests"] == 2_000_000
    missing = _report(*usage, function="nobody")["functions"][0]
    assert missing["requests"] == 0 and missing["total"] == "0"


def test_no_free_tier_when_configured_to_zero() -> None:
    """With a zero free tier the total is the full cost."""
    prices = PriceTable(free_tier_requests=0, free_tier_gb_seconds=Decimal(0))
    acc = _report(FunctionUsage("fn", 1, 128 * 300), prices=prices)["account"]
    assert acc["total"] == "0.00000082500125"
    assert acc["free_tier_deduction"] == "0"


def test_recorder_writes_in_bounded_transactions_and_requeues_the_rest(db: Database) -> None:
    """Five records with batch_size 2 are three transactions; a failing one keeps the rest."""
    store = BillingStore(db)
    recorder = BillingRecorder(store, P, 100, batch_size=2)
    for i in range(5):
        recorder.observe(_invocation(), _result(f"r{i}", 10.0, 100))
    calls: list[int] = []
    real_insert = store.insert

    def flaky(records: Any) -> None:
        calls.append(len(records))
        if len(calls) == 2:
            raise OSError("busy")
        real_insert(records)

    store.insert = flaky  # type: ignore[method-assign]
    assert recorder.flush() == 2
    assert recorder.pending == 3
    assert recorder.flush() == 3
    assert calls == [2, 2, 2, 1]
    assert sorted(r.request_id for r in store.records(function="fn")) == \
        ["r0", "r1", "r2", "r3", "r4"]
