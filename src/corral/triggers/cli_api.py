"""Signed requests from the CLI to Corral's own JSON APIs (`/_corral/...`).

Requests are signed with botocore's SigV4 (service `lambda`) using the CLI's resolved
connection, sent with urllib, and errors in the rest-json shape (`x-amzn-ErrorType` +
`{"message"|"Message"}`) become `CliError("<Code>: <message>")`. Imports only botocore, so the
CLI does not load the server's modules.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode

from corral.cli.client import API_READ_TIMEOUT_S, CliError, Connection, unreachable


def corral_request(conn: Connection, method: str, path: str, body: Any = None,
                   query: dict[str, str] | None = None) -> Any:
    """Send a signed request; returns the decoded JSON body (None for an empty one)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = conn.endpoint.rstrip("/") + path
    if query:
        url += "?" + urlencode(query)
    data = json.dumps(body).encode() if body is not None else b""
    request = AWSRequest(method=method, url=url, data=data,
                         headers={"Content-Type": "application/json"})
    credentials = Credentials(conn.access_key_id, conn.secret_access_key, conn.session_token)
    SigV4Auth(credentials, "lambda", conn.region).add_auth(request)
    prepared = request.prepare()
    outgoing = urllib.request.Request(prepared.url, data=data or None, method=method,
                                      headers=dict(prepared.headers.items()))
    try:
        with urllib.request.urlopen(outgoing, timeout=API_READ_TIMEOUT_S) as response:
            text = response.read()
    except urllib.error.HTTPError as exc:
        raise CliError(_error_text(exc)) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(unreachable(conn.endpoint)) from exc
    return json.loads(text) if text.strip() else None


def _error_text(exc: urllib.error.HTTPError) -> str:
    code = exc.headers.get("x-amzn-ErrorType", "").split(":", 1)[0] or f"HTTP {exc.code}"
    try:
        data = json.loads(exc.read() or b"{}")
    except ValueError:
        data = {}
    message = ""
    if isinstance(data, dict):
        message = str(data.get("message") or data.get("Message") or "")
    return f"{code}: {message}" if message else code
