"""`corral route add|ls|rm`: API-Gateway-style HTTP routes bound to functions.

    corral route add API "GET /items/{id}" --function F [--payload-format 1.0|2.0]
    corral route ls [API] [--json]
    corral route rm API "GET /items/{id}"      (or `corral route rm API --all`)

Routes are served at `<endpoint>/http/<API>/<path>`; see docs/triggers.md. The commands talk to
the server's signed `/_corral/apis` API.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from corral.cli.client import connection_options, get_connection
from corral.cli.output import echo_json, note, table
from corral.triggers.cli_api import corral_request

__all__ = ["route"]


@click.group()
def route() -> None:
    """Manage HTTP routes (METHOD /path/{param}/{proxy+}) that invoke functions."""


@route.command("add")
@click.argument("api")
@click.argument("route_key", metavar="ROUTE_KEY")
@click.option("--function", "-f", "function", required=True, help="Function name or ARN.")
@click.option("--payload-format", type=click.Choice(["1.0", "2.0"]), default="2.0",
              show_default=True, help="Event payload format version.")
@click.option("--json", "as_json", is_flag=True, help="Print the route as JSON.")
@connection_options
def add(api: str, route_key: str, function: str, payload_format: str, as_json: bool,
        endpoint_url: str | None, data_dir: str | None) -> None:
    """Add or replace a route and print its URL.

    ROUTE_KEY is a method and a path such as "GET /items/{id}" or "ANY /files/{proxy+}", or
    "$default" for requests no other route matches.
    """
    conn = get_connection(endpoint_url, data_dir)
    created = corral_request(conn, "PUT", f"/_corral/apis/{quote(api, safe='')}/routes",
                             {"RouteKey": route_key, "FunctionName": function,
                              "PayloadFormatVersion": payload_format})
    if as_json:
        echo_json(created)
        return
    click.echo(created["Url"])
    note(f"{created['RouteKey']} → {created['FunctionName']} (payload {payload_format})")


def _routes(conn: Any, api: str | None) -> list[dict[str, Any]]:
    if api:
        data = corral_request(conn, "GET", f"/_corral/apis/{quote(api, safe='')}/routes")
        return list(data.get("Routes", []))
    data = corral_request(conn, "GET", "/_corral/apis")
    return [r for a in data.get("Apis", []) for r in a.get("Routes", [])]


@route.command("ls")
@click.argument("api", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the routes as JSON.")
@connection_options
def ls(api: str | None, as_json: bool, endpoint_url: str | None, data_dir: str | None) -> None:
    """List routes (of one API, or of all)."""
    routes = _routes(get_connection(endpoint_url, data_dir), api)
    if as_json:
        echo_json(routes)
        return
    if not routes:
        note('No routes. Add one with `corral route add API "GET /path" --function F`.')
        return
    table(["API", "ROUTE", "FUNCTION", "PAYLOAD", "URL"],
          ([r["ApiName"], r["RouteKey"], r["FunctionName"], r["PayloadFormatVersion"],
            r["Url"]] for r in routes))


@route.command("rm")
@click.argument("api")
@click.argument("route_key", metavar="[ROUTE_KEY]", required=False)
@click.option("--all", "remove_all", is_flag=True, help="Remove every route of API.")
@connection_options
def rm(api: str, route_key: str | None, remove_all: bool, endpoint_url: str | None,
       data_dir: str | None) -> None:
    """Remove one route of API, or all of them with --all."""
    if bool(route_key) == remove_all:
        raise click.UsageError("give either ROUTE_KEY or --all")
    conn = get_connection(endpoint_url, data_dir)
    path = f"/_corral/apis/{quote(api, safe='')}"
    if remove_all:
        corral_request(conn, "DELETE", path)
        click.echo(f"Removed every route of {api}")
        return
    assert route_key is not None
    corral_request(conn, "DELETE", path + "/routes", query={"RouteKey": route_key})
    click.echo(f"Removed {route_key} from {api}")
