"""node_bootstrap.js run as a real `node` process, driven over framing or HTTP.

Each test writes a handler module (CommonJS or ES module) into a temporary task root, starts the
bootstrap the way the host does and checks what the function and the host observe: results for
async, callback and context.done/succeed/fail handlers, callbackWaitsForEmptyEventLoop, error
bodies, init errors, console log lines and crash handling. Skipped when `node` is not installed.
"""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")

ADD = "exports.handler = async (event) => ({ sum: event.a + event.b });\n"
TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
QUIET = {"AWS_LAMBDA_NODEJS_DISABLE_CALLBACK_WARNING": "1"}


def test_async_add_two_numbers(framed):
    """An async handler's result is sent as an application/json response after `ready`."""
    rt = framed("node", {"app.js": ADD})
    rt.ready()
    header, body = rt.invoke({"a": 2, "b": 3})
    assert header["type"] == "response" and header["content_type"] == "application/json"
    assert json.loads(body) == {"sum": 5}
    code, _ = rt.close()
    assert code == 0


def test_globals_persist_across_invokes(framed):
    """One process serves many invokes and module state survives between them."""
    rt = framed("node", {"app.js": "let n = 0;\nexports.handler = async () => ++n;\n"})
    rt.ready()
    assert [rt.invoke_json({}) for _ in range(3)] == [1, 2, 3]


def test_context_fields(framed):
    """The context carries request, function and identity data like aws-lambda-ric's."""
    code = """
exports.handler = async (event, context) => ({
  functionName: context.functionName,
  functionVersion: context.functionVersion,
  memoryLimitInMB: context.memoryLimitInMB,
  logGroupName: context.logGroupName,
  logStreamName: context.logStreamName,
  invokedFunctionArn: context.invokedFunctionArn,
  awsRequestId: context.awsRequestId,
  clientContext: context.clientContext,
  identity: context.identity,
  tenantId: context.tenantId,
  remaining: context.getRemainingTimeInMillis(),
  waits: context.callbackWaitsForEmptyEventLoop,
  trace: process.env._X_AMZN_TRACE_ID ?? null,
});
"""
    rt = framed("node", {"app.js": code})
    rt.ready()
    out = rt.invoke_json(
        {}, request_id="req-1", deadline_ms=int(time.time() * 1000) + 5000,
        trace_id="Root=1-abc;Sampled=1", client_context=json.dumps({"custom": {"k": "v"}}),
        cognito_identity=json.dumps({"cognitoIdentityId": "cid"}), tenant_id="t1",
    )
    assert out["functionName"] == "probe" and out["functionVersion"] == "$LATEST"
    assert out["memoryLimitInMB"] == "128"
    assert out["logGroupName"] == "/aws/lambda/probe"
    assert out["logStreamName"] == "2024/01/01/[$LATEST]0123456789abcdef"
    assert out["invokedFunctionArn"] == "arn:aws:lambda:us-east-1:123456789012:function:probe"
    assert out["awsRequestId"] == "req-1"
    assert out["clientContext"] == {"custom": {"k": "v"}}
    assert out["identity"] == {"cognitoIdentityId": "cid"}
    assert out["tenantId"] == "t1"
    assert 0 < out["remaining"] <= 5000
    assert out["waits"] is True
    assert out["trace"] == "Root=1-abc;Sampled=1"
    second = rt.invoke_json({}, deadline_ms=int(time.time() * 1000) - 1000)
    assert second["trace"] is None
    assert second["remaining"] < 0  # Node's context does not clamp


def test_callback_waits_for_empty_event_loop(framed):
    """With the default flag a callback result is sent only after pending timers ran."""
    code = """
exports.handler = (event, context, callback) => {
  setTimeout(() => console.log('timer fired'), 300);
  callback(null, 'cb-result');
};
"""
    rt = framed("node", {"app.js": code}, env=QUIET)
    rt.ready()
    start = time.perf_counter()
    assert rt.invoke_json({}) == "cb-result"
    assert time.perf_counter() - start >= 0.28
    rt.output.wait_for("timer fired")  # logged before the response was sent


def test_callback_without_waiting(framed):
    """callbackWaitsForEmptyEventLoop = false sends the callback result immediately."""
    code = """
exports.handler = (event, context, callback) => {
  context.callbackWaitsForEmptyEventLoop = false;
  setTimeout(() => console.log('timer fired'), 2000);
  callback(null, { ok: true });
};
"""
    rt = framed("node", {"app.js": code}, env=QUIET)
    rt.ready()
    start = time.perf_counter()
    assert rt.invoke_json({}) == {"ok": True}
    assert time.perf_counter() - start < 1.5
    assert "timer fired" not in rt.output.text()


def test_callback_error(framed):
    """callback(err) posts the error body with the Error's name, message and stack."""
    code = "exports.handler = (e, c, cb) => cb(new RangeError('too big'));\n"
    rt = framed("node", {"app.js": code}, env=QUIET)
    rt.ready()
    header, body = rt.invoke({})
    assert header["type"] == "error" and header["error_type"] == "RangeError"
    error = json.loads(body)
    assert error["errorType"] == "RangeError" and error["errorMessage"] == "too big"
    assert error["trace"][0] == "RangeError: too big"


def test_context_done_succeed_fail(framed):
    """context.done/succeed/fail complete the invoke at once; only the first completion counts."""
    code = """
exports.handler = (event, context) => {
  switch (event.mode) {
    case 'succeed': context.succeed({ via: 'succeed' }); context.fail(new Error('ignored')); break;
    case 'done': context.done(null, { via: 'done' }); break;
    case 'done-error': context.done(new Error('done failed')); break;
    case 'fail': context.fail(); break;
    case 'fail-string': context.fail('plain string'); break;
  }
  setTimeout(() => {}, 3000);  // a pending timer must not delay done/succeed/fail
};
"""
    rt = framed("node", {"app.js": code}, env=QUIET)
    rt.ready()
    start = time.perf_counter()
    assert rt.invoke_json({"mode": "succeed"}) == {"via": "succeed"}
    assert rt.invoke_json({"mode": "done"}) == {"via": "done"}
    header, body = rt.invoke({"mode": "done-error"})
    assert header["type"] == "error" and json.loads(body)["errorMessage"] == "done failed"
    header, body = rt.invoke({"mode": "fail"})
    assert json.loads(body) == {"errorType": "string", "errorMessage": "handled", "trace": []}
    header, body = rt.invoke({"mode": "fail-string"})
    assert header["error_type"] == "string"
    assert json.loads(body)["errorMessage"] == "plain string"
    assert time.perf_counter() - start < 2.5


def test_thrown_errors(framed):
    """A throwing handler posts {errorType, errorMessage, trace}; non-Error values use typeof."""
    code = """
exports.handler = async (event) => {
  if (event.kind === 'error') throw new TypeError('boom');
  throw 42;
};
"""
    rt = framed("node", {"app.js": code})
    rt.ready()
    header, body = rt.invoke({"kind": "error"}, request_id="req-e")
    assert header == {"type": "error", "id": "req-e", "error_type": "TypeError"}
    error = json.loads(body)
    assert error["errorMessage"] == "boom" and error["trace"][0] == "TypeError: boom"
    assert "app.js" in error["trace"][1]
    header, body = rt.invoke({"kind": "number"})
    assert json.loads(body) == {"errorType": "number", "errorMessage": "42", "trace": []}
    _, output = rt.close()
    assert re.search(rf"^{TS}\treq-e\tERROR\tInvoke Error \t{{\"errorType\":\"TypeError\"",
                     output, re.M)


def test_sync_handler_without_result(framed):
    """A sync handler that never calls back completes with null once the loop drains."""
    rt = framed("node", {"app.js": "exports.handler = (event, context) => {};\n"})
    rt.ready()
    header, body = rt.invoke({})
    assert header["type"] == "response" and body == b"null"


def test_async_handler_that_never_settles(framed):
    """An async handler whose promise never settles is reported as Runtime.NodeJsExit."""
    code = "exports.handler = async () => new Promise(() => {});\n"
    rt = framed("node", {"app.js": code})
    rt.ready()
    header, body = rt.invoke({})
    assert header["error_type"] == "Runtime.NodeJsExit"
    assert "unexpected Node.js exit code" in json.loads(body)["errorMessage"]
    assert rt.invoke({})[0]["type"] == "error"  # still serving


def test_event_not_json(framed):
    """An event that is not JSON fails the invoke with a SyntaxError."""
    rt = framed("node", {"app.js": ADD})
    rt.ready()
    header, _ = rt.invoke(raw=b"{nope")
    assert header["error_type"] == "SyntaxError"


def test_uncaught_exception_during_invoke(framed):
    """An uncaught exception reports an error for the running invoke, then exits 129."""
    code = """
exports.handler = (event, context, callback) => {
  setTimeout(() => { throw new Error('async boom'); }, 10);
};
"""
    rt = framed("node", {"app.js": code}, env=QUIET)
    rt.ready()
    header, body = rt.invoke({}, request_id="req-u")
    assert header == {"type": "error", "id": "req-u", "error_type": "Error"}
    assert json.loads(body)["errorMessage"] == "async boom"
    code_, output = rt.wait()
    assert code_ == 129
    assert "Uncaught Exception \t" in output


def test_unhandled_rejection_during_invoke(framed):
    """An unhandled rejection reports Runtime.UnhandledPromiseRejection, then exits 128."""
    code = """
exports.handler = async () => {
  Promise.reject(new Error('nobody listens'));
  await new Promise((resolve) => setTimeout(resolve, 200));
  return 'late';
};
"""
    rt = framed("node", {"app.js": code})
    rt.ready()
    header, body = rt.invoke({})
    assert header["error_type"] == "Runtime.UnhandledPromiseRejection"
    assert json.loads(body)["errorMessage"] == "Error: nobody listens"
    assert rt.wait()[0] == 128


def _init_error(framed, files, handler="app.handler"):
    rt = framed("node", files, handler=handler)
    header, body = rt.read()
    code, output = rt.wait()
    assert code == 1
    return header, json.loads(body), output


def test_import_error(framed):
    """A missing module is reported as Runtime.ImportModuleError at init."""
    header, error, output = _init_error(framed, {"other.js": ADD})
    assert header == {"type": "init_error", "error_type": "Runtime.ImportModuleError"}
    assert error["errorType"] == "Runtime.ImportModuleError"
    assert error["errorMessage"].startswith("Error: Cannot find module 'app'")
    assert error["trace"][0].startswith("Runtime.ImportModuleError: Error: Cannot find module")
    assert re.search(rf"^{TS}\tundefined\tERROR\tUncaught Exception \t{{", output, re.M)


def test_missing_handler(framed):
    """A module without the export gives Runtime.HandlerNotFound."""
    header, error, _ = _init_error(framed, {"app.js": ADD}, handler="app.nothere")
    assert header["error_type"] == "Runtime.HandlerNotFound"
    assert error["errorMessage"] == "app.nothere is undefined or not exported"


def test_malformed_handler_name(framed):
    """A handler string without a dot gives Runtime.MalformedHandlerName."""
    header, error, _ = _init_error(framed, {"app.js": ADD}, handler="app")
    assert header["error_type"] == "Runtime.MalformedHandlerName"
    assert error["errorMessage"] == "Bad handler"


def test_syntax_error(framed):
    """A module that does not parse gives Runtime.UserCodeSyntaxError."""
    header, error, _ = _init_error(framed, {"app.js": "exports.handler = () => {{;\n"})
    assert header["error_type"] == "Runtime.UserCodeSyntaxError"
    assert error["errorMessage"].startswith("SyntaxError: ")


def test_esm_handlers(framed):
    """.mjs files and .js files under a "type": "module" package load with import()."""
    rt = framed("node", {"app.mjs": "export const handler = async (e) => ({ esm: e.x });\n"})
    rt.ready()
    assert rt.invoke_json({"x": 1}) == {"esm": 1}
    rt.close()

    files = {
        "package.json": json.dumps({"type": "module"}),
        "lib/app.js": "export async function handler(e) { return { esm: e.x * 2 }; }\n",
    }
    rt = framed("node", files, handler="lib/app.handler")
    rt.ready()
    assert rt.invoke_json({"x": 2}) == {"esm": 4}


def test_cjs_and_nested_function_names(framed):
    """.cjs modules load with require and `module.a.b` resolves nested properties."""
    code = "module.exports = { api: { v1: { handler: async () => 'nested' } } };\n"
    rt = framed("node", {"app.cjs": code}, handler="app.api.v1.handler")
    rt.ready()
    assert rt.invoke_json({}) == "nested"


def test_text_console_format(framed):
    """console methods write `timestamp\\trequest id\\tLEVEL\\tmessage`, newlines as \\r."""
    code = """
console.log('at init');
exports.handler = async () => {
  console.log('hello %s', 'world');
  console.info('two\\nlines');
  console.warn('careful');
  console.error('bad', { a: 1 });
  console.debug('details');
  return null;
};
"""
    rt = framed("node", {"app.js": code})
    rt.ready()
    rt.invoke({}, request_id="req-log")
    output = rt.output.wait_for("details\n")  # visible before the process exits
    lines = output.split("\n")
    assert re.fullmatch(rf"{TS}\tundefined\tINFO\tat init", lines[0])
    assert re.fullmatch(rf"{TS}\treq-log\tINFO\thello world", lines[1])
    assert re.fullmatch(rf"{TS}\treq-log\tINFO\ttwo\rlines", lines[2])
    assert re.fullmatch(rf"{TS}\treq-log\tWARN\tcareful", lines[3])
    assert re.fullmatch(rf"{TS}\treq-log\tERROR\tbad {{ a: 1 }}", lines[4])
    assert re.fullmatch(rf"{TS}\treq-log\tDEBUG\tdetails", lines[5])


def test_json_console_format_and_level(framed):
    """With JSON format each line is an object; AWS_LAMBDA_LOG_LEVEL drops lower levels."""
    code = """
exports.handler = async () => {
  console.debug('dropped');
  console.info('kept', 1);
  console.error(new Error('as error'));
  return null;
};
"""
    env = {"AWS_LAMBDA_LOG_FORMAT": "JSON", "AWS_LAMBDA_LOG_LEVEL": "INFO"}
    rt = framed("node", {"app.js": code}, env=env)
    rt.ready()
    rt.invoke({}, request_id="req-j")
    _, output = rt.close()
    records = [json.loads(line) for line in output.split("\n") if line]
    assert [r["level"] for r in records] == ["INFO", "ERROR"]
    assert records[0]["message"] == "kept 1" and records[0]["requestId"] == "req-j"
    assert re.fullmatch(TS, records[0]["timestamp"])
    assert records[1]["message"]["errorMessage"] == "as error"
    assert records[1]["message"]["errorType"] == "Error"


def test_streaming_handler_is_buffered(framed):
    """A streamifyResponse handler's writes are collected and sent as one response."""
    code = """
exports.handler = awslambda.streamifyResponse(async (event, responseStream, context) => {
  responseStream.setContentType('text/plain');
  responseStream.write('hello ');
  responseStream.end(context.awsRequestId);
});
"""
    rt = framed("node", {"app.js": code})
    rt.ready()
    header, body = rt.invoke({}, request_id="r-s")
    assert header["content_type"] == "text/plain"
    assert body == b"hello r-s"


def test_control_fd_hidden_and_cwd(framed):
    """The control fd variable is removed and the working directory is the task root."""
    code = "exports.handler = async () => [process.env.CORRAL_CONTROL_FD ?? null, process.cwd()];\n"
    rt = framed("node", {"app.js": code})
    rt.ready()
    fd, cwd = rt.invoke_json({})
    assert fd is None and cwd.endswith("/task")


def test_http_runtime_api(http_runtime, runtime_api):
    """Over the HTTP Runtime API results, headers and errors round-trip on one connection."""
    code = """
exports.handler = async (event, context) => {
  if (event.fail) throw new TypeError('bad input');
  return { sum: event.a + event.b, identity: context.identity ?? null };
};
"""
    rt = http_runtime("node", {"app.js": code}, runtime_api)
    kind, headers, body = runtime_api.invoke(
        {"a": 1, "b": 2}, headers={"Lambda-Runtime-Cognito-Identity": '{"cognitoIdentityId":"x"}'}
    )
    assert kind == "response" and headers["content-type"] == "application/json"
    assert json.loads(body) == {"sum": 3, "identity": {"cognitoIdentityId": "x"}}
    kind, headers, body = runtime_api.invoke({"fail": True})
    assert kind == "error"
    assert headers["lambda-runtime-function-error-type"] == "TypeError"
    assert json.loads(body)["errorMessage"] == "bad input"
    assert runtime_api.invoke({"a": 0, "b": 0})[0] == "response"
    assert len(runtime_api.client_ports) == 1  # one keep-alive connection
    rt.kill()


def test_http_callback_waits_for_empty_event_loop(http_runtime, runtime_api):
    """In HTTP mode too, a callback result waits for the function's pending timers."""
    code = """
exports.handler = (event, context, callback) => {
  setTimeout(() => {}, 300);
  callback(null, 'done');
};
"""
    rt = http_runtime("node", {"app.js": code}, runtime_api, env=QUIET)
    runtime_api.invoke({})  # warm-up: the first invoke includes start-up
    start = time.perf_counter()
    kind, _, body = runtime_api.invoke({})
    assert kind == "response" and json.loads(body) == "done"
    assert time.perf_counter() - start >= 0.28
    rt.kill()


def test_http_init_error(http_runtime, runtime_api):
    """Over HTTP an init failure is posted to /runtime/init/error and the process exits 1."""
    rt = http_runtime("node", {"app.js": ADD}, runtime_api, handler="app.missing")
    path, headers, body = runtime_api.post()
    assert path == "/2018-06-01/runtime/init/error"
    assert headers["lambda-runtime-function-error-type"] == "Runtime.HandlerNotFound"
    assert json.loads(body)["errorType"] == "Runtime.HandlerNotFound"
    code, _ = rt.wait()
    assert code == 1
