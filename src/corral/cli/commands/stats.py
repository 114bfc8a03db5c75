"""`corral stats`: invocations, errors, throttles, cold starts, durations and concurrency.

Reads `GET /_corral/stats` (signed): the numbers `/metrics` exports, since the server started.
Durations are estimates from the histogram's buckets (as Prometheus' histogram_quantile).
"""

from __future__ import annotations

from typing import Any

import click

from corral.cli.client import connection_options, get_connection
from corral.cli.commands.bill import signed_get
from corral.cli.output import echo_json, format_millis, note, table

__all__ = ["stats"]

_COLUMNS = ["FUNCTION", "INVOCATIONS", "ERRORS", "THROTTLES", "COLD STARTS", "P50", "P99",
            "CONCURRENCY"]


def _row(label: str, line: dict[str, Any]) -> list[str]:
    duration = line.get("duration_ms") or {}
    return [label, f"{line['invocations']:,}", f"{line['errors']:,}", f"{line['throttles']:,}",
            f"{line['cold_starts']:,}", format_millis(duration.get("p50")),
            format_millis(duration.get("p99")), str(line.get("concurrent_executions", 0))]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON.")
@connection_options
def stats(as_json: bool, endpoint_url: str | None, data_dir: str | None) -> None:
    """Show per-function invocation statistics since the server started."""
    data = signed_get(get_connection(endpoint_url, data_dir), "/_corral/stats")
    if as_json:
        echo_json(data)
        return
    functions = data.get("functions", [])
    if not functions:
        note("No functions yet.")
        return
    rows = [_row(line["function"], line) for line in functions]
    rows.append(_row("All functions", data["account"]))
    table(_COLUMNS, rows, right=_COLUMNS[1:])
    account = data["account"]
    limit = account.get("concurrency_limit")
    note(f"Concurrent executions: {account['concurrent_executions']}"
         + (f" of {limit}" if limit is not None else "")
         + ". Durations p50/p99 are estimates from histogram buckets.")
