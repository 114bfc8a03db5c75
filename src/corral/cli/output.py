"""Output for people (rich tables on a terminal) and for scripts (`--json`), and error lines.

Everything a command prints goes through here: results to stdout, notes and errors to stderr,
so that `corral invoke f > out.json` and `corral ls --json | jq` see only results.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = [
    "console",
    "echo_json",
    "err_console",
    "error",
    "format_bytes",
    "format_millis",
    "format_timestamp",
    "note",
    "stdout_is_tty",
    "table",
    "warn",
]


def stdout_is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def console() -> Console:
    """A console on the current stdout (wide when piped, so tables are not squeezed)."""
    tty = stdout_is_tty()
    return Console(file=sys.stdout, highlight=False, soft_wrap=not tty,
                   width=None if tty else 200)


def err_console() -> Console:
    return Console(file=sys.stderr, highlight=False, stderr=True)


def echo_json(value: Any) -> None:
    """Print `value` as indented JSON on stdout (datetimes as ISO 8601)."""
    click.echo(json.dumps(value, indent=2, default=_json_default, ensure_ascii=False))


def echo_json_line(value: Any) -> None:
    """Print `value` as one line of JSON (for streams such as `logs --follow --json`)."""
    click.echo(json.dumps(value, default=_json_default, ensure_ascii=False))
    sys.stdout.flush()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
          title: str | None = None, right: Sequence[str] = ()) -> None:
    """Print a table on stdout; columns named in `right` are right-aligned."""
    tbl = Table(title=title, box=box.SIMPLE_HEAD if stdout_is_tty() else None,
                header_style="bold",
                pad_edge=False, show_edge=False)
    for column in columns:
        tbl.add_column(column, justify="right" if column in right else "left",
                       overflow="fold")
    for row in rows:
        tbl.add_row(*(Text(str(cell)) for cell in row))
    _print_renderable(tbl)


def key_values(pairs: Iterable[tuple[str, Any]]) -> None:
    """Print `key  value` lines as a two-column table (a summary of one thing)."""
    tbl = Table(box=None, show_header=False, pad_edge=False, show_edge=False)
    tbl.add_column(style="bold")
    tbl.add_column(overflow="fold")
    for key, value in pairs:
        tbl.add_row(key, Text(str(value)))
    _print_renderable(tbl)


def _print_renderable(renderable: Any) -> None:
    """Print on stdout; when piped, without the padding rich leaves at the end of lines."""
    out = console()
    if stdout_is_tty():
        out.print(renderable)
        return
    with out.capture() as captured:
        out.print(renderable)
    for line in captured.get().splitlines():
        click.echo(line.rstrip())


def note(message: str) -> None:
    """An informational line on stderr (what was inferred, what happened)."""
    err_console().print(Text(message, style="dim"))


def warn(message: str) -> None:
    err_console().print(Text(f"warning: {message}", style="yellow"))


def error(message: str) -> None:
    """The one-line error every command prints before exiting with status 1."""
    click.echo(f"corral: {message}", err=True)


def format_bytes(size: int | None) -> str:
    """1536 -> '1.5 KB' (powers of 1024; bytes shown exactly below 1 KB)."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_millis(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def format_timestamp(ms: int) -> str:
    """Epoch milliseconds as local time, `2026-11-22 12:00:00.123`."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def format_last_modified(value: str | None) -> str:
    """Lambda's `2026-11-22T11:00:00.000+0000` as local `2026-11-22 12:00:00`."""
    if not value:
        return "-"
    try:
        moment = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        return value
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")
