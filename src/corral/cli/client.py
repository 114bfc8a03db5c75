"""Where the CLI finds the server and its credentials, and the boto3 clients it talks through.

The CLI uses only Corral's public APIs (the Lambda API and the CloudWatch Logs subset on the same
endpoint), signed with SigV4 like any AWS client. Resolution order:

1. explicit flags: ``--data-dir DIR`` takes the root key from ``DIR/keys.json``;
   ``--endpoint-url URL`` names the server;
2. the environment ``eval "$(corral env)"`` sets: ``AWS_ENDPOINT_URL`` together with
   ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (credentials from the environment are used
   only when ``AWS_ENDPOINT_URL`` is set too, so real AWS keys are never sent to Corral);
3. the default data dir's root key (``CORRAL_DATA_DIR`` or ~/.local/share/corral) and the
   default endpoint ``http://127.0.0.1:9009`` (``CORRAL_PORT`` honoured).

Expected failures become `CliError` (or stay botocore exceptions), which the command group turns
into one line on stderr and exit status 1; see `describe_error`.
"""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
    WaiterError,
)

from corral.config import DEFAULT_PORT, DEFAULT_REGION

__all__ = [
    "CliError",
    "Connection",
    "connection_options",
    "default_endpoint",
    "describe_error",
    "get_connection",
    "resolve_connection",
    "resolve_endpoint",
]

ENDPOINT_META = "corral.endpoint"
CONNECT_TIMEOUT_S = 5.0
API_READ_TIMEOUT_S = 60.0
INVOKE_READ_TIMEOUT_S = 960.0  # the longest function timeout (900 s) plus init and margin


class CliError(Exception):
    """An expected failure, reported as `corral: <message>` with exit status 1."""


def default_endpoint() -> str:
    """``http://127.0.0.1:<CORRAL_PORT or 9009>``."""
    port = os.environ.get("CORRAL_PORT") or str(DEFAULT_PORT)
    return f"http://127.0.0.1:{port}"


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def _data_dir(data_dir: str | None) -> Path:
    from corral.cli.settings import resolve_data_dir

    return resolve_data_dir(data_dir)


def _env_credentials() -> tuple[str, str, str | None] | None:
    key = os.environ.get("AWS_ACCESS_KEY_ID")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if os.environ.get("AWS_ENDPOINT_URL") and key and secret:
        return key, secret, os.environ.get("AWS_SESSION_TOKEN") or None
    return None


def resolve_endpoint(endpoint_url: str | None, data_dir: str | None) -> str:
    """The server's URL, by the module docstring's order (no credentials needed)."""
    if endpoint_url:
        return endpoint_url.rstrip("/")
    if data_dir is None and _env_credentials() is not None:
        return os.environ["AWS_ENDPOINT_URL"].rstrip("/")
    return default_endpoint()


@dataclass(frozen=True)
class Connection:
    """A resolved endpoint and credentials; makes boto3 clients for them."""

    endpoint: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str = DEFAULT_REGION
    source: str = ""  # where the credentials came from, for `corral doctor`

    def client(self, service: str, *, read_timeout: float = API_READ_TIMEOUT_S) -> Any:
        import boto3

        session: Any = boto3.session.Session()
        return session.client(
            service, endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            aws_session_token=self.session_token,
            config=Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=read_timeout,
                          retries={"total_max_attempts": 1}, tcp_keepalive=True))

    def lambda_client(self, *, read_timeout: float = API_READ_TIMEOUT_S) -> Any:
        return self.client("lambda", read_timeout=read_timeout)

    def invoke_client(self) -> Any:
        """A Lambda client that waits as long as the longest function may run."""
        return self.client("lambda", read_timeout=INVOKE_READ_TIMEOUT_S)

    def logs_client(self) -> Any:
        return self.client("logs")


def resolve_connection(endpoint_url: str | None = None,
                       data_dir: str | None = None) -> Connection:
    """Endpoint and credentials by the module docstring's order; CliError if none are found."""
    endpoint = resolve_endpoint(endpoint_url, data_dir)
    region = _region()
    if data_dir is None:
        env = _env_credentials()
        if env is not None:
            key, secret, token = env
            return Connection(endpoint, key, secret, token, region,
                              "environment (AWS_ACCESS_KEY_ID)")
    directory = _data_dir(data_dir)
    path = directory / "keys.json"
    from corral.errors import ConfigError
    from corral.iam.keys import ROOT_USER, KeyStore

    try:
        keys = KeyStore(path).list_keys(ROOT_USER)
    except (OSError, ConfigError) as exc:
        raise CliError(f"cannot read the Corral credentials in {path}: {exc}") from exc
    if not keys:
        where = "" if data_dir is not None else \
            "no AWS_ENDPOINT_URL and AWS_ACCESS_KEY_ID in the environment and "
        raise CliError(
            f"no Corral credentials: {where}no root key in {path}. Run "
            '`eval "$(corral env)"`, pass --data-dir DIR, or start `corral server` first')
    root = keys[0]
    return Connection(endpoint, root.access_key_id, root.secret_access_key, None, region,
                      f"root key in {path}")


def connection_options(func: Any) -> Any:
    """Add `--endpoint-url` and `--data-dir` to a command."""
    func = click.option("--data-dir", default=None, metavar="DIR",
                        help="Use the root key of this Corral data directory.")(func)
    func = click.option("--endpoint-url", default=None, metavar="URL",
                        help="The Corral server (default: $AWS_ENDPOINT_URL, else "
                             "http://127.0.0.1:9009).")(func)
    return func


def get_connection(endpoint_url: str | None, data_dir: str | None) -> Connection:
    """`resolve_connection`, remembering the endpoint for error messages."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[ENDPOINT_META] = resolve_endpoint(endpoint_url, data_dir)
    return resolve_connection(endpoint_url, data_dir)


def health(endpoint: str, timeout: float = 3.0) -> dict[str, Any]:
    """GET {endpoint}/_corral/health (unsigned); raises OSError if unreachable."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    with opener.open(f"{endpoint}/_corral/health", timeout=timeout) as resp:
        body = resp.read()
    data = json.loads(body)
    return data if isinstance(data, dict) else {"status": data}


def unreachable(endpoint: str) -> str:
    return f"cannot reach the Corral server at {endpoint}: is `corral server` running?"


def describe_error(exc: BaseException, endpoint: str | None = None) -> str | None:
    """The one-line message for an expected failure, or None if `exc` is a bug."""
    if isinstance(exc, CliError):
        return str(exc)
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code") or "Error"
        message = error.get("Message") or ""
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if not message and status:
            message = f"HTTP {status}"
        return f"{code}: {message}" if message else code
    if isinstance(exc, WaiterError):
        last = exc.last_response if isinstance(exc.last_response, dict) else {}
        reason = (last.get("Error", {}).get("Message") or last.get("LastUpdateStatusReason")
                  or last.get("StateReason"))
        return f"waiting for the function failed: {reason or exc.kwargs.get('reason', exc)}"
    if isinstance(exc, EndpointConnectionError | ConnectionClosedError):
        return unreachable(endpoint or _endpoint_of(exc))
    if isinstance(exc, ReadTimeoutError):
        return f"timed out waiting for the Corral server at {endpoint or _endpoint_of(exc)}"
    if isinstance(exc, NoCredentialsError):
        return 'no credentials: run `eval "$(corral env)"` or pass --data-dir'
    if isinstance(exc, BotoCoreError):
        return str(exc)
    return None


def _endpoint_of(exc: BotoCoreError) -> str:
    url = str(getattr(exc, "kwargs", {}).get("endpoint_url", ""))
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url or "(unknown)"
    return f"{scheme}://{rest.split('/', 1)[0]}"
