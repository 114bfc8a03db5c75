"""S3 event notifications: `corral subscribe s3`, and MinIO-style posts to the webhook URL."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from click.testing import CliRunner
from test_async_and_lifecycle import Callbacks

from corral.cli.commands.subscribe import subscribe as subscribe_cli
from functions import create, unique

RECORDER_FN = """
import json, os, urllib.request

def handler(event, context):
    body = json.dumps({"stage": "s3", "id": context.aws_request_id, "event": event}).encode()
    urllib.request.urlopen(urllib.request.Request(os.environ["CALLBACK"], data=body), timeout=5)
    return "ok"
"""


def minio_record(bucket: str, key: str, event: str = "s3:ObjectCreated:Put",
                 size: int = 1234) -> dict[str, Any]:
    """A record as MinIO's webhook target sends it (key URL-encoded, minio fields)."""
    return {
        "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "",
        "eventTime": "2026-11-22T10:00:00.000Z", "eventName": event,
        "userIdentity": {"principalId": "minioadmin"},
        "requestParameters": {"principalId": "minioadmin", "region": "",
                              "sourceIPAddress": "172.17.0.1"},
        "responseElements": {"content-length": "0", "x-amz-id-2": "dd9025bab4ad464b",
                             "x-amz-request-id": "17A5D8B2C1234567",
                             "x-minio-origin-endpoint": "http://172.17.0.2:9000"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "Config",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "minioadmin"},
                          "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": key, "size": size, "eTag": "0123456789abcdef",
                          "contentType": "image/jpeg", "userMetadata": {},
                          "sequencer": "17A5D8B2C2D6E0F1"}},
        "source": {"host": "172.17.0.1", "port": "", "userAgent": "MinIO (linux; amd64)"},
    }


def post(url: str, payload: Any) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def cli(server: Any, *args: str) -> str:
    result = CliRunner().invoke(subscribe_cli, [*args, "--endpoint-url", server.endpoint,
                                                "--data-dir", str(server.data_dir)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def callbacks():
    cb = Callbacks()
    yield cb
    cb.close()


@pytest.fixture
def subscriber(lam: Any, callbacks: Callbacks) -> str:
    """A function that reports each event it gets to the callback server."""
    name = unique("s3sub")
    create(lam, name, {"app.py": RECORDER_FN},
           Environment={"Variables": {"CALLBACK": callbacks.url}})
    return name


class TestWebhook:
    def test_object_created_invokes_subscriber(self, server, subscriber, callbacks):
        """A MinIO ObjectCreated post invokes the function with one S3-format record."""
        url = cli(server, "s3", "--function", subscriber, "--bucket", "photos",
                  "--prefix", "uploads/", "--suffix", ".jpg").strip()
        assert url.startswith(f"{server.endpoint}/_corral/s3-events/")
        payload = {"EventName": "s3:ObjectCreated:Put", "Key": "photos/uploads/cat pic.jpg",
                   "Records": [minio_record("photos", "uploads%2Fcat+pic.jpg"),
                               minio_record("photos", "uploads%2Fnotes.txt")]}
        status, body = post(url, payload)
        assert status == 200 and body == {"Received": 2, "Invoked": 1}
        got = callbacks.wait_for(lambda r: len(r) >= 1)
        records = got[0]["event"]["Records"]
        assert len(records) == 1
        record = records[0]
        assert record["eventSource"] == "aws:s3" and record["eventName"] == "ObjectCreated:Put"
        assert record["awsRegion"] == "us-east-1" and record["eventVersion"] == "2.0"
        assert record["eventTime"] == "2026-11-22T10:00:00.000Z"
        assert record["userIdentity"] == {"principalId": "minioadmin"}
        assert record["requestParameters"] == {"sourceIPAddress": "172.17.0.1"}
        assert record["responseElements"] == {"x-amz-request-id": "17A5D8B2C1234567",
                                              "x-amz-id-2": "dd9025bab4ad464b"}
        s3 = record["s3"]
        assert s3["s3SchemaVersion"] == "1.0" and s3["configurationId"] == "Config"
        assert s3["bucket"] == {"name": "photos", "ownerIdentity": {"principalId": "minioadmin"},
                                "arn": "arn:aws:s3:::photos"}
        assert s3["object"] == {"key": "uploads%2Fcat+pic.jpg", "size": 1234,
                                "eTag": "0123456789abcdef", "sequencer": "17A5D8B2C2D6E0F1"}

    def test_one_invoke_per_record(self, server, subscriber, callbacks):
        """A bare {"Records": [...]} with two matching records gives two invokes."""
        url = cli(server, "s3", "--function", subscriber).strip()
        records = [minio_record("any-bucket", "a.txt"), minio_record("other", "b.txt")]
        status, body = post(url, {"Records": records})
        assert status == 200 and body["Invoked"] == 2
        got = callbacks.wait_for(lambda r: len(r) >= 2)
        keys = sorted(r["event"]["Records"][0]["s3"]["object"]["key"] for r in got)
        assert keys == ["a.txt", "b.txt"]
        assert all(len(r["event"]["Records"]) == 1 for r in got)

    def test_event_filter(self, server, subscriber, callbacks):
        """Only the subscribed event names invoke (ObjectRemoved:* here)."""
        url = cli(server, "s3", "--function", subscriber, "--events",
                  "s3:ObjectRemoved:*").strip()
        status, body = post(url, {"Records": [
            minio_record("b1", "x", "s3:ObjectCreated:Put"),
            minio_record("b1", "y", "s3:ObjectRemoved:Delete")]})
        assert status == 200 and body["Invoked"] == 1
        got = callbacks.wait_for(lambda r: len(r) >= 1)
        assert got[0]["event"]["Records"][0]["eventName"] == "ObjectRemoved:Delete"

    def test_wrong_token_is_404(self, server, subscriber):
        """A webhook URL with a wrong token answers 404 and invokes nothing."""
        url = cli(server, "s3", "--function", subscriber).strip()
        status, _ = post(url[:-4] + "AAAA", {"Records": [minio_record("b", "k")]})
        assert status == 404

    def test_bad_payload_is_400(self, server, subscriber):
        """A body without a Records list answers 400."""
        url = cli(server, "s3", "--function", subscriber).strip()
        assert post(url, {"hello": 1})[0] == 400


class TestSubscriptions:
    def test_ls_and_rm(self, server, subscriber):
        """`subscribe ls` shows the subscription; after `subscribe rm` the URL is gone."""
        created = json.loads(cli(server, "s3", "--function", subscriber, "--bucket", "docs",
                                 "--json"))
        listed = json.loads(cli(server, "ls", "--json"))
        mine = [s for s in listed if s["SubscriptionId"] == created["SubscriptionId"]]
        assert mine and mine[0]["Bucket"] == "docs"
        assert mine[0]["Events"] == ["s3:ObjectCreated:*"]
        cli(server, "rm", created["SubscriptionId"])
        assert post(created["WebhookUrl"], {"Records": []})[0] == 404

    def test_unknown_function_is_refused(self, server):
        """Subscribing a missing function fails with ResourceNotFoundException."""
        result = CliRunner().invoke(subscribe_cli, [
            "s3", "--function", unique("missing"), "--endpoint-url", server.endpoint,
            "--data-dir", str(server.data_dir)])
        assert result.exit_code != 0
        assert "ResourceNotFoundException" in str(result.exception)
