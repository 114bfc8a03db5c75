"""`corral invoke NAME`: run a function and print what it returned."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import click

from corral.cli.client import CliError, connection_options, get_connection
from corral.cli.output import echo_json, error

__all__ = ["decode_payload", "format_function_error", "invoke", "read_payload"]


def read_payload(value: str | None, stdin: Any = None) -> bytes:
    """The request payload from `--payload`: inline JSON, `@file` or `-` (stdin).

    Without `--payload` the event is `{}`. The payload must be JSON (as Lambda's runtimes
    expect); a CliError says where it is not.
    """
    if value is None:
        return b"{}"
    if value == "-":
        source = "stdin"
        data = (stdin or sys.stdin.buffer).read()
    elif value.startswith("@"):
        path = Path(value[1:]).expanduser()
        source = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read the payload file {path}: {exc.strerror or exc}") \
                from exc
    else:
        source = "--payload"
        data = value.encode("utf-8")
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CliError(f"the payload from {source} is not valid JSON: {exc}") from exc
    return bytes(data)


def decode_payload(body: bytes) -> Any:
    """The response as JSON if it is JSON, else as text."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body.decode("utf-8", "replace")


def format_function_error(body: bytes, function_error: str) -> list[str]:
    """Lines for stderr describing a function error: `Type: message`, then the stack trace."""
    parsed = decode_payload(body)
    if isinstance(parsed, dict) and ("errorType" in parsed or "errorMessage" in parsed):
        error_type = parsed.get("errorType") or function_error
        message = parsed.get("errorMessage")
        lines = [f"{error_type}: {message}" if message else str(error_type)]
        trace = parsed.get("stackTrace")
        if isinstance(trace, list):
            for frame in trace:
                lines.extend("  " + part for part in str(frame).rstrip("\n").splitlines())
        elif isinstance(trace, str) and trace:
            lines.extend("  " + part for part in trace.splitlines())
        return lines
    text = parsed if isinstance(parsed, str) else json.dumps(parsed)
    return [f"{function_error}: {text}" if text else function_error]


def _print_result(body: bytes) -> None:
    parsed = decode_payload(body)
    if isinstance(parsed, str) and not _is_json(body):
        click.echo(parsed, nl=not parsed.endswith("\n"))
    elif body:
        click.echo(json.dumps(parsed, indent=2, ensure_ascii=False))


def _is_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False
    return True


@click.command()
@click.argument("name")
@click.option("--payload", "-p", default=None, metavar="JSON|@FILE|-",
              help="The event: inline JSON, @file, or - for stdin (default {}).")
@click.option("--async", "is_async", is_flag=True,
              help="Queue the event (InvocationType=Event) and print its request id.")
@click.option("--qualifier", "-q", default=None, help="Version or alias to invoke.")
@click.option("--log", "show_log", is_flag=True,
              help="Print the end of the invocation's log (LogType=Tail) on stderr.")
@click.option("--json", "as_json", is_flag=True,
              help="Print {StatusCode, FunctionError, ExecutedVersion, RequestId, Payload}.")
@connection_options
def invoke(name: str, payload: str | None, is_async: bool, qualifier: str | None,
           show_log: bool, as_json: bool, endpoint_url: str | None,
           data_dir: str | None) -> None:
    """Invoke function NAME and print its result.

    Exits 1 when the function fails, printing its error type and message on stderr.
    """
    body = read_payload(payload)
    lam = get_connection(endpoint_url, data_dir).invoke_client()
    params: dict[str, Any] = {"FunctionName": name, "Payload": body,
                              "InvocationType": "Event" if is_async else "RequestResponse"}
    if qualifier:
        params["Qualifier"] = qualifier
    if show_log and not is_async:
        params["LogType"] = "Tail"
    resp = lam.invoke(**params)
    request_id = resp.get("ResponseMetadata", {}).get("RequestId", "")
    result = resp["Payload"].read() if resp.get("Payload") is not None else b""
    function_error = resp.get("FunctionError")
    log_text = base64.b64decode(resp["LogResult"]).decode("utf-8", "replace") \
        if resp.get("LogResult") else None

    if as_json:
        out: dict[str, Any] = {
            "StatusCode": resp.get("StatusCode"),
            "FunctionError": function_error,
            "ExecutedVersion": resp.get("ExecutedVersion"),
            "RequestId": request_id,
            "Payload": decode_payload(result) if result else None,
        }
        if log_text is not None:
            out["Log"] = log_text
        echo_json(out)
    elif is_async:
        click.echo(request_id)
    else:
        if log_text is not None:
            click.echo(log_text, err=True, nl=not log_text.endswith("\n"))
        if not function_error:
            _print_result(result)
    if function_error:
        if not as_json:
            lines = format_function_error(result, function_error)
            error(f"{name} failed: {lines[0]}")
            for line in lines[1:]:
                click.echo(line, err=True)
        raise click.exceptions.Exit(1)
