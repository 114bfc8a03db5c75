"""The CloudWatch Logs API on the server's endpoint, driven by boto3 and by Debian's AWS CLI v2
(`aws logs tail --follow`), with lines printed by real functions."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import time

import pytest
from botocore.exceptions import ClientError

from functions import create, unique

AWS_V2 = "/usr/bin/aws"

PRINTER = """
import json, logging
logger = logging.getLogger()
logger.setLevel(logging.INFO)
def handler(event, context):
    print(event["line"])
    logger.info("structured %s", event["line"])
    return "ok"
"""


def wait_for_events(logs, group, pattern, count=1, timeout=15.0):
    deadline = time.monotonic() + timeout
    events: list[dict] = []
    while time.monotonic() < deadline:
        try:
            events = logs.filter_log_events(logGroupName=group, filterPattern=pattern)["events"]
        except ClientError as exc:  # the group appears with the first batch of lines
            if exc.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
        if len(events) >= count:
            return events
        time.sleep(0.2)
    raise AssertionError(f"only {len(events)} events matched {pattern!r}")


class TestLogsApi:
    def test_function_output_lands_in_its_log_group(self, server):
        """Printed lines and logging records are stored in /aws/lambda/<name>, framed."""
        lam, logs = server.client("lambda"), server.client("logs")
        name = unique("logged")
        create(lam, name, {"app.py": PRINTER})
        resp = lam.invoke(FunctionName=name, Payload=json.dumps({"line": "hello-logs"}).encode())
        request_id = resp["ResponseMetadata"]["RequestId"]
        group = f"/aws/lambda/{name}"
        events = wait_for_events(logs, group, '"hello-logs"', count=2)
        messages = [e["message"] for e in events]
        assert "hello-logs" in [m.strip() for m in messages]
        record = next(m for m in messages if m.startswith("[INFO]"))
        assert record.split("\t")[2] == request_id
        framing = wait_for_events(logs, group, f'"{request_id}"', count=3)
        kinds = {e["message"].split(" ")[0] for e in framing}
        assert {"START", "END", "REPORT"} <= kinds
        streams = logs.describe_log_streams(logGroupName=group)["logStreams"]
        assert len(streams) == 1 and "[$LATEST]" in streams[0]["logStreamName"]
        groups = logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]
        assert [g["logGroupName"] for g in groups] == [group]

    def test_retention_policy_and_errors(self, server):
        """Retention can be set and removed; unknown groups give ResourceNotFoundException."""
        logs = server.client("logs")
        group = f"/custom/{unique('grp')}"
        logs.create_log_group(logGroupName=group)
        logs.put_retention_policy(logGroupName=group, retentionInDays=7)
        described = logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"][0]
        assert described["retentionInDays"] == 7
        logs.delete_retention_policy(logGroupName=group)
        with pytest.raises(ClientError) as exc:
            logs.create_log_group(logGroupName=group)
        assert exc.value.response["Error"]["Code"] == "ResourceAlreadyExistsException"
        with pytest.raises(ClientError) as exc:
            logs.get_log_events(logGroupName="/nope/nothing", logStreamName="x")
        assert exc.value.response["Error"]["Code"] == "ResourceNotFoundException"


@pytest.mark.skipif(not os.path.exists(AWS_V2) or shutil.which("aws") is None,
                    reason="Debian's AWS CLI v2 is installed by scripts/setup as root")
class TestAwsCliV2:
    def test_logs_tail_follow_shows_a_new_line(self, server):
        """`aws logs tail --follow` prints a line a function printed, within seconds."""
        lam = server.client("lambda")
        name = unique("tailed")
        create(lam, name, {"app.py": PRINTER})
        lam.invoke(FunctionName=name, Payload=json.dumps({"line": "before-follow"}).encode())
        wait_for_events(server.client("logs"), f"/aws/lambda/{name}", '"before-follow"')
        env = {**os.environ, **server.credentials, "AWS_PAGER": ""}
        proc = subprocess.Popen(
            # CLI 2.9 predates AWS_ENDPOINT_URL, so the endpoint is passed explicitly.
            [AWS_V2, "logs", "tail", f"/aws/lambda/{name}", "--follow", "--since", "5m",
             "--format", "short", "--endpoint-url", server.endpoint],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        try:
            assert proc.stdout is not None
            seen = ""
            marker = unique("followed")
            invoked = False
            selector = selectors.DefaultSelector()
            selector.register(proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and seen.count(marker) < 2:
                if not invoked and "before-follow" in seen:
                    lam.invoke(FunctionName=name,
                               Payload=json.dumps({"line": marker}).encode())
                    invoked = True
                if selector.select(timeout=0.5):
                    chunk = os.read(proc.stdout.fileno(), 65536).decode(errors="replace")
                    if not chunk:
                        break
                    seen += chunk
            assert "before-follow" in seen, seen
            assert marker in seen, seen
            assert seen.count(marker) == 2  # the print and the logging record, once each
        finally:
            proc.terminate()
            proc.wait(10)


class TestJsonLogFormat:
    def test_logging_config_json(self, server):
        """With LoggingConfig.LogFormat=JSON, logging records are JSON objects in the log."""
        import base64

        lam = server.client("lambda")
        name = unique("jsonlog")
        create(lam, name, {"app.py": PRINTER}, LoggingConfig={"LogFormat": "JSON"})
        assert lam.get_function_configuration(FunctionName=name)["LoggingConfig"][
            "LogFormat"] == "JSON"
        resp = lam.invoke(FunctionName=name, LogType="Tail",
                          Payload=json.dumps({"line": "as-json"}).encode())
        request_id = resp["ResponseMetadata"]["RequestId"]
        records = []
        for line in base64.b64decode(resp["LogResult"]).decode().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        record = next(r for r in records if isinstance(r, dict) and r.get("level") == "INFO")
        assert record["message"] == "structured as-json"
        assert record["requestId"] == request_id
