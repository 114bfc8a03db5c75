"""Pure helpers behind `corral logs`: --since, REPORT parsing, grouping and follow cursors."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from corral.cli.client import CliError
from corral.cli.commands.logs import (
    FollowCursor,
    FollowPrinter,
    LogGrouper,
    group_events,
    parse_report,
    parse_since,
)

REPORT = ("REPORT RequestId: {rid}\tDuration: 12.34 ms\tBilled Duration: 100 ms\t"
          "Memory Size: 128 MB\tMax Memory Used: 40 MB\t")


def ev(n: int, message: str, stream: str = "s1", ts: int | None = None) -> dict:
    return {"eventId": f"{n:020d}", "timestamp": 1000 + n if ts is None else ts,
            "message": message, "logStreamName": stream}


def invocation(start: int, rid: str, lines: list[str], stream: str = "s1") -> list[dict]:
    messages = [f"START RequestId: {rid} Version: $LATEST", *lines, f"END RequestId: {rid}",
                REPORT.format(rid=rid)]
    return [ev(start + i, m, stream) for i, m in enumerate(messages)]


class TestSince:
    def test_relative(self):
        """30s, 10m, 2h, 1d and 1w count back from now."""
        now = 1_000_000.0
        assert parse_since("30s", now) == (now - 30) * 1000
        assert parse_since("10m", now) == (now - 600) * 1000
        assert parse_since("2h", now) == (now - 7200) * 1000
        assert parse_since("1d", now) == (now - 86400) * 1000
        assert parse_since("1w", now) == (now - 604800) * 1000

    def test_iso_utc(self):
        """An ISO time with Z is UTC."""
        expected = int(datetime(2026, 11, 22, 11, 0, tzinfo=UTC).timestamp() * 1000)
        assert parse_since("2026-11-22T11:00:00Z") == expected

    def test_iso_naive_is_local(self):
        """An ISO time without a zone is local time."""
        expected = int(datetime(2026, 11, 22, 11, 0).astimezone().timestamp() * 1000)
        assert parse_since("2026-11-22T11:00:00") == expected

    def test_invalid(self):
        """Anything else is a CliError naming the accepted forms."""
        with pytest.raises(CliError, match="10m"):
            parse_since("yesterday")


class TestReport:
    def test_fields(self):
        """Every figure of a REPORT line is parsed."""
        line = (REPORT.format(rid="r1") + "Init Duration: 55.50 ms\tStatus: timeout\t"
                "Error Type: Sandbox.Timedout\t")
        report = parse_report(line)
        assert report is not None
        assert (report.duration_ms, report.billed_ms, report.memory_size_mb,
                report.max_memory_used_mb, report.init_ms) == (12.34, 100, 128, 40, 55.5)
        assert (report.status, report.error_type) == ("timeout", "Sandbox.Timedout")

    def test_not_a_report(self):
        """Other lines are not reports."""
        assert parse_report("hello REPORT RequestId: x") is None


class TestGrouping:
    def test_init_then_invocations(self):
        """Lines before the first START are init; each invocation gets its own lines."""
        events = [ev(0, "loading model"), *invocation(1, "r1", ["one"]),
                  *invocation(10, "r2", ["two", "three"])]
        blocks = group_events(events)
        assert [(b.kind, b.request_id) for b in blocks] == [
            ("init", None), ("invocation", "r1"), ("invocation", "r2")]
        assert [line.message for line in blocks[0].lines] == ["loading model"]
        assert [line.message for line in blocks[2].lines] == ["two", "three"]
        assert blocks[2].report is not None and blocks[2].report.duration_ms == 12.34
        assert blocks[1].started and blocks[1].ended

    def test_interleaved_streams(self):
        """Concurrent instances (streams) interleaved in time are grouped per stream."""
        a = invocation(0, "ra", ["a1", "a2"], stream="sa")
        b = invocation(0, "rb", ["b1", "b2"], stream="sb")
        events = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            events += [dict(x, eventId=f"{2 * i:020d}"), dict(y, eventId=f"{2 * i + 1:020d}")]
        blocks = {b.request_id: b for b in group_events(events)}
        assert [line.message for line in blocks["ra"].lines] == ["a1", "a2"]
        assert [line.message for line in blocks["rb"].lines] == ["b1", "b2"]

    def test_window_starts_mid_invocation(self):
        """Lines before an END without START belong to that request, not to init."""
        events = [ev(0, "tail of r0"), ev(1, "END RequestId: r0"), ev(2, REPORT.format(rid="r0")),
                  *invocation(3, "r1", ["x"])]
        blocks = group_events(events)
        assert (blocks[0].kind, blocks[0].request_id, blocks[0].started) == (
            "invocation", "r0", False)
        assert [line.message for line in blocks[0].lines] == ["tail of r0"]

    def test_output_between_invocations(self):
        """Lines after a REPORT and before the next START are outside any invocation."""
        events = [*invocation(0, "r1", []), ev(10, "background thread"),
                  *invocation(11, "r2", [])]
        kinds = [(b.kind, b.request_id) for b in group_events(events)]
        assert kinds == [("invocation", "r1"), ("outside", None), ("invocation", "r2")]

    def test_unfinished_invocation(self):
        """An invocation without REPORT yet is returned incomplete by flush."""
        grouper = LogGrouper()
        for event in invocation(0, "r1", ["working"])[:2]:
            assert grouper.add(event) == []
        (block,) = grouper.flush()
        assert block.request_id == "r1" and not block.complete

    def test_multiline_messages_kept(self):
        """A message's trailing newline is dropped, inner newlines kept."""
        (block,) = [b for b in group_events(invocation(0, "r1", ["a\nb\n"]))]
        assert block.lines[0].message == "a\nb"


class TestFollowCursor:
    def test_dedupes_and_advances(self):
        """Events already taken are dropped; startTime trails the newest by the overlap."""
        cursor = FollowCursor(0, overlap_ms=100)
        first = [ev(1, "a", ts=1000), ev(2, "b", ts=1050)]
        assert [e["message"] for e in cursor.accept(first)] == ["a", "b"]
        assert cursor.start_ms == 950
        again = [*first, ev(3, "c", ts=1050), ev(4, "d", ts=1200)]
        assert [e["message"] for e in cursor.accept(again)] == ["c", "d"]
        assert cursor.start_ms == 1100
        assert cursor.accept(again) == []

    def test_sorted_output(self):
        """Fresh events come back in (timestamp, id) order."""
        cursor = FollowCursor(0)
        out = cursor.accept([ev(2, "later", ts=2000), ev(1, "earlier", ts=1000)])
        assert [e["message"] for e in out] == ["earlier", "later"]


class FakeRenderer:
    def __init__(self):
        self.calls: list[tuple[str, str | None, int]] = []

    def block(self, block):
        self.calls.append(("block", block.request_id, len(block.lines)))
        block.header_printed = True
        block.printed_lines = len(block.lines)

    def stream(self, block, *, running):
        self.calls.append(("running" if running else "done", block.request_id,
                           len(block.lines) - block.printed_lines))
        block.header_printed = True
        block.printed_lines = len(block.lines)


class TestFollowPrinter:
    def test_short_invocation_printed_whole(self):
        """An invocation that finishes quickly is printed once, complete."""
        renderer = FakeRenderer()
        printer = FollowPrinter(renderer, as_json=False, matched=lambda b: True)  # type: ignore[arg-type]
        grouper = LogGrouper()
        done = []
        for event in invocation(0, "r1", ["x", "y"]):
            done += grouper.add(event)
        printer.finished(done)
        assert renderer.calls == [("block", "r1", 2)]

    def test_long_invocation_streamed(self):
        """An invocation running past the hold time is streamed, then closed."""
        now = [0.0]
        renderer = FakeRenderer()
        printer = FollowPrinter(renderer, as_json=False, matched=lambda b: True,  # type: ignore[arg-type]
                                clock=lambda: now[0], stream_after_s=2.0)
        grouper = LogGrouper(clock=lambda: now[0])
        events = invocation(0, "r1", ["a", "b"])
        for event in events[:2]:
            grouper.add(event)
        printer.running(grouper.open_blocks())
        assert renderer.calls == []
        now[0] = 3.0
        printer.running(grouper.open_blocks())
        grouper.add(events[2])
        printer.running(grouper.open_blocks())
        done = []
        for event in events[3:]:
            done += grouper.add(event)
        printer.finished(done)
        assert renderer.calls == [("running", "r1", 1), ("running", "r1", 1),
                                  ("done", "r1", 0)]

    def test_filter_drops_empty_blocks(self):
        """With --filter, invocations without a matching line are not printed."""
        renderer = FakeRenderer()
        printer = FollowPrinter(renderer, as_json=False,  # type: ignore[arg-type]
                                matched=lambda b: bool(b.lines))
        grouper = LogGrouper()
        done = []
        for event in invocation(0, "r1", []):
            done += grouper.add(event)
        printer.finished(done)
        assert renderer.calls == []
