"""EventBridge schedule expressions: `rate(...)` and `cron(...)`, and their next fire time.

`parse(text)` validates an expression and returns a `Schedule`; `Schedule.next_after(t)` is the
first fire time strictly after `t` (epoch seconds, UTC), or None when there is none (a cron
whose years are all past). Everything is UTC, as in EventBridge.

rate(N unit)
    `N` a positive integer; unit `minute`/`hour`/`day` when N is 1, `minutes`/`hours`/`days`
    otherwise (EventBridge rejects `rate(1 minutes)` and `rate(5 minute)`). A rate fires at
    `anchor + k * period` for k >= 1, where the anchor is when the rule got its expression.

cron(minutes hours day-of-month month day-of-week year)
    =============  =========================  ========================
    field          values                     wildcards
    =============  =========================  ========================
    minutes        0-59                       , - * /
    hours          0-23                       , - * /
    day-of-month   1-31                       , - * ? / L W
    month          1-12 or JAN-DEC            , - * /
    day-of-week    1-7 or SUN-SAT (1 = SUN)   , - * ? / L #
    year           1970-2199                  , - * /
    =============  =========================  ========================

    Exactly one of day-of-month and day-of-week is `?`. `a/b` starts at `a` and steps by `b` to
    the field's maximum (`*/b` starts at the minimum); `a-c/b` steps within the range.
    Day-of-month: `L` is the month's last day, `L-n` n days before it, `nW` the weekday
    (Mon-Fri) nearest day n within the month, `LW` the month's last weekday. Day-of-week: `L`
    alone is the week's last day (7, Saturday), `nL` the month's last day-of-week n
    (`6L` = last Friday), `n#k` the k-th day-of-week n of the month (`2#1` = first Monday).
    Names are case-insensitive. Ranges must not wrap (`FRI-MON` is rejected).
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["CronSchedule", "RateSchedule", "Schedule", "ScheduleError", "parse"]

MIN_YEAR = 1970
MAX_YEAR = 2199
_MONTHS = {name: i for i, name in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1)}
_DAYS = {name: i for i, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"), 1)}
_RATE = re.compile(r"^rate\(\s*(\d+)\s+([a-zA-Z]+)\s*\)$")
_CRON = re.compile(r"^cron\((.*)\)$")
_UNITS = {"minute": 60, "hour": 3600, "day": 86400}


class ScheduleError(ValueError):
    """The expression is not valid EventBridge schedule syntax."""


class Schedule:
    """A parsed schedule expression."""

    expression: str

    def next_after(self, t: float, anchor: float | None = None) -> float | None:
        """The first fire time strictly after `t` (epoch seconds), or None."""
        raise NotImplementedError


@dataclass(frozen=True)
class RateSchedule(Schedule):
    expression: str
    period_s: int

    def next_after(self, t: float, anchor: float | None = None) -> float | None:
        """`anchor + k * period` for the least k >= 1 with a time after `t`."""
        base = t if anchor is None else anchor
        steps = max(1, math.floor((t - base) / self.period_s) + 1)
        found = base + steps * self.period_s
        while found <= t:  # floating-point edge
            found += self.period_s
        return found


def _parse_rate(text: str, match: re.Match[str]) -> RateSchedule:
    value, unit = int(match.group(1)), match.group(2).lower()
    if value <= 0:
        raise ScheduleError("The rate value must be a positive integer.")
    singular = unit.rstrip("s") if unit.endswith("s") else unit
    if singular not in _UNITS:
        raise ScheduleError(f"Unknown rate unit {match.group(2)!r}; use minute(s), hour(s) "
                            "or day(s).")
    if (value == 1) != (unit == singular):
        raise ScheduleError(f"Use the singular unit for a rate of 1 and the plural otherwise: "
                            f"rate({value} {singular if value == 1 else singular + 's'}).")
    return RateSchedule(text, value * _UNITS[singular])


# -- cron ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] | None = None


_MINUTE = _Field("minutes", 0, 59)
_HOUR = _Field("hours", 0, 23)
_DOM = _Field("day-of-month", 1, 31)
_MONTH = _Field("month", 1, 12, _MONTHS)
_DOW = _Field("day-of-week", 1, 7, _DAYS)
_YEAR = _Field("year", MIN_YEAR, MAX_YEAR)


def _number(field: _Field, token: str) -> int:
    upper = token.upper()
    if field.names and upper in field.names:
        return field.names[upper]
    if not token.isdigit():
        raise ScheduleError(f"Invalid value {token!r} in the {field.name} field.")
    value = int(token)
    if not field.low <= value <= field.high:
        raise ScheduleError(f"{field.name} value {value} is outside {field.low}-{field.high}.")
    return value


def _plain_part(field: _Field, part: str) -> set[int]:
    """One comma-separated item: `*`, `n`, `a-b`, with an optional `/step`."""
    base, slash, step_text = part.partition("/")
    if slash:
        if not step_text.isdigit() or int(step_text) == 0:
            raise ScheduleError(f"Invalid step {step_text!r} in the {field.name} field.")
        step = int(step_text)
    else:
        step = 1
    if base == "*":
        start, end = field.low, field.high
    elif "-" in base:
        first, _, last = base.partition("-")
        start, end = _number(field, first), _number(field, last)
        if start > end:
            raise ScheduleError(f"The range {base!r} in the {field.name} field runs backwards.")
    else:
        start = _number(field, base)
        end = field.high if slash else start
    return set(range(start, end + 1, step))


def _plain_field(field: _Field, text: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ScheduleError(f"Empty item in the {field.name} field.")
        values |= _plain_part(field, part)
    return frozenset(values)


@dataclass(frozen=True)
class _DomSpec:
    """Day-of-month: plain days plus the special forms L, L-n, nW, LW."""

    days: frozenset[int]
    last_offsets: frozenset[int]  # L (0) and L-n (n)
    nearest_weekday: frozenset[int]  # nW
    last_weekday: bool  # LW

    def days_in(self, year: int, month: int) -> set[int]:
        length = calendar.monthrange(year, month)[1]
        found = {d for d in self.days if d <= length}
        found |= {length - n for n in self.last_offsets if length - n >= 1}
        for day in self.nearest_weekday:
            if day <= length:
                found.add(_nearest_weekday(year, month, day, length))
        if self.last_weekday:
            found.add(_nearest_weekday(year, month, length, length))
        return found


def _nearest_weekday(year: int, month: int, day: int, length: int) -> int:
    """The Monday-Friday day nearest `day`, without leaving the month (Quartz's `W`)."""
    weekday = calendar.weekday(year, month, day)  # Monday = 0
    if weekday == 5:  # Saturday: Friday before, or Monday after on the 1st
        return day - 1 if day > 1 else day + 2
    if weekday == 6:  # Sunday: Monday after, or Friday before on the last day
        return day + 1 if day < length else day - 2
    return day


def _parse_dom(text: str) -> _DomSpec:
    days: set[int] = set()
    offsets: set[int] = set()
    nearest: set[int] = set()
    last_weekday = False
    for part in text.split(","):
        upper = part.upper()
        if upper == "L":
            offsets.add(0)
        elif upper.startswith("L-"):
            offset = upper[2:]
            if not offset.isdigit() or not 0 <= int(offset) <= 30:
                raise ScheduleError(f"Invalid day-of-month offset {part!r}.")
            offsets.add(int(offset))
        elif upper == "LW":
            last_weekday = True
        elif upper.endswith("W"):
            nearest.add(_number(_DOM, upper[:-1]))
        else:
            if not part:
                raise ScheduleError("Empty item in the day-of-month field.")
            days |= _plain_part(_DOM, part)
    return _DomSpec(frozenset(days), frozenset(offsets), frozenset(nearest), last_weekday)


@dataclass(frozen=True)
class _DowSpec:
    """Day-of-week (1 = Sunday): plain days plus nL and n#k."""

    days: frozenset[int]
    last_of_month: frozenset[int]  # nL
    nth: frozenset[tuple[int, int]]  # n#k

    def days_in(self, year: int, month: int) -> set[int]:
        length = calendar.monthrange(year, month)[1]
        found: set[int] = set()
        for day in range(1, length + 1):
            dow = (calendar.weekday(year, month, day) + 1) % 7 + 1  # Monday=0 -> 2
            if dow in self.days:
                found.add(day)
            if dow in self.last_of_month and day + 7 > length:
                found.add(day)
            if (dow, (day - 1) // 7 + 1) in self.nth:
                found.add(day)
        return found


def _parse_dow(text: str) -> _DowSpec:
    days: set[int] = set()
    last: set[int] = set()
    nth: set[tuple[int, int]] = set()
    for part in text.split(","):
        upper = part.upper()
        if upper == "L":
            days.add(7)
        elif "#" in upper:
            day_text, _, k_text = upper.partition("#")
            if not k_text.isdigit() or not 1 <= int(k_text) <= 5:
                raise ScheduleError(f"Invalid day-of-week occurrence {part!r} (use 1-5).")
            nth.add((_number(_DOW, day_text), int(k_text)))
        elif upper.endswith("L"):
            last.add(_number(_DOW, upper[:-1]))
        else:
            if not part:
                raise ScheduleError("Empty item in the day-of-week field.")
            days |= _plain_part(_DOW, part)
    return _DowSpec(frozenset(days), frozenset(last), frozenset(nth))


@dataclass(frozen=True)
class CronSchedule(Schedule):
    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    dom: _DomSpec | None  # None when `?`
    months: frozenset[int]
    dow: _DowSpec | None  # None when `?`
    years: frozenset[int]

    def _days(self, year: int, month: int) -> list[int]:
        if self.dom is not None:
            return sorted(self.dom.days_in(year, month))
        assert self.dow is not None
        return sorted(self.dow.days_in(year, month))

    def _times(self, start: datetime) -> Iterator[datetime]:
        """Every fire time at or after `start` (a whole minute), in order."""
        for year in sorted(y for y in self.years if y >= start.year):
            for month in sorted(self.months):
                if (year, month) < (start.year, start.month):
                    continue
                same_month = (year, month) == (start.year, start.month)
                for day in self._days(year, month):
                    if same_month and day < start.day:
                        continue
                    same_day = same_month and day == start.day
                    for hour in sorted(self.hours):
                        if same_day and hour < start.hour:
                            continue
                        same_hour = same_day and hour == start.hour
                        for minute in sorted(self.minutes):
                            if same_hour and minute < start.minute:
                                continue
                            yield datetime(year, month, day, hour, minute, tzinfo=UTC)

    def next_after(self, t: float, anchor: float | None = None) -> float | None:
        """The first matching whole minute strictly after `t`."""
        moment = datetime.fromtimestamp(t, tz=UTC).replace(second=0, microsecond=0)
        start = moment + timedelta(minutes=1)
        for found in self._times(start):
            return found.timestamp()
        return None


def _parse_cron(text: str, body: str) -> CronSchedule:
    fields = body.split()
    if len(fields) != 6:
        raise ScheduleError("A cron expression has six fields: minutes hours day-of-month "
                            "month day-of-week year.")
    minute, hour, dom, month, dow, year = fields
    if (dom == "?") == (dow == "?"):
        raise ScheduleError("Exactly one of the day-of-month and day-of-week fields must "
                            "be '?'.")
    for name, value in (("minutes", minute), ("hours", hour), ("month", month),
                        ("year", year)):
        if "?" in value:
            raise ScheduleError(f"'?' is only allowed in the day-of-month or day-of-week "
                                f"field, not in {name}.")
    return CronSchedule(
        text,
        minutes=_plain_field(_MINUTE, minute),
        hours=_plain_field(_HOUR, hour),
        dom=None if dom == "?" else _parse_dom(dom),
        months=_plain_field(_MONTH, month),
        dow=None if dow == "?" else _parse_dow(dow),
        years=_plain_field(_YEAR, year),
    )


def parse(text: str) -> Schedule:
    """Parse `rate(...)` or `cron(...)`; raises ScheduleError with the reason."""
    if not isinstance(text, str):
        raise ScheduleError("The schedule expression must be a string.")
    stripped = text.strip()
    rate = _RATE.match(stripped)
    if rate:
        return _parse_rate(stripped, rate)
    cron = _CRON.match(stripped)
    if cron:
        return _parse_cron(stripped, cron.group(1))
    raise ScheduleError("A schedule expression is rate(value unit) or cron(fields).")
