"""Event source mappings against a real moto server: the API, SQS queues, DynamoDB streams."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError
from test_async_and_lifecycle import Callbacks

from functions import create, unique
from moto_server import ACCOUNT, REGION, MotoServer, moto_endpoint  # noqa: F401

# Reports each batch to the callback server; with ReportBatchItemFailures it fails the message
# whose body is "bad" on its first delivery; a body "raise" fails the whole batch once.
SQS_FN = """
import json, os, urllib.request

def handler(event, context):
    records = event["Records"]
    body = json.dumps({"stage": "sqs", "id": context.aws_request_id, "event": event}).encode()
    urllib.request.urlopen(urllib.request.Request(os.environ["CALLBACK"], data=body), timeout=5)
    first = [r for r in records if r["attributes"]["ApproximateReceiveCount"] == "1"]
    if any(r["body"] == "raise" for r in first):
        raise RuntimeError("failing the whole batch once")
    return {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in first
                                  if r["body"] == "bad"]}
"""

# Reports each batch; fails the first delivery of a record whose NewImage has fail=true.
STREAM_FN = """
import json, os, urllib.request
SEEN = set()

def handler(event, context):
    body = json.dumps({"stage": "ddb", "id": context.aws_request_id, "event": event}).encode()
    urllib.request.urlopen(urllib.request.Request(os.environ["CALLBACK"], data=body), timeout=5)
    for record in event["Records"]:
        image = record["dynamodb"].get("NewImage") or {}
        seq = record["dynamodb"]["SequenceNumber"]
        if image.get("fail", {}).get("BOOL") and seq not in SEEN:
            SEEN.add(seq)
            raise RuntimeError("failing this batch once")
    return "ok"
"""


@pytest.fixture
def callbacks():
    cb = Callbacks()
    yield cb
    cb.close()


@pytest.fixture
def esm_server(make_server: Any, moto_endpoint: MotoServer) -> Any:  # noqa: F811
    """A Corral server whose environment names moto as the SQS/DynamoDB/S3 endpoint."""
    return make_server(extra_env=moto_endpoint.server_env())


def queue(moto: MotoServer, **attributes: str) -> tuple[str, str]:
    """A new SQS queue on moto; returns (url, arn)."""
    sqs = moto.client("sqs")
    name = unique("q")
    url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    return url, f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"


def wait_state(lam: Any, mapping_uuid: str, state: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        got = lam.get_event_source_mapping(UUID=mapping_uuid)
        if got["State"] == state or time.monotonic() > deadline:
            assert got["State"] == state, got
            return got
        time.sleep(0.1)


def queue_is_empty(moto: MotoServer, url: str) -> bool:
    attrs = moto.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return attrs["ApproximateNumberOfMessages"] == "0" and \
        attrs["ApproximateNumberOfMessagesNotVisible"] == "0"


def wait_until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def bodies(received: list[dict]) -> list[list[str]]:
    return [[r["body"] for r in c["event"]["Records"]] for c in received]


class TestApi:
    def test_lifecycle(self, esm_server, moto_endpoint):  # noqa: F811
        """Create (202 Creating → Enabled), get, update (Disabling → Disabled), list, delete."""
        lam = esm_server.client()
        name = unique("esm-api")
        create(lam, name, {"app.py": SQS_FN}, Environment={"Variables": {"CALLBACK": "x"}})
        _, arn = queue(moto_endpoint)
        created = lam.create_event_source_mapping(FunctionName=name, EventSourceArn=arn)
        assert created["ResponseMetadata"]["HTTPStatusCode"] == 202
        assert created["State"] == "Creating" and len(created["UUID"]) == 36
        assert created["BatchSize"] == 10 and created["MaximumBatchingWindowInSeconds"] == 0
        assert created["FunctionResponseTypes"] == []
        assert created["FunctionArn"].endswith(f":function:{name}")
        assert created["EventSourceArn"] == arn
        assert created["StateTransitionReason"] == "USER_INITIATED"
        assert created["LastModified"].year >= 2024
        wait_state(lam, created["UUID"], "Enabled")
        updated = lam.update_event_source_mapping(
            UUID=created["UUID"], BatchSize=5, Enabled=False,
            FunctionResponseTypes=["ReportBatchItemFailures"])
        assert updated["ResponseMetadata"]["HTTPStatusCode"] == 202
        assert updated["State"] == "Disabling" and updated["BatchSize"] == 5
        assert wait_state(lam, created["UUID"], "Disabled")["FunctionResponseTypes"] == [
            "ReportBatchItemFailures"]
        listed = lam.list_event_source_mappings(FunctionName=name)["EventSourceMappings"]
        assert [m["UUID"] for m in listed] == [created["UUID"]]
        assert lam.list_event_source_mappings(EventSourceArn=arn)["EventSourceMappings"]
        deleted = lam.delete_event_source_mapping(UUID=created["UUID"])
        assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 202
        assert deleted["State"] == "Deleting"
        deadline = time.monotonic() + 10
        while True:
            try:
                lam.get_event_source_mapping(UUID=created["UUID"])
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == "ResourceNotFoundException"
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)

    def test_validation(self, esm_server, moto_endpoint):  # noqa: F811
        """Duplicates conflict; batch > 10 needs a window; streams need a StartingPosition."""
        lam = esm_server.client()
        name = unique("esm-val")
        create(lam, name, {"app.py": SQS_FN})
        _, arn = queue(moto_endpoint)
        lam.create_event_source_mapping(FunctionName=name, EventSourceArn=arn, Enabled=False)
        with pytest.raises(ClientError) as exc:
            lam.create_event_source_mapping(FunctionName=name, EventSourceArn=arn)
        assert exc.value.response["Error"]["Code"] == "ResourceConflictException"
        _, other = queue(moto_endpoint)
        with pytest.raises(ClientError) as exc:
            lam.create_event_source_mapping(FunctionName=name, EventSourceArn=other,
                                            BatchSize=50)
        assert exc.value.response["Error"]["Code"] == "InvalidParameterValueException"
        stream = (f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/t/stream/"
                  "2026-01-01T00:00:00.000")
        with pytest.raises(ClientError) as exc:
            lam.create_event_source_mapping(FunctionName=name, EventSourceArn=stream)
        assert exc.value.response["Error"]["Code"] == "InvalidParameterValueException"
        with pytest.raises(ClientError) as exc:
            lam.create_event_source_mapping(FunctionName=unique("missing"),
                                            EventSourceArn=other)
        assert exc.value.response["Error"]["Code"] == "ResourceNotFoundException"
        with pytest.raises(ClientError) as exc:
            lam.get_event_source_mapping(UUID="00000000-0000-0000-0000-000000000000")
        assert exc.value.response["Error"]["Code"] == "ResourceNotFoundException"


class TestSqs:
    def test_message_processed_once_and_deleted(self, esm_server, moto_endpoint,  # noqa: F811
                                                callbacks):
        """A sent message reaches the function once, in the SQS record format, and is deleted."""
        lam = esm_server.client()
        name = unique("esm-sqs")
        create(lam, name, {"app.py": SQS_FN},
               Environment={"Variables": {"CALLBACK": callbacks.url}})
        url, arn = queue(moto_endpoint)
        mapping = lam.create_event_source_mapping(FunctionName=name, EventSourceArn=arn)
        wait_state(lam, mapping["UUID"], "Enabled")
        sent = moto_endpoint.client("sqs").send_message(
            QueueUrl=url, MessageBody="hello", MessageAttributes={
                "color": {"DataType": "String", "StringValue": "blue"}})
        got = callbacks.wait_for(lambda r: len(r) >= 1, timeout=30)
        record = got[0]["event"]["Records"][0]
        assert record["messageId"] == sent["MessageId"] and record["body"] == "hello"
        assert record["receiptHandle"] and record["md5OfBody"] == sent["MD5OfMessageBody"]
        assert record["attributes"]["ApproximateReceiveCount"] == "1"
        assert record["attributes"]["SentTimestamp"].isdigit()
        assert record["messageAttributes"] == {"color": {
            "stringValue": "blue", "stringListValues": [], "binaryListValues": [],
            "dataType": "String"}}
        assert record["md5OfMessageAttributes"] == sent["MD5OfMessageAttributes"]
        assert record["eventSource"] == "aws:sqs" and record["eventSourceARN"] == arn
        assert record["awsRegion"] == REGION
        wait_until(lambda: queue_is_empty(moto_endpoint, url))
        time.sleep(3)
        assert len(callbacks.received) == 1

    def test_partial_batch_failure_redelivers_only_the_failed(
            self, esm_server, moto_endpoint, callbacks):  # noqa: F811
        """With ReportBatchItemFailures only the reported message comes back."""
        lam = esm_server.client()
        name = unique("esm-part")
        create(lam, name, {"app.py": SQS_FN},
               Environment={"Variables": {"CALLBACK": callbacks.url}})
        url, arn = queue(moto_endpoint, VisibilityTimeout="2")
        sqs = moto_endpoint.client("sqs")
        for body in ("ok-1", "bad", "ok-2"):
            sqs.send_message(QueueUrl=url, MessageBody=body)
        lam.create_event_source_mapping(FunctionName=name, EventSourceArn=arn, BatchSize=10,
                                        MaximumBatchingWindowInSeconds=1,
                                        FunctionResponseTypes=["ReportBatchItemFailures"])
        got = callbacks.wait_for(lambda r: len(r) >= 2, timeout=30)
        assert sorted(bodies(got)[0]) == ["bad", "ok-1", "ok-2"]
        assert bodies(got)[1] == ["bad"]
        assert got[1]["event"]["Records"][0]["attributes"]["ApproximateReceiveCount"] == "2"
        wait_until(lambda: queue_is_empty(moto_endpoint, url))
        time.sleep(3)
        assert len(callbacks.received) == 2

    def test_function_error_redelivers_the_batch(self, esm_server, moto_endpoint,  # noqa: F811
                                                 callbacks):
        """A function error leaves the batch; it returns after the visibility timeout."""
        lam = esm_server.client()
        name = unique("esm-err")
        create(lam, name, {"app.py": SQS_FN},
               Environment={"Variables": {"CALLBACK": callbacks.url}})
        url, arn = queue(moto_endpoint, VisibilityTimeout="2")
        moto_endpoint.client("sqs").send_message(QueueUrl=url, MessageBody="raise")
        lam.create_event_source_mapping(FunctionName=name, EventSourceArn=arn)
        got = callbacks.wait_for(lambda r: len(r) >= 2, timeout=30)
        counts = [c["event"]["Records"][0]["attributes"]["ApproximateReceiveCount"]
                  for c in got]
        assert counts[:2] == ["1", "2"]
        wait_until(lambda: queue_is_empty(moto_endpoint, url))


class TestLifecycle:
    def test_clean_stop_and_resume_after_restart(self, make_server, moto_endpoint,  # noqa: F811
                                                 callbacks, tmp_path):
        """SIGTERM stops a long-polling server at once; the mapping resumes after a restart."""
        env = moto_endpoint.server_env()
        data = tmp_path / "esm-restart"
        srv = make_server(data_dir=data, extra_env=env)
        lam = srv.client()
        name = unique("esm-rs")
        create(lam, name, {"app.py": SQS_FN},
               Environment={"Variables": {"CALLBACK": callbacks.url}})
        # The long poll abandoned at shutdown may still take the next message from the
        # queue; a short visibility timeout makes it reappear quickly.
        url, arn = queue(moto_endpoint, VisibilityTimeout="2")
        mapping = lam.create_event_source_mapping(FunctionName=name, EventSourceArn=arn)
        wait_state(lam, mapping["UUID"], "Enabled")
        time.sleep(1)  # the poller is now inside a 20 s long poll
        started = time.monotonic()
        assert srv.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 8
        moto_endpoint.client("sqs").send_message(QueueUrl=url, MessageBody="after")
        restarted = make_server(data_dir=data, extra_env=env)
        got = callbacks.wait_for(lambda r: len(r) >= 1, timeout=40)
        assert bodies(got) == [["after"]]
        again = restarted.client().get_event_source_mapping(UUID=mapping["UUID"])
        assert again["State"] == "Enabled"


class TestDynamoDBStreams:
    def test_stream_records_reach_the_function(self, esm_server, moto_endpoint,  # noqa: F811
                                               callbacks):
        """Inserts and updates arrive as DynamoDB stream records; a failed batch is retried."""
        lam = esm_server.client()
        name = unique("esm-ddb")
        create(lam, name, {"app.py": STREAM_FN},
               Environment={"Variables": {"CALLBACK": callbacks.url}})
        ddb = moto_endpoint.client("dynamodb")
        table = unique("tbl")
        stream_arn = ddb.create_table(
            TableName=table, BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )["TableDescription"]["LatestStreamArn"]
        ddb.put_item(TableName=table, Item={"pk": {"S": "a"}, "n": {"N": "1"}})
        mapping = lam.create_event_source_mapping(
            FunctionName=name, EventSourceArn=stream_arn, StartingPosition="TRIM_HORIZON",
            BatchSize=10)
        assert mapping["StartingPosition"] == "TRIM_HORIZON"
        assert mapping["MaximumRetryAttempts"] == -1
        got = callbacks.wait_for(lambda r: len(r) >= 1, timeout=30)
        record = got[0]["event"]["Records"][0]
        assert record["eventName"] == "INSERT" and record["eventVersion"] == "1.1"
        assert record["eventSource"] == "aws:dynamodb" and record["awsRegion"] == REGION
        assert record["eventSourceARN"] == stream_arn and record["eventID"]
        assert record["dynamodb"]["Keys"] == {"pk": {"S": "a"}}
        assert record["dynamodb"]["NewImage"] == {"pk": {"S": "a"}, "n": {"N": "1"}}
        assert record["dynamodb"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"
        assert record["dynamodb"]["SequenceNumber"]
        assert isinstance(record["dynamodb"]["ApproximateCreationDateTime"], int | float)
        ddb.put_item(TableName=table, Item={"pk": {"S": "a"}, "n": {"N": "2"},
                                            "fail": {"BOOL": True}})
        got = callbacks.wait_for(lambda r: len(r) >= 3, timeout=30)
        modify = [c["event"]["Records"][0] for c in got[1:3]]
        assert [m["eventName"] for m in modify] == ["MODIFY", "MODIFY"]
        assert modify[0]["dynamodb"]["SequenceNumber"] == modify[1]["dynamodb"]["SequenceNumber"]
        assert modify[0]["dynamodb"]["OldImage"] == {"pk": {"S": "a"}, "n": {"N": "1"}}
        wait_until(lambda: lam.get_event_source_mapping(
            UUID=mapping["UUID"])["LastProcessingResult"] == "OK")
        time.sleep(2)
        assert len(callbacks.received) == 3
