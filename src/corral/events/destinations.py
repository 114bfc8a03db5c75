"""Where asynchronous outcomes go: destination ARNs, AWS's invocation record, SQS delivery.

Supported targets, for `DestinationConfig` (OnSuccess/OnFailure) and `DeadLetterConfig`:

* a Lambda function ARN (`arn:aws:lambda:<region>:<account>:function:<name>[:<qualifier>]`):
  invoked asynchronously, through the same durable queue, with the invocation record
  (destinations) or the original event (dead-letter target). A function as a dead-letter
  target is a Corral extension: AWS accepts only SQS queues and SNS topics there.
* an SQS queue ARN (`arn:aws:sqs:<region>:<account>:<name>`): the record (or, for a
  dead-letter queue, the original event with the `RequestID`, `ErrorCode` and `ErrorMessage`
  message attributes AWS adds) is sent with boto3 to the SQS-compatible endpoint the standard
  SDK configuration names (`AWS_ENDPOINT_URL_SQS`, else `AWS_ENDPOINT_URL`), with the
  credentials of the standard chain. Without an endpoint setting boto3 would talk to AWS
  itself, so Corral refuses to send then (the delivery is retried, then dropped, and logged).

The invocation record (AWS's format, sent to OnSuccess and OnFailure):

    {"version": "1.0", "timestamp": "2019-11-14T18:16:05.568Z",
     "requestContext": {"requestId": ..., "functionArn": "arn:...:function:f:$LATEST",
                        "condition": "Success" | "RetriesExhausted" | "EventAgeExceeded",
                        "approximateInvokeCount": 3},
     "requestPayload": <the original event>,
     "responseContext": {"statusCode": 200, "executedVersion": "$LATEST",
                         "functionError": "Unhandled"},   # only after an error
     "responsePayload": <what the function returned, or its error object>}

`responseContext`/`responsePayload` are left out when the function never ran (an event that
aged out while it was throttled).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from corral.control.arns import parse_function_name
from corral.errors import InvalidParameterValueException
from corral.invoke.async_queue import Condition, FinalOutcome, FollowUp
from corral.model import LATEST

__all__ = [
    "SQS_KIND",
    "SqsSender",
    "Target",
    "follow_ups",
    "invocation_record",
    "iso_millis",
    "parse_target",
]

log = logging.getLogger(__name__)

SQS_KIND = "sqs"
_LAMBDA_ARN = re.compile(r"^arn:aws[a-zA-Z-]*:lambda:[a-z0-9-]+:\d{12}:function:[^:]+(:[^:]+)?$")
_SQS_ARN = re.compile(r"^arn:aws[a-zA-Z-]*:sqs:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):"
                      r"(?P<name>[a-zA-Z0-9_-]{1,80}(\.fifo)?)$")
_ARN = re.compile(r"^arn:(aws[a-zA-Z-]*)?:[a-z0-9-.]+:.*$")


@dataclass(frozen=True)
class Target:
    """A parsed destination: a function (name, qualifier) or a queue (its ARN)."""

    kind: str  # "function" | "sqs"
    arn: str
    name: str
    qualifier: str = LATEST


def parse_target(arn: str, field: str = "Destination") -> Target:
    """Validate a destination ARN; InvalidParameterValueException for anything unsupported."""
    if not isinstance(arn, str) or not _ARN.match(arn):
        raise InvalidParameterValueException(
            f"1 validation error detected: Value '{arn}' at '{field}' failed to satisfy "
            "constraint: Member must satisfy regular expression pattern: "
            "^$|arn:(aws[a-zA-Z0-9-]*):([a-zA-Z0-9\\-])+:([a-z]{2}(-gov)?-[a-z]+-\\d{1})?:"
            "(\\d{12})?:(.*)")
    if _LAMBDA_ARN.match(arn):
        ref = parse_function_name(arn, field)
        return Target("function", arn, ref.name, ref.qualifier or LATEST)
    sqs = _SQS_ARN.match(arn)
    if sqs:
        return Target("sqs", arn, sqs.group("name"))
    raise InvalidParameterValueException(
        f"The destination ARN {arn} is not supported: Corral delivers to Lambda functions "
        "and SQS queues.")


def iso_millis(epoch: float) -> str:
    """`2019-11-14T18:16:05.568Z`."""
    moment = datetime.fromtimestamp(epoch, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _json_or_text(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return payload.decode("utf-8", "replace")


def invocation_record(outcome: FinalOutcome, function_arn: str) -> dict[str, Any]:
    """AWS's destination record for `outcome`; `function_arn` is the qualified ARN."""
    record: dict[str, Any] = {
        "version": "1.0",
        "timestamp": iso_millis(outcome.at),
        "requestContext": {
            "requestId": outcome.event.event_id,
            "functionArn": function_arn,
            "condition": outcome.condition.value,
            "approximateInvokeCount": outcome.attempts,
        },
        "requestPayload": _json_or_text(outcome.event.payload),
    }
    response = outcome.response
    if response is not None:
        context: dict[str, Any] = {"statusCode": 200,
                                   "executedVersion": response.executed_version}
        if response.function_error:
            context["functionError"] = response.function_error
        record["responseContext"] = context
        record["responsePayload"] = _json_or_text(response.payload) if response.payload \
            else None
    return record


def _error_summary(outcome: FinalOutcome) -> tuple[str, str]:
    """(ErrorCode, ErrorMessage) for a dead-letter message."""
    if outcome.condition == Condition.EVENT_AGE_EXCEEDED:
        return "EventAgeExceeded", "The event was older than the maximum event age."
    body = _json_or_text(outcome.response.payload) if outcome.response else None
    if isinstance(body, dict):
        return "200", str(body.get("errorMessage") or body.get("errorType") or "")[:1024]
    return "200", "" if body is None else str(body)[:1024]


def _deliver(target: Target, body: bytes, attributes: dict[str, str] | None = None) \
        -> FollowUp:
    if target.kind == "function":
        return FollowUp("invoke", target.name, body, target.qualifier)
    message: dict[str, Any] = {"QueueArn": target.arn, "MessageBody": body.decode("utf-8")}
    if attributes:
        message["MessageAttributes"] = {
            key: {"DataType": "String", "StringValue": value or "-"}
            for key, value in attributes.items()}
    return FollowUp(SQS_KIND, target.arn, json.dumps(message).encode())


def follow_ups(outcome: FinalOutcome, arn_of: Callable[[str, str], str]) -> list[FollowUp]:
    """The deliveries an outcome calls for: its destination, and the dead-letter target.

    `arn_of(name, qualifier)` renders the qualified function ARN for the record.
    """
    policy = outcome.policy
    out: list[FollowUp] = []
    success = outcome.condition == Condition.SUCCESS
    destination = policy.on_success if success else policy.on_failure
    if destination:
        try:
            target = parse_target(destination)
        except InvalidParameterValueException as exc:
            log.error("cannot deliver to %s: %s", destination, exc.message)
        else:
            record = invocation_record(
                outcome, arn_of(outcome.event.function_name, outcome.event.qualifier))
            out.append(_deliver(target, json.dumps(record).encode()))
    if not success and policy.dead_letter:
        try:
            target = parse_target(policy.dead_letter, "TargetArn")
        except InvalidParameterValueException as exc:
            log.error("cannot deliver to %s: %s", policy.dead_letter, exc.message)
        else:
            code, message = _error_summary(outcome)
            out.append(_deliver(target, outcome.event.payload, {
                "RequestID": outcome.event.event_id, "ErrorCode": code,
                "ErrorMessage": message}))
    return out


class SqsSender:
    """Sends a follow-up message to an SQS-compatible endpoint with boto3 (blocking)."""

    def __init__(self, region: str, environ: dict[str, str] | None = None) -> None:
        self._region = region
        self._environ = environ
        self._clients: dict[str, Any] = {}
        self._urls: dict[str, str] = {}

    def endpoint(self) -> str | None:
        env = os.environ if self._environ is None else self._environ
        return env.get("AWS_ENDPOINT_URL_SQS") or env.get("AWS_ENDPOINT_URL") or None

    def _client(self, region: str) -> Any:
        client = self._clients.get(region)
        if client is None:
            import boto3

            endpoint = self.endpoint()
            if endpoint is None:
                raise RuntimeError("no SQS endpoint configured (set AWS_ENDPOINT_URL_SQS)")
            client = self._clients[region] = boto3.session.Session().client(
                "sqs", region_name=region, endpoint_url=endpoint)
        return client

    def __call__(self, arn: str, payload: bytes) -> None:
        message = json.loads(payload)
        match = _SQS_ARN.match(message.get("QueueArn", arn))
        if match is None:
            raise ValueError(f"not an SQS queue ARN: {arn}")
        client = self._client(match.group("region") or self._region)
        url = self._urls.get(arn)
        if url is None:
            url = client.get_queue_url(QueueName=match.group("name"),
                                       QueueOwnerAWSAccountId=match.group("account"))["QueueUrl"]
            self._urls[arn] = url
        kwargs: dict[str, Any] = {"QueueUrl": url, "MessageBody": message["MessageBody"]}
        if message.get("MessageAttributes"):
            kwargs["MessageAttributes"] = message["MessageAttributes"]
        if match.group("name").endswith(".fifo"):
            kwargs["MessageGroupId"] = "corral"
            kwargs["MessageDeduplicationId"] = hashlib.sha256(payload).hexdigest()
        client.send_message(**kwargs)
