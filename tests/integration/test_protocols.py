"""One suite, two protocols: built-in runtimes give identical results over the framed
socketpair protocol and over the HTTP Runtime API (tag `corral:protocol=runtime-api`)."""

from __future__ import annotations

import base64
import json

import pytest

from functions import create, unique

PROTOCOLS = {"framed": {}, "runtime-api": {"corral:protocol": "runtime-api"}}

CODE = """
import os, time
def handler(event, context):
    kind = event.get("kind")
    if kind == "add":
        return event["a"] + event["b"]
    if kind == "error":
        raise KeyError("missing")
    if kind == "bytes":
        return b"raw-bytes"
    if kind == "none":
        return None
    if kind == "context":
        return {"arn": context.invoked_function_arn, "memory": context.memory_limit_in_mb,
                "id": context.aws_request_id,
                "custom": context.client_context.custom if context.client_context else None}
    if kind == "print":
        print("line one")
        print("line two")
        return "printed"
    if kind == "sleep":
        time.sleep(event["seconds"])
    if kind == "exit":
        os._exit(7)
    return "other"
"""


@pytest.fixture(scope="module", params=list(PROTOCOLS))
def fn(request, server):
    lam = server.client()
    name = unique(f"proto-{request.param}")
    create(lam, name, {"app.py": CODE}, Timeout=2, Tags=PROTOCOLS[request.param])
    return lam, name


def run(lam, name, **event):
    resp = lam.invoke(FunctionName=name, Payload=json.dumps(event).encode(), LogType="Tail")
    return resp, resp["Payload"].read()


class TestSameResults:
    def test_result(self, fn):
        """A JSON result comes back unchanged."""
        lam, name = fn
        assert run(lam, name, kind="add", a=2, b=3)[1] == b"5"

    def test_none_and_bytes(self, fn):
        """None is `null`; bytes are passed through raw."""
        lam, name = fn
        assert run(lam, name, kind="none")[1] == b"null"
        assert run(lam, name, kind="bytes")[1] == b"raw-bytes"

    def test_function_error(self, fn):
        """A raised exception gives the same error document."""
        lam, name = fn
        resp, body = run(lam, name, kind="error")
        error = json.loads(body)
        assert resp["FunctionError"] == "Unhandled"
        assert error["errorType"] == "KeyError" and error["errorMessage"] == "'missing'"

    def test_context(self, fn):
        """The context carries the invoked ARN, the memory and the client context."""
        lam, name = fn
        ctx = base64.b64encode(json.dumps({"custom": {"x": 1}}).encode()).decode()
        resp = lam.invoke(FunctionName=name, ClientContext=ctx,
                          Payload=json.dumps({"kind": "context"}).encode())
        out = json.loads(resp["Payload"].read())
        assert out["arn"].endswith(f":function:{name}")
        assert out["memory"] == "128" and out["custom"] == {"x": 1}
        assert out["id"] == resp["ResponseMetadata"]["RequestId"]

    def test_log_lines(self, fn):
        """Printed lines appear between START and END in the tail."""
        lam, name = fn
        resp, _ = run(lam, name, kind="print")
        tail = base64.b64decode(resp["LogResult"]).decode().splitlines()
        start = next(i for i, line in enumerate(tail) if line.startswith("START"))
        end = next(i for i, line in enumerate(tail) if line.startswith("END"))
        assert tail[start + 1:end] == ["line one", "line two"]

    def test_timeout_then_recovery(self, fn):
        """A timeout kills the instance; the next invoke runs on a fresh one."""
        lam, name = fn
        error = json.loads(run(lam, name, kind="sleep", seconds=5)[1])
        assert error["errorType"] == "Sandbox.Timedout"
        assert run(lam, name, kind="add", a=1, b=1)[1] == b"2"

    def test_crash_then_recovery(self, fn):
        """An exiting runtime is a Runtime.ExitError with its status; the next invoke works."""
        lam, name = fn
        error = json.loads(run(lam, name, kind="exit")[1])
        assert error["errorType"] == "Runtime.ExitError"
        assert error["errorMessage"].endswith("exit status 7")
        assert run(lam, name, kind="add", a=1, b=2)[1] == b"3"
