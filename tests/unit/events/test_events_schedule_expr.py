"""EventBridge schedule expressions: parsing, validation and the next fire time (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from corral.events.schedule_expr import CronSchedule, RateSchedule, ScheduleError, parse


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M")


def runs(expression: str, start: str, count: int = 3) -> list[str | None]:
    schedule = parse(expression)
    out: list[str | None] = []
    t: float | None = ts(start)
    for _ in range(count):
        assert t is not None
        t = schedule.next_after(t)
        out.append(iso(t))
        if t is None:
            break
    return out


class TestRate:
    @pytest.mark.parametrize(("expression", "period"), [
        ("rate(1 minute)", 60), ("rate(5 minutes)", 300), ("rate(1 hour)", 3600),
        ("rate(12 hours)", 43200), ("rate(1 day)", 86400), ("rate(7 days)", 604800),
        ("  rate( 2  minutes )  ", 120),
    ])
    def test_periods(self, expression, period):
        """Valid rates parse to their period in seconds."""
        schedule = parse(expression)
        assert isinstance(schedule, RateSchedule) and schedule.period_s == period

    @pytest.mark.parametrize("expression", [
        "rate(1 minutes)", "rate(5 minute)", "rate(0 minutes)", "rate(-1 minutes)",
        "rate(1.5 hours)", "rate(5 weeks)", "rate(5)", "rate minutes", "rate(five minutes)",
    ])
    def test_invalid(self, expression):
        """Zero, fractions, unknown units and singular/plural mismatches are rejected."""
        with pytest.raises(ScheduleError):
            parse(expression)

    def test_counts_from_the_anchor(self):
        """A rate fires at anchor + k * period, strictly after the given time."""
        schedule = parse("rate(5 minutes)")
        anchor = ts("2024-01-01T00:00:00")
        assert schedule.next_after(anchor, anchor) == anchor + 300
        assert schedule.next_after(anchor + 299, anchor) == anchor + 300
        assert schedule.next_after(anchor + 300, anchor) == anchor + 600
        assert schedule.next_after(anchor + 3601, anchor) == anchor + 3900

    def test_without_anchor(self):
        """Without an anchor the next run is one period after the given time."""
        assert parse("rate(1 hour)").next_after(1000.0) == 4600.0


class TestCronBasics:
    def test_daily_noon(self):
        """cron(0 12 * * ? *) fires every day at 12:00 UTC."""
        assert runs("cron(0 12 * * ? *)", "2024-02-28T13:00") == [
            "2024-02-29 12:00", "2024-03-01 12:00", "2024-03-02 12:00"]

    def test_strictly_after(self):
        """A time exactly on a run yields the following run."""
        assert runs("cron(0 12 * * ? *)", "2024-03-01T12:00", 1) == ["2024-03-02 12:00"]

    def test_steps_and_ranges_with_day_names(self):
        """cron(0/15 8-9 ? * MON-FRI *) fires every 15 minutes in office hours on weekdays."""
        assert runs("cron(0/15 8-9 ? * MON-FRI *)", "2024-06-07T09:50", 4) == [
            "2024-06-10 08:00", "2024-06-10 08:15", "2024-06-10 08:30", "2024-06-10 08:45"]

    def test_range_with_step(self):
        """a-b/c steps within the range."""
        assert runs("cron(10-40/15 0 * * ? *)", "2024-01-01T00:00", 4) == [
            "2024-01-01 00:10", "2024-01-01 00:25", "2024-01-01 00:40", "2024-01-02 00:10"]

    def test_star_step(self):
        """*/20 starts at the field's minimum."""
        assert runs("cron(*/20 * * * ? *)", "2024-01-01T00:05", 3) == [
            "2024-01-01 00:20", "2024-01-01 00:40", "2024-01-01 01:00"]

    def test_lists_and_month_names(self):
        """Comma lists mix with month names, case-insensitively."""
        assert runs("cron(30 6 1 jan,Jul,OCT ? *)", "2024-02-01T00:00", 3) == [
            "2024-07-01 06:30", "2024-10-01 06:30", "2025-01-01 06:30"]

    def test_day_of_week_numbers(self):
        """Day-of-week 1 is Sunday and 7 is Saturday."""
        assert runs("cron(0 0 ? * 1,7 *)", "2024-06-05T00:00", 3) == [
            "2024-06-08 00:00", "2024-06-09 00:00", "2024-06-15 00:00"]

    def test_years(self):
        """The year field limits runs; none are left after the last year."""
        assert runs("cron(0 0 1 1 ? 2025-2026)", "2024-06-01T00:00", 3) == [
            "2025-01-01 00:00", "2026-01-01 00:00", None]
        assert parse("cron(0 0 1 1 ? 2020)").next_after(ts("2024-01-01T00:00")) is None

    def test_every_minute(self):
        """cron(* * * * ? *) fires at every whole minute."""
        assert runs("cron(* * * * ? *)", "2024-01-01T00:00:30", 2) == [
            "2024-01-01 00:01", "2024-01-01 00:02"]


class TestCronLeapYears:
    def test_february_29(self):
        """Feb 29 fires only in leap years (2100 is not one)."""
        assert runs("cron(0 0 29 2 ? *)", "2024-03-01T00:00", 2) == [
            "2028-02-29 00:00", "2032-02-29 00:00"]
        assert runs("cron(0 0 29 2 ? 2097-2104)", "2097-01-01T00:00", 2) == [
            "2104-02-29 00:00", None]

    def test_impossible_date(self):
        """A day that never exists (Feb 30) has no next run."""
        assert parse("cron(0 0 30 2 ? *)").next_after(ts("2024-01-01T00:00")) is None

    def test_last_day_of_february(self):
        """L is the 29th in a leap year and the 28th otherwise."""
        assert runs("cron(0 0 L 2 ? *)", "2023-01-01T00:00", 2) == [
            "2023-02-28 00:00", "2024-02-29 00:00"]


class TestCronSpecials:
    def test_last_day_of_month(self):
        """L in day-of-month is each month's last day."""
        assert runs("cron(0 0 L * ? *)", "2024-01-15T00:00", 4) == [
            "2024-01-31 00:00", "2024-02-29 00:00", "2024-03-31 00:00", "2024-04-30 00:00"]

    def test_days_before_the_last(self):
        """L-2 is two days before the month's last day."""
        assert runs("cron(0 0 L-2 * ? *)", "2024-02-01T00:00", 2) == [
            "2024-02-27 00:00", "2024-03-29 00:00"]

    def test_nearest_weekday(self):
        """15W moves a Saturday 15th to Friday and a Sunday 15th to Monday."""
        # 2024-06-15 is a Saturday, 2024-09-15 a Sunday, 2024-08-15 a Thursday.
        assert runs("cron(0 9 15W * ? *)", "2024-06-01T00:00", 4) == [
            "2024-06-14 09:00", "2024-07-15 09:00", "2024-08-15 09:00", "2024-09-16 09:00"]

    def test_nearest_weekday_stays_in_the_month(self):
        """1W on a Saturday the 1st moves forward to Monday the 3rd, not into last month."""
        # 2024-06-01 is a Saturday.
        assert runs("cron(0 9 1W 6 ? 2024)", "2024-05-01T00:00", 1) == ["2024-06-03 09:00"]

    def test_last_weekday(self):
        """LW is the month's last Monday-Friday."""
        # 2024-08-31 is a Saturday, 2024-06-30 a Sunday.
        assert runs("cron(0 9 LW * ? *)", "2024-06-01T00:00", 3) == [
            "2024-06-28 09:00", "2024-07-31 09:00", "2024-08-30 09:00"]

    def test_nth_day_of_week(self):
        """2#1 is the first Monday of the month; 6#3 the third Friday."""
        assert runs("cron(0 9 ? * 2#1 *)", "2024-01-01T00:00", 3) == [
            "2024-01-01 09:00", "2024-02-05 09:00", "2024-03-04 09:00"]
        assert runs("cron(0 9 ? * FRI#3 *)", "2024-01-01T00:00", 2) == [
            "2024-01-19 09:00", "2024-02-16 09:00"]

    def test_fifth_occurrence_skips_short_months(self):
        """5#5 (fifth Thursday) only fires in months that have one."""
        assert runs("cron(0 0 ? * 5#5 *)", "2024-01-01T00:00", 3) == [
            "2024-02-29 00:00", "2024-05-30 00:00", "2024-08-29 00:00"]

    def test_last_day_of_week_in_month(self):
        """6L is the month's last Friday."""
        assert runs("cron(0 9 ? * 6L *)", "2024-01-01T00:00", 3) == [
            "2024-01-26 09:00", "2024-02-23 09:00", "2024-03-29 09:00"]

    def test_plain_l_in_day_of_week(self):
        """L alone in day-of-week is the week's last day, Saturday."""
        assert runs("cron(0 0 ? * L *)", "2024-06-03T00:00", 2) == [
            "2024-06-08 00:00", "2024-06-15 00:00"]


class TestCronValidation:
    @pytest.mark.parametrize("expression", [
        "cron(0 12 * * * *)",  # neither day field is ?
        "cron(0 12 ? * ? *)",  # both are
        "cron(0 12 * *)",  # too few fields
        "cron(0 12 * * ? * *)",  # too many
        "cron(60 12 * * ? *)", "cron(0 24 * * ? *)", "cron(0 0 32 * ? *)",
        "cron(0 0 0 * ? *)", "cron(0 0 * 13 ? *)", "cron(0 0 ? * 8 *)",
        "cron(0 0 1 1 ? 1969)", "cron(0 0 1 1 ? 2200)",
        "cron(0 0 ? * FRI-MON *)",  # ranges do not wrap
        "cron(0 0 1 FOO ? *)", "cron(0 0 ? * MON#6 *)", "cron(0 0 ? * 2#0 *)",
        "cron(0/0 * * * ? *)", "cron(? 0 * * ? *)", "cron(0 0 1,,2 * ? *)",
        "cron(0 0 5L * ? *)", "cron(0 0 ? * 2W *)", "cron(0 0 L-31 * ? *)",
        "every day", "", "cron()",
    ])
    def test_invalid(self, expression):
        """Malformed fields, out-of-range values and misplaced wildcards are rejected."""
        with pytest.raises(ScheduleError):
            parse(expression)

    def test_parsed_type(self):
        """A cron expression parses to a CronSchedule keeping its text."""
        schedule = parse("cron(0 12 * * ? *)")
        assert isinstance(schedule, CronSchedule) and schedule.expression == "cron(0 12 * * ? *)"
