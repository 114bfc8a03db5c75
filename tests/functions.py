"""Building function packages for tests: zips made in the test from source text."""

from __future__ import annotations

import io
import textwrap
import uuid
import zipfile

ROLE = "arn:aws:iam::000000000000:role/lambda-role"


def make_zip(files: dict[str, str | bytes], executable: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            info = zipfile.ZipInfo(name)
            mode = 0o755 if name in executable else 0o644
            info.external_attr = (0o100000 | mode) << 16
            data = content if isinstance(content, bytes) else textwrap.dedent(content)
            zf.writestr(info, data)
    return buf.getvalue()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


PY_ADD = """
def handler(event, context):
    return event["value1"] + event["value2"]
"""

NODE_CALLBACK = """
exports.handler = function (event, context, callback) {
  callback(null, event.value1 + event.value2);
};
"""

NODE_ASYNC = """
exports.handler = async (event) => event.value1 + event.value2;
"""


def create(lam, name: str, files: dict[str, str | bytes], runtime: str = "python3.11",
           handler: str = "app.handler", wait: bool = True, **kwargs) -> dict:
    executable = tuple(kwargs.pop("executable", ()))
    resp = lam.create_function(FunctionName=name, Runtime=runtime, Role=ROLE, Handler=handler,
                               Code={"ZipFile": make_zip(files, executable)}, **kwargs)
    if wait:
        lam.get_waiter("function_active_v2").wait(FunctionName=name)
    return resp
