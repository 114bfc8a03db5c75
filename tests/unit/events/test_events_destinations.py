"""Destination ARNs, AWS's invocation record, dead-letter deliveries and the SQS sender."""

from __future__ import annotations

import json
from typing import Any

import pytest

from corral.errors import InvalidParameterValueException
from corral.events.destinations import (
    SQS_KIND,
    SqsSender,
    follow_ups,
    invocation_record,
    iso_millis,
    parse_target,
)
from corral.invoke.async_queue import AttemptResponse, Condition, EventPolicy, FinalOutcome
from corral.store.api import AsyncEvent

FN = "arn:aws:lambda:us-east-1:000000000000:function:dest"
QUEUE = "arn:aws:sqs:us-east-1:000000000000:failures"
EVENT = AsyncEvent("req-1", "work", "$LATEST", b'{"order": 7}', 0, 0.0, 0.0)


def outcome(condition: Condition, response: AttemptResponse | None, attempts: int = 1,
            **policy: Any) -> FinalOutcome:
    return FinalOutcome(EVENT, condition, response, attempts,
                        EventPolicy(2, 21600, **policy), 1573755365.568)


def arn_of(name: str, qualifier: str) -> str:
    return f"arn:aws:lambda:us-east-1:000000000000:function:{name}:{qualifier}"


class TestTargets:
    def test_function_and_queue(self):
        """Function ARNs (qualified or not) and SQS queue ARNs are accepted."""
        assert parse_target(FN).kind == "function"
        qualified = parse_target(FN + ":prod")
        assert (qualified.name, qualified.qualifier) == ("dest", "prod")
        queue = parse_target(QUEUE)
        assert (queue.kind, queue.name) == ("sqs", "failures")

    @pytest.mark.parametrize("arn", [
        "arn:aws:sns:us-east-1:000000000000:topic",
        "arn:aws:events:us-east-1:000000000000:event-bus/default",
        "arn:aws:s3:::bucket",
    ])
    def test_unsupported_services(self, arn):
        """SNS, EventBridge and S3 destinations are refused with a clear message."""
        with pytest.raises(InvalidParameterValueException, match="not supported"):
            parse_target(arn)

    def test_not_an_arn(self):
        """Anything that is not an ARN fails the model's pattern."""
        with pytest.raises(InvalidParameterValueException, match="regular expression"):
            parse_target("dest")


class TestRecord:
    def test_failure_record(self):
        """A failure record carries the error, the attempts and the qualified ARN."""
        response = AttemptResponse(b'{"errorMessage": "boom", "errorType": "ValueError"}',
                                   "Unhandled")
        record = invocation_record(outcome(Condition.RETRIES_EXHAUSTED, response, 3),
                                   arn_of("work", "$LATEST"))
        assert record == {
            "version": "1.0",
            "timestamp": "2019-11-14T18:16:05.568Z",
            "requestContext": {"requestId": "req-1",
                               "functionArn": arn_of("work", "$LATEST"),
                               "condition": "RetriesExhausted",
                               "approximateInvokeCount": 3},
            "requestPayload": {"order": 7},
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST",
                                "functionError": "Unhandled"},
            "responsePayload": {"errorMessage": "boom", "errorType": "ValueError"},
        }

    def test_success_record(self):
        """A success record has no functionError and the returned value."""
        record = invocation_record(outcome(Condition.SUCCESS, AttemptResponse(b'"ok"', None)),
                                   arn_of("work", "$LATEST"))
        assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}
        assert record["responsePayload"] == "ok"

    def test_never_ran(self):
        """An event that aged out before running has no response parts."""
        record = invocation_record(outcome(Condition.EVENT_AGE_EXCEEDED, None, 0),
                                   arn_of("work", "$LATEST"))
        assert "responseContext" not in record and "responsePayload" not in record
        assert record["requestContext"]["approximateInvokeCount"] == 0

    def test_timestamp_format(self):
        """Timestamps are ISO 8601 UTC with milliseconds."""
        assert iso_millis(0.5) == "1970-01-01T00:00:00.500Z"


class TestFollowUps:
    def test_on_failure_function_and_dead_letter_queue(self):
        """A failure goes to OnFailure (the record) and to the DLQ (the original event)."""
        response = AttemptResponse(b'{"errorMessage": "boom"}', "Unhandled")
        ups = follow_ups(outcome(Condition.RETRIES_EXHAUSTED, response, 3, on_failure=FN,
                                 on_success=FN + ":other", dead_letter=QUEUE), arn_of)
        assert [(u.kind, u.target, u.qualifier) for u in ups] == [
            ("invoke", "dest", "$LATEST"), (SQS_KIND, QUEUE, "$LATEST")]
        assert json.loads(ups[0].payload)["requestContext"]["condition"] == "RetriesExhausted"
        message = json.loads(ups[1].payload)
        assert json.loads(message["MessageBody"]) == {"order": 7}
        assert {k: v["StringValue"] for k, v in message["MessageAttributes"].items()} == {
            "RequestID": "req-1", "ErrorCode": "200", "ErrorMessage": "boom"}

    def test_dead_letter_function_gets_the_raw_event(self):
        """A function as dead-letter target (Corral's extension) is invoked with the event."""
        ups = follow_ups(outcome(Condition.EVENT_AGE_EXCEEDED, None, 0, dead_letter=FN),
                         arn_of)
        assert [(u.kind, u.target, u.payload) for u in ups] == [
            ("invoke", "dest", b'{"order": 7}')]

    def test_success_ignores_failure_targets(self):
        """Success goes to OnSuccess only; without it nothing follows."""
        response = AttemptResponse(b"1", None)
        assert follow_ups(outcome(Condition.SUCCESS, response, on_failure=FN,
                                  dead_letter=QUEUE), arn_of) == []
        ups = follow_ups(outcome(Condition.SUCCESS, response, on_success=QUEUE), arn_of)
        assert [u.kind for u in ups] == [SQS_KIND]
        assert "MessageAttributes" not in json.loads(ups[0].payload)


class FakeSqs:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def get_queue_url(self, **kwargs: Any) -> dict:
        self.calls.append(("get_queue_url", kwargs))
        return {"QueueUrl": "http://sqs.local/000000000000/" + kwargs["QueueName"]}

    def send_message(self, **kwargs: Any) -> dict:
        self.calls.append(("send_message", kwargs))
        return {"MessageId": "m"}


class TestSqsSender:
    def test_sends_to_the_queue_url(self):
        """The sender resolves the queue URL once and sends the body and attributes."""
        sender = SqsSender("us-east-1", environ={"AWS_ENDPOINT_URL_SQS": "http://sqs.local"})
        fake = FakeSqs()
        sender._clients["us-east-1"] = fake
        up = follow_ups(outcome(Condition.EVENT_AGE_EXCEEDED, None, 0, dead_letter=QUEUE),
                        arn_of)[0]
        sender(up.target, up.payload)
        sender(up.target, up.payload)
        assert [c[0] for c in fake.calls] == ["get_queue_url", "send_message", "send_message"]
        assert fake.calls[0][1] == {"QueueName": "failures",
                                    "QueueOwnerAWSAccountId": "000000000000"}
        sent = fake.calls[1][1]
        assert sent["QueueUrl"].endswith("/failures")
        assert json.loads(sent["MessageBody"]) == {"order": 7}
        assert sent["MessageAttributes"]["ErrorCode"]["StringValue"] == "EventAgeExceeded"

    def test_endpoint_from_the_sdk_settings(self):
        """AWS_ENDPOINT_URL_SQS wins over AWS_ENDPOINT_URL; without either nothing is sent."""
        assert SqsSender("r", {"AWS_ENDPOINT_URL": "http://a",
                               "AWS_ENDPOINT_URL_SQS": "http://b"}).endpoint() == "http://b"
        assert SqsSender("r", {"AWS_ENDPOINT_URL": "http://a"}).endpoint() == "http://a"
        with pytest.raises(RuntimeError, match="no SQS endpoint"):
            SqsSender("us-east-1", {})(QUEUE, json.dumps(
                {"QueueArn": QUEUE, "MessageBody": "{}"}).encode())
