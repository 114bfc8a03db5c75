"""Event source mapping helpers: ARNs, batch rules, record formats, batch item failures."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from corral.errors import InvalidParameterValueException
from corral.triggers.aws import endpoint_for
from corral.triggers.esm import DYNAMODB, SQS, Mapping, _batch_rules, parse_source_arn
from corral.triggers.pollers import (
    batch_item_failures,
    dynamodb_record,
    jsonable,
    split_by_size,
    sqs_record,
)


class TestSourceArn:
    def test_sqs(self):
        """Queue ARNs (standard and FIFO) are SQS sources."""
        arn = parse_source_arn("arn:aws:sqs:us-east-2:123456789012:my-queue.fifo")
        assert (arn.kind, arn.region, arn.account, arn.name) == (
            SQS, "us-east-2", "123456789012", "my-queue.fifo")

    def test_dynamodb_stream(self):
        """Stream ARNs are DynamoDB sources named after their table."""
        arn = parse_source_arn("arn:aws:dynamodb:us-east-1:123456789012:table/Music/stream/"
                               "2026-01-01T00:00:00.000")
        assert (arn.kind, arn.name) == (DYNAMODB, "Music")

    @pytest.mark.parametrize("value", [None, "", "arn:aws:kinesis:us-east-1:123456789012:"
                                       "stream/s", "arn:aws:dynamodb:us-east-1:123456789012:"
                                       "table/Music"])
    def test_unsupported(self, value):
        """Other sources (and tables without a stream) are refused."""
        with pytest.raises(InvalidParameterValueException):
            parse_source_arn(value)


class TestBatchRules:
    def test_sqs_window_needed_above_ten(self):
        """SQS batches above 10 need a batching window; FIFO stays at 10."""
        _batch_rules(SQS, 10, 0, False)
        _batch_rules(SQS, 100, 1, False)
        with pytest.raises(InvalidParameterValueException):
            _batch_rules(SQS, 11, 0, False)
        with pytest.raises(InvalidParameterValueException):
            _batch_rules(SQS, 11, 5, True)

    def test_mapping_round_trip(self):
        """A mapping survives its stored JSON form."""
        mapping = Mapping(uuid="u", function_name="f", qualifier=None, source_arn="a",
                          kind=SQS, batch_size=10, window_s=0, enabled=True, state="Enabled",
                          last_modified=1.5, function_response_types=("ReportBatchItemFailures",))
        assert Mapping.from_json(mapping.to_json()) == mapping


class TestBatchItemFailures:
    def test_success_forms(self):
        """Empty, null or missing batchItemFailures mean the whole batch succeeded."""
        for payload in (b"", b"null", b"{}", b'{"batchItemFailures": []}',
                        b'{"batchItemFailures": null}', b'"ok"'):
            assert batch_item_failures(payload, {"a"}) == set()

    def test_reported(self):
        """Reported identifiers are returned."""
        payload = b'{"batchItemFailures": [{"itemIdentifier": "a"}]}'
        assert batch_item_failures(payload, {"a", "b"}) == {"a"}

    @pytest.mark.parametrize("payload", [b"not json", b'{"batchItemFailures": "a"}',
                                         b'{"batchItemFailures": [{"itemIdentifier": ""}]}',
                                         b'{"batchItemFailures": [{"itemIdentifier": null}]}',
                                         b'{"batchItemFailures": [{"id": "a"}]}',
                                         b'{"batchItemFailures": [{"itemIdentifier": "zz"}]}'])
    def test_whole_batch_failures(self, payload):
        """Invalid replies fail the whole batch (None)."""
        assert batch_item_failures(payload, {"a"}) is None


class TestRecords:
    def test_sqs_record(self):
        """SQS messages become Lambda's record shape with camel-cased attributes."""
        record = sqs_record({
            "MessageId": "m", "ReceiptHandle": "r", "Body": "b", "MD5OfBody": "5",
            "Attributes": {"ApproximateReceiveCount": "1"},
            "MD5OfMessageAttributes": "6",
            "MessageAttributes": {"bin": {"DataType": "Binary", "BinaryValue": b"10"}}},
            "arn:aws:sqs:us-east-1:1:q", "us-east-1")
        assert list(record) == ["messageId", "receiptHandle", "body", "attributes",
                                "messageAttributes", "md5OfMessageAttributes", "md5OfBody",
                                "eventSource", "eventSourceARN", "awsRegion"]
        assert record["messageAttributes"]["bin"] == {
            "binaryValue": "MTA=", "stringListValues": [], "binaryListValues": [],
            "dataType": "Binary"}
        assert record["eventSource"] == "aws:sqs"

    def test_sqs_record_without_attributes(self):
        """Without message attributes there is no md5OfMessageAttributes."""
        record = sqs_record({"MessageId": "m", "ReceiptHandle": "r", "Body": "b",
                             "MD5OfBody": "5"}, "arn", "r")
        assert record["messageAttributes"] == {} and "md5OfMessageAttributes" not in record

    def test_dynamodb_record(self):
        """Stream records get Lambda's envelope; timestamps become epoch seconds."""
        created = datetime(2026, 1, 1, tzinfo=UTC)
        out = dynamodb_record({
            "eventID": "e", "eventName": "INSERT", "eventVersion": "1.1",
            "eventSource": "aws:dynamodb", "awsRegion": "x",
            "dynamodb": {"ApproximateCreationDateTime": created, "Keys": {"k": {"B": b"\x01"}},
                         "SequenceNumber": "100", "SizeBytes": 5}},
            "arn:stream", "us-east-1")
        assert out == {"eventID": "e", "eventName": "INSERT", "eventVersion": "1.1",
                       "eventSource": "aws:dynamodb", "awsRegion": "us-east-1",
                       "dynamodb": {"ApproximateCreationDateTime": int(created.timestamp()),
                                    "Keys": {"k": {"B": "AQ=="}}, "SequenceNumber": "100",
                                    "SizeBytes": 5},
                       "eventSourceARN": "arn:stream"}

    def test_jsonable(self):
        """Decimals, sets and bytes become JSON values."""
        assert jsonable({"a": Decimal("1"), "b": Decimal("1.5"), "c": {b"x"}}) == {
            "a": 1, "b": 1.5, "c": ["eA=="]}

    def test_split_by_size(self):
        """Batches are split so each payload stays under the limit."""
        records = [{"body": "x" * 100} for _ in range(10)]
        chunks = split_by_size(records, 400)
        assert sum(len(c) for c in chunks) == 10 and len(chunks) > 1
        assert all(len(json.dumps({"Records": c})) <= 400 for c in chunks)


def test_endpoint_resolution():
    """The service variable wins over AWS_ENDPOINT_URL; both stream spellings work."""
    env = {"AWS_ENDPOINT_URL": "http://all/", "AWS_ENDPOINT_URL_SQS": "http://sqs"}
    assert endpoint_for("sqs", env) == "http://sqs"
    assert endpoint_for("s3", env) == "http://all"
    assert endpoint_for("dynamodbstreams", {"AWS_ENDPOINT_URL_DYNAMODBSTREAMS": "http://d"}) \
        == "http://d"
    assert endpoint_for("dynamodbstreams", {"AWS_ENDPOINT_URL_DYNAMODB_STREAMS": "http://e"}) \
        == "http://e"
    assert endpoint_for("sqs", {}) is None
