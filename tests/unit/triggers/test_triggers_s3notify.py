"""S3 subscription filters and the record rewrite to Lambda's S3 event format."""

from __future__ import annotations

from typing import Any

import pytest

from corral.errors import InvalidParameterValueException
from corral.triggers.s3notify import (
    S3Subscription,
    event_matches,
    to_s3_record,
    validate_events,
)


def record(name: str = "ObjectCreated:Put", bucket: str = "b", key: str = "k") -> dict[str, Any]:
    return {"eventName": name, "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}


def subscription(**kwargs: Any) -> S3Subscription:
    fields: dict[str, Any] = {"id": "s", "token": "t", "function_name": "f", "qualifier": None,
                              "bucket": None, "events": ("s3:ObjectCreated:*",),
                              "prefix": None, "suffix": None, "created": 0.0}
    fields.update(kwargs)
    return S3Subscription(**fields)


class TestEvents:
    def test_wildcards(self):
        """A trailing * matches the family; the s3: prefix is optional on both sides."""
        assert event_matches("s3:ObjectCreated:*", "ObjectCreated:Put")
        assert event_matches("s3:ObjectCreated:*", "s3:ObjectCreated:CompleteMultipartUpload")
        assert not event_matches("s3:ObjectCreated:*", "ObjectRemoved:Delete")
        assert event_matches("ObjectRemoved:Delete", "s3:ObjectRemoved:Delete")
        assert not event_matches("s3:ObjectCreated:Put", "ObjectCreated:Post")

    def test_validate(self):
        """Names are normalized with s3:, deduplicated, and checked."""
        assert validate_events(None) == ("s3:ObjectCreated:*",)
        assert validate_events("ObjectCreated:Put,s3:ObjectCreated:Put") == (
            "s3:ObjectCreated:Put",)
        with pytest.raises(InvalidParameterValueException):
            validate_events(["s3:Object Created"])
        with pytest.raises(InvalidParameterValueException):
            validate_events([])


class TestMatching:
    def test_bucket(self):
        """A bucket filter compares the record's bucket name."""
        sub = subscription(bucket="photos")
        assert sub.matches(record(bucket="photos"))
        assert not sub.matches(record(bucket="other"))

    def test_prefix_suffix_on_decoded_key(self):
        """Prefix and suffix are compared with the URL-decoded key."""
        sub = subscription(prefix="uploads/", suffix=".jpg")
        assert sub.matches(record(key="uploads%2Fmy+cat.jpg"))
        assert not sub.matches(record(key="uploads%2Fnotes.txt"))
        assert not sub.matches(record(key="other%2Fcat.jpg"))

    def test_incomplete_records(self):
        """Records without an event name, bucket or key never match."""
        sub = subscription()
        assert not sub.matches({"eventName": "ObjectCreated:Put"})
        assert not sub.matches({"s3": {}})


class TestRecord:
    def test_minio_record(self):
        """MinIO's fields are dropped and AWS's defaults filled in."""
        out = to_s3_record({
            "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "",
            "eventTime": "2026-01-01T00:00:00.000Z", "eventName": "s3:ObjectCreated:Put",
            "userIdentity": {"principalId": "me"},
            "requestParameters": {"sourceIPAddress": "1.2.3.4", "region": ""},
            "responseElements": {"x-amz-request-id": "R", "x-minio-x": "y"},
            "s3": {"bucket": {"name": "b"},
                   "object": {"key": "a+b", "size": "12", "eTag": "e", "contentType": "x"}},
            "source": {"host": "h"}}, "eu-west-1", "sub1")
        assert out["eventSource"] == "aws:s3" and out["eventName"] == "ObjectCreated:Put"
        assert out["awsRegion"] == "eu-west-1" and out["eventVersion"] == "2.0"
        assert out["requestParameters"] == {"sourceIPAddress": "1.2.3.4"}
        assert out["responseElements"] == {"x-amz-request-id": "R", "x-amz-id-2": ""}
        assert out["s3"]["configurationId"] == "sub1"
        assert out["s3"]["bucket"] == {"name": "b", "ownerIdentity": {"principalId": ""},
                                       "arn": "arn:aws:s3:::b"}
        assert out["s3"]["object"] == {"key": "a+b", "size": 12, "eTag": "e"}
        assert "source" not in out

    def test_aws_record_kept(self):
        """An AWS record keeps its values."""
        original = {
            "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-2",
            "eventTime": "2019-09-03T19:37:27.192Z", "eventName": "ObjectCreated:Put",
            "userIdentity": {"principalId": "AWS:X"},
            "requestParameters": {"sourceIPAddress": "205.255.255.255"},
            "responseElements": {"x-amz-request-id": "D8", "x-amz-id-2": "vl"},
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "828a",
                   "bucket": {"name": "B", "ownerIdentity": {"principalId": "A3"},
                              "arn": "arn:aws:s3:::B"},
                   "object": {"key": "k", "size": 1305107, "eTag": "b2", "sequencer": "0C"}}}
        assert to_s3_record(original, "us-east-1", "x") == original
