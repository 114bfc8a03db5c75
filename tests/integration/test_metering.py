"""Metering against a real server: /metrics, billing records and reports, `corral bill`/`stats`.

`/metrics` is parsed with prometheus-client's own parser. The CLI commands run as subprocesses
with the environment `corral env` prints: through `corral.cli.main` once it registers them,
before that through their click commands directly.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import click
import pytest
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families

from corral.cli.client import Connection
from corral.cli.commands.bill import signed_get
from functions import create, unique

HANDLER = """
import time

def handler(event, context):
    time.sleep(event.get("sleep", 0))
    if event.get("fail"):
        raise ValueError("boom")
    return {"ok": True}
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: Any) -> Samples:
    """GET /metrics without credentials and parse it with prometheus-client's parser."""
    with urllib.request.urlopen(f"{server.endpoint}/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def fn(name: str) -> tuple[tuple[str, str], ...]:
    return (("function", name),)


def invoke(lam: Any, name: str, event: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    resp = lam.invoke(FunctionName=name, Payload=json.dumps(event or {}).encode(), **kwargs)
    resp["Body"] = resp["Payload"].read()
    return resp


def no_retry_client(server: Any) -> Any:
    """A Lambda client that sends each request exactly once (botocore retries throttles)."""
    return connection(server).client("lambda")  # retries={"total_max_attempts": 1}


def connection(server: Any) -> Connection:
    creds = server.credentials
    return Connection(server.endpoint, creds["AWS_ACCESS_KEY_ID"],
                      creds["AWS_SECRET_ACCESS_KEY"], region="us-east-1")


def _registered(command: str) -> bool:
    from corral.cli.main import main

    return command in main.list_commands(click.Context(main))


def corral(server: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `corral ARGS` against `server` the way a user would after `eval $(corral env)`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(server.credentials)
    if _registered(args[0]):
        argv = [sys.executable, "-m", "corral.cli.main", *args]
    else:
        module = f"corral.cli.commands.{args[0]}"
        argv = [sys.executable, "-c", f"from {module} import {args[0]} as c; c()", *args[1:]]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def test_metrics_count_invocations_errors_and_cold_starts(server: Any, lam: Any) -> None:
    """Five successes and two failures show as 7 invocations, 2 errors, 1 cold start."""
    name = unique("met")
    create(lam, name, {"app.py": HANDLER})
    for _ in range(5):
        assert invoke(lam, name)["StatusCode"] == 200
    for _ in range(2):
        assert invoke(lam, name, {"fail": True})["FunctionError"] == "Unhandled"
    samples = scrape(server)
    assert samples[("corral_invocations_total", fn(name))] == 7
    assert samples[("corral_errors_total", fn(name))] == 2
    assert samples[("corral_cold_starts_total", fn(name))] == 1
    assert samples[("corral_throttles_total", fn(name))] == 0
    assert samples[("corral_duration_seconds_count", fn(name))] == 7
    assert samples[("corral_duration_seconds_bucket", (*fn(name), ("le", "+Inf")))] == 7
    assert samples[("corral_concurrent_executions", fn(name))] == 0


def test_throttle_and_concurrency_gauge(make_server: Any) -> None:
    """With an account limit of 1, a second concurrent invoke is throttled and counted."""
    srv = make_server(extra_env={"CORRAL_ACCOUNT_CONCURRENCY": "1"})
    lam = no_retry_client(srv)
    name = unique("thr")
    create(lam, name, {"app.py": HANDLER})
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(invoke, lam, name, {"sleep": 2})
        deadline = time.monotonic() + 10
        while scrape(srv).get(("corral_concurrent_executions", fn(name)), 0) < 1:
            assert time.monotonic() < deadline, "the running invocation never showed"
            time.sleep(0.05)
        assert scrape(srv)[("corral_account_concurrent_executions", ())] == 1
        with pytest.raises(ClientError) as info:
            invoke(lam, name, {"sleep": 2})
        assert info.value.response["Error"]["Code"] == "TooManyRequestsException"
        assert first.result()["StatusCode"] == 200
    samples = scrape(srv)
    assert samples[("corral_throttles_total", fn(name))] == 1
    assert samples[("corral_invocations_total", fn(name))] == 1
    assert samples[("corral_concurrent_executions", fn(name))] == 0
    assert samples[("corral_account_concurrency_limit", ())] == 1


def test_report_line_billed_duration_equals_the_billing_record(server: Any, lam: Any) -> None:
    """The REPORT line's Billed Duration is the billing record's, for the same request id."""
    name = unique("bill")
    create(lam, name, {"app.py": HANDLER}, MemorySize=256)
    for event in ({"sleep": 0.25}, {}):
        resp = invoke(lam, name, event, LogType="Tail")
        tail = base64.b64decode(resp["LogResult"]).decode()
        match = re.search(r"REPORT RequestId: (\S+)\tDuration: ([\d.]+) ms\t"
                          r"Billed Duration: (\d+) ms\tMemory Size: (\d+) MB", tail)
        assert match, tail
        request_id, billed = match[1], int(match[3])
        assert request_id == resp["ResponseMetadata"]["RequestId"]
        assert billed % 100 == 0 and billed >= float(match[2])
        [record] = signed_get(connection(server), "/_corral/billing/records",
                              {"request_id": request_id})["records"]
        assert record["billed_duration_ms"] == billed
        assert record["memory_mb"] == int(match[4]) == 256
        assert record["function"] == name and record["version"] == "$LATEST"
        assert Decimal(record["gb_seconds"]) == Decimal(256) / 1024 * Decimal(billed) / 1000
        assert Decimal(record["request_cost"]) == Decimal("0.0000002")
        assert Decimal(record["compute_cost"]) == \
            Decimal(record["gb_seconds"]) * Decimal("0.0000166667")


def test_corral_bill_json_shows_the_months_numbers(server: Any, lam: Any) -> None:
    """`corral bill --json --function NAME` after 3 invocations: their requests and GB-s, free."""
    name = unique("cost")
    create(lam, name, {"app.py": HANDLER})
    for _ in range(3):
        invoke(lam, name)
    records = signed_get(connection(server), "/_corral/billing/records",
                         {"function": name})["records"]
    assert len(records) == 3
    out = corral(server, "bill", "--json", "--function", name)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["month"] == time.strftime("%Y-%m", time.gmtime())
    [line] = report["functions"]
    assert line["function"] == name and line["requests"] == 3
    assert Decimal(line["gb_seconds"]) == sum(Decimal(r["gb_seconds"]) for r in records)
    assert Decimal(line["request_cost"]) == Decimal("0.0000006")
    assert Decimal(line["free_tier_deduction"]) == \
        Decimal(line["request_cost"]) + Decimal(line["compute_cost"])
    assert line["total"] == "0"  # well inside the account's free tier
    assert report["prices"]["gb_second_price"] == "0.0000166667"
    assert report["account"]["requests"] >= 3


def test_corral_bill_table_has_an_account_total(server: Any, lam: Any) -> None:
    """`corral bill` prints a row per function and the account total."""
    name = unique("tbl")
    create(lam, name, {"app.py": HANDLER})
    invoke(lam, name)
    out = corral(server, "bill")
    assert out.returncode == 0, out.stderr
    assert name in out.stdout and "Account total" in out.stdout
    assert "FREE TIER" in out.stdout


def test_corral_bill_refuses_a_bad_month(server: Any) -> None:
    """An invalid --month is the server's InvalidParameterValueException, not a bill."""
    out = corral(server, "bill", "--month", "2024-13")
    assert out.returncode != 0
    assert "InvalidParameterValueException" in out.stderr


def test_corral_stats_json(server: Any, lam: Any) -> None:
    """`corral stats --json` has the function's invocations, cold starts and percentiles."""
    name = unique("stat")
    create(lam, name, {"app.py": HANDLER})
    invoke(lam, name)
    invoke(lam, name, {"fail": True})
    out = corral(server, "stats", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    [line] = [f for f in data["functions"] if f["function"] == name]
    assert (line["invocations"], line["errors"], line["throttles"], line["cold_starts"]) == \
        (2, 1, 0, 1)
    assert line["duration_ms"]["p50"] is not None and line["duration_ms"]["p99"] is not None
    assert line["concurrent_executions"] == 0
    table = corral(server, "stats")
    assert table.returncode == 0 and name in table.stdout


def test_billing_and_stats_need_a_signature_and_metrics_does_not(server: Any) -> None:
    """/_corral/billing and /_corral/stats refuse unsigned requests; /metrics is open."""
    for path in ("/_corral/billing", "/_corral/stats", "/_corral/billing/records?function=x"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{server.endpoint}{path}", timeout=10)
        assert info.value.code == 403
    assert scrape(server) is not None


def test_retention_is_enforced_in_the_background(make_server: Any) -> None:
    """Events older than a group's retention are deleted by the feature's periodic sweep."""
    srv = make_server(extra_env={"CORRAL_RETENTION_INTERVAL": "0.5"})
    logs = srv.client("logs")
    group, stream = "/test/retention", "s"
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    now = int(time.time() * 1000)
    for timestamp, message in ((now - 3 * 86_400_000, "old"), (now, "new")):
        logs.put_log_events(logGroupName=group, logStreamName=stream,
                            logEvents=[{"timestamp": timestamp, "message": message}])
    logs.put_retention_policy(logGroupName=group, retentionInDays=1)
    deadline = time.monotonic() + 15
    while True:
        events = logs.get_log_events(logGroupName=group, logStreamName=stream,
                                     startFromHead=True)["events"]
        messages = [e["message"] for e in events]
        if messages == ["new"]:
            break
        assert time.monotonic() < deadline, messages
        time.sleep(0.2)
