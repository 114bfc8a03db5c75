"""Billing: one record per invocation that ran, and monthly reports with the free tier applied.

A record carries the request id, function, version, memory, duration, billed duration (taken
from `InvocationResult.billed_duration_ms`, the number the REPORT line prints, so the two always
agree), init duration and whether it was billed, GB-seconds, request cost and compute cost, and
the time the invocation finished (epoch ms, UTC). Throttled invocations never ran and are not
billed; idle warm instances produce no records and cost nothing. Each attempt of an asynchronous
invocation is a record of its own (attempts share the request id, as in Lambda).

Recording stays off the invoke hot path: `BillingRecorder.observe` (a scheduler observer) only
appends a tuple to a buffer; `flush()` (from a background task, in a worker thread) computes the
records and writes them in one transaction to the `billing_records` table of the server's SQLite
database, holding `db.lock` as every user of the shared connection does.

Rules (docs/billing.md has the user-facing version):

* GB-seconds = memory MB / 1024 x (billed ms + billed init ms) / 1000, exact decimals.
* Init duration is billed per `PriceTable.init_billing` (default `never`); when billed it is
  rounded up to the billing granularity on its own and added to the record's GB-seconds, while
  `billed_duration_ms` stays the REPORT line's number.
* A month is a calendar month in UTC; a record belongs to the month in which it finished.
* Reports price the month's usage with the price table in force when the report is made (a
  record's own cost columns show the prices in force when it ran).
* The free tier is per account per month: the first `free_tier_requests` requests and
  `free_tier_gb_seconds` GB-seconds are free. Its value (the request deduction and the compute
  deduction) is allocated to functions in proportion to their share of the account's requests,
  respectively GB-seconds; see `allocate`. A function's total is its costs minus its deduction;
  the account's total is the sum of the functions' totals.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from corral.errors import InvalidParameterValueException
from corral.invoke.report import billed_duration_ms
from corral.metering.prices import MB_MS_PER_GB_SECOND, PriceTable, exact, gb_seconds
from corral.model import Invocation, InvocationResult
from corral.store.sqlite import Database

__all__ = [
    "ALLOCATION_QUANTUM",
    "BillingRecord",
    "BillingRecorder",
    "BillingStore",
    "FunctionUsage",
    "Month",
    "allocate",
    "decimal_text",
    "make_record",
    "monthly_report",
]

log = logging.getLogger(__name__)

ALLOCATION_QUANTUM = Decimal("1e-12")
"""Free-tier shares are whole multiples of this (a picodollar) wherever a function's cost
allows; whatever the rounding leaves is given out exactly, so shares always sum to the total."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS billing_records (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    function_name TEXT NOT NULL,
    version TEXT NOT NULL,
    memory_mb INTEGER NOT NULL,
    duration_ms REAL NOT NULL,
    billed_ms INTEGER NOT NULL,
    init_ms REAL,
    init_billed_ms INTEGER NOT NULL,
    mb_ms INTEGER NOT NULL,
    gb_seconds TEXT NOT NULL,
    request_cost TEXT NOT NULL,
    compute_cost TEXT NOT NULL,
    cold_start INTEGER NOT NULL,
    error_type TEXT,
    timestamp_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS billing_records_month
    ON billing_records (timestamp_ms, function_name, mb_ms);
CREATE INDEX IF NOT EXISTS billing_records_request ON billing_records (request_id);
"""


@functools.lru_cache(maxsize=4096)  # records repeat a few amounts over and over
def decimal_text(value: Decimal) -> str:
    """A decimal as plain text without exponent or trailing zeros: 0.0375, 6.66668, 0."""
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


# -- months -----------------------------------------------------------------------------------

_MONTH = re.compile(r"(\d{4})-(\d{2})")


@dataclass(frozen=True, order=True)
class Month:
    """A calendar month in UTC."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Month:
        """`YYYY-MM`; raises InvalidParameterValueException otherwise."""
        match = _MONTH.fullmatch(text.strip())
        if match is None or not 1 <= int(match[2]) <= 12 or int(match[1]) < 1970:
            raise InvalidParameterValueException(
                f"Invalid month {text!r}: expected YYYY-MM, for example 2024-05")
        return cls(int(match[1]), int(match[2]))

    @classmethod
    def of(cls, epoch_ms: int) -> Month:
        moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
        return cls(moment.year, moment.month)

    @classmethod
    def current(cls, clock: Callable[[], float] = time.time) -> Month:
        return cls.of(int(clock() * 1000))

    @property
    def start_ms(self) -> int:
        """The first millisecond of the month (inclusive)."""
        return int(datetime(self.year, self.month, 1, tzinfo=UTC).timestamp()) * 1000

    @property
    def end_ms(self) -> int:
        """The first millisecond of the next month (exclusive)."""
        return self.next().start_ms

    def next(self) -> Month:
        return Month(self.year + self.month // 12, self.month % 12 + 1)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


# -- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BillingRecord:
    """What one invocation that ran costs."""

    request_id: str
    function: str
    version: str
    memory_mb: int
    duration_ms: float
    billed_duration_ms: int  # the REPORT line's Billed Duration
    init_duration_ms: float | None
    init_billed_ms: int  # 0 unless the init billing rule bills this cold start
    gb_seconds: Decimal
    request_cost: Decimal
    compute_cost: Decimal
    cold_start: bool
    error_type: str | None
    timestamp_ms: int

    @property
    def mb_ms(self) -> int:
        """Memory x billed time in MB-ms (integer; GB-seconds = mb_ms / 1,024,000)."""
        return self.memory_mb * (self.billed_duration_ms + self.init_billed_ms)

    @property
    def cost(self) -> Decimal:
        with exact():
            return self.request_cost + self.compute_cost

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "function": self.function,
            "version": self.version,
            "memory_mb": self.memory_mb,
            "duration_ms": self.duration_ms,
            "billed_duration_ms": self.billed_duration_ms,
            "init_duration_ms": self.init_duration_ms,
            "init_billed_ms": self.init_billed_ms,
            "gb_seconds": decimal_text(self.gb_seconds),
            "request_cost": decimal_text(self.request_cost),
            "compute_cost": decimal_text(self.compute_cost),
            "cost": decimal_text(self.cost),
            "cold_start": self.cold_start,
            "error_type": self.error_type,
            "timestamp_ms": self.timestamp_ms,
            "month": str(Month.of(self.timestamp_ms)),
        }


def make_record(*, request_id: str, function: str, version: str, memory_mb: int, runtime: str,
                duration_ms: float, billed_ms: int, init_ms: float | None, cold_start: bool,
                error_type: str | None, timestamp_ms: int, prices: PriceTable,
                granularity_ms: int) -> BillingRecord:
    """The record of one invocation under `prices` and the billing granularity."""
    if billed_ms <= 0:  # every path through the instance sets it; never bill nothing
        billed_ms = billed_duration_ms(duration_ms, granularity_ms)
    init_billed = 0
    if init_ms is not None and prices.bills_init(runtime):
        init_billed = billed_duration_ms(init_ms, granularity_ms)
    gb_s, request_cost, compute_cost = _unit_costs(prices, memory_mb, billed_ms + init_billed)
    return BillingRecord(
        request_id=request_id, function=function, version=version, memory_mb=memory_mb,
        duration_ms=duration_ms, billed_duration_ms=billed_ms, init_duration_ms=init_ms,
        init_billed_ms=init_billed, gb_seconds=gb_s, request_cost=request_cost,
        compute_cost=compute_cost, cold_start=cold_start, error_type=error_type,
        timestamp_ms=timestamp_ms)


@functools.lru_cache(maxsize=4096)  # a few memory sizes x a few billed durations, mostly
def _unit_costs(prices: PriceTable, memory_mb: int, billed_ms: int) \
        -> tuple[Decimal, Decimal, Decimal]:
    """GB-seconds, request cost and compute cost of one invocation."""
    gb_s = gb_seconds(memory_mb, billed_ms)
    return gb_s, prices.request_cost(1), prices.compute_cost(gb_s)


# -- storage ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FunctionUsage:
    """A function's usage in a month: requests and MB-ms (exact integers)."""

    function: str
    requests: int
    mb_ms: int

    @property
    def gb_seconds(self) -> Decimal:
        with exact():
            return Decimal(self.mb_ms) / Decimal(MB_MS_PER_GB_SECOND)


_COLUMNS = ("request_id, function_name, version, memory_mb, duration_ms, billed_ms, init_ms, "
            "init_billed_ms, mb_ms, gb_seconds, request_cost, compute_cost, cold_start, "
            "error_type, timestamp_ms")


class BillingStore:
    """The `billing_records` table in the server's database."""

    def __init__(self, db: Database) -> None:
        self._db = db
        with db.lock:
            db.conn.executescript(_SCHEMA)

    def insert(self, records: Sequence[BillingRecord]) -> None:
        """Write records in one transaction."""
        if not records:
            return
        rows = [(r.request_id, r.function, r.version, r.memory_mb, r.duration_ms,
                 r.billed_duration_ms, r.init_duration_ms, r.init_billed_ms, r.mb_ms,
                 decimal_text(r.gb_seconds), decimal_text(r.request_cost),
                 decimal_text(r.compute_cost), int(r.cold_start), r.error_type, r.timestamp_ms)
                for r in records]
        conn = self._db.conn
        with self._db.lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(f"INSERT INTO billing_records ({_COLUMNS}) "
                                 f"VALUES ({', '.join('?' * 15)})", rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def usage(self, month: Month) -> list[FunctionUsage]:
        """Requests and MB-ms per function for the month, ordered by function name."""
        with self._db.lock:
            rows = self._db.conn.execute(
                "SELECT function_name, COUNT(*), SUM(mb_ms) FROM billing_records"
                " WHERE timestamp_ms >= ? AND timestamp_ms < ?"
                " GROUP BY function_name ORDER BY function_name",
                (month.start_ms, month.end_ms)).fetchall()
        return [FunctionUsage(name, int(count), int(mb_ms or 0)) for name, count, mb_ms in rows]

    def records(self, *, request_id: str | None = None, function: str | None = None,
                month: Month | None = None, limit: int = 100) -> list[BillingRecord]:
        """Records matching every given criterion, newest first."""
        where: list[str] = []
        args: list[Any] = []
        if request_id is not None:
            where.append("request_id = ?")
            args.append(request_id)
        if function is not None:
            where.append("function_name = ?")
            args.append(function)
        if month is not None:
            where.append("timestamp_ms >= ? AND timestamp_ms < ?")
            args += [month.start_ms, month.end_ms]
        sql = f"SELECT {_COLUMNS} FROM billing_records"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY timestamp_ms DESC, id DESC LIMIT ?"
        with self._db.lock:
            rows = self._db.conn.execute(sql, (*args, limit)).fetchall()
        return [_record_from_row(row) for row in rows]


def _record_from_row(row: sqlite3.Row | tuple[Any, ...]) -> BillingRecord:
    (request_id, function, version, memory_mb, duration_ms, billed_ms, init_ms, init_billed,
     _mb_ms, gb_s, request_cost, compute_cost, cold, error_type, ts) = row
    return BillingRecord(
        request_id=request_id, function=function, version=version, memory_mb=int(memory_mb),
        duration_ms=float(duration_ms), billed_duration_ms=int(billed_ms),
        init_duration_ms=None if init_ms is None else float(init_ms),
        init_billed_ms=int(init_billed), gb_seconds=Decimal(gb_s),
        request_cost=Decimal(request_cost), compute_cost=Decimal(compute_cost),
        cold_start=bool(cold), error_type=error_type, timestamp_ms=int(ts))


# -- the recorder (the scheduler observer) ----------------------------------------------------

# request id, function, version, memory MB, runtime, duration ms, billed ms, init ms, cold start,
# error type, finished at (epoch ms)
_Pending = tuple[str, str, str, int, str, float, int, float | None, bool, str | None, int]


class BillingRecorder:
    """Buffers what invocations used and writes billing records in batches."""

    def __init__(self, store: BillingStore, prices: PriceTable, granularity_ms: int,
                 clock: Callable[[], float] = time.time, *,
                 max_buffered: int = 100_000, batch_size: int = 1000) -> None:
        self.store = store
        self.prices = prices
        self.granularity_ms = granularity_ms
        self.max_buffered = max_buffered
        self.batch_size = batch_size
        self._clock = clock
        self._buffer: list[_Pending] = []
        self._mutex = threading.Lock()
        self._flush_lock = threading.Lock()  # one batch at a time, in order
        self._closed = False
        self.written = 0
        self.dropped = 0

    def observe(self, invocation: Invocation, result: InvocationResult) -> None:
        """The scheduler observer: remember what the invocation used (no I/O, no decimals)."""
        config = invocation.function
        item: _Pending = (result.request_id or invocation.request_id, config.name,
                          config.version, config.memory_mb, config.runtime, result.duration_ms,
                          result.billed_duration_ms, result.init_duration_ms, result.cold_start,
                          result.error_type, int(self._clock() * 1000))
        with self._mutex:
            self._buffer.append(item)
            pending = len(self._buffer)
        if pending >= self.max_buffered or self._closed:
            self.flush()  # backpressure, or nothing will flush later

    @property
    def pending(self) -> int:
        with self._mutex:
            return len(self._buffer)

    def flush(self) -> int:
        """Write everything buffered now, `batch_size` records per transaction (so the shared
        connection's lock is never held long); returns how many records were written."""
        written = 0
        with self._flush_lock:
            with self._mutex:
                batch, self._buffer = self._buffer, []
            for start in range(0, len(batch), self.batch_size):
                chunk = batch[start:start + self.batch_size]
                records = [self._record(item) for item in chunk]
                try:
                    self.store.insert(records)
                except Exception:
                    log.exception("writing %d billing records failed", len(batch) - start)
                    self._requeue(batch[start:])
                    break
                written += len(records)
            self.written += written
        return written

    def _requeue(self, items: list[_Pending]) -> None:
        with self._mutex:
            room = max(self.max_buffered - len(self._buffer), 0)
            self._buffer[:0] = items[:room]
            self.dropped += max(len(items) - room, 0)

    def _record(self, item: _Pending) -> BillingRecord:
        (request_id, function, version, memory_mb, runtime, duration_ms, billed_ms, init_ms,
         cold, error_type, ts) = item
        return make_record(
            request_id=request_id, function=function, version=version, memory_mb=memory_mb,
            runtime=runtime, duration_ms=duration_ms, billed_ms=billed_ms, init_ms=init_ms,
            cold_start=cold, error_type=error_type, timestamp_ms=ts, prices=self.prices,
            granularity_ms=self.granularity_ms)

    def close(self) -> None:
        """Flush, and from now on write each observation at once."""
        self._closed = True
        self.flush()


# -- reports ----------------------------------------------------------------------------------


def allocate(total: Decimal, weights: Mapping[str, Decimal | int],
             caps: Mapping[str, Decimal], quantum: Decimal = ALLOCATION_QUANTUM) \
        -> dict[str, Decimal]:
    """Split `total` among keys in proportion to `weights`, exactly, never above `caps`.

    Largest-remainder (Hamilton) apportionment in units of `quantum`: each key first gets its
    exact share rounded down to a multiple of `quantum`; the units left are handed out one each,
    largest remainder first (ties by key); a residue smaller than a quantum (or a unit a capped
    key cannot take) goes, exactly, to the first keys in that order with room under their cap.
    The shares sum to `total` exactly, provided sum(caps) >= total.
    """
    keys = sorted(weights)
    weight_sum = sum(Fraction(weights[k]) for k in keys)
    shares = {k: Decimal(0) for k in keys}
    if total <= 0 or weight_sum <= 0:
        return shares
    q = Fraction(quantum)
    ideal = {k: Fraction(total) * Fraction(weights[k]) / weight_sum for k in keys}
    with exact():
        for k in keys:
            shares[k] = min(Decimal(math.floor(ideal[k] / q)) * quantum, caps[k])
        order = sorted(keys, key=lambda k: (-(ideal[k] - Fraction(shares[k])), k))
        left = total - sum(shares.values())
        for k in order:  # whole quanta first, largest remainder first
            if left < quantum:
                break
            if shares[k] + quantum <= caps[k]:
                shares[k] += quantum
                left -= quantum
        for k in order:  # then whatever remains, exactly, where there is room
            if left <= 0:
                break
            give = min(left, caps[k] - shares[k])
            if give > 0:
                shares[k] += give
                left -= give
    return shares


@dataclass(frozen=True)
class _Line:
    requests: int
    gb_seconds: Decimal
    request_cost: Decimal
    compute_cost: Decimal
    request_deduction: Decimal
    compute_deduction: Decimal

    @property
    def deduction(self) -> Decimal:
        with exact():
            return self.request_deduction + self.compute_deduction

    @property
    def total(self) -> Decimal:
        with exact():
            return self.request_cost + self.compute_cost - self.deduction

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "gb_seconds": decimal_text(self.gb_seconds),
            "request_cost": decimal_text(self.request_cost),
            "compute_cost": decimal_text(self.compute_cost),
            "free_tier_request_deduction": decimal_text(self.request_deduction),
            "free_tier_compute_deduction": decimal_text(self.compute_deduction),
            "free_tier_deduction": decimal_text(self.deduction),
            "total": decimal_text(self.total),
        }


def monthly_report(month: Month, usage: Sequence[FunctionUsage], prices: PriceTable,
                   granularity_ms: int, function: str | None = None) -> dict[str, Any]:
    """The month's bill as JSON-ready data: per function and for the account.

    Decimal amounts are strings (exact); `function` limits the `functions` list to that one
    function (a zero row if it used nothing), the `account` part always covers every function.
    """
    with exact():
        requests = {u.function: u.requests for u in usage}
        gbs = {u.function: u.gb_seconds for u in usage}
        request_cost = {f: prices.request_cost(n) for f, n in requests.items()}
        compute_cost = {f: prices.compute_cost(g) for f, g in gbs.items()}
        total_requests = sum(requests.values())
        total_gbs = sum(gbs.values(), Decimal(0))
        free_requests = min(total_requests, prices.free_tier_requests)
        free_gbs = min(total_gbs, prices.free_tier_gb_seconds)
        request_deduction = allocate(prices.request_cost(free_requests), requests, request_cost)
        compute_deduction = allocate(prices.compute_cost(free_gbs), gbs, compute_cost)
        lines = {f: _Line(requests[f], gbs[f], request_cost[f], compute_cost[f],
                          request_deduction[f], compute_deduction[f]) for f in requests}
        account = _Line(total_requests, total_gbs, sum(request_cost.values(), Decimal(0)),
                        sum(compute_cost.values(), Decimal(0)),
                        sum(request_deduction.values(), Decimal(0)),
                        sum(compute_deduction.values(), Decimal(0)))
        names = sorted(lines) if function is None else [function]
        zero = _Line(0, Decimal(0), Decimal(0), Decimal(0), Decimal(0), Decimal(0))
        rows = [{"function": name, **lines.get(name, zero).to_json()} for name in names]
        return {
            "month": str(month),
            "currency": prices.currency,
            "granularity_ms": granularity_ms,
            "prices": prices.to_json(),
            "free_tier": {
                "requests": prices.free_tier_requests,
                "gb_seconds": decimal_text(prices.free_tier_gb_seconds),
                "requests_applied": free_requests,
                "gb_seconds_applied": decimal_text(free_gbs),
            },
            "functions": rows,
            "account": account.to_json(),
        }
