"""`corral logs NAME`: what a function printed, invocation by invocation.

Events come from the CloudWatch Logs API (FilterLogEvents on ``/aws/lambda/NAME``). Each
instance writes to its own log stream, framing every invocation with Lambda's platform lines::

    START RequestId: <id> Version: $LATEST
    ...what the handler printed...
    END RequestId: <id>
    REPORT RequestId: <id>  Duration: 1.23 ms  Billed Duration: 100 ms  ...

`LogGrouper` follows that framing per stream: lines between a request's START and END belong
to it, lines before a stream's first START are the instance's init output, and when the time
window starts in the middle of an invocation its lines are claimed by the END that follows.

With ``--filter`` the pattern is applied by the server, and a second query fetches the framing
lines so that the matching lines can still be placed under their invocation.

``--follow`` polls every second like ``aws logs tail --follow``: it asks for events from the
newest timestamp it has seen (minus a second of overlap) and drops event ids it has already
printed, so that nothing is shown twice and nothing is missed. Invocations are printed when
they finish; one still running after two seconds is streamed as its lines arrive.
"""

from __future__ import annotations

import re
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import click
from botocore.exceptions import ClientError
from rich.text import Text

from corral.cli.client import CliError, connection_options, get_connection
from corral.cli.output import (
    console,
    echo_json,
    echo_json_line,
    format_millis,
    format_timestamp,
    note,
)

__all__ = [
    "Block",
    "FollowCursor",
    "LogGrouper",
    "Report",
    "group_events",
    "logs",
    "parse_report",
    "parse_since",
]

FRAMING_PATTERN = '?"START RequestId: " ?"END RequestId: " ?"REPORT RequestId: "'
DEFAULT_SINCE = "1h"
POLL_INTERVAL_S = 1.0
STREAM_AFTER_S = 2.0  # a follow-mode invocation still running this long is streamed
OVERLAP_MS = 1000

_START = re.compile(r"START RequestId: (\S+)(?: Version: (\S+))?\s*$")
_END = re.compile(r"END RequestId: (\S+)\s*$")
_REPORT = re.compile(r"REPORT RequestId: (\S+)")
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)", re.IGNORECASE)
_UNIT_S = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


# -- parsing ----------------------------------------------------------------------------------


def parse_since(value: str, now: float | None = None) -> int:
    """`--since` as epoch milliseconds: `30s`, `10m`, `2h`, `1d`, `1w`, or an ISO 8601 time
    (`2026-11-22`, `2026-11-22T11:00:00Z`; without a zone it is local time)."""
    now = time.time() if now is None else now
    text = value.strip()
    match = _RELATIVE.fullmatch(text)
    if match:
        seconds = float(match.group(1)) * _UNIT_S[match.group(2).lower()]
        return int((now - seconds) * 1000)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise CliError(f"--since {value!r}: expected a duration such as 10m, 1h, 2d or an "
                       "ISO 8601 time such as 2026-11-22T11:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time
    return int(moment.astimezone(UTC).timestamp() * 1000)


@dataclass(frozen=True)
class Report:
    """The figures of a REPORT line."""

    duration_ms: float | None = None
    billed_ms: int | None = None
    memory_size_mb: int | None = None
    max_memory_used_mb: int | None = None
    init_ms: float | None = None
    status: str | None = None
    error_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"durationMs": self.duration_ms, "billedDurationMs": self.billed_ms,
                "memorySizeMb": self.memory_size_mb,
                "maxMemoryUsedMb": self.max_memory_used_mb, "initDurationMs": self.init_ms,
                "status": self.status, "errorType": self.error_type}


def parse_report(message: str) -> Report | None:
    """The fields of `REPORT RequestId: ... \\tDuration: 1.00 ms\\t...`, or None."""
    if not _REPORT.match(message):
        return None
    fields: dict[str, str] = {}
    for part in message.split("\t")[1:]:
        key, sep, value = part.partition(": ")
        if sep:
            fields[key.strip()] = value.strip()

    def number(key: str) -> float | None:
        raw = fields.get(key, "").split(" ")[0]
        try:
            return float(raw)
        except ValueError:
            return None

    def integer(key: str) -> int | None:
        value = number(key)
        return int(value) if value is not None else None

    return Report(duration_ms=number("Duration"), billed_ms=integer("Billed Duration"),
                  memory_size_mb=integer("Memory Size"),
                  max_memory_used_mb=integer("Max Memory Used"),
                  init_ms=number("Init Duration"), status=fields.get("Status"),
                  error_type=fields.get("Error Type"))


# -- grouping ---------------------------------------------------------------------------------


@dataclass
class LogLine:
    timestamp: int
    message: str
    event_id: str


@dataclass
class Block:
    """One invocation's lines (kind "invocation") or lines outside any ("init", "outside")."""

    kind: str
    stream: str
    first: tuple[int, str]  # (timestamp, event id) of the first event seen, for ordering
    request_id: str | None = None
    version: str | None = None
    lines: list[LogLine] = field(default_factory=list)
    started: bool = False  # its START was seen
    ended: bool = False  # its END was seen
    report: Report | None = None
    seen_at: float = 0.0  # monotonic time the block was first seen (follow mode)
    printed_lines: int = 0  # lines already printed (follow mode)
    header_printed: bool = False

    @property
    def complete(self) -> bool:
        return self.report is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "requestId": self.request_id,
            "logStreamName": self.stream,
            "timestamp": self.first[0],
            "time": datetime.fromtimestamp(self.first[0] / 1000, tz=UTC).isoformat(),
            "complete": self.complete if self.kind == "invocation" else True,
            "report": self.report.to_json() if self.report else None,
            "lines": [{"timestamp": ln.timestamp, "message": ln.message} for ln in self.lines],
        }


class LogGrouper:
    """Assigns log events to invocations using the START/END/REPORT framing, per stream."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._open: dict[str, Block] = {}  # stream -> the block lines currently go to
        self._framed: set[str] = set()  # streams in which a START or END has been seen

    def _new(self, kind: str, stream: str, key: tuple[int, str],
             request_id: str | None = None) -> Block:
        return Block(kind, stream, key, request_id, seen_at=self._clock())

    def add(self, event: dict[str, Any]) -> list[Block]:
        """Consume one FilterLogEvents event; returns the blocks it completed."""
        message = str(event.get("message", "")).rstrip("\n")
        stream = str(event.get("logStreamName", ""))
        key = (int(event.get("timestamp", 0)), str(event.get("eventId", "")))
        current = self._open.get(stream)
        done: list[Block] = []

        start = _START.match(message)
        if start:
            if current is not None:
                done.append(current)  # init output, or an invocation whose END never came
            block = self._new("invocation", stream, key, start.group(1))
            block.version = start.group(2)
            block.started = True
            self._open[stream] = block
            self._framed.add(stream)
            return done

        end = _END.match(message)
        if end:
            request_id = end.group(1)
            self._framed.add(stream)
            if current is not None and current.kind == "invocation" \
                    and current.request_id == request_id:
                current.ended = True
            elif current is not None and current.kind != "invocation":
                # The window began inside this invocation: its lines are the ones so far.
                current.kind, current.request_id, current.ended = "invocation", request_id, True
            else:
                if current is not None:
                    done.append(current)
                block = self._new("invocation", stream, key, request_id)
                block.ended = True
                self._open[stream] = block
            return done

        report_match = _REPORT.match(message)
        if report_match:
            report = parse_report(message)
            request_id = report_match.group(1)
            if current is not None and current.request_id == request_id:
                current.report = report
                del self._open[stream]
                done.append(current)
            else:
                if current is not None and current.kind != "invocation":
                    current.kind, current.request_id = "invocation", request_id
                    current.report = report
                    del self._open[stream]
                    done.append(current)
                else:
                    block = self._new("invocation", stream, key, request_id)
                    block.report = report
                    done.append(block)
            return done

        if current is None:
            kind = "outside" if stream in self._framed else "init"
            current = self._new(kind, stream, key)
            self._open[stream] = current
        current.lines.append(LogLine(key[0], message, key[1]))
        return done

    def open_blocks(self) -> list[Block]:
        """Blocks still collecting lines, oldest first."""
        return sorted(self._open.values(), key=lambda b: b.first)

    def flush(self) -> list[Block]:
        """Close and return every open block (end of the window, or Ctrl-C)."""
        blocks = self.open_blocks()
        self._open.clear()
        return blocks


def group_events(events: Iterable[dict[str, Any]]) -> list[Block]:
    """Every block of a finite list of events, ordered by their first event."""
    grouper = LogGrouper()
    blocks: list[Block] = []
    for event in sorted(events, key=_event_key):
        blocks += grouper.add(event)
    blocks += grouper.flush()
    return sorted(blocks, key=lambda b: b.first)


def _event_key(event: dict[str, Any]) -> tuple[int, str]:
    return int(event.get("timestamp", 0)), str(event.get("eventId", ""))


# -- fetching ---------------------------------------------------------------------------------


class FollowCursor:
    """Where `--follow` stands: the next startTime and the event ids already taken."""

    def __init__(self, start_ms: int, overlap_ms: int = OVERLAP_MS) -> None:
        self.start_ms = start_ms
        self._overlap_ms = overlap_ms
        self._seen: dict[str, int] = {}
        self._newest = start_ms

    def accept(self, events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """The events not taken before, in (timestamp, id) order; advances the cursor."""
        fresh = []
        for event in events:
            event_id = str(event.get("eventId", ""))
            timestamp = int(event.get("timestamp", 0))
            if event_id in self._seen or timestamp < self.start_ms:
                continue  # taken before (ids older than start_ms were pruned)
            self._seen[event_id] = timestamp
            self._newest = max(self._newest, timestamp)
            fresh.append(event)
        self.start_ms = max(self.start_ms, self._newest - self._overlap_ms)
        self._seen = {k: ts for k, ts in self._seen.items() if ts >= self.start_ms}
        return sorted(fresh, key=_event_key)


def filter_events(client: Any, group: str, start_ms: int,
                  pattern: str | None = None) -> list[dict[str, Any]]:
    """Every event of `group` from `start_ms` (matching `pattern`), following nextToken.

    A group that does not exist yet (the function never ran) has no events.
    """
    params: dict[str, Any] = {"logGroupName": group, "startTime": max(0, start_ms)}
    if pattern:
        params["filterPattern"] = pattern
    events: list[dict[str, Any]] = []
    previous: str | None = None
    while True:
        try:
            page = client.filter_log_events(**params)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return events
            raise
        events += page.get("events", [])
        token = page.get("nextToken")
        if not token or token == previous:
            return events
        previous = params["nextToken"] = token


def fetch(client: Any, group: str, start_ms: int, pattern: str | None) -> list[dict[str, Any]]:
    """Events to group: all of them, or the matching ones plus the framing lines."""
    if not pattern:
        return filter_events(client, group, start_ms)
    matched = filter_events(client, group, start_ms, pattern)
    ids = {e.get("eventId") for e in matched}
    framing = [e for e in filter_events(client, group, start_ms, FRAMING_PATTERN)
               if e.get("eventId") not in ids and _is_framing(str(e.get("message", "")))]
    return matched + framing


def _is_framing(message: str) -> bool:
    message = message.rstrip("\n")
    return bool(_START.match(message) or _END.match(message) or _REPORT.match(message))


# -- rendering --------------------------------------------------------------------------------


def header_text(block: Block, *, running: bool = False, continued: bool = False) -> Text:
    """`── <time>  <request id>  Duration ...` for a block."""
    text = Text("── ", style="dim")
    text.append(format_timestamp(block.first[0]), style="dim")
    text.append("  ")
    if block.kind == "invocation":
        text.append(f"RequestId: {block.request_id}", style="bold cyan")
        report = block.report
        if continued:
            text.append("  (continued)", style="dim")
        elif report is not None:
            text.append("  " + report_summary(report))
            if report.status or report.error_type:
                status = ", ".join(x for x in (report.status, report.error_type) if x)
                text.append(f"  [{status}]", style="bold red")
            if not block.started:
                text.append("  (started before --since)", style="dim")
        elif running:
            text.append("  (running)", style="yellow")
        else:
            text.append("  (no REPORT line yet)", style="yellow")
    else:
        label = "init" if block.kind == "init" else "outside any invocation"
        text.append(label, style="bold magenta")
        if continued:
            text.append("  (continued)", style="dim")
        text.append(f"  {block.stream}", style="dim")
    return text


def report_summary(report: Report) -> str:
    parts = [f"Duration: {format_millis(report.duration_ms)}"]
    if report.billed_ms is not None:
        parts.append(f"Billed: {report.billed_ms} ms")
    if report.max_memory_used_mb is not None:
        size = f"/{report.memory_size_mb}" if report.memory_size_mb is not None else ""
        parts.append(f"Memory: {report.max_memory_used_mb}{size} MB")
    if report.init_ms is not None:
        parts.append(f"Init: {format_millis(report.init_ms)}")
    return "  ".join(parts)


class Renderer:
    """Prints blocks for people: a header, then the lines indented."""

    def __init__(self) -> None:
        self._console = console()
        self._current: Block | None = None

    def _lines(self, lines: Sequence[LogLine]) -> None:
        for line in lines:
            for part in line.message.split("\n") or [""]:
                click.echo("  " + part)

    def block(self, block: Block) -> None:
        """A whole block."""
        self._console.print(header_text(block))
        self._lines(block.lines)
        block.header_printed = True
        block.printed_lines = len(block.lines)
        self._current = block

    def stream(self, block: Block, *, running: bool) -> None:
        """The lines of `block` not printed yet (follow mode), then its end if complete."""
        new = block.lines[block.printed_lines:]
        if not block.header_printed:
            self._console.print(header_text(block, running=running))
            block.header_printed = True
        elif self._current is not block and (new or not running):
            self._console.print(header_text(block, continued=True))
        self._lines(new)
        block.printed_lines = len(block.lines)
        self._current = block
        if not running and block.kind == "invocation" and block.report is not None:
            footer = Text("── ", style="dim")
            footer.append(f"END RequestId: {block.request_id}", style="cyan")
            footer.append("  " + report_summary(block.report))
            self._console.print(footer)


class FollowPrinter:
    """Decides when follow mode prints a block (see the module docstring)."""

    def __init__(self, renderer: Renderer | None, *, as_json: bool,
                 matched: Callable[[Block], bool],
                 clock: Callable[[], float] = time.monotonic,
                 stream_after_s: float = STREAM_AFTER_S) -> None:
        self._renderer = renderer
        self._as_json = as_json
        self._matched = matched
        self._clock = clock
        self._stream_after_s = stream_after_s

    def finished(self, blocks: Iterable[Block]) -> None:
        for block in sorted(blocks, key=lambda b: b.first):
            if not self._matched(block):
                continue
            if self._as_json:
                echo_json_line(block.to_json())
            elif self._renderer is None:
                continue
            elif block.header_printed:
                self._renderer.stream(block, running=False)
            else:
                self._renderer.block(block)

    def running(self, blocks: Iterable[Block]) -> None:
        if self._as_json or self._renderer is None:
            return
        now = self._clock()
        for block in blocks:
            if not self._matched(block):
                continue
            if now - block.seen_at >= self._stream_after_s and (
                    not block.header_printed or block.printed_lines < len(block.lines)):
                self._renderer.stream(block, running=True)


# -- the command ------------------------------------------------------------------------------


def _log_group(lam: Any, name: str) -> str:
    config = lam.get_function_configuration(FunctionName=name)
    logging_config = config.get("LoggingConfig") or {}
    return str(logging_config.get("LogGroup") or f"/aws/lambda/{config['FunctionName']}")


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@click.command()
@click.argument("name")
@click.option("--since", "-s", default=DEFAULT_SINCE, show_default=True, metavar="TIME",
              help="Start from this long ago (30s, 10m, 1h, 2d) or this ISO 8601 time.")
@click.option("--follow", "-f", is_flag=True, help="Keep polling for new output (Ctrl-C stops).")
@click.option("--filter", "pattern", default=None, metavar="PATTERN",
              help="Only lines matching this CloudWatch Logs filter pattern.")
@click.option("--json", "as_json", is_flag=True,
              help="Print invocations as JSON (one object per line with --follow).")
@connection_options
def logs(name: str, since: str, follow: bool, pattern: str | None, as_json: bool,
         endpoint_url: str | None, data_dir: str | None) -> None:
    """Show what function NAME printed, invocation by invocation."""
    start_ms = parse_since(since)
    if not follow:
        _show(name, start_ms, pattern, as_json, endpoint_url, data_dir)
        return
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        _follow(name, start_ms, pattern, as_json, endpoint_url, data_dir)
    except KeyboardInterrupt:
        pass  # Ctrl-C (or SIGTERM) is how --follow ends
    finally:
        signal.signal(signal.SIGTERM, previous)


def _matcher(pattern: str | None) -> Callable[[Block], bool]:
    """With --filter, only blocks that kept a (matching) line are shown."""
    return lambda block: not pattern or bool(block.lines)


def _show(name: str, start_ms: int, pattern: str | None, as_json: bool,
          endpoint_url: str | None, data_dir: str | None) -> None:
    connection = get_connection(endpoint_url, data_dir)
    group = _log_group(connection.lambda_client(), name)
    matched = _matcher(pattern)
    events = fetch(connection.logs_client(), group, start_ms, pattern)
    blocks = [b for b in group_events(events) if matched(b)]
    if as_json:
        echo_json([b.to_json() for b in blocks])
        return
    if not blocks:
        note(f"No output from {name} since {format_timestamp(start_ms)}"
             f"{' matching ' + repr(pattern) if pattern else ''} (see --since).")
        return
    renderer = Renderer()
    for block in blocks:
        renderer.block(block)


def _follow(name: str, start_ms: int, pattern: str | None, as_json: bool,
            endpoint_url: str | None, data_dir: str | None) -> None:
    connection = get_connection(endpoint_url, data_dir)
    group = _log_group(connection.lambda_client(), name)
    client = connection.logs_client()
    cursor = FollowCursor(start_ms)
    grouper = LogGrouper()
    printer = FollowPrinter(None if as_json else Renderer(), as_json=as_json,
                            matched=_matcher(pattern))
    try:
        while True:
            finished: list[Block] = []
            for event in cursor.accept(fetch(client, group, cursor.start_ms, pattern)):
                finished += grouper.add(event)
            printer.finished(finished)
            printer.running(grouper.open_blocks())
            sys.stdout.flush()
            time.sleep(POLL_INTERVAL_S)
    except KeyboardInterrupt:
        printer.finished(grouper.flush())  # what arrived so far of unfinished invocations
        sys.stdout.flush()
        raise
