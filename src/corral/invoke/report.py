"""The platform's log lines around each invocation: START, END, REPORT, timeouts.

Formats follow the Lambda service (see the interface spec §5.4); `Billed Duration` comes from
`billed_duration_ms` so the REPORT line and the billing record always agree.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime


def billed_duration_ms(duration_ms: float, granularity_ms: int) -> int:
    """Round a duration up to the billing granularity (at least one unit)."""
    units = max(1, math.ceil(round(duration_ms, 6) / granularity_ms))
    return units * granularity_ms


def start_line(request_id: str, version: str) -> str:
    return f"START RequestId: {request_id} Version: {version}"


def end_line(request_id: str) -> str:
    return f"END RequestId: {request_id}"


def report_line(request_id: str, duration_ms: float, billed_ms: int, memory_mb: int,
                max_used_mb: int, init_ms: float | None, status: str | None = None,
                error_type: str | None = None) -> str:
    parts = [f"REPORT RequestId: {request_id}", f"Duration: {duration_ms:.2f} ms",
             f"Billed Duration: {billed_ms} ms", f"Memory Size: {memory_mb} MB",
             f"Max Memory Used: {max_used_mb} MB"]
    if init_ms is not None:
        parts.append(f"Init Duration: {init_ms:.2f} ms")
    if status:
        parts.append(f"Status: {status}")
    if error_type:
        parts.append(f"Error Type: {error_type}")
    return "\t".join(parts) + "\t"


def timeout_line(request_id: str, timeout_s: float, now: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return f"{stamp} {request_id} Task timed out after {timeout_s:.2f} seconds"


def log_stream_name(version: str, instance_id: str, now: float | None = None) -> str:
    """`YYYY/MM/DD/[<version>]<32 hex>` as Lambda names an instance's stream."""
    day = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    return f"{day:%Y/%m/%d}/[{version}]{instance_id}"
