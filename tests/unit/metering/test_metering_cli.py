"""`corral bill` and `corral stats` helpers: amounts for people, signed requests, command names."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from corral.cli.client import CliError, Connection
from corral.cli.commands.bill import bill, format_amount, format_quantity, signed_get
from corral.cli.commands.stats import stats


@pytest.mark.parametrize(("text", "shown"), [
    ("0", "$0.00"),
    ("0.2", "$0.20"),
    ("0.00000062500125", "$0.00000063"),
    ("1234.5", "$1,234.50"),
    ("-0.05", "-$0.05"),
    ("6.66668", "$6.66668"),
])
def test_amounts_for_people(text: str, shown: str) -> None:
    """Amounts show 2 to 8 decimals, rounded half up, with thousands grouped."""
    assert format_amount(text) == shown


def test_amounts_in_another_currency() -> None:
    """A non-USD currency is written after the amount."""
    assert format_amount("1.5", "EUR") == "1.50 EUR"


def test_quantities_for_people() -> None:
    """GB-seconds show up to 6 decimals without trailing zeros."""
    assert format_quantity("400000.0375") == "400,000.0375"
    assert format_quantity("0.00000001") == "0"
    assert format_quantity("12") == "12"


def test_command_names() -> None:
    """The click commands are named `bill` and `stats` (what main.py registers)."""
    assert bill.name == "bill" and stats.name == "stats"


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []

    def do_GET(self) -> None:
        _Recorder.seen.append({"path": self.path, "headers": dict(self.headers)})
        if self.path.startswith("/missing"):
            self.send_response(404)
            self.end_headers()
            return
        if self.path.startswith("/bad"):
            body = json.dumps({"Type": "User", "message": "Invalid month"}).encode()
            self.send_response(400)
            self.send_header("x-amzn-ErrorType", "InvalidParameterValueException")
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"ok": true}')

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_signed_get_signs_with_sigv4_for_lambda(http_server: str) -> None:
    """signed_get sends an AWS4-HMAC-SHA256 Authorization for service lambda, query sorted."""
    conn = Connection(http_server, "AKIAEXAMPLE", "secret", region="us-east-1")
    assert signed_get(conn, "/_corral/billing", {"month": "2024-05", "function": "f"}) == \
        {"ok": True}
    request = _Recorder.seen[-1]
    assert request["path"] == "/_corral/billing?function=f&month=2024-05"
    auth = request["headers"]["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/")
    assert "/us-east-1/lambda/aws4_request" in auth


def test_signed_get_errors_become_cli_errors(http_server: str) -> None:
    """HTTP errors become one-line CliErrors with the wire code; no server is a CliError too."""
    conn = Connection(http_server, "AKIAEXAMPLE", "secret")
    with pytest.raises(CliError, match="InvalidParameterValueException: Invalid month"):
        signed_get(conn, "/bad")
    with pytest.raises(CliError, match="no metering feature"):
        signed_get(conn, "/missing")
    closed = Connection("http://127.0.0.1:9", "AKIAEXAMPLE", "secret")
    with pytest.raises(CliError, match="cannot reach"):
        signed_get(closed, "/_corral/stats")
