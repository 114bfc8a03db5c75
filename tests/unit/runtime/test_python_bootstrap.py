"""python_bootstrap.py run as a real `python -S -I` process, driven over framing or HTTP.

Each test writes a handler module into a temporary task root, starts the bootstrap the way the
host does and checks what a Lambda function (and the host) would observe: results, errors,
the context object, log lines and the init protocol.
"""

from __future__ import annotations

import json
import re
import time

ADD = """
def handler(event, context):
    return {"sum": event["a"] + event["b"]}
"""

LOG_LINE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def test_add_two_numbers(framed):
    """A handler's dict result comes back as an application/json response after `ready`."""
    rt = framed("python", {"app.py": ADD})
    rt.ready()
    header, body = rt.invoke({"a": 2, "b": 3})
    assert header["type"] == "response"
    assert header["content_type"] == "application/json"
    assert json.loads(body) == {"sum": 5}
    code, _ = rt.close()
    assert code == 0


def test_globals_persist_across_invokes(framed):
    """One process serves many invokes and module globals survive between them."""
    rt = framed("python", {"app.py": "n = 0\ndef handler(e, c):\n    global n\n    n += 1\n"
                                     "    return n\n"})
    rt.ready()
    assert [rt.invoke_json({}) for _ in range(3)] == [1, 2, 3]


def test_context_fields(framed):
    """The context carries request, function and identity data like awslambdaric's."""
    code = """
import os
def handler(event, context):
    cc = context.client_context
    return {
        "aws_request_id": context.aws_request_id,
        "invoked_function_arn": context.invoked_function_arn,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "identity": [context.identity.cognito_identity_id,
                     context.identity.cognito_identity_pool_id],
        "client": None if cc is None else [cc.custom, cc.env, cc.client.installation_id,
                                            cc.client.app_title],
        "remaining": context.get_remaining_time_in_millis(),
        "tenant_id": context.tenant_id,
        "trace": os.environ.get("_X_AMZN_TRACE_ID"),
    }
"""
    rt = framed("python", {"app.py": code})
    rt.ready()
    client_context = {"custom": {"k": "v"}, "env": {"e": "1"},
                      "client": {"installation_id": "inst", "app_title": "title"}}
    out = rt.invoke_json(
        {}, request_id="req-1", deadline_ms=int(time.time() * 1000) + 5000,
        trace_id="Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Sampled=1",
        client_context=json.dumps(client_context),
        cognito_identity=json.dumps({"cognitoIdentityId": "cid",
                                     "cognitoIdentityPoolId": "pool"}),
        tenant_id="tenant-a",
    )
    assert out["aws_request_id"] == "req-1"
    assert out["invoked_function_arn"] == "arn:aws:lambda:us-east-1:123456789012:function:probe"
    assert out["function_name"] == "probe"
    assert out["function_version"] == "$LATEST"
    assert out["memory_limit_in_mb"] == "128"
    assert out["log_group_name"] == "/aws/lambda/probe"
    assert out["log_stream_name"] == "2024/01/01/[$LATEST]0123456789abcdef"
    assert out["identity"] == ["cid", "pool"]
    assert out["client"] == [{"k": "v"}, {"e": "1"}, "inst", "title"]
    assert 0 < out["remaining"] <= 5000
    assert out["tenant_id"] == "tenant-a"
    assert out["trace"] == "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Sampled=1"

    second = rt.invoke_json({}, deadline_ms=int(time.time() * 1000) - 1000)
    assert second["trace"] is None  # cleared when the invoke has no trace id
    assert second["client"] is None
    assert second["identity"] == [None, None]
    assert second["remaining"] == 0  # clamped, never negative


def test_handler_exception_reports_error_and_survives(framed):
    """An exception becomes an error frame with a user-only stack and one \\r-joined log line."""
    code = "def handler(event, context):\n    raise ValueError('boom')\n"
    rt = framed("python", {"app.py": code})
    rt.ready()
    header, body = rt.invoke({}, request_id="req-err")
    assert header == {"type": "error", "id": "req-err", "error_type": "ValueError"}
    error = json.loads(body)
    assert error["errorMessage"] == "boom"
    assert error["errorType"] == "ValueError"
    assert error["requestId"] == "req-err"
    assert len(error["stackTrace"]) == 1
    assert error["stackTrace"][0].startswith('  File "')
    assert 'app.py", line 2, in handler\n    raise ValueError(\'boom\')\n' in error["stackTrace"][0]
    assert "python_bootstrap" not in body.decode()

    header, _ = rt.invoke({})  # the process is still serving
    assert header["type"] == "error"
    _, output = rt.close()
    line = next(x for x in output.split("\n") if x.startswith("[ERROR]"))
    assert line.startswith(
        "[ERROR] ValueError: boom\rTraceback (most recent call last):\r\u00a0\u00a0File \""
    )
    assert line.endswith("\r\u00a0\u00a0\u00a0\u00a0raise ValueError('boom')")


def _init_error(framed, files, handler="app.handler"):
    rt = framed("python", files, handler=handler)
    header, body = rt.read()
    code, output = rt.wait()
    assert code == 1
    return header, json.loads(body), output


def test_import_error(framed):
    """A module that cannot be imported is reported as Runtime.ImportModuleError at init."""
    header, error, output = _init_error(framed, {"app.py": "import nope_not_here\n"})
    assert header == {"type": "init_error", "error_type": "Runtime.ImportModuleError"}
    assert error == {
        "errorMessage": "Unable to import module 'app': No module named 'nope_not_here'",
        "errorType": "Runtime.ImportModuleError",
        "requestId": "",
        "stackTrace": [],
    }
    assert ("[ERROR] Runtime.ImportModuleError: Unable to import module 'app': "
            "No module named 'nope_not_here'\rTraceback (most recent call last):\n") in output
    assert "LAMBDA_WARNING" not in output and "[WARNING]" in output


def test_missing_handler(framed):
    """A module without the named function gives Runtime.HandlerNotFound."""
    header, error, _ = _init_error(framed, {"app.py": ADD}, handler="app.nothere")
    assert header["error_type"] == "Runtime.HandlerNotFound"
    assert error["errorMessage"] == "Handler 'nothere' missing on module 'app'"


def test_malformed_handler_name(framed):
    """A handler string without a dot gives Runtime.MalformedHandlerName."""
    header, error, _ = _init_error(framed, {"app.py": ADD}, handler="app")
    assert header["error_type"] == "Runtime.MalformedHandlerName"
    assert error["errorMessage"] == (
        "Bad handler 'app': not enough values to unpack (expected 2, got 1)"
    )


def test_syntax_error(framed):
    """A module that does not compile gives Runtime.UserCodeSyntaxError with a one-entry trace."""
    header, error, _ = _init_error(framed, {"app.py": "def handler(:\n"})
    assert header["error_type"] == "Runtime.UserCodeSyntaxError"
    assert error["errorMessage"].startswith("Syntax error in module 'app': ")
    assert len(error["stackTrace"]) == 1 and "app.py\" Line 1" in error["stackTrace"][0]


def test_exception_at_import_uses_its_type(framed):
    """Any other exception raised while importing is reported under its own class name."""
    header, error, _ = _init_error(framed, {"app.py": "raise RuntimeError('no config')\n"})
    assert header["error_type"] == "RuntimeError"
    assert error["errorMessage"] == "no config"
    assert any("app.py" in frame for frame in error["stackTrace"])


def test_nested_module_path(framed):
    """`dir/mod.fn` imports `dir.mod` from the task root."""
    rt = framed("python", {"pkg/sub/app.py": ADD}, handler="pkg/sub/app.handler")
    rt.ready()
    assert rt.invoke_json({"a": 1, "b": 1}) == {"sum": 2}


def test_bytes_result_is_sent_raw(framed):
    """A bytes result is sent as is with content type application/unknown."""
    rt = framed("python", {"app.py": "def handler(e, c):\n    return b'\\x00raw'\n"})
    rt.ready()
    header, body = rt.invoke({})
    assert header["content_type"] == "application/unknown"
    assert body == b"\x00raw"


def test_none_and_decimal_results(framed):
    """None marshals to null and Decimal keeps its exact digits, like simplejson."""
    code = (
        "from decimal import Decimal\n"
        "def handler(e, c):\n"
        "    return None if e.get('none') else {'d': Decimal('1.10'), 'i': Decimal('7'),"
        " 'n': Decimal('NaN'), 's': '\\x00corral'}\n"
    )
    rt = framed("python", {"app.py": code})
    rt.ready()
    _, body = rt.invoke({"none": True})
    assert body == b"null"
    _, body = rt.invoke({})
    assert body == b'{"d": 1.10, "i": 7, "n": NaN, "s": "\\u0000corral"}'


def test_non_ascii_results_follow_execution_env(framed):
    """Responses escape non-ASCII text, except on python3.12+ execution environments."""
    code = "def handler(e, c):\n    return 'caf\u00e9'\n"
    rt = framed("python", {"app.py": code})
    rt.ready()
    assert rt.invoke({})[1] == b'"caf\\u00e9"'
    rt.close()
    rt = framed("python", {"app.py": code}, env={"AWS_EXECUTION_ENV": "AWS_Lambda_python3.12"})
    rt.ready()
    assert rt.invoke({})[1] == '"caf\u00e9"'.encode()


def test_stdout_is_unbuffered(framed):
    """A write without a newline reaches the host while the process keeps running."""
    code = "import sys\ndef handler(e, c):\n    sys.stdout.write('partial')\n"
    rt = framed("python", {"app.py": code})
    rt.ready()
    rt.invoke({})
    assert rt.output.wait_for("partial", timeout=2.0).endswith("partial")
    assert rt.proc.poll() is None


def test_unserializable_result_is_marshal_error(framed):
    """A result json cannot encode is reported as Runtime.MarshalError."""
    rt = framed("python", {"app.py": "def handler(e, c):\n    return {1, 2}\n"})
    rt.ready()
    header, body = rt.invoke({})
    assert header["error_type"] == "Runtime.MarshalError"
    assert json.loads(body)["errorMessage"] == (
        "Unable to marshal response: Object of type set is not JSON serializable"
    )


def test_bad_event_json_is_unmarshal_error(framed):
    """An event that is not JSON is reported as Runtime.UnmarshalError."""
    rt = framed("python", {"app.py": ADD})
    rt.ready()
    header, body = rt.invoke(raw=b"{not json")
    assert header["error_type"] == "Runtime.UnmarshalError"
    assert json.loads(body)["errorMessage"].startswith("Unable to unmarshal input: Expecting")


def test_non_json_content_type_passes_bytes(framed):
    """With a non-JSON content type the handler receives the raw bytes."""
    rt = framed("python", {"app.py": "def handler(e, c):\n    return repr(e)\n"})
    rt.ready()
    assert rt.invoke_json(raw=b"hi", content_type="text/plain") == "b'hi'"


def test_bad_client_context_is_context_error(framed):
    """An unparsable client context is reported as Runtime.LambdaContextUnmarshalError."""
    rt = framed("python", {"app.py": ADD})
    rt.ready()
    header, _ = rt.invoke({"a": 1, "b": 2}, client_context="{oops")
    assert header["error_type"] == "Runtime.LambdaContextUnmarshalError"


def test_text_logging_format(framed):
    """Root records are `[LEVEL]\\ttimestamp\\trequest id\\tmessage`; default level WARNING."""
    code = """
import logging
log = logging.getLogger("app")
def handler(event, context):
    logging.info("hidden")
    logging.warning("shown %s", 1)
    log.setLevel(logging.INFO)
    log.info("two\\nlines")
    context.log("via context\\n")
    print("printed")
    return None
"""
    rt = framed("python", {"app.py": code})
    rt.ready()
    rt.invoke({}, request_id="req-log")
    output = rt.output.wait_for("printed\n")  # stdout is unbuffered: visible before exit
    lines = output.split("\n")
    assert "hidden" not in output
    assert re.fullmatch(rf"\[WARNING\]\t{LOG_LINE}\treq-log\tshown 1", lines[0]), lines
    assert re.fullmatch(rf"\[INFO\]\t{LOG_LINE}\treq-log\ttwo\rlines", lines[1]), lines
    assert lines[2:4] == ["via context", "printed"]


def test_log_level_from_environment(framed):
    """AWS_LAMBDA_LOG_LEVEL sets the root logger level."""
    code = "import logging\ndef handler(e, c):\n    logging.debug('dbg')\n"
    rt = framed("python", {"app.py": code}, env={"AWS_LAMBDA_LOG_LEVEL": "debug"})
    rt.ready()
    rt.invoke({}, request_id="r1")
    assert re.search(rf"^\[DEBUG\]\t{LOG_LINE}\tr1\tdbg$", rt.output.wait_for("dbg"), re.M)


def test_json_logging_format(framed):
    """With AWS_LAMBDA_LOG_FORMAT=JSON each record and each error is one JSON object."""
    code = """
import logging
logger = logging.getLogger()
logger.setLevel(logging.INFO)
def handler(event, context):
    logger.info("hello", extra={"k": "v"})
    try:
        1 / 0
    except ZeroDivisionError:
        logger.exception("failed")
    raise KeyError("missing")
"""
    rt = framed("python", {"app.py": code}, env={"AWS_LAMBDA_LOG_FORMAT": "JSON"})
    rt.ready()
    header, _ = rt.invoke({}, request_id="req-json")
    assert header["error_type"] == "KeyError"
    _, output = rt.close()
    records = [json.loads(line) for line in output.splitlines() if line]
    info, exc, error = records
    assert info["level"] == "INFO" and info["message"] == "hello"
    assert info["logger"] == "root" and info["requestId"] == "req-json" and info["k"] == "v"
    assert re.fullmatch(LOG_LINE, info["timestamp"])
    assert exc["level"] == "ERROR" and exc["errorType"] == "ZeroDivisionError"
    assert exc["errorMessage"] == "division by zero" and exc["stackTrace"]
    assert error["level"] == "ERROR" and error["errorType"] == "KeyError"
    assert error["requestId"] == "req-json" and error["stackTrace"]


def test_sys_path_and_environment(framed):
    """Task root comes first on sys.path, layers follow, and the control fd is hidden."""
    code = """
import os, sys
def handler(event, context):
    return {"path": sys.path[:4], "fd": os.environ.get("CORRAL_CONTROL_FD"),
            "cwd": os.getcwd(), "ver": "python%d.%d" % sys.version_info[:2]}
"""
    rt = framed("python", {"app.py": code})
    rt.ready()
    out = rt.invoke_json({})
    task_root = out["cwd"]
    ver = out["ver"]
    assert out["path"][:3] == [task_root, f"/opt/python/lib/{ver}/site-packages", "/opt/python"]
    assert out["path"][3].endswith("corral/runtime")
    assert out["fd"] is None


def test_http_runtime_api(http_runtime, runtime_api):
    """Over the HTTP Runtime API results, headers and errors round-trip on one connection."""
    code = """
def handler(event, context):
    if event.get("fail"):
        raise TypeError("bad input")
    custom = getattr(context.client_context, "custom", None)
    return {"sum": event["a"] + event["b"], "custom": custom, "arn": context.invoked_function_arn}
"""
    rt = http_runtime("python", {"app.py": code}, runtime_api)
    kind, headers, body = runtime_api.invoke(
        {"a": 1, "b": 2}, headers={"Lambda-Runtime-Client-Context": '{"custom": {"x": 1}}'}
    )
    assert kind == "response"
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"sum": 3, "custom": {"x": 1},
                                "arn": "arn:aws:lambda:us-east-1:123456789012:function:probe"}
    kind, headers, body = runtime_api.invoke({"fail": True})
    assert kind == "error"
    assert headers["lambda-runtime-function-error-type"] == "TypeError"
    assert json.loads(headers["lambda-runtime-function-xray-error-cause"])["exceptions"]
    assert json.loads(body)["errorMessage"] == "bad input"
    assert runtime_api.invoke({"a": 0, "b": 0})[0] == "response"
    assert len(runtime_api.client_ports) == 1  # one persistent connection
    rt.kill()


def test_http_init_error(http_runtime, runtime_api):
    """Over HTTP an init failure is posted to /runtime/init/error and the process exits 1."""
    rt = http_runtime("python", {"app.py": ADD}, runtime_api, handler="app.missing")
    path, headers, body = runtime_api.post()
    assert path == "/2018-06-01/runtime/init/error"
    assert headers["lambda-runtime-function-error-type"] == "Runtime.HandlerNotFound"
    assert json.loads(body)["errorType"] == "Runtime.HandlerNotFound"
    code, _ = rt.wait()
    assert code == 1
    assert runtime_api.next_calls == 0


def test_init_is_fast(framed):
    """The bootstrap reaches `ready` quickly for a trivial handler (cold-start budget)."""
    rt = framed("python", {"app.py": ADD})
    rt.ready()
    elapsed = time.perf_counter() - rt.started
    assert elapsed < 2.0, elapsed


def test_ready_reports_how_long_the_init_took(framed):
    """The ready frame carries the handler's init time (what decides whether a version gets
    a per-version template): at least the time its module-level code slept."""
    rt = framed("python", {"app.py": "import time\ntime.sleep(0.3)\n" + ADD})
    header = rt.ready()
    assert header["init_ms"] >= 300
