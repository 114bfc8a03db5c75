"""Corral's in-sandbox Python runtime: loads `_HANDLER` and serves invokes (stdlib only).

Started by the host as `python3.X -S -I <runtime_dir>/python_bootstrap.py` (or, to use the
cached bytecode instead of compiling this file on every start, as `python3.X -S -I -c "import
sys; sys.path.insert(0, '<runtime_dir>'); import python_bootstrap; python_bootstrap.run()"`,
with the runtime dir precompiled by `compileall`). It behaves like
awslambdaric 4.x (handler resolution, context object, marshalling, error bodies, log format)
but talks to the host over one of two transports with the same four operations
(`next`, `respond`, `error`, `init_error`):

* `CORRAL_CONTROL_FD=<n>`: the framed control protocol of the sibling `framing.py` over an
  inherited AF_UNIX stream socket (fast path). The first `next()` sends `{"type": "ready"}`.
* `AWS_LAMBDA_RUNTIME_API=host:port`: the HTTP Runtime API 2018-06-01 over one persistent
  `http.client` connection.

Cold start matters: at start-up only `os`, `sys`, `json` and `struct` (through framing) are
imported; `logging` is configured only when something imports it (an import hook), and
`traceback`, `http.client` and `urllib.parse` are imported only on the paths that need them.
"""

import json
import os
import sys

_SELF = os.path.abspath(__file__)
_SELF_DIR = os.path.dirname(_SELF)

_ERROR_LOG_LINE_TERMINATE = "\r"
_ERROR_LOG_IDENT = "\u00a0"  # NO-BREAK SPACE, like awslambdaric
_DATETIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
_UNHANDLED_WARNING = (
    "Unhandled exception. The most likely cause is an issue in the function code. However, "
    "in rare cases, a Lambda runtime update can cause unexpected function behavior. For "
    "functions using managed runtimes, runtime updates can be triggered by a function change, "
    "or can be applied automatically. To determine if the runtime has been updated, check the "
    "runtime version in the INIT_START log entry. If this error correlates with a change in "
    "the runtime version, you may be able to mitigate this error by temporarily rolling back "
    "to the previous runtime version. For more information, see "
    "https://docs.aws.amazon.com/lambda/latest/dg/runtimes-update.html"
)

# Request id / tenant id of the current (or last) invoke, read by the logging filter.
_REQUEST_ID = None
_TENANT_ID = None


# --------------------------------------------------------------------------- start-up


def _setup_sys_path():
    """sys.path as on Lambda: task root, layer dirs, the runtime dir, then the stdlib."""
    task_root = os.environ.get("LAMBDA_TASK_ROOT") or os.getcwd()
    ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    head = [task_root, f"/opt/python/lib/{ver}/site-packages", "/opt/python", _SELF_DIR]
    rest = [p for p in sys.path if p not in head and p != ""]
    sys.path[:] = head + rest
    return task_root


def _import_framing():
    """Import the sibling framing.py, then forget the name so user code may own it."""
    sys.path.insert(0, _SELF_DIR)  # deduplicated by _setup_sys_path
    import framing

    if sys.modules.get("framing") is framing:
        del sys.modules["framing"]
    return framing


def _runqueue_wait_s():
    """Seconds this thread has waited for a CPU (/proc/self/schedstat, second field)."""
    try:
        with open("/proc/self/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _import_template():
    """The sibling python_template.py when this process is a per-version template (the
    host sets CORRAL_TEMPLATE=1), imported before sys.path puts the task root first."""
    if os.environ.pop("CORRAL_TEMPLATE", None) != "1":
        return None
    sys.path.insert(0, _SELF_DIR)
    import python_template

    if sys.modules.get("python_template") is python_template:
        del sys.modules["python_template"]
    return python_template


def _unbuffer_stdio():
    """Make stdout/stderr unbuffered (what `python -u` does): each write is one write(2)."""
    import io

    for name, fd in (("stdout", 1), ("stderr", 2)):
        old = getattr(sys, name)
        if old is None:
            continue
        try:
            old.flush()
            raw = io.FileIO(fd, "w", closefd=False)
            new = io.TextIOWrapper(
                raw, encoding=old.encoding, errors=old.errors, write_through=True
            )
        except (OSError, ValueError, AttributeError):
            continue
        setattr(sys, name, new)


# --------------------------------------------------------------------------- faults


class _Fault(Exception):
    """An error with a Lambda error type (awslambdaric's FaultException)."""

    MARSHAL_ERROR = "Runtime.MarshalError"
    UNMARSHAL_ERROR = "Runtime.UnmarshalError"
    USER_CODE_SYNTAX_ERROR = "Runtime.UserCodeSyntaxError"
    HANDLER_NOT_FOUND = "Runtime.HandlerNotFound"
    IMPORT_MODULE_ERROR = "Runtime.ImportModuleError"
    BUILT_IN_MODULE_CONFLICT = "Runtime.BuiltInModuleConflict"
    MALFORMED_HANDLER_NAME = "Runtime.MalformedHandlerName"
    LAMBDA_CONTEXT_UNMARSHAL_ERROR = "Runtime.LambdaContextUnmarshalError"

    def __init__(self, exception_type, msg, trace=None):
        super().__init__(msg)
        self.exception_type = exception_type
        self.msg = msg
        self.trace = trace


class _TransportError(Exception):
    """The host rejected a request or broke the protocol: the runtime must exit."""


def _make_error(error_message, error_type, stack_trace, invoke_id=None):
    return {
        "errorMessage": error_message if error_message else "",
        "errorType": error_type if error_type else "",
        "requestId": invoke_id if invoke_id is not None else "",
        "stackTrace": stack_trace if stack_trace else [],
    }


def _user_frames(tb):
    """Traceback frames as (file, line, name, text) tuples, minus the bootstrap's own."""
    import traceback

    frames = [(f.filename, f.lineno, f.name, f.line) for f in traceback.extract_tb(tb)]
    for i, frame in enumerate(frames):
        if frame[0] != _SELF:
            return frames[i:]
    return frames


def _build_fault_result(exc_info, invoke_id=None):
    import traceback

    etype, value, tb = exc_info
    frames = _user_frames(tb)
    result = _make_error(str(value), etype.__name__, traceback.format_list(frames), invoke_id)
    return result, _make_xray_fault(etype.__name__, str(value), frames)


def _make_xray_fault(ex_type, ex_msg, frames):
    stack, files = [], []
    for path, line, label, _text in frames:
        stack.append({"label": label, "path": path, "line": line})
        if path not in files:
            files.append(path)
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = ""
    return {
        "working_directory": cwd,
        "exceptions": [{"message": ex_msg, "type": ex_type, "stack": stack}],
        "paths": files,
    }


# --------------------------------------------------------------------------- marshalling

_DECIMAL_TAG = None


class _Encoder(json.JSONEncoder):
    """JSON like awslambdaric's simplejson encoder: Decimal as its exact digits, bytes as text."""

    def __init__(self, ensure_ascii=True):
        super().__init__(ensure_ascii=ensure_ascii)
        self.raw = []

    def default(self, o):
        decimal = sys.modules.get("decimal")  # no Decimal can exist unless it was imported
        if decimal is not None and isinstance(o, decimal.Decimal):
            if o.is_nan():
                return float("nan")
            self.raw.append(str(o))
            return f"{_decimal_tag()}{len(self.raw) - 1}\x00"
        if isinstance(o, bytes):
            return o.decode("utf-8")
        return super().default(o)


def _decimal_tag():
    global _DECIMAL_TAG
    if _DECIMAL_TAG is None:
        _DECIMAL_TAG = f"\x00corral-decimal-{os.urandom(6).hex()}-"
    return _DECIMAL_TAG


def _to_json(obj, ensure_ascii=True):
    encoder = _Encoder(ensure_ascii)
    text = encoder.encode(obj)
    if encoder.raw:
        import re

        tag = json.dumps(_decimal_tag())[1:-1]  # how the tag looks once encoded
        pattern = re.compile(f'"{re.escape(tag)}(\\d+)\\\\u0000"')
        text = pattern.sub(lambda m: encoder.raw[int(m.group(1))], text)
    return text


def _response_ensure_ascii():
    """awslambdaric keeps non-ASCII characters as they are for python3.12 and later."""
    env = os.environ.get("AWS_EXECUTION_ENV", "")
    prefix = "AWS_Lambda_python3."
    if env.startswith(prefix):
        try:
            return int(env[len(prefix):]) < 12
        except ValueError:
            return True
    return True


_RESPONSE_ENSURE_ASCII = _response_ensure_ascii()


def _unmarshal_request(body, content_type):
    if content_type != "application/json":
        return body
    try:
        return json.loads(body)
    except Exception as e:
        raise _Fault(_Fault.UNMARSHAL_ERROR, f"Unable to unmarshal input: {e}") from None


def _marshal_response(response):
    if isinstance(response, bytes):
        return response, "application/unknown"
    try:
        return _to_json(response, _RESPONSE_ENSURE_ASCII).encode("utf-8"), "application/json"
    except Exception as e:
        raise _Fault(_Fault.MARSHAL_ERROR, f"Unable to marshal response: {e}") from None


# --------------------------------------------------------------------------- logging


def _write_log(text):
    """Write one log record to stdout; inner newlines become \\r so it stays one line."""
    if text.endswith("\n"):
        text = text[:-1]
    sys.stdout.write(text.replace("\n", "\r") + "\n")


def _log_format_is_json():
    return (os.environ.get("AWS_LAMBDA_LOG_FORMAT") or "").upper() == "JSON"


def _log_error(error_result):
    """The `[ERROR] Type: message\\rTraceback...` record awslambdaric writes for errors."""
    if _log_format_is_json():
        import time

        record = {
            "timestamp": time.strftime(_DATETIME_FORMAT, time.gmtime()),
            "level": "ERROR",
            **error_result,
        }
        sys.stdout.write(_to_json(record) + "\n")
        return

    description = "[ERROR]"
    error_type = error_result.get("errorType")
    if error_type:
        description += " " + error_type
    message = error_result.get("errorMessage")
    if message:
        if error_type:
            description += ":"
        description += " " + message
    lines = [description]
    stack_trace = error_result.get("stackTrace")
    if stack_trace is not None:
        lines.append("Traceback (most recent call last):")
        for element in stack_trace:
            if element == "":
                lines.append("")
                continue
            for line in element.splitlines():
                stripped = line.lstrip(" ")
                lines.append(_ERROR_LOG_IDENT * (len(line) - len(stripped)) + stripped)
    sys.stdout.write(_ERROR_LOG_LINE_TERMINATE.join(lines) + "\n")


def _configure_logging(logging):
    """Install the Lambda root handler (awslambdaric `_setup_logging`) on a fresh `logging`."""
    import time

    reserved = {
        "name", "msg", "args", "levelname", "levelno", "pathname", "filename", "module",
        "exc_info", "exc_text", "stack_info", "lineno", "funcName", "created", "msecs",
        "relativeCreated", "thread", "threadName", "processName", "process",
        "aws_request_id", "tenant_id", "_frame_type", "taskName",
    }

    class LambdaLoggerFilter(logging.Filter):
        def filter(self, record):
            record.aws_request_id = _REQUEST_ID or ""
            record.tenant_id = _TENANT_ID
            return True

    class LambdaLoggerHandler(logging.Handler):
        def emit(self, record):
            try:
                _write_log(self.format(record))
            except Exception:
                self.handleError(record)

    class JsonFormatter(logging.Formatter):
        def __init__(self):
            super().__init__(datefmt=_DATETIME_FORMAT)

        def formatTime(self, record, datefmt=None):
            secs = time.strftime(_DATETIME_FORMAT, time.gmtime(record.created))
            return f"{secs}.{int(record.msecs):03d}Z"

        def format(self, record):
            import traceback

            record.levelno = min(50, max(0, record.levelno)) // 10 * 10
            record.levelname = logging.getLevelName(record.levelno)
            exc = record.exc_info
            if not exc or exc[0] is None:  # logger.exception() outside an except block
                exc = None
            result = {
                "timestamp": self.formatTime(record),
                "level": record.levelname,
                "message": record.getMessage(),
                "logger": record.name,
                "stackTrace": traceback.format_tb(exc[2]) if exc else None,
                "errorType": exc[0].__name__ if exc else None,
                "errorMessage": str(exc[1]) if exc else None,
                "requestId": getattr(record, "aws_request_id", None),
                "location": (
                    f"{record.pathname}:{record.funcName}:{record.lineno}"
                    if exc else None
                ),
            }
            if getattr(record, "tenant_id", None) is not None:
                result["tenantId"] = record.tenant_id
            for key, value in record.__dict__.items():
                if key not in reserved and key not in result:
                    result[key] = value
            result = {k: v for k, v in result.items() if v is not None}
            return json.dumps(result, ensure_ascii=False, default=str) + "\n"

    handler = LambdaLoggerHandler()
    if _log_format_is_json():
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter(
            "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s\n",
            _DATETIME_FORMAT,
        )
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    handler.addFilter(LambdaLoggerFilter())

    root = logging.getLogger()
    level = (os.environ.get("AWS_LAMBDA_LOG_LEVEL") or "").upper()
    level = {"TRACE": "DEBUG"}.get(level, level)
    if level and isinstance(logging.getLevelName(level), int):
        root.setLevel(level)
    root.addHandler(handler)


class _LoggingHook:
    """Meta-path hook: configure `logging` right after it is first imported (lazily)."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name != "logging":
            return None
        try:
            sys.meta_path.remove(cls)
        except ValueError:
            pass
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(name, path, target) if find_spec else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec

        def exec_and_configure(module):
            exec_module(module)
            try:
                _configure_logging(module)
            except Exception as e:  # never break `import logging` for the user
                sys.stderr.write(f"corral: could not configure logging: {e!r}\n")

        try:
            loader.exec_module = exec_and_configure
        except AttributeError:
            return spec
        return spec


def _install_logging():
    if "logging" in sys.modules:
        _configure_logging(sys.modules["logging"])
    else:
        sys.meta_path.insert(0, _LoggingHook)


# --------------------------------------------------------------------------- context


class CognitoIdentity:
    __slots__ = ["cognito_identity_id", "cognito_identity_pool_id"]

    def __repr__(self):
        return (
            f"CognitoIdentity([cognito_identity_id={self.cognito_identity_id},"
            f"cognito_identity_pool_id={self.cognito_identity_pool_id}])"
        )


class Client:
    __slots__ = [
        "app_package_name",
        "app_title",
        "app_version_code",
        "app_version_name",
        "installation_id",
    ]

    def __repr__(self):
        return (
            f"Client([installation_id={self.installation_id},app_title={self.app_title},"
            f"app_version_name={self.app_version_name},"
            f"app_version_code={self.app_version_code},"
            f"app_package_name={self.app_package_name}])"
        )


class ClientContext:
    __slots__ = ["client", "custom", "env"]

    def __repr__(self):
        return f"ClientContext([custom={self.custom},env={self.env},client={self.client}])"


def _obj_from_dict(cls, values):
    if values is None:
        return None
    obj = cls()
    for field in cls.__slots__:
        setattr(obj, field, values.get(field) if isinstance(values, dict) else None)
    return obj


_W3C_ALLOWED_FIELDS = ("traceparent", "tracestate", "baggage")


class LambdaContext:
    """The `context` argument, attribute for attribute like awslambdaric's."""

    def __init__(self, invoke_id, client_context, cognito_identity, epoch_deadline_time_in_ms,
                 invoked_function_arn=None, tenant_id=None):
        env = os.environ
        self.aws_request_id = invoke_id
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self.function_name = env.get("AWS_LAMBDA_FUNCTION_NAME")
        self.memory_limit_in_mb = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.function_version = env.get("AWS_LAMBDA_FUNCTION_VERSION")
        self.invoked_function_arn = invoked_function_arn
        self.tenant_id = tenant_id
        self._w3c_fields = {}
        if isinstance(client_context, dict) and "w3c" in client_context:
            raw = client_context.pop("w3c")
            if isinstance(raw, dict):
                self._w3c_fields = {
                    k: raw[k] for k in _W3C_ALLOWED_FIELDS if isinstance(raw.get(k), str)
                }
        self.client_context = _obj_from_dict(ClientContext, client_context)
        if self.client_context is not None:
            self.client_context.client = _obj_from_dict(Client, self.client_context.client)
        self.identity = _obj_from_dict(CognitoIdentity, {})
        if isinstance(cognito_identity, dict):
            self.identity.cognito_identity_id = cognito_identity.get("cognitoIdentityId")
            self.identity.cognito_identity_pool_id = cognito_identity.get("cognitoIdentityPoolId")
        self._epoch_deadline_time_in_ms = epoch_deadline_time_in_ms

    def get_remaining_time_in_millis(self):
        import time

        delta_ms = self._epoch_deadline_time_in_ms - int(time.time() * 1000)
        return delta_ms if delta_ms > 0 else 0

    def w3c(self):
        return dict(self._w3c_fields)

    def log(self, msg):
        sys.stdout.write(str(msg))

    def __repr__(self):
        return (
            f"LambdaContext([aws_request_id={self.aws_request_id},"
            f"log_group_name={self.log_group_name},log_stream_name={self.log_stream_name},"
            f"function_name={self.function_name},memory_limit_in_mb={self.memory_limit_in_mb},"
            f"function_version={self.function_version},"
            f"invoked_function_arn={self.invoked_function_arn},"
            f"client_context={self.client_context},identity={self.identity},"
            f"tenant_id={self.tenant_id}])"
        )


def _parse_json_header(value, name):
    if value is None or value == "":
        return None
    if not isinstance(value, (str, bytes)):
        return value  # the framed protocol may carry it already decoded
    try:
        return json.loads(value)
    except Exception as e:
        raise _Fault(
            _Fault.LAMBDA_CONTEXT_UNMARSHAL_ERROR, f"Unable to parse {name} JSON: {e}"
        ) from None


# --------------------------------------------------------------------------- transports


class Invocation:
    """One event, as either transport delivers it."""

    __slots__ = (
        "arn",
        "body",
        "client_context",
        "cognito_identity",
        "content_type",
        "deadline_ms",
        "request_id",
        "tenant_id",
        "trace_id",
    )

    def __init__(self, request_id, deadline_ms, arn, trace_id, client_context,
                 cognito_identity, tenant_id, content_type, body):
        self.request_id = request_id
        self.deadline_ms = deadline_ms
        self.arn = arn
        self.trace_id = trace_id
        self.client_context = client_context
        self.cognito_identity = cognito_identity
        self.tenant_id = tenant_id
        self.content_type = content_type
        self.body = body


class _FdSocket:
    """recv/sendall on a raw fd: all framing needs, without importing `socket`."""

    __slots__ = ("fd",)

    def __init__(self, fd):
        self.fd = fd

    def recv(self, size):
        return os.read(self.fd, size)

    def sendall(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]


class FramedTransport:
    """The framed control protocol on an inherited AF_UNIX stream socket."""

    def __init__(self, fd, framing):
        self.fd = fd
        self._sock = _FdSocket(fd)
        self._framing = framing
        self._ready_sent = False
        self.init_ms = None

    def next(self):
        """Block for the next invoke; raises EOFError when the host closes the channel."""
        if not self._ready_sent:
            self._ready_sent = True
            ready = {"type": "ready"}
            if self.init_ms is not None:
                ready["init_ms"] = self.init_ms
            self._framing.write_frame(self._sock, ready)
        while True:
            header, body = self._framing.read_frame(self._sock)
            if header.get("type") == "invoke":
                break
            if header.get("type") == "shutdown":
                raise EOFError("shutdown requested")
        return Invocation(
            request_id=header.get("id"),
            deadline_ms=int(header.get("deadline_ms") or 0),
            arn=header.get("arn"),
            trace_id=header.get("trace_id"),
            client_context=header.get("client_context"),
            cognito_identity=header.get("cognito_identity"),
            tenant_id=header.get("tenant_id"),
            content_type=header.get("content_type") or "application/json",
            body=body,
        )

    def respond(self, request_id, body, content_type):
        header = {"type": "response", "id": request_id, "content_type": content_type}
        self._framing.write_frame(self._sock, header, body)

    def error(self, request_id, body, error_type, xray_cause=None):
        header = {"type": "error", "id": request_id, "error_type": error_type}
        self._framing.write_frame(self._sock, header, body)

    def init_error(self, body, error_type):
        self._framing.write_frame(self._sock, {"type": "init_error", "error_type": error_type},
                                  body)


class HttpTransport:
    """The HTTP Runtime API (2018-06-01) on one persistent http.client connection."""

    _PREFIX = "/2018-06-01/runtime"

    def __init__(self, address):
        import http.client
        from urllib.parse import quote

        self._http = http.client
        self._quote = quote
        host, _, port = address.rpartition(":")
        if not host:
            host, port = address, "80"
        self._conn = http.client.HTTPConnection(host.strip("[]"), int(port))
        major, minor, micro = sys.version_info[:3]
        self._user_agent = f"aws-lambda-python/{major}.{minor}.{micro}-corral"

    def _request(self, method, path, body=None, headers=None):
        headers = dict(headers or {})
        headers["User-Agent"] = self._user_agent
        for attempt in (0, 1):
            try:
                self._conn.request(method, path, body=body, headers=headers)
                response = self._conn.getresponse()
                return response, response.read()
            except (ConnectionError, self._http.HTTPException):
                self._conn.close()  # stale keep-alive connection: reconnect once
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _post(self, path, body, headers, what):
        response, data = self._request("POST", path, body, headers)
        if not 200 <= response.status < 300:
            text = data.decode("utf-8", "replace")
            raise _TransportError(
                f"Request to Lambda Runtime '{what}' endpoint failed. "
                f"Reason: '{response.status}'. Response body: '{text}'"
            )

    def next(self):
        response, body = self._request("GET", self._PREFIX + "/invocation/next")
        if response.status != 200:
            raise _TransportError(
                f"Failed to get next invocation: HTTP {response.status} {body[:200]!r}"
            )
        get = response.getheader
        request_id = get("Lambda-Runtime-Aws-Request-Id")
        if not request_id:
            raise _TransportError("Failed to get next invocation: no request id")
        try:
            deadline_ms = int(get("Lambda-Runtime-Deadline-Ms") or 0)
        except ValueError:
            deadline_ms = 0
        return Invocation(
            request_id=request_id,
            deadline_ms=deadline_ms,
            arn=get("Lambda-Runtime-Invoked-Function-Arn"),
            trace_id=get("Lambda-Runtime-Trace-Id"),
            client_context=get("Lambda-Runtime-Client-Context"),
            cognito_identity=get("Lambda-Runtime-Cognito-Identity"),
            tenant_id=get("Lambda-Runtime-Aws-Tenant-Id"),
            content_type=get("Content-Type") or "application/json",
            body=body,
        )

    def _invocation_path(self, request_id, what):
        return f"{self._PREFIX}/invocation/{self._quote(request_id, safe='')}/{what}"

    def respond(self, request_id, body, content_type):
        self._post(self._invocation_path(request_id, "response"), body,
                   {"Content-Type": content_type}, "invocation/response")

    def error(self, request_id, body, error_type, xray_cause=None):
        headers = {
            "Content-Type": "application/json",
            "Lambda-Runtime-Function-Error-Type": _header_safe(error_type),
        }
        if xray_cause and len(xray_cause) < 1024 * 1024:
            headers["Lambda-Runtime-Function-XRay-Error-Cause"] = xray_cause
        self._post(self._invocation_path(request_id, "error"), body, headers,
                   "invocation/error")

    def init_error(self, body, error_type):
        headers = {
            "Content-Type": "application/json",
            "Lambda-Runtime-Function-Error-Type": _header_safe(error_type),
        }
        self._post(self._PREFIX + "/init/error", body, headers, "init/error")


def _header_safe(value):
    return str(value).encode("ascii", "backslashreplace").decode("ascii").replace("\n", " ")


def _make_transport(framing):
    fd = os.environ.pop("CORRAL_CONTROL_FD", None)
    if fd is not None:
        fd = int(fd)
        try:
            os.set_inheritable(fd, False)  # user subprocesses must not hold the channel
        except OSError:
            pass
        return FramedTransport(fd, framing)
    address = os.environ.get("AWS_LAMBDA_RUNTIME_API")
    if address:
        return HttpTransport(address)
    raise SystemExit("corral bootstrap: neither CORRAL_CONTROL_FD nor AWS_LAMBDA_RUNTIME_API set")


# --------------------------------------------------------------------------- handler


def _get_handler(handler):
    """awslambdaric `_get_handler`: `mod.fn`, `dir/mod.fn`; raises _Fault with Lambda types."""
    try:
        modname, fname = handler.rsplit(".", 1)
    except ValueError as e:
        raise _Fault(_Fault.MALFORMED_HANDLER_NAME, f"Bad handler '{handler}': {e}") from None

    try:
        if modname.split(".")[0] in sys.builtin_module_names:
            raise _Fault(
                _Fault.BUILT_IN_MODULE_CONFLICT,
                f"Cannot use built-in module {modname} as a handler module",
            )
        import_name = modname.replace("/", ".")
        __import__(import_name)
        module = sys.modules[import_name]
    except ImportError as e:
        raise _Fault(
            _Fault.IMPORT_MODULE_ERROR, f"Unable to import module '{modname}': {e}"
        ) from None
    except SyntaxError as e:
        trace = [f'  File "{e.filename}" Line {e.lineno}\n    {e.text}']
        raise _Fault(
            _Fault.USER_CODE_SYNTAX_ERROR, f"Syntax error in module '{modname}': {e}", trace
        ) from None

    try:
        return getattr(module, fname)
    except AttributeError:
        raise _Fault(
            _Fault.HANDLER_NOT_FOUND, f"Handler '{fname}' missing on module '{modname}'"
        ) from None


def _handle_event(transport, request_handler, invocation):
    """Run one invoke and report its outcome; function errors never escape."""
    invoke_id = invocation.request_id
    error_result = None
    xray_fault = None
    try:
        context = LambdaContext(
            invoke_id,
            _parse_json_header(invocation.client_context, "Client Context"),
            _parse_json_header(invocation.cognito_identity, "Cognito Identity"),
            invocation.deadline_ms,
            invocation.arn,
            invocation.tenant_id,
        )
        event = _unmarshal_request(invocation.body, invocation.content_type)
        response = request_handler(event, context)
        result, content_type = _marshal_response(response)
    except _Fault as e:
        error_result = _make_error(e.msg, e.exception_type, e.trace, invoke_id)
        xray_fault = _make_xray_fault("LambdaValidationError", e.msg, [])
    except Exception:
        error_result, xray_fault = _build_fault_result(sys.exc_info(), invoke_id)

    if error_result is None:
        transport.respond(invoke_id, result, content_type)
        return
    _log_error(error_result)
    try:
        xray = _to_json(xray_fault)
    except Exception:
        xray = None
    transport.error(invoke_id, _to_json(error_result).encode("utf-8"),
                    error_result["errorType"], xray)


def _update_xray_env(trace_id):
    if trace_id:
        os.environ["_X_AMZN_TRACE_ID"] = trace_id
    else:
        os.environ.pop("_X_AMZN_TRACE_ID", None)


def main():
    global _REQUEST_ID, _TENANT_ID

    framing = _import_framing()  # before sys.path is rebuilt
    template = _import_template()
    task_root = _setup_sys_path()
    if os.path.isdir(task_root):
        try:
            if os.getcwd() != task_root:
                os.chdir(task_root)
        except OSError:
            pass
    _unbuffer_stdio()
    transport = _make_transport(framing)
    _install_logging()

    import time

    init_began = time.monotonic(), _runqueue_wait_s()
    try:
        request_handler = _get_handler(os.environ.get("_HANDLER", ""))
    except Exception as e:
        if isinstance(e, _Fault):
            error_result = _make_error(e.msg, e.exception_type, e.trace)
        else:
            error_result, _ = _build_fault_result(sys.exc_info())
        import logging

        logging.warning(_UNHANDLED_WARNING)
        _log_error(error_result)
        if template is not None:  # the host falls back to ordinary instances
            sys.exit(1)
        try:
            transport.init_error(_to_json(error_result).encode("utf-8"),
                                 error_result["errorType"])
        except (OSError, _TransportError, EOFError) as post_error:
            sys.stderr.write(f"corral: could not report init error: {post_error}\n")
        sys.exit(1)

    # how long the handler's imports and init code took, less the time spent waiting for a
    # CPU: the host starts a per-version template only for versions whose init is worth
    # skipping, and a busy host must not make a trivial init look expensive
    took = time.monotonic() - init_began[0] - (_runqueue_wait_s() - init_began[1])
    transport.init_ms = round(max(0.0, took) * 1000, 3)
    if template is not None:  # returns in each instance forked from the template
        transport = FramedTransport(template.serve(transport.fd), framing)

    while True:
        try:
            invocation = transport.next()
        except EOFError:
            return 0
        _REQUEST_ID = invocation.request_id
        _TENANT_ID = invocation.tenant_id
        _update_xray_env(invocation.trace_id)
        _handle_event(transport, request_handler, invocation)


def run():
    """Entry point: exit 0 when the host closes the channel, 1 on init or channel errors."""
    try:
        code = main()
    except (_TransportError, BrokenPipeError, ConnectionError) as e:
        sys.stderr.write(f"corral: runtime channel failed: {e}\n")
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    run()
