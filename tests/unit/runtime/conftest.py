"""Harness for the in-sandbox bootstraps: real processes over a socketpair or a fake Runtime API.

Fixtures:
* `framed(lang, files, handler, env=None)` starts `python_bootstrap.py` (with the current
  interpreter, `-S -I`) or `node_bootstrap.js` with `CORRAL_CONTROL_FD` set to the child end of
  a `socket.socketpair()` and returns a `FramedProcess` that speaks framing.py to it.
* `runtime_api()` starts a threaded `http.server` fake of the Runtime API 2018-06-01 and
  `http_runtime(lang, files, handler, api, env=None)` starts a bootstrap pointed at it.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from corral.runtime import framing

RUNTIME_DIR = Path(framing.__file__).resolve().parent
PYTHON_BOOTSTRAP = RUNTIME_DIR / "python_bootstrap.py"
NODE_BOOTSTRAP = RUNTIME_DIR / "node_bootstrap.js"
NODE = os.environ.get("CORRAL_TEST_NODE") or shutil.which("node")
# The interpreter that runs python_bootstrap.py (set CORRAL_TEST_PYTHON to try another version).
PYTHON = os.environ.get("CORRAL_TEST_PYTHON") or sys.executable
TIMEOUT = 10.0


def bootstrap_argv(lang: str) -> list[str]:
    if lang == "python":
        return [PYTHON, "-S", "-I", str(PYTHON_BOOTSTRAP)]
    if NODE is None:
        pytest.skip("node is not installed")
    return [NODE, str(NODE_BOOTSTRAP)]


def base_env(task_root: Path, handler: str, lang: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "_HANDLER": handler,
        "LAMBDA_TASK_ROOT": str(task_root),
        "LAMBDA_RUNTIME_DIR": str(RUNTIME_DIR),
        "AWS_LAMBDA_FUNCTION_NAME": "probe",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/probe",
        "AWS_LAMBDA_LOG_STREAM_NAME": "2024/01/01/[$LATEST]0123456789abcdef",
        "AWS_REGION": "us-east-1",
        "AWS_EXECUTION_ENV": (
            "AWS_Lambda_python3.11" if lang == "python" else "AWS_Lambda_nodejs20.x"
        ),
        "AWS_LAMBDA_LOG_FORMAT": "Text",
        "TZ": ":UTC",
    }


def write_files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


class OutputReader:
    """Collects a process's merged stdout/stderr on a thread (the pipe never fills up)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            chunk = self._stream.read1(65536)
            if not chunk:
                return
            with self._lock:
                self._chunks.append(chunk)

    def text(self) -> str:
        with self._lock:
            return b"".join(self._chunks).decode("utf-8", "replace")

    def wait_for(self, needle: str, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if needle in text:
                return text
            time.sleep(0.005)
        raise AssertionError(f"{needle!r} not in output:\n{self.text()}")

    def join(self) -> None:
        self._thread.join(TIMEOUT)


class FramedProcess:
    """A bootstrap process driven over the framed control protocol."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.sock, child = socket.socketpair()
        env = {**env, "CORRAL_CONTROL_FD": str(child.fileno())}
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, pass_fds=[child.fileno()],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        child.close()
        self.sock.settimeout(TIMEOUT)
        self.output = OutputReader(self.proc.stdout)

    def read(self) -> tuple[dict[str, Any], bytes]:
        return framing.read_frame(self.sock)

    def ready(self) -> dict[str, Any]:
        header, _ = self.read()
        assert header.get("type") == "ready", header
        if "init_ms" in header:  # the Python bootstrap reports its handler's init CPU
            assert isinstance(header["init_ms"], int | float)
            assert header["init_ms"] >= 0
        assert set(header) <= {"type", "init_ms"}, header
        return header

    def send_invoke(self, event: Any = None, *, raw: bytes | None = None,
                    request_id: str | None = None, deadline_ms: int | None = None,
                    **extra: Any) -> str:
        request_id = request_id or str(uuid.uuid4())
        header = {
            "type": "invoke",
            "id": request_id,
            "deadline_ms": deadline_ms if deadline_ms is not None
            else int(time.time() * 1000) + 30_000,
            "arn": "arn:aws:lambda:us-east-1:123456789012:function:probe",
            **extra,
        }
        body = raw if raw is not None else json.dumps(event).encode()
        self.sock.sendall(framing.encode(header, body))
        return request_id

    def invoke(self, event: Any = None, **kwargs: Any) -> tuple[dict[str, Any], bytes]:
        request_id = self.send_invoke(event, **kwargs)
        header, body = self.read()
        assert header.get("id") == request_id, header
        return header, body

    def invoke_json(self, event: Any = None, **kwargs: Any) -> Any:
        header, body = self.invoke(event, **kwargs)
        assert header["type"] == "response", (header, body, self.output.text())
        return json.loads(body)

    def close(self) -> tuple[int, str]:
        """Close the channel (the runtime exits) and return (exit code, output)."""
        self.sock.close()
        try:
            code = self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.output.join()
        return code, self.output.text()

    def wait(self) -> tuple[int, str]:
        """Wait for the runtime to exit by itself; return (exit code, output)."""
        code = self.proc.wait(TIMEOUT)
        self.output.join()
        return code, self.output.text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()


@pytest.fixture
def framed(tmp_path: Path) -> Iterator[Callable[..., FramedProcess]]:
    started: list[FramedProcess] = []

    def start(lang: str, files: dict[str, str], handler: str = "app.handler",
              env: dict[str, str] | None = None) -> FramedProcess:
        task_root = tmp_path / "task"
        write_files(task_root, files)
        proc = FramedProcess(
            bootstrap_argv(lang), {**base_env(task_root, handler, lang), **(env or {})},
            task_root,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


class FakeRuntimeAPI:
    """A threaded Runtime API 2018-06-01 fake: queue events in, collect posts out."""

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, bytes, dict[str, str]] | None] = queue.Queue()
        self.posts: queue.Queue[tuple[str, dict[str, str], bytes]] = queue.Queue()
        self.next_calls = 0
        self.client_ports: set[int] = set()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like the real Runtime API

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                api.client_ports.add(self.client_address[1])
                if self.path != "/2018-06-01/runtime/invocation/next":
                    self._reply(404, b"{}", {})
                    return
                api.next_calls += 1
                item = api.events.get()
                if item is None:  # shutting down
                    self._reply(500, b'{"errorType":"Shutdown"}', {})
                    return
                request_id, body, headers = item
                self._reply(200, body, {
                    "Lambda-Runtime-Aws-Request-Id": request_id,
                    "Lambda-Runtime-Deadline-Ms": str(int(time.time() * 1000) + 30_000),
                    "Lambda-Runtime-Invoked-Function-Arn":
                        "arn:aws:lambda:us-east-1:123456789012:function:probe",
                    "Content-Type": "application/json",
                    **headers,
                })

            def do_POST(self) -> None:
                api.client_ports.add(self.client_address[1])
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                api.posts.put((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self._reply(202, b'{"status":"OK"}', {"Content-Type": "application/json"})

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # runtimes killed mid-request at the end of a test

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def post(self) -> tuple[str, dict[str, str], bytes]:
        return self.posts.get(timeout=TIMEOUT)

    def invoke(self, event: Any, headers: dict[str, str] | None = None,
               request_id: str | None = None) -> tuple[str, dict[str, str], bytes]:
        request_id = request_id or str(uuid.uuid4())
        self.events.put((request_id, json.dumps(event).encode(), headers or {}))
        path, post_headers, body = self.post()
        assert f"/invocation/{request_id}/" in path, path
        return path.rsplit("/", 1)[1], post_headers, body

    def close(self) -> None:
        for _ in range(4):
            self.events.put(None)
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def runtime_api() -> Iterator[FakeRuntimeAPI]:
    api = FakeRuntimeAPI()
    yield api
    api.close()


class HttpProcess:
    """A bootstrap process pointed at a fake Runtime API."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.output = OutputReader(self.proc.stdout)

    def wait(self) -> tuple[int, str]:
        code = self.proc.wait(TIMEOUT)
        self.output.join()
        return code, self.output.text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def http_runtime(tmp_path: Path) -> Iterator[Callable[..., HttpProcess]]:
    started: list[HttpProcess] = []

    def start(lang: str, files: dict[str, str], api: FakeRuntimeAPI,
              handler: str = "app.handler", env: dict[str, str] | None = None) -> HttpProcess:
        task_root = tmp_path / "task"
        write_files(task_root, files)
        full_env = {**base_env(task_root, handler, lang), "AWS_LAMBDA_RUNTIME_API": api.address,
                    **(env or {})}
        proc = HttpProcess(bootstrap_argv(lang), full_env, task_root)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
