"""`corral ls` (list functions) and `corral rm` (delete functions)."""

from __future__ import annotations

from typing import Any

import click

from corral.cli.client import connection_options, get_connection
from corral.cli.output import (
    echo_json,
    format_bytes,
    format_last_modified,
    note,
    table,
)
from corral.cli.removal import delete_each

__all__ = ["list_functions", "ls", "rm"]


def list_functions(lam: Any) -> list[dict[str, Any]]:
    """Every function's configuration, following ListFunctions' Marker paging."""
    functions: list[dict[str, Any]] = []
    for page in lam.get_paginator("list_functions").paginate():
        functions.extend(page.get("Functions", []))
    return functions


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the configurations as JSON.")
@connection_options
def ls(as_json: bool, endpoint_url: str | None, data_dir: str | None) -> None:
    """List functions."""
    lam = get_connection(endpoint_url, data_dir).lambda_client()
    functions = sorted(list_functions(lam), key=lambda f: f["FunctionName"])
    if as_json:
        echo_json(functions)
        return
    if not functions:
        note("No functions. Create one with `corral deploy DIR`.")
        return
    table(["NAME", "RUNTIME", "MEMORY", "TIMEOUT", "CODE SIZE", "LAST MODIFIED"],
          ([f["FunctionName"], f.get("Runtime", "-"), f"{f.get('MemorySize', '-')} MB",
            f"{f.get('Timeout', '-')} s", format_bytes(f.get("CodeSize")),
            format_last_modified(f.get("LastModified"))] for f in functions),
          right=("MEMORY", "TIMEOUT", "CODE SIZE"))


@click.command()
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@connection_options
def rm(names: tuple[str, ...], yes: bool, endpoint_url: str | None,
       data_dir: str | None) -> None:
    """Delete functions (asks first when run interactively)."""
    lam = get_connection(endpoint_url, data_dir).lambda_client()
    delete_each(names, "function", lambda name: lam.delete_function(FunctionName=name), yes)
