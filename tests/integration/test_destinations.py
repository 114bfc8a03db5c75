"""Event invoke configurations through boto3, and asynchronous outcomes reaching destinations.

Functions report to a loopback HTTP server (the callback pattern of
test_async_and_lifecycle.py): the worker posts "started"/"done", the destination function posts
the invocation record it received.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from botocore.exceptions import ClientError
from test_async_and_lifecycle import CALLBACK_FN, Callbacks, stages

from functions import create, unique

# A destination: posts whatever it receives to the URL of the original event.
RECORDER_FN = """
import json, urllib.request
def handler(event, context):
    url = event.get("url") or event["requestPayload"]["url"]
    body = json.dumps({"stage": "record", "id": context.aws_request_id,
                       "event": event}).encode()
    urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=5)
    return "recorded"
"""

FAST_RETRIES = {"CORRAL_ASYNC_RETRY_DELAYS": "0.2,0.2"}
ISO_MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def callbacks():
    cb = Callbacks()
    yield cb
    cb.close()


@pytest.fixture
def fast(make_server):
    """A dedicated server whose retry delays are 0.2 s."""
    return make_server(extra_env=FAST_RETRIES)


def pair(lam, worker_code: str = CALLBACK_FN) -> tuple[str, str, str]:
    """A worker function and a recorder function; returns (worker, recorder, recorder ARN)."""
    worker, recorder = unique("work"), unique("dest")
    create(lam, worker, {"app.py": worker_code})
    arn = create(lam, recorder, {"app.py": RECORDER_FN})["FunctionArn"]
    return worker, recorder, arn


def records(received: list[dict]) -> list[dict]:
    return [r["event"] for r in stages(received, "record")]


class TestDestinations:
    def test_on_failure_gets_the_aws_record(self, fast, callbacks):
        """A failing event runs three times, then OnFailure receives AWS's invocation record."""
        lam = fast.client()
        worker, _, recorder_arn = pair(lam)
        lam.put_function_event_invoke_config(
            FunctionName=worker, DestinationConfig={"OnFailure": {"Destination": recorder_arn}})
        payload = {"url": callbacks.url, "fail": True}
        resp = lam.invoke(FunctionName=worker, InvocationType="Event",
                          Payload=json.dumps(payload).encode())
        got = callbacks.wait_for(lambda r: records(r))
        record = records(got)[0]
        assert len(stages(got, "started")) == 3
        assert record["version"] == "1.0"
        assert ISO_MILLIS.match(record["timestamp"])
        worker_arn = lam.get_function(FunctionName=worker)["Configuration"]["FunctionArn"]
        assert record["requestContext"] == {
            "requestId": resp["ResponseMetadata"]["RequestId"],
            "functionArn": f"{worker_arn}:$LATEST",
            "condition": "RetriesExhausted",
            "approximateInvokeCount": 3,
        }
        assert record["requestPayload"] == payload
        assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST",
                                             "functionError": "Unhandled"}
        assert record["responsePayload"]["errorMessage"] == "failing on purpose"
        assert record["responsePayload"]["errorType"] == "RuntimeError"

    def test_on_success_gets_the_result(self, lam, callbacks):
        """A successful event sends a Success record with the function's return value."""
        worker, _, recorder_arn = pair(lam)
        lam.put_function_event_invoke_config(
            FunctionName=worker, DestinationConfig={"OnSuccess": {"Destination": recorder_arn}})
        lam.invoke(FunctionName=worker, InvocationType="Event",
                   Payload=json.dumps({"url": callbacks.url}).encode())
        record = records(callbacks.wait_for(lambda r: records(r)))[0]
        assert record["requestContext"]["condition"] == "Success"
        assert record["requestContext"]["approximateInvokeCount"] == 1
        assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}
        assert record["responsePayload"] == "ok"

    def test_zero_retries_means_one_attempt(self, fast, callbacks):
        """MaximumRetryAttempts=0 runs a failing event exactly once."""
        lam = fast.client()
        worker, _, recorder_arn = pair(lam)
        lam.put_function_event_invoke_config(
            FunctionName=worker, MaximumRetryAttempts=0,
            DestinationConfig={"OnFailure": {"Destination": recorder_arn}})
        lam.invoke(FunctionName=worker, InvocationType="Event",
                   Payload=json.dumps({"url": callbacks.url, "fail": True}).encode())
        record = records(callbacks.wait_for(lambda r: records(r)))[0]
        time.sleep(1.0)  # retries (0.2 s apart) would have run by now
        assert len(stages(callbacks.received, "started")) == 1
        assert record["requestContext"]["approximateInvokeCount"] == 1
        assert record["requestContext"]["condition"] == "RetriesExhausted"

    def test_event_age_ends_retries(self, make_server, callbacks):
        """A retry that would run past MaximumEventAgeInSeconds ends as EventAgeExceeded."""
        srv = make_server(extra_env={"CORRAL_ASYNC_RETRY_DELAYS": "120,120"})
        lam = srv.client()
        worker, _, recorder_arn = pair(lam)
        lam.put_function_event_invoke_config(
            FunctionName=worker, MaximumEventAgeInSeconds=60,
            DestinationConfig={"OnFailure": {"Destination": recorder_arn}})
        lam.invoke(FunctionName=worker, InvocationType="Event",
                   Payload=json.dumps({"url": callbacks.url, "fail": True}).encode())
        record = records(callbacks.wait_for(lambda r: records(r)))[0]
        assert record["requestContext"]["condition"] == "EventAgeExceeded"
        assert record["requestContext"]["approximateInvokeCount"] == 1
        assert record["responseContext"]["functionError"] == "Unhandled"
        assert len(stages(callbacks.received, "started")) == 1

    def test_throttles_do_not_use_attempts(self, lam, callbacks):
        """A throttled event waits with backoff and still gets its one allowed attempt."""
        worker, _, recorder_arn = pair(lam)
        lam.put_function_event_invoke_config(
            FunctionName=worker, MaximumRetryAttempts=0,
            DestinationConfig={"OnFailure": {"Destination": recorder_arn}})
        lam.put_function_concurrency(FunctionName=worker, ReservedConcurrentExecutions=0)
        lam.invoke(FunctionName=worker, InvocationType="Event",
                   Payload=json.dumps({"url": callbacks.url, "fail": True}).encode())
        time.sleep(2.5)  # throttled at 0 s, 1 s and 3 s
        assert stages(callbacks.received, "started") == []
        lam.delete_function_concurrency(FunctionName=worker)
        record = records(callbacks.wait_for(lambda r: records(r), timeout=40))[0]
        assert len(stages(callbacks.received, "started")) == 1
        assert record["requestContext"]["approximateInvokeCount"] == 1
        assert record["requestContext"]["condition"] == "RetriesExhausted"

    def test_dead_letter_function_gets_the_event(self, fast, callbacks):
        """With DeadLetterConfig naming a function, the failed event itself is sent there."""
        lam = fast.client()
        worker, _, recorder_arn = pair(lam)
        lam.update_function_configuration(FunctionName=worker,
                                          DeadLetterConfig={"TargetArn": recorder_arn})
        lam.get_waiter("function_updated_v2").wait(FunctionName=worker)
        stored = lam.get_function_configuration(FunctionName=worker)
        assert stored["DeadLetterConfig"]["TargetArn"] == recorder_arn
        payload = {"url": callbacks.url, "fail": True}
        lam.invoke(FunctionName=worker, InvocationType="Event",
                   Payload=json.dumps(payload).encode())
        got = callbacks.wait_for(lambda r: records(r))
        assert records(got)[0] == payload
        assert len(stages(got, "started")) == 3


class TestConfigApi:
    def test_put_get_update_delete(self, lam):
        """Put replaces, Update merges, Get reads, Delete removes (then Get is 404)."""
        worker, _, recorder_arn = pair(lam)
        put = lam.put_function_event_invoke_config(
            FunctionName=worker, MaximumRetryAttempts=1, MaximumEventAgeInSeconds=300,
            DestinationConfig={"OnFailure": {"Destination": recorder_arn}})
        assert put["FunctionArn"].endswith(f":function:{worker}:$LATEST")
        assert put["MaximumRetryAttempts"] == 1 and put["MaximumEventAgeInSeconds"] == 300
        assert put["DestinationConfig"]["OnFailure"] == {"Destination": recorder_arn}
        assert put["LastModified"].year >= 2024
        updated = lam.update_function_event_invoke_config(FunctionName=worker,
                                                          MaximumRetryAttempts=2)
        assert updated["MaximumRetryAttempts"] == 2
        assert updated["MaximumEventAgeInSeconds"] == 300
        assert updated["DestinationConfig"]["OnFailure"] == {"Destination": recorder_arn}
        replaced = lam.put_function_event_invoke_config(FunctionName=worker,
                                                        MaximumRetryAttempts=0)
        assert "MaximumEventAgeInSeconds" not in replaced
        assert replaced["DestinationConfig"] == {"OnSuccess": {}, "OnFailure": {}}
        got = lam.get_function_event_invoke_config(FunctionName=worker)
        assert got["MaximumRetryAttempts"] == 0
        lam.delete_function_event_invoke_config(FunctionName=worker)
        with pytest.raises(ClientError) as exc:
            lam.get_function_event_invoke_config(FunctionName=worker)
        error = exc.value.response["Error"]
        assert error["Code"] == "ResourceNotFoundException"
        assert error["Message"] == (f"The function {put['FunctionArn']} doesn't have an "
                                    "EventInvokeConfig")

    def test_list_with_paging(self, lam):
        """Configurations of $LATEST and a version are listed, one page at a time."""
        worker, _, _ = pair(lam)
        lam.publish_version(FunctionName=worker)
        lam.put_function_event_invoke_config(FunctionName=worker, MaximumRetryAttempts=1)
        lam.put_function_event_invoke_config(FunctionName=worker, Qualifier="1",
                                             MaximumRetryAttempts=0)
        listed = lam.list_function_event_invoke_configs(FunctionName=worker)
        arns = [c["FunctionArn"] for c in listed["FunctionEventInvokeConfigs"]]
        assert sorted(a.rsplit(":", 1)[1] for a in arns) == ["$LATEST", "1"]
        first = lam.list_function_event_invoke_configs(FunctionName=worker, MaxItems=1)
        assert len(first["FunctionEventInvokeConfigs"]) == 1 and first["NextMarker"]
        second = lam.list_function_event_invoke_configs(FunctionName=worker, MaxItems=1,
                                                        Marker=first["NextMarker"])
        assert len(second["FunctionEventInvokeConfigs"]) == 1
        assert "NextMarker" not in second

    @pytest.mark.parametrize(("kwargs", "fragment"), [
        ({"MaximumRetryAttempts": 3}, "less than or equal to 2"),
        ({"MaximumEventAgeInSeconds": 30}, "greater than or equal to 60"),
        ({"MaximumEventAgeInSeconds": 21601}, "less than or equal to 21600"),
        ({"DestinationConfig": {"OnFailure": {"Destination": "not-an-arn"}}},
         "regular expression"),
        ({"DestinationConfig": {"OnSuccess": {
            "Destination": "arn:aws:sns:us-east-1:000000000000:topic"}}}, "not supported"),
    ])
    def test_validation(self, server, kwargs, fragment):
        """Out-of-range settings and unsupported destinations are InvalidParameterValue."""
        lam = server.client(parameter_validation=False)
        name = unique("val")
        create(lam, name, {"app.py": CALLBACK_FN})
        with pytest.raises(ClientError) as exc:
            lam.put_function_event_invoke_config(FunctionName=name, **kwargs)
        assert exc.value.response["Error"]["Code"] == "InvalidParameterValueException"
        assert fragment in exc.value.response["Error"]["Message"]

    def test_unknown_function(self, lam):
        """A configuration for a function that does not exist is ResourceNotFound."""
        with pytest.raises(ClientError) as exc:
            lam.put_function_event_invoke_config(FunctionName=unique("nope"),
                                                 MaximumRetryAttempts=1)
        assert exc.value.response["Error"]["Code"] == "ResourceNotFoundException"

    def test_update_without_config(self, lam):
        """Updating a configuration that does not exist is ResourceNotFound."""
        worker, _, _ = pair(lam)
        with pytest.raises(ClientError) as exc:
            lam.update_function_event_invoke_config(FunctionName=worker,
                                                    MaximumRetryAttempts=1)
        assert exc.value.response["Error"]["Code"] == "ResourceNotFoundException"

    def test_deleted_function_loses_its_config(self, lam):
        """Deleting and recreating a function starts without the old configuration."""
        worker, _, _ = pair(lam)
        lam.put_function_event_invoke_config(FunctionName=worker, MaximumRetryAttempts=1)
        lam.delete_function(FunctionName=worker)
        create(lam, worker, {"app.py": CALLBACK_FN})
        with pytest.raises(ClientError) as exc:
            lam.get_function_event_invoke_config(FunctionName=worker)
        assert exc.value.response["Error"]["Code"] == "ResourceNotFoundException"


class TestQueueDestination:
    def test_on_failure_queue_gets_the_record(self, make_server, callbacks, tmp_path):
        """An SQS OnFailure destination (moto_server) receives the invocation record."""
        moto_server = pytest.importorskip("moto_server")
        moto = moto_server.MotoServer(tmp_path)
        moto.start()
        try:
            sqs = moto.client("sqs")
            url = sqs.create_queue(QueueName=unique("failures"))["QueueUrl"]
            queue_arn = sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            srv = make_server(extra_env={**FAST_RETRIES, **moto.server_env()})
            lam = srv.client()
            worker = unique("toq")
            create(lam, worker, {"app.py": CALLBACK_FN})
            lam.put_function_event_invoke_config(
                FunctionName=worker, MaximumRetryAttempts=0,
                DestinationConfig={"OnFailure": {"Destination": queue_arn}})
            payload = {"url": callbacks.url, "fail": True}
            lam.invoke(FunctionName=worker, InvocationType="Event",
                       Payload=json.dumps(payload).encode())
            deadline = time.monotonic() + 30
            messages: list[dict] = []
            while not messages and time.monotonic() < deadline:
                messages = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get(
                    "Messages", [])
            assert messages, "no message reached the queue"
            record = json.loads(messages[0]["Body"])
            assert record["requestContext"]["condition"] == "RetriesExhausted"
            assert record["requestContext"]["approximateInvokeCount"] == 1
            assert record["requestPayload"] == payload
            assert record["responseContext"]["functionError"] == "Unhandled"
        finally:
            moto.stop()

