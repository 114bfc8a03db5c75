"""Invoking real functions in real sandboxes through boto3 and the AWS CLI."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError

from functions import NODE_ASYNC, NODE_CALLBACK, PY_ADD, create, unique
from runtimes_support import awslambdaric_files

ADD_EVENT = json.dumps({"value1": 10, "value2": 20}).encode()


def invoke(lam, name, payload=ADD_EVENT, **kwargs):
    resp = lam.invoke(FunctionName=name, Payload=payload, **kwargs)
    resp["Body"] = resp["Payload"].read()
    return resp


class TestAddsNumbers:
    def test_python(self, lam):
        """A Python handler returns 30 for value1=10, value2=20."""
        name = unique("py")
        create(lam, name, {"app.py": PY_ADD})
        resp = invoke(lam, name)
        assert resp["StatusCode"] == 200 and resp["Body"] == b"30"
        assert "FunctionError" not in resp
        assert resp["ExecutedVersion"] == "$LATEST"

    def test_node_callback(self, lam):
        """A Node.js callback-style handler returns 30."""
        name = unique("nodecb")
        create(lam, name, {"index.js": NODE_CALLBACK}, runtime="nodejs20.x",
               handler="index.handler")
        assert invoke(lam, name)["Body"] == b"30"

    def test_node_async(self, lam):
        """A Node.js async handler returns 30."""
        name = unique("nodeasync")
        create(lam, name, {"index.js": NODE_ASYNC}, runtime="nodejs20.x",
               handler="index.handler")
        assert invoke(lam, name)["Body"] == b"30"

    def test_node_context_done(self, lam):
        """A Node.js handler finishing with context.succeed returns its value."""
        name = unique("nodedone")
        create(lam, name, {"index.js": "exports.handler = (e, ctx) => "
                                      "{ ctx.succeed(e.value1 + e.value2); };\n"},
               runtime="nodejs20.x", handler="index.handler")
        assert invoke(lam, name)["Body"] == b"30"

    def test_provided_with_awslambdaric(self, lam):
        """A `provided` function bootstrapped by the official awslambdaric works unmodified."""
        name = unique("ric")
        files = awslambdaric_files()
        files["bootstrap"] = ('#!/bin/sh\ncd "$LAMBDA_TASK_ROOT"\n'
                              "exec python3 -m awslambdaric app.handler\n")
        files["app.py"] = PY_ADD
        create(lam, name, files, runtime="provided.al2023", handler="app.handler",
               executable=("bootstrap",), Timeout=15)
        resp = invoke(lam, name)
        assert resp["Body"] == b"30", resp["Body"]
        error = invoke(lam, name, payload=b'{"value1": 1}')
        assert error["FunctionError"] == "Unhandled"
        assert json.loads(error["Body"])["errorType"] == "KeyError"

    def test_request_id_is_the_functions_aws_request_id(self, lam):
        """x-amzn-RequestId of the Invoke response is the function's aws_request_id."""
        name = unique("rid")
        create(lam, name, {"app.py": "def handler(e, c):\n    return c.aws_request_id\n"})
        resp = invoke(lam, name)
        assert json.loads(resp["Body"]) == resp["ResponseMetadata"]["RequestId"]


class TestContext:
    def test_python_context_and_environment(self, lam):
        """The context object and environment look as in Lambda's Python runtime."""
        name = unique("ctx")
        code = """
import os
def handler(event, context):
    return {
        "name": context.function_name, "version": context.function_version,
        "memory": context.memory_limit_in_mb, "arn": context.invoked_function_arn,
        "group": context.log_group_name, "stream": context.log_stream_name,
        "remaining": context.get_remaining_time_in_millis(),
        "custom": context.client_context.custom if context.client_context else None,
        "env": {k: os.environ.get(k) for k in ("AWS_LAMBDA_FUNCTION_NAME", "AWS_REGION",
                "LAMBDA_TASK_ROOT", "_HANDLER", "AWS_EXECUTION_ENV", "MY_VAR",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE")},
    }
"""
        create(lam, name, {"app.py": code}, MemorySize=256, Timeout=7,
               Environment={"Variables": {"MY_VAR": "hello"}})
        ctx = base64.b64encode(json.dumps({"custom": {"k": "v"}}).encode()).decode()
        out = json.loads(invoke(lam, name, ClientContext=ctx)["Body"])
        assert out["name"] == name and out["version"] == "$LATEST"
        assert out["memory"] == "256"
        assert out["arn"] == f"arn:aws:lambda:us-east-1:000000000000:function:{name}"
        assert out["group"] == f"/aws/lambda/{name}"
        assert "/[$LATEST]" in out["stream"]
        assert 5000 < out["remaining"] <= 7000
        assert out["custom"] == {"k": "v"}
        assert out["env"]["MY_VAR"] == "hello"
        assert out["env"]["_HANDLER"] == "app.handler"
        assert out["env"]["AWS_EXECUTION_ENV"] == "AWS_Lambda_python3.11"
        assert out["env"]["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"


class TestErrors:
    def test_function_error(self, lam):
        """A raised exception is HTTP 200, X-Amz-Function-Error and Lambda's error JSON."""
        name = unique("err")
        create(lam, name, {"app.py": "def handler(e, c):\n    raise ValueError('boom')\n"})
        resp = invoke(lam, name)
        assert resp["StatusCode"] == 200 and resp["FunctionError"] == "Unhandled"
        body = json.loads(resp["Body"])
        assert body["errorType"] == "ValueError" and body["errorMessage"] == "boom"
        assert isinstance(body["stackTrace"], list) and body["stackTrace"]

    def test_timeout(self, lam):
        """A handler running past its timeout is killed with Sandbox.Timedout."""
        name = unique("tmo")
        create(lam, name, {"app.py": "import time\ndef handler(e, c):\n"
                                     "    time.sleep(30)\n"}, Timeout=1)
        started = time.monotonic()
        resp = invoke(lam, name)
        assert time.monotonic() - started < 10
        body = json.loads(resp["Body"])
        assert resp["FunctionError"] == "Unhandled"
        assert body["errorType"] == "Sandbox.Timedout"
        assert body["errorMessage"] == (
            f"RequestId: {resp['ResponseMetadata']['RequestId']} Error: "
            "Task timed out after 1.00 seconds")

    def test_crash(self, lam):
        """A runtime that exits mid-invoke is a Runtime.ExitError, and the next invoke works."""
        name = unique("crash")
        create(lam, name, {"app.py": "import os\ndef handler(e, c):\n"
                                     "    if e.get('die'):\n        os._exit(3)\n"
                                     "    return 'ok'\n"})
        resp = invoke(lam, name, payload=b'{"die": true}')
        body = json.loads(resp["Body"])
        assert body["errorType"] == "Runtime.ExitError"
        assert body["errorMessage"].endswith("Error: Runtime exited with error: exit status 3")
        assert invoke(lam, name, payload=b"{}")["Body"] == b'"ok"'

    def test_import_error(self, lam):
        """A module failing to import reports Runtime.ImportModuleError."""
        name = unique("imp")
        create(lam, name, {"app.py": "import does_not_exist_xyz\n"})
        body = json.loads(invoke(lam, name)["Body"])
        assert body["errorType"] == "Runtime.ImportModuleError"
        assert "Unable to import module 'app'" in body["errorMessage"]

    def test_missing_handler(self, lam):
        """A missing handler function reports Runtime.HandlerNotFound."""
        name = unique("hnf")
        create(lam, name, {"app.py": "x = 1\n"})
        body = json.loads(invoke(lam, name)["Body"])
        assert body["errorType"] == "Runtime.HandlerNotFound"

    def test_oversized_payload(self, lam):
        """A synchronous payload over 6 MB is 413 RequestEntityTooLargeException."""
        name = unique("big")
        create(lam, name, {"app.py": PY_ADD})
        payload = json.dumps({"x": "a" * (6 * 1024 * 1024)}).encode()
        with pytest.raises(ClientError) as exc:
            lam.invoke(FunctionName=name, Payload=payload)
        assert exc.value.response["Error"]["Code"] == "RequestEntityTooLargeException"
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413

    def test_invalid_json_payload(self, lam):
        """A payload that is not JSON is InvalidRequestContentException."""
        name = unique("badjson")
        create(lam, name, {"app.py": PY_ADD})
        with pytest.raises(ClientError) as exc:
            lam.invoke(FunctionName=name, Payload=b"{not json")
        assert exc.value.response["Error"]["Code"] == "InvalidRequestContentException"

    def test_unknown_function(self, lam):
        """Invoking an unknown function is ResourceNotFoundException."""
        with pytest.raises(ClientError) as exc:
            lam.invoke(FunctionName="does-not-exist-anywhere")
        assert exc.value.response["Error"]["Code"] == "ResourceNotFoundException"


class TestLogsAndTypes:
    def test_log_tail(self, lam):
        """LogType=Tail returns the invocation's log framed by START/END/REPORT."""
        name = unique("tail")
        create(lam, name, {"app.py": "def handler(e, c):\n    print('hello from fn')\n"
                                     "    return 1\n"})
        resp = invoke(lam, name, LogType="Tail")
        tail = base64.b64decode(resp["LogResult"]).decode()
        rid = resp["ResponseMetadata"]["RequestId"]
        assert f"START RequestId: {rid} Version: $LATEST" in tail
        assert "hello from fn" in tail
        assert f"END RequestId: {rid}" in tail
        assert f"REPORT RequestId: {rid}\tDuration: " in tail
        assert "Billed Duration: " in tail and "Max Memory Used: " in tail

    def test_dry_run(self, lam):
        """DryRun answers 204 without running the function."""
        name = unique("dry")
        create(lam, name, {"app.py": PY_ADD})
        assert lam.invoke(FunctionName=name, InvocationType="DryRun")["StatusCode"] == 204


class TestExecutionModel:
    def test_warm_reuse(self, lam):
        """Globals and /tmp persist across invokes of a warm instance; init runs once."""
        name = unique("warm")
        code = """
import os
INIT = 0
INIT += 1
COUNT = 0
def handler(event, context):
    global COUNT
    COUNT += 1
    path = "/tmp/marker-" + context.function_name  # unique even on a shared /tmp
    existed = os.path.exists(path)
    open(path, "a").write("x")
    return {"init": INIT, "count": COUNT, "tmp_existed": existed,
            "tmp": open(path).read()}
"""
        create(lam, name, {"app.py": code})
        outs = [json.loads(invoke(lam, name, payload=b"{}")["Body"]) for _ in range(3)]
        assert [o["count"] for o in outs] == [1, 2, 3]
        assert all(o["init"] == 1 for o in outs)
        assert outs[2]["tmp_existed"] and outs[2]["tmp"] == "xxx"

    def test_scale_out(self, lam):
        """Ten concurrent one-second invokes run on ten instances, well under ten seconds."""
        name = unique("scale")
        code = """
import time, uuid
ID = uuid.uuid4().hex
def handler(event, context):
    time.sleep(1)
    return ID
"""
        create(lam, name, {"app.py": code})
        started = time.monotonic()
        with ThreadPoolExecutor(10) as pool:
            ids = list(pool.map(lambda _: invoke(lam, name, payload=b"{}")["Body"], range(10)))
        elapsed = time.monotonic() - started
        assert len(set(ids)) == 10
        assert elapsed < 6, elapsed


class TestAwsCli:
    def test_aws_cli_invoke(self, server, tmp_path):
        """`aws lambda invoke` works against the address printed by `corral env`."""
        lam = server.client()
        name = unique("cli")
        create(lam, name, {"app.py": PY_ADD})
        env = {**os.environ, **server.credentials}
        out_file = tmp_path / "out.json"
        aws = [sys.executable, "-m", "awscli"]
        proc = subprocess.run(
            [*aws, "lambda", "invoke", "--function-name", name, "--payload",
             '{"value1": 10, "value2": 20}', str(out_file)],
            env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["StatusCode"] == 200
        assert out_file.read_text() == "30"
