"""Asynchronous invocation, durability across a server crash, and clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from functions import create, unique

CALLBACK_FN = """
import json, os, time, urllib.request
def handler(event, context):
    def post(stage):
        body = json.dumps({"stage": stage, "id": context.aws_request_id,
                           "event": event}).encode()
        urllib.request.urlopen(urllib.request.Request(event["url"], data=body), timeout=5)
    post("started")
    time.sleep(event.get("sleep", 0))
    if event.get("fail"):
        raise RuntimeError("failing on purpose")
    post("done")
    return "ok"
"""


class Callbacks:
    """A loopback HTTP server collecting what functions post to it."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.cond:
                    outer.received.append(data)
                    outer.cond.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_for(self, predicate, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.received):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; received {self.received}")
                self.cond.wait(left)
            return list(self.received)

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture
def callbacks():
    cb = Callbacks()
    yield cb
    cb.close()


def stages(received: list[dict], stage: str) -> list[dict]:
    return [r for r in received if r["stage"] == stage]


class TestEventInvoke:
    def test_event_is_delivered(self, lam, callbacks):
        """An Event invoke answers 202 at once and the function runs soon after."""
        name = unique("evt")
        create(lam, name, {"app.py": CALLBACK_FN})
        resp = lam.invoke(FunctionName=name, InvocationType="Event",
                          Payload=json.dumps({"url": callbacks.url}).encode())
        assert resp["StatusCode"] == 202
        got = callbacks.wait_for(lambda r: stages(r, "done"))
        assert stages(got, "done")[0]["id"] == resp["ResponseMetadata"]["RequestId"]

    def test_invoke_async_uses_the_same_queue(self, lam, callbacks):
        """The deprecated InvokeAsync answers 202 and delivers the event."""
        name = unique("ia")
        create(lam, name, {"app.py": CALLBACK_FN})
        resp = lam.invoke_async(FunctionName=name,
                                InvokeArgs=json.dumps({"url": callbacks.url}).encode())
        assert resp["Status"] == 202
        callbacks.wait_for(lambda r: stages(r, "done"))

    def test_async_payload_limit(self, lam):
        """An Event payload over 256 KB is 413 RequestEntityTooLargeException."""
        from botocore.exceptions import ClientError

        name = unique("evbig")
        create(lam, name, {"app.py": CALLBACK_FN})
        with pytest.raises(ClientError) as exc:
            lam.invoke(FunctionName=name, InvocationType="Event",
                       Payload=json.dumps({"x": "a" * 300_000}).encode())
        assert exc.value.response["Error"]["Code"] == "RequestEntityTooLargeException"


class TestRetries:
    def test_function_error_is_retried_twice(self, make_server, callbacks):
        """A failing Event invoke runs three times in all (two retries)."""
        srv = make_server(extra_env={"CORRAL_ASYNC_RETRY_DELAYS": "0.2,0.2"})
        lam = srv.client()
        name = unique("retry")
        create(lam, name, {"app.py": CALLBACK_FN})
        lam.invoke(FunctionName=name, InvocationType="Event",
                   Payload=json.dumps({"url": callbacks.url, "fail": True}).encode())
        got = callbacks.wait_for(lambda r: len(stages(r, "started")) >= 3)
        time.sleep(1.0)
        assert len(stages(callbacks.received, "started")) == 3
        assert len({r["id"] for r in got}) == 1


class TestDurability:
    def test_event_in_flight_survives_sigkill(self, make_server, callbacks, tmp_path):
        """An event running when the server is SIGKILLed is delivered after restart."""
        data = tmp_path / "durable"
        fast_retries = {"CORRAL_ASYNC_RETRY_DELAYS": "1,1"}  # a failed attempt retries soon
        srv = make_server(data_dir=data, extra_env=fast_retries)
        lam = srv.client()
        name = unique("dur")
        create(lam, name, {"app.py": CALLBACK_FN}, Timeout=20)
        lam.invoke(FunctionName=name, InvocationType="Event",
                   Payload=json.dumps({"url": callbacks.url, "sleep": 3}).encode())
        callbacks.wait_for(lambda r: stages(r, "started"))
        srv.stop(signal.SIGKILL)
        time.sleep(4)  # an orphaned instance (if any survived) would have finished by now
        before = len(stages(callbacks.received, "done"))
        restarted = make_server(data_dir=data, extra_env=fast_retries)
        assert restarted.port
        got = callbacks.wait_for(lambda r: len(stages(r, "done")) > before, timeout=40)
        assert stages(got, "done")[-1]["event"]["sleep"] == 3

    def test_sigterm_leaves_no_instance_process(self, make_server, tmp_path):
        """After SIGTERM no process of any instance remains and the run dir is gone."""
        srv = make_server(data_dir=tmp_path / "term")
        lam = srv.client()
        name = unique("term")
        create(lam, name, {"app.py": "def handler(e, c):\n    return 1\n"})
        for _ in range(2):
            lam.invoke(FunctionName=name, Payload=b"{}")
        assert instance_pids(name), "the warm instance should be running"
        assert srv.stop(signal.SIGTERM) == 0
        assert instance_pids(name) == []
        assert not (tmp_path / "term" / "run").exists() or not any(
            (tmp_path / "term" / "run").iterdir())


def instance_pids(function_name: str) -> list[int]:
    """Host pids of processes whose environment names this function."""
    marker = f"AWS_LAMBDA_FUNCTION_NAME={function_name}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found
