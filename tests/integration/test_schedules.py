"""Schedules on a real server: the EventBridge API through boto3, firing, and the CLI.

Firing is tested end to end with `CORRAL_SCHEDULE_TIME_SCALE=60` (the schedule clock runs 60
times faster, so `rate(1 minute)` fires every real second); the exact times, the missed-run
rule and cron arithmetic are covered with an injected clock in tests/unit/events.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner
from test_async_and_lifecycle import Callbacks

from corral.cli.commands.schedule import schedule
from functions import create, unique

RECORDER_FN = """
import json, os, urllib.request
def handler(event, context):
    body = json.dumps({"stage": "record", "id": context.aws_request_id,
                       "event": event}).encode()
    urllib.request.urlopen(urllib.request.Request(os.environ["CALLBACK"], data=body), timeout=5)
    return "ok"
"""
SCALED = {"CORRAL_SCHEDULE_TIME_SCALE": "60"}
ISO_SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture
def callbacks():
    cb = Callbacks()
    yield cb
    cb.close()


@pytest.fixture(scope="module")
def events(server):
    return server.client("events")


def events_of(received: list[dict]) -> list[dict]:
    return [r["event"] for r in received if r["stage"] == "record"]


def recorder(lam, url: str) -> str:
    name = unique("sched")
    create(lam, name, {"app.py": RECORDER_FN}, Environment={"Variables": {"CALLBACK": url}})
    return name


class TestRulesApi:
    def test_rule_lifecycle(self, events, lam):
        """PutRule, DescribeRule, ListRules, Disable/EnableRule, targets, DeleteRule."""
        name = unique("rule")
        fn_arn = create(lam, unique("tgt"), {"app.py": RECORDER_FN})["FunctionArn"]
        arn = events.put_rule(Name=name, ScheduleExpression="rate(5 minutes)",
                              Description="every five")["RuleArn"]
        assert arn == f"arn:aws:events:us-east-1:000000000000:rule/{name}"
        described = events.describe_rule(Name=name)
        assert (described["State"], described["ScheduleExpression"],
                described["Description"], described["EventBusName"]) == (
            "ENABLED", "rate(5 minutes)", "every five", "default")
        listed = events.list_rules(NamePrefix=name)["Rules"]
        assert [r["Name"] for r in listed] == [name]
        events.disable_rule(Name=name)
        assert events.describe_rule(Name=name)["State"] == "DISABLED"
        events.enable_rule(Name=name)
        assert events.describe_rule(Name=name)["State"] == "ENABLED"
        out = events.put_targets(Rule=name, Targets=[
            {"Id": "main", "Arn": fn_arn, "Input": '{"k": 1}'}])
        assert out["FailedEntryCount"] == 0
        assert events.list_targets_by_rule(Rule=name)["Targets"] == [
            {"Id": "main", "Arn": fn_arn, "Input": '{"k": 1}'}]
        with pytest.raises(ClientError) as exc:
            events.delete_rule(Name=name)
        assert exc.value.response["Error"]["Code"] == "ValidationException"
        events.remove_targets(Rule=name, Ids=["main"])
        events.delete_rule(Name=name)
        assert events.list_rules(NamePrefix=name)["Rules"] == []

    def test_paging(self, events):
        """ListRules pages with Limit and NextToken, as boto3's paginator expects."""
        prefix = unique("page")
        for i in range(3):
            events.put_rule(Name=f"{prefix}-{i}", ScheduleExpression="rate(1 day)")
        first = events.list_rules(NamePrefix=prefix, Limit=2)
        assert len(first["Rules"]) == 2 and first["NextToken"]
        pages = events.get_paginator("list_rules").paginate(
            NamePrefix=prefix, PaginationConfig={"PageSize": 1})
        assert [r["Name"] for p in pages for r in p["Rules"]] == [
            f"{prefix}-{i}" for i in range(3)]

    def test_errors(self, events):
        """Bad expressions are ValidationException; unknown rules ResourceNotFoundException."""
        with pytest.raises(ClientError) as exc:
            events.put_rule(Name=unique("bad"), ScheduleExpression="cron(0 12 * * * *)")
        assert exc.value.response["Error"]["Code"] == "ValidationException"
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        ghost = unique("ghost")
        with pytest.raises(events.exceptions.ResourceNotFoundException) as missing:
            events.describe_rule(Name=ghost)
        assert missing.value.response["Error"]["Message"] == (
            f"Rule {ghost} does not exist on EventBus default.")


class TestFiring:
    def test_rule_fires_scheduled_events(self, make_server, callbacks, tmp_path):
        """A rate(1 minute) rule delivers §6.6 events and constant Input, across a restart."""
        data = tmp_path / "sched"
        srv = make_server(data_dir=data, extra_env=SCALED)
        lam, events = srv.client(), srv.client("events")
        plain = recorder(lam, callbacks.url)
        constant = recorder(lam, callbacks.url)
        arn_of = {n: lam.get_function(FunctionName=n)["Configuration"]["FunctionArn"]
                  for n in (plain, constant)}
        rule = unique("tick")
        rule_arn = events.put_rule(Name=rule, ScheduleExpression="rate(1 minute)")["RuleArn"]
        events.put_targets(Rule=rule, Targets=[
            {"Id": "plain", "Arn": arn_of[plain]},
            {"Id": "constant", "Arn": arn_of[constant], "Input": '{"job": "nightly"}'}])
        got = callbacks.wait_for(lambda r: len(events_of(r)) >= 4, timeout=30)
        scheduled = [e for e in events_of(got) if "detail-type" in e]
        assert {"job": "nightly"} in events_of(got)
        event = scheduled[0]
        assert event["version"] == "0" and event["detail-type"] == "Scheduled Event"
        assert event["source"] == "aws.events" and event["detail"] == {}
        assert event["account"] == "000000000000" and event["region"] == "us-east-1"
        assert event["resources"] == [rule_arn]
        assert ISO_SECONDS.match(event["time"])
        assert len({e["id"] for e in scheduled}) == len(scheduled)
        srv.stop()
        before = len(events_of(callbacks.received))
        again = make_server(data_dir=data, extra_env=SCALED)
        assert again.client("events").describe_rule(Name=rule)["State"] == "ENABLED"
        callbacks.wait_for(lambda r: len(events_of(r)) >= before + 2, timeout=30)

    def test_disabled_rule_stops_firing(self, make_server, callbacks):
        """After DisableRule no more events arrive."""
        srv = make_server(extra_env=SCALED)
        lam, events = srv.client(), srv.client("events")
        name = recorder(lam, callbacks.url)
        rule = unique("stop")
        events.put_rule(Name=rule, ScheduleExpression="rate(1 minute)")
        events.put_targets(Rule=rule, Targets=[
            {"Id": "t", "Arn": lam.get_function(FunctionName=name)["Configuration"]
             ["FunctionArn"]}])
        callbacks.wait_for(lambda r: events_of(r), timeout=30)
        events.disable_rule(Name=rule)
        time.sleep(1.5)  # a run in flight may still land
        count = len(events_of(callbacks.received))
        time.sleep(3)
        assert len(events_of(callbacks.received)) == count


class TestCli:
    def test_add_ls_rm(self, server, lam):
        """`corral schedule add`, `ls` and `rm` manage a rule with the function as target."""
        fn = create(lam, unique("clifn"), {"app.py": RECORDER_FN})
        name = unique("cli")
        conn = ["--endpoint-url", server.endpoint, "--data-dir", str(server.data_dir)]
        runner = CliRunner()
        added = runner.invoke(schedule, ["add", name, "--function", fn["FunctionName"],
                                         "--expression", "cron(0 12 * * ? *)",
                                         "--input", '{"a": 1}', *conn])
        assert added.exit_code == 0, added.output
        assert f"Scheduled {name}: cron(0 12 * * ? *) -> {fn['FunctionName']} (input)" \
            in added.output
        listed = runner.invoke(schedule, ["ls", "--json", *conn])
        assert listed.exit_code == 0, listed.output
        mine = [r for r in json.loads(listed.output) if r["Name"] == name]
        assert mine[0]["State"] == "ENABLED"
        assert mine[0]["Targets"] == [{"Id": fn["FunctionName"], "Arn": fn["FunctionArn"],
                                       "Input": '{"a": 1}'}]
        table = runner.invoke(schedule, ["ls", *conn])
        assert name in table.output and "cron(0 12 * * ? *)" in table.output
        removed = runner.invoke(schedule, ["rm", name, "--yes", *conn])
        assert removed.exit_code == 0 and f"Deleted {name}" in removed.output
        gone = runner.invoke(schedule, ["ls", "--json", *conn])
        assert name not in [r["Name"] for r in json.loads(gone.output)]

    def test_add_rejects_bad_input(self, server):
        """--input must be JSON."""
        result = CliRunner().invoke(schedule, [
            "add", "x", "--function", "f", "--expression", "rate(1 day)", "--input", "{nope",
            "--endpoint-url", server.endpoint, "--data-dir", str(server.data_dir)])
        assert result.exit_code != 0
