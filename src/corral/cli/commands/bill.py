"""`corral bill`: what the account's functions cost in a month, free tier applied.

Reads `GET /_corral/billing?month=YYYY-MM[&function=NAME]` from the server, signed with SigV4
like every other request (`signed_get`, shared with `corral stats`). The server does all the
arithmetic (exact decimals); this command only prints it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import quote, urlencode

import click

from corral.cli.client import CliError, Connection, connection_options, get_connection
from corral.cli.output import echo_json, note, table

__all__ = ["bill", "format_amount", "format_quantity", "signed_get"]

TIMEOUT_S = 30.0


def signed_get(conn: Connection, path: str, params: dict[str, str] | None = None) -> Any:
    """GET `path` on the server, SigV4-signed (service "lambda"); the decoded JSON body."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    query = urlencode(sorted((params or {}).items()), quote_via=quote)
    url = f"{conn.endpoint}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method="GET", url=url)
    credentials = Credentials(conn.access_key_id, conn.secret_access_key, conn.session_token)
    SigV4Auth(credentials, "lambda", conn.region).add_auth(request)
    prepared = request.prepare()
    http = urllib.request.Request(prepared.url, headers=dict(prepared.headers), method="GET")
    try:
        with urllib.request.urlopen(http, timeout=TIMEOUT_S) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        raise CliError(_http_error(exc)) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach the Corral server at {conn.endpoint}: is `corral server` "
                       f"running? ({getattr(exc, 'reason', exc)})") from exc
    try:
        return json.loads(body)
    except ValueError as exc:
        raise CliError(f"the server sent an unreadable answer to {path}") from exc


def _http_error(exc: urllib.error.HTTPError) -> str:
    try:
        data = json.loads(exc.read())
    except (ValueError, OSError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    code = exc.headers.get("x-amzn-ErrorType", "").split(":")[0] or data.get("__type") \
        or f"HTTP {exc.code}"
    message = data.get("message") or data.get("Message") or exc.reason
    if exc.code == 404 and not data:
        return (f"HTTP 404 from {exc.url}: this server has no metering feature "
                "(corral.metering.feature is not enabled)")
    return f"{code}: {message}"


def format_amount(text: str, currency: str = "USD") -> str:
    """An exact decimal amount for people: 2 to 8 decimals, `$` for USD (`-$0.20`)."""
    value = Decimal(text).quantize(Decimal("1e-8"), rounding=ROUND_HALF_UP)
    sign = "-" if value < 0 else ""
    whole, _, frac = format(abs(value), "f").partition(".")
    shown = f"{int(whole):,}.{frac.rstrip('0').ljust(2, '0')}"
    return f"{sign}${shown}" if currency == "USD" else f"{sign}{shown} {currency}"


def format_quantity(text: str) -> str:
    """GB-seconds for people: grouped thousands, up to 6 decimals."""
    value = Decimal(text).quantize(Decimal("1e-6"), rounding=ROUND_HALF_UP)
    whole, _, frac = format(value, "f").partition(".")
    frac = frac.rstrip("0")
    return f"{int(whole):,}" + (f".{frac}" if frac else "")


_COLUMNS = ["FUNCTION", "REQUESTS", "GB-SECONDS", "REQUEST COST", "COMPUTE COST",
            "FREE TIER", "TOTAL"]


def _row(label: str, line: dict[str, Any], currency: str) -> list[str]:
    return [label, f"{line['requests']:,}", format_quantity(line["gb_seconds"]),
            format_amount(line["request_cost"], currency),
            format_amount(line["compute_cost"], currency),
            format_amount(str(-Decimal(line["free_tier_deduction"])), currency),
            format_amount(line["total"], currency)]


@click.command()
@click.option("--month", default=None, metavar="YYYY-MM",
              help="The calendar month (UTC) to bill (default: this month).")
@click.option("--function", "function", default=None, metavar="NAME",
              help="Only this function's line (the free tier is still the account's).")
@click.option("--json", "as_json", is_flag=True, help="Print the bill as JSON (exact decimals).")
@connection_options
def bill(month: str | None, function: str | None, as_json: bool, endpoint_url: str | None,
         data_dir: str | None) -> None:
    """Show what functions cost in a month: requests, GB-seconds, free tier and total."""
    params = {k: v for k, v in (("month", month), ("function", function)) if v}
    report = signed_get(get_connection(endpoint_url, data_dir), "/_corral/billing", params)
    if as_json:
        echo_json(report)
        return
    currency = report.get("currency", "USD")
    rows = [_row(line["function"], line, currency) for line in report["functions"]]
    if function is None:
        rows.append(_row("Account total", report["account"], currency))
    table(_COLUMNS, rows, title=f"Bill for {report['month']} (UTC)", right=_COLUMNS[1:])
    free = report["free_tier"]
    prices = report["prices"]
    note(f"Free tier this month: {free['requests_applied']:,} of {free['requests']:,} "
         f"requests, {format_quantity(free['gb_seconds_applied'])} of "
         f"{format_quantity(free['gb_seconds'])} GB-s (per account, shared in proportion "
         f"to use). Prices: {format_amount(prices['request_price_per_million'], currency)} per "
         f"1M requests, {prices['gb_second_price']} {currency} per GB-s; billed in "
         f"{report['granularity_ms']} ms units.")
