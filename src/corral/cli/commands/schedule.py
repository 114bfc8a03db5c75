"""`corral schedule`: run a function on a schedule (EventBridge rules on the Corral endpoint).

    corral schedule add NAME --function F --expression "rate(5 minutes)" [--input JSON]
    corral schedule ls [--json]
    corral schedule rm NAME... [--yes]
    corral schedule enable NAME / corral schedule disable NAME

A schedule is an EventBridge rule with a `ScheduleExpression` whose one target is the function
(target Id = the function's name), managed through boto3's `events` client, so
`aws events list-rules` shows the same thing. The function receives the scheduled-event JSON,
or the constant `--input`. Times are UTC; see docs/async-and-schedules.md for the syntax and
what happens to runs missed while the server is down.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import click

from corral.cli.client import CliError, connection_options, get_connection
from corral.cli.output import echo_json, note, table
from corral.cli.removal import delete_each

__all__ = ["schedule"]


def _function_arn(lam: Any, function: str) -> tuple[str, str]:
    """(target ARN, target Id) for `function` (a name, `name:qualifier` or an ARN)."""
    from corral.control.arns import parse_function_name
    from corral.errors import InvalidParameterValueException

    try:
        qualifier = parse_function_name(function).qualifier
    except InvalidParameterValueException as exc:
        raise CliError(f"{function!r} is not a function name or ARN") from exc
    config = lam.get_function_configuration(FunctionName=function)
    name = str(config["FunctionName"])
    parts = str(config["FunctionArn"]).split(":")
    if len(parts) == 8:  # already qualified
        parts = parts[:7]
    arn = ":".join(parts) + (f":{qualifier}" if qualifier else "")
    return arn, name


def _next_run(expression: str) -> str | None:
    """The next run of a cron expression (rates count from the rule's creation)."""
    from corral.events.schedule_expr import CronSchedule, ScheduleError, parse

    try:
        schedule = parse(expression)
    except ScheduleError:
        return None
    if not isinstance(schedule, CronSchedule):
        return None
    found = schedule.next_after(time.time())
    if found is None:
        return None
    return datetime.fromtimestamp(found, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _target_label(target: dict[str, Any]) -> str:
    arn = str(target.get("Arn", ""))
    label = arn.split(":function:", 1)[1] if ":function:" in arn else arn
    return label + (" (input)" if target.get("Input") is not None else "")


def _targets(events: Any, rule: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"Rule": rule}
    while True:
        page = events.list_targets_by_rule(**kwargs)
        found.extend(page.get("Targets", []))
        if not page.get("NextToken"):
            return found
        kwargs["NextToken"] = page["NextToken"]


@click.group()
def schedule() -> None:
    """Run functions on a schedule: rate(...) or cron(...) expressions, in UTC."""


@schedule.command()
@click.argument("name")
@click.option("--function", "-f", "function", required=True, metavar="FUNCTION",
              help="The function to invoke (name, name:qualifier or ARN).")
@click.option("--expression", "-e", required=True, metavar="EXPR",
              help='"rate(5 minutes)", "rate(1 hour)", "cron(0 12 * * ? *)", ...')
@click.option("--input", "input_json", default=None, metavar="JSON",
              help="Constant JSON to send instead of the scheduled event.")
@click.option("--description", default=None, help="A description for the schedule.")
@click.option("--disabled", is_flag=True, help="Create the schedule disabled.")
@connection_options
def add(name: str, function: str, expression: str, input_json: str | None,
        description: str | None, disabled: bool, endpoint_url: str | None,
        data_dir: str | None) -> None:
    """Create (or replace) schedule NAME invoking FUNCTION."""
    if input_json is not None:
        try:
            json.loads(input_json)
        except ValueError as exc:
            raise CliError(f"--input is not valid JSON: {exc}") from exc
    conn = get_connection(endpoint_url, data_dir)
    lam, events = conn.lambda_client(), conn.client("events")
    arn, target_id = _function_arn(lam, function)
    rule: dict[str, Any] = {"Name": name, "ScheduleExpression": expression,
                            "State": "DISABLED" if disabled else "ENABLED"}
    if description is not None:
        rule["Description"] = description
    events.put_rule(**rule)
    target: dict[str, Any] = {"Id": target_id, "Arn": arn}
    if input_json is not None:
        target["Input"] = input_json
    events.put_targets(Rule=name, Targets=[target])
    others = [t["Id"] for t in _targets(events, name) if t["Id"] != target_id]
    if others:
        events.remove_targets(Rule=name, Ids=others)
    click.echo(f"Scheduled {name}: {expression} -> {_target_label(target)}"
               f"{' (disabled)' if disabled else ''}")
    upcoming = None if disabled else _next_run(expression)
    if upcoming:
        note(f"Next run: {upcoming}")


@schedule.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print the schedules as JSON.")
@connection_options
def ls(as_json: bool, endpoint_url: str | None, data_dir: str | None) -> None:
    """List schedules."""
    events = get_connection(endpoint_url, data_dir).client("events")
    rules: list[dict[str, Any]] = []
    for page in events.get_paginator("list_rules").paginate():
        rules.extend(page.get("Rules", []))
    for rule in rules:
        rule["Targets"] = _targets(events, rule["Name"])
    if as_json:
        echo_json(rules)
        return
    if not rules:
        note('No schedules. Create one with `corral schedule add NAME --function F '
             '--expression "rate(5 minutes)"`.')
        return
    table(["NAME", "SCHEDULE", "STATE", "TARGETS", "DESCRIPTION"],
          ([r["Name"], r.get("ScheduleExpression", "-"), r.get("State", "-"),
            ", ".join(_target_label(t) for t in r["Targets"]) or "-",
            r.get("Description") or ""] for r in rules))


@schedule.command()
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@connection_options
def rm(names: tuple[str, ...], yes: bool, endpoint_url: str | None,
       data_dir: str | None) -> None:
    """Delete schedules (their targets first)."""
    events = get_connection(endpoint_url, data_dir).client("events")

    def delete(name: str) -> None:
        ids = [t["Id"] for t in _targets(events, name)]
        if ids:
            events.remove_targets(Rule=name, Ids=ids)
        events.delete_rule(Name=name)

    delete_each(names, "schedule", delete, yes)


def _set_state(name: str, enable: bool, endpoint_url: str | None,
               data_dir: str | None) -> None:
    events = get_connection(endpoint_url, data_dir).client("events")
    if enable:
        events.enable_rule(Name=name)
    else:
        events.disable_rule(Name=name)
    click.echo(f"{'Enabled' if enable else 'Disabled'} {name}")


@schedule.command()
@click.argument("name")
@connection_options
def enable(name: str, endpoint_url: str | None, data_dir: str | None) -> None:
    """Resume a schedule."""
    _set_state(name, True, endpoint_url, data_dir)


@schedule.command()
@click.argument("name")
@connection_options
def disable(name: str, endpoint_url: str | None, data_dir: str | None) -> None:
    """Pause a schedule."""
    _set_state(name, False, endpoint_url, data_dir)
