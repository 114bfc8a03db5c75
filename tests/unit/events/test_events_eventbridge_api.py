"""The EventBridge rules API subset, called as the JSON 1.1 handler (operation, params)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import UnknownOperationException
from corral.events.eventbridge import (
    EventsApi,
    LimitExceededException,
    ResourceNotFoundException,
    RuleStore,
    ValidationException,
)
from corral.store.sqlite import Database

FN = "arn:aws:lambda:us-east-1:000000000000:function:job"


@pytest.fixture
def api(tmp_path: Path):
    db = Database(tmp_path / "corral.db")
    changes: list[str] = []
    events = EventsApi(RuleStore(db), "us-east-1", "000000000000", clock=lambda: 1000.0,
                       on_change=changes.append)
    events.changes = changes  # type: ignore[attr-defined]
    yield events
    db.close()


def put(api: EventsApi, name: str, expression: str = "rate(5 minutes)", **extra) -> dict:
    return api.handle("PutRule", {"Name": name, "ScheduleExpression": expression, **extra})


class TestRules:
    def test_put_and_describe(self, api):
        """PutRule returns the rule ARN; DescribeRule shows what was stored."""
        out = put(api, "nightly", "cron(0 2 * * ? *)", Description="backups")
        assert out == {"RuleArn": "arn:aws:events:us-east-1:000000000000:rule/nightly"}
        assert api.handle("DescribeRule", {"Name": "nightly"}) == {
            "Name": "nightly", "Arn": out["RuleArn"], "State": "ENABLED",
            "ScheduleExpression": "cron(0 2 * * ? *)", "Description": "backups",
            "EventBusName": "default", "CreatedBy": "000000000000"}
        assert api.changes == ["nightly"]

    def test_put_updates(self, api):
        """PutRule on an existing name replaces expression, state and description."""
        put(api, "r")
        put(api, "r", "rate(1 hour)", State="DISABLED")
        described = api.handle("DescribeRule", {"Name": "r"})
        assert described["ScheduleExpression"] == "rate(1 hour)"
        assert described["State"] == "DISABLED"

    def test_unknown_rule(self, api):
        """Describing a missing rule names it and the default bus."""
        with pytest.raises(ResourceNotFoundException) as exc:
            api.handle("DescribeRule", {"Name": "ghost"})
        assert exc.value.message == "Rule ghost does not exist on EventBus default."
        assert exc.value.status == 400 and exc.value.message_key == "message"

    @pytest.mark.parametrize("params", [
        {"Name": "r", "ScheduleExpression": "rate(5 minute)"},
        {"Name": "r", "ScheduleExpression": "cron(0 12 * * * *)"},
        {"Name": "r"},
        {"Name": "r", "EventPattern": '{"source": ["aws.ec2"]}'},
        {"Name": "bad name", "ScheduleExpression": "rate(1 day)"},
        {"Name": "r", "ScheduleExpression": "rate(1 day)", "State": "SOMETIMES"},
        {"ScheduleExpression": "rate(1 day)"},
    ])
    def test_put_validation(self, api, params):
        """Bad expressions, event patterns, names and states are ValidationException."""
        with pytest.raises(ValidationException):
            api.handle("PutRule", params)

    def test_bad_expression_message(self, api):
        """The message says the ScheduleExpression is not valid."""
        with pytest.raises(ValidationException) as exc:
            put(api, "r", "rate(five minutes)")
        assert exc.value.message.startswith("Parameter ScheduleExpression is not valid.")

    def test_enable_disable(self, api):
        """DisableRule and EnableRule switch the state and notify the scheduler."""
        put(api, "r")
        api.handle("DisableRule", {"Name": "r"})
        assert api.handle("DescribeRule", {"Name": "r"})["State"] == "DISABLED"
        api.handle("EnableRule", {"Name": "r"})
        assert api.handle("DescribeRule", {"Name": "r"})["State"] == "ENABLED"
        assert api.changes == ["r", "r", "r"]
        with pytest.raises(ResourceNotFoundException):
            api.handle("EnableRule", {"Name": "ghost"})

    def test_list_with_prefix_and_paging(self, api):
        """ListRules filters by NamePrefix and pages with Limit/NextToken."""
        for name in ("a-1", "a-2", "a-3", "b-1"):
            put(api, name)
        first = api.handle("ListRules", {"NamePrefix": "a-", "Limit": 2})
        assert [r["Name"] for r in first["Rules"]] == ["a-1", "a-2"]
        second = api.handle("ListRules", {"NamePrefix": "a-", "Limit": 2,
                                          "NextToken": first["NextToken"]})
        assert [r["Name"] for r in second["Rules"]] == ["a-3"]
        assert "NextToken" not in second
        assert len(api.handle("ListRules", {})["Rules"]) == 4

    def test_delete_needs_targets_removed(self, api):
        """DeleteRule refuses a rule with targets and is idempotent otherwise."""
        put(api, "r")
        api.handle("PutTargets", {"Rule": "r", "Targets": [{"Id": "t", "Arn": FN}]})
        with pytest.raises(ValidationException, match="has targets"):
            api.handle("DeleteRule", {"Name": "r"})
        api.handle("RemoveTargets", {"Rule": "r", "Ids": ["t"]})
        assert api.handle("DeleteRule", {"Name": "r"}) == {}
        assert api.handle("DeleteRule", {"Name": "r"}) == {}
        with pytest.raises(ResourceNotFoundException):
            api.handle("DescribeRule", {"Name": "r"})

    def test_other_buses_do_not_exist(self, api):
        """Only the default event bus exists."""
        with pytest.raises(ResourceNotFoundException, match="Event bus custom"):
            api.handle("ListRules", {"EventBusName": "custom"})
        assert api.handle("ListRules", {"EventBusName": "default"}) == {"Rules": []}

    def test_unknown_operation(self, api):
        """Operations outside the subset are UnknownOperationException."""
        with pytest.raises(UnknownOperationException):
            api.handle("PutEvents", {})


class TestTargets:
    def test_put_list_remove(self, api):
        """Targets are stored with their Input, listed in Id order, and removed by Id."""
        put(api, "r")
        out = api.handle("PutTargets", {"Rule": "r", "Targets": [
            {"Id": "b", "Arn": FN}, {"Id": "a", "Arn": FN + ":prod", "Input": '{"k": 1}'}]})
        assert out == {"FailedEntryCount": 0, "FailedEntries": []}
        listed = api.handle("ListTargetsByRule", {"Rule": "r"})
        assert listed == {"Targets": [{"Id": "a", "Arn": FN + ":prod", "Input": '{"k": 1}'},
                                      {"Id": "b", "Arn": FN}]}
        page = api.handle("ListTargetsByRule", {"Rule": "r", "Limit": 1})
        assert [t["Id"] for t in page["Targets"]] == ["a"] and page["NextToken"]
        api.handle("RemoveTargets", {"Rule": "r", "Ids": ["a"]})
        assert [t["Id"] for t in api.handle("ListTargetsByRule", {"Rule": "r"})["Targets"]] \
            == ["b"]

    @pytest.mark.parametrize("target", [
        {"Id": "t", "Arn": "arn:aws:sqs:us-east-1:000000000000:queue"},
        {"Id": "t", "Arn": FN, "Input": "{not json"},
        {"Id": "bad id", "Arn": FN},
        {"Id": "t"},
        {"Id": "t", "Arn": FN, "InputPath": "$.detail"},
    ])
    def test_target_validation(self, api, target):
        """Non-function ARNs, invalid Input and bad Ids are ValidationException."""
        put(api, "r")
        with pytest.raises(ValidationException):
            api.handle("PutTargets", {"Rule": "r", "Targets": [target]})

    def test_target_limit(self, api):
        """A rule has at most five targets."""
        put(api, "r")
        api.handle("PutTargets", {"Rule": "r", "Targets": [
            {"Id": f"t{i}", "Arn": FN} for i in range(5)]})
        with pytest.raises(LimitExceededException):
            api.handle("PutTargets", {"Rule": "r", "Targets": [{"Id": "t9", "Arn": FN}]})

    def test_targets_of_a_missing_rule(self, api):
        """PutTargets on a missing rule is ResourceNotFoundException."""
        with pytest.raises(ResourceNotFoundException):
            api.handle("PutTargets", {"Rule": "ghost", "Targets": [{"Id": "t", "Arn": FN}]})
