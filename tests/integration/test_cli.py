"""The `corral` CLI against a real server: deploy, invoke, ls, rm, logs, doctor.

The CLI runs as a subprocess (`python -m corral.cli.main`) with the environment `corral env`
prints, so these tests also prove that `eval "$(corral env)"` is all a user needs; one test
uses `--data-dir` instead.
"""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from functions import PY_ADD, make_zip, unique

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

PRINTING = """
print("init says hello")

def handler(event, context):
    print("marker", event.get("marker"))
    return {"version": VERSION, "sum": event.get("a", 0) + event.get("b", 0)}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("AWS_") and k not in ("CORRAL_PORT", "CORRAL_DATA_DIR")}


@pytest.fixture(scope="module")
def cli_env(server: Any) -> dict[str, str]:
    return {**_base_env(), **server.credentials}


def corral(env: dict[str, str], *args: str, timeout: float = 120,
           stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corral.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, input=stdin)


def ok(env: dict[str, str], *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = corral(env, *args, **kwargs)
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result


def write_function(directory: Path, version: int = 1) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "app.py").write_text(f"VERSION = {version}\n" + textwrap.dedent(PRINTING))
    return directory


def invoke_json(env: dict[str, str], name: str, payload: dict[str, Any]) -> dict[str, Any]:
    result = ok(env, "invoke", name, "--payload", json.dumps(payload), "--json")
    return dict(json.loads(result.stdout))


def poll_logs(env: dict[str, str], name: str, request_id: str,
              timeout: float = 10) -> dict[str, Any]:
    """The `logs --json` block of `request_id` once it is complete (log writes are batched)."""
    deadline = time.monotonic() + timeout
    while True:
        blocks = json.loads(ok(env, "logs", name, "--json").stdout)
        for block in blocks:
            if block["requestId"] == request_id and block["complete"]:
                return dict(block)
        if time.monotonic() > deadline:
            raise AssertionError(f"no complete log block for {request_id}: {blocks}")
        time.sleep(0.5)


class TestDeployAndInvoke:
    def test_deploy_directory_then_invoke(self, cli_env, tmp_path):
        """A Python directory deploys with inferred runtime/handler and invokes to its result."""
        name = unique("cli-dir")
        source = write_function(tmp_path / "src")
        result = ok(cli_env, "deploy", str(source), "--name", name)
        assert name in result.stdout and "python3.11" in result.stdout
        assert "app.handler" in result.stdout and "created" in result.stdout
        assert "inferred" in result.stderr
        out = ok(cli_env, "invoke", name, "--payload", '{"a": 1, "b": 2}')
        assert json.loads(out.stdout) == {"version": 1, "sum": 3}

    def test_redeploy_changes_code(self, cli_env, tmp_path):
        """Deploying again updates the code; an unchanged tree is not re-uploaded."""
        name = unique("cli-redeploy")
        source = write_function(tmp_path / "src", version=1)
        ok(cli_env, "deploy", str(source), "--name", name)
        assert invoke_json(cli_env, name, {})["Payload"]["version"] == 1
        write_function(source, version=2)
        again = ok(cli_env, "deploy", str(source), "--name", name, "--memory", "256", "--json")
        config = json.loads(again.stdout)
        assert config["FunctionName"] == name and config["MemorySize"] == 256
        assert config["LastUpdateStatus"] == "Successful"
        assert invoke_json(cli_env, name, {})["Payload"]["version"] == 2
        same = ok(cli_env, "deploy", str(source), "--name", name)
        assert "unchanged" in same.stdout

    def test_deploy_zip_named_after_file(self, cli_env, tmp_path):
        """A .zip deploys under its stem and runs."""
        name = unique("cli-zip")
        path = tmp_path / f"{name}.zip"
        path.write_bytes(make_zip({"app.py": PY_ADD}))
        ok(cli_env, "deploy", str(path))
        out = ok(cli_env, "invoke", name, "--payload", '{"value1": 10, "value2": 20}')
        assert out.stdout.strip() == "30"

    def test_deploy_node_directory(self, cli_env, tmp_path):
        """An index.js directory is inferred as nodejs20.x / index.handler."""
        name = unique("cli-node")
        source = tmp_path / "node"
        source.mkdir()
        (source / "index.js").write_text(
            "exports.handler = async (event) => event.value1 + event.value2;\n")
        result = ok(cli_env, "deploy", str(source), "--name", name, "--json")
        config = json.loads(result.stdout)
        assert (config["Runtime"], config["Handler"]) == ("nodejs20.x", "index.handler")
        out = ok(cli_env, "invoke", name, "--payload", '{"value1": 1, "value2": 2}')
        assert out.stdout.strip() == "3"

    def test_env_variables(self, cli_env, tmp_path):
        """--env KEY=VALUE reaches the function's environment."""
        name = unique("cli-env")
        source = tmp_path / "envfn"
        source.mkdir()
        (source / "app.py").write_text(
            "import os\n\ndef handler(event, context):\n"
            "    return {k: os.environ.get(k) for k in ('GREETING', 'EMPTY', 'EQ')}\n")
        ok(cli_env, "deploy", str(source), "--name", name, "--env", "GREETING=hi",
           "--env", "EMPTY=", "--env", "EQ=a=b", "--timeout", "10")
        out = ok(cli_env, "invoke", name)
        assert json.loads(out.stdout) == {"GREETING": "hi", "EMPTY": "", "EQ": "a=b"}

    def test_invoke_payload_from_file(self, cli_env, tmp_path):
        """--payload @file sends the file's JSON."""
        name = unique("cli-file")
        ok(cli_env, "deploy", str(write_function(tmp_path / "src")), "--name", name)
        event = tmp_path / "event.json"
        event.write_text('{"a": 40, "b": 2}')
        out = ok(cli_env, "invoke", name, "--payload", f"@{event}")
        assert json.loads(out.stdout)["sum"] == 42
        piped = ok(cli_env, "invoke", name, "--payload", "-", stdin='{"a": 1, "b": 1}')
        assert json.loads(piped.stdout)["sum"] == 2

    def test_invoke_function_error_exits_1(self, cli_env, tmp_path):
        """A function error prints its type and message on stderr and exits 1."""
        name = unique("cli-err")
        source = tmp_path / "err"
        source.mkdir()
        (source / "app.py").write_text("def handler(event, context):\n    return 1 / 0\n")
        ok(cli_env, "deploy", str(source), "--name", name)
        result = corral(cli_env, "invoke", name)
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr.startswith(f"corral: {name} failed: ZeroDivisionError: ")
        as_json = corral(cli_env, "invoke", name, "--json")
        assert as_json.returncode == 1
        body = json.loads(as_json.stdout)
        assert body["FunctionError"] == "Unhandled"
        assert body["Payload"]["errorType"] == "ZeroDivisionError"

    def test_invoke_log_tail(self, cli_env, tmp_path):
        """--log prints the invocation's framed log tail on stderr."""
        name = unique("cli-tail")
        ok(cli_env, "deploy", str(write_function(tmp_path / "src")), "--name", name)
        result = ok(cli_env, "invoke", name, "--log", "--payload", '{"marker": "tailme"}')
        assert "START RequestId:" in result.stderr and "marker tailme" in result.stderr
        assert "REPORT RequestId:" in result.stderr
        assert json.loads(result.stdout)["sum"] == 0

    def test_async_prints_request_id(self, cli_env, tmp_path):
        """--async queues the event, prints its request id, and the function then runs."""
        name = unique("cli-async")
        ok(cli_env, "deploy", str(write_function(tmp_path / "src")), "--name", name)
        result = ok(cli_env, "invoke", name, "--async", "--payload", '{"marker": "queued"}')
        request_id = result.stdout.strip()
        assert UUID_RE.match(request_id)
        block = poll_logs(cli_env, name, request_id)
        assert [line["message"] for line in block["lines"]] == ["marker queued"]

    def test_unknown_function_is_one_line(self, cli_env):
        """An API error is one line `corral: Code: Message` and exit status 1."""
        result = corral(cli_env, "invoke", unique("cli-missing"))
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1
        assert result.stderr.startswith(
            "corral: ResourceNotFoundException: Function not found: arn:aws:lambda:")
        assert "Traceback" not in result.stderr


class TestListAndRemove:
    def test_ls_table_and_json(self, cli_env, tmp_path):
        """ls lists the function in a table and as parseable JSON."""
        name = unique("cli-ls")
        ok(cli_env, "deploy", str(write_function(tmp_path / "src")), "--name", name)
        table = ok(cli_env, "ls").stdout
        row = next(line for line in table.splitlines() if line.startswith(name))
        assert "python3.11" in row and "128 MB" in row
        listed = {f["FunctionName"]: f for f in json.loads(ok(cli_env, "ls", "--json").stdout)}
        assert listed[name]["Runtime"] == "python3.11"

    def test_rm_removes(self, cli_env, tmp_path):
        """rm deletes the functions; removing it again fails with one error line."""
        names = [unique("cli-rm"), unique("cli-rm")]
        for name in names:
            ok(cli_env, "deploy", str(write_function(tmp_path / name)), "--name", name)
        result = ok(cli_env, "rm", *names, "--yes")
        assert all(f"Deleted {name}" in result.stdout for name in names)
        listed = {f["FunctionName"] for f in json.loads(ok(cli_env, "ls", "--json").stdout)}
        assert not listed & set(names)
        again = corral(cli_env, "rm", names[0])
        assert again.returncode == 1 and "ResourceNotFoundException" in again.stderr


class TestLogs:
    def test_logs_grouped_by_request(self, cli_env, tmp_path):
        """logs shows the printed line under its invocation's request id, init separately."""
        name = unique("cli-logs")
        ok(cli_env, "deploy", str(write_function(tmp_path / "src")), "--name", name)
        marker = uuid.uuid4().hex
        request_id = invoke_json(cli_env, name, {"marker": marker})["RequestId"]
        block = poll_logs(cli_env, name, request_id)
        assert [line["message"] for line in block["lines"]] == [f"marker {marker}"]
        assert block["report"]["durationMs"] is not None
        assert block["report"]["memorySizeMb"] == 128

        text = ok(cli_env, "logs", name).stdout.splitlines()
        header = next(i for i, line in enumerate(text) if f"RequestId: {request_id}" in line)
        assert "Duration:" in text[header] and "Billed:" in text[header]
        assert text[header + 1] == f"  marker {marker}"
        init = next(i for i, line in enumerate(text) if " init " in line)
        assert text[init + 1] == "  init says hello" and init < header

        filtered = ok(cli_env, "logs", name, "--filter", marker).stdout
        assert f"RequestId: {request_id}" in filtered and "init says hello" not in filtered

    def test_logs_follow_picks_up_new_invocation(self, cli_env, tmp_path):
        """logs --follow prints a new invocation's line within seconds and stops on SIGTERM."""
        name = unique("cli-follow")
        ok(cli_env, "deploy", str(write_function(tmp_path / "src")), "--name", name)
        proc = subprocess.Popen(
            [sys.executable, "-m", "corral.cli.main", "logs", name, "--follow", "--since", "1m"],
            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout or []],
                                  daemon=True)
        reader.start()
        try:
            time.sleep(1.5)
            marker = uuid.uuid4().hex
            request_id = invoke_json(cli_env, name, {"marker": marker})["RequestId"]
            seen: list[str] = []
            deadline = time.monotonic() + 10
            while not any(marker in line for line in seen):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"follow printed only {seen}; stderr: "
                                         f"{proc.stderr.read() if proc.poll() else ''}")
                try:
                    seen.append(lines.get(timeout=remaining))
                except queue.Empty:
                    continue
            assert any(f"RequestId: {request_id}" in line for line in seen)
        finally:
            proc.terminate()
            code = proc.wait(10)
        assert code == 0
        assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")


class TestDoctorAndConnections:
    def test_doctor(self, cli_env):
        """doctor lists runtimes, isolation and the server's health, and exits 0."""
        result = ok(cli_env, "doctor")
        assert "python3.11" in result.stdout and "provided.al2023" in result.stdout
        assert "sandbox" in result.stdout and "cgroup" in result.stdout
        assert "reachable" in result.stdout and "credentials: ok" in result.stdout
        report = json.loads(ok(cli_env, "doctor", "--json").stdout)
        assert report["server"]["reachable"] and report["server"]["health"]["status"] == "ok"
        assert any(r["name"] == "python3.11" for r in report["runtimes"])

    def test_doctor_without_server_still_exits_0(self, cli_env):
        """doctor reports an unreachable server as a warning, not a failure."""
        env = {**cli_env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
        result = ok(env, "doctor")
        assert "cannot reach the Corral server" in result.stdout

    def test_data_dir_flag(self, server, tmp_path):
        """--data-dir takes the root key from the data dir; CORRAL_PORT picks the port."""
        name = unique("cli-datadir")
        env = {**_base_env(), "CORRAL_PORT": str(server.port)}
        ok(env, "deploy", str(write_function(tmp_path / "src")), "--name", name,
           "--data-dir", str(server.data_dir))
        out = ok(env, "invoke", name, "--data-dir", str(server.data_dir), "--payload",
                 '{"a": 2, "b": 3}')
        assert json.loads(out.stdout)["sum"] == 5
        explicit = ok(_base_env(), "ls", "--data-dir", str(server.data_dir),
                      "--endpoint-url", server.endpoint)
        assert name in explicit.stdout

    def test_server_down_is_one_clear_line(self, cli_env):
        """With no server listening, every command fails with one clear line, exit 1."""
        endpoint = f"http://127.0.0.1:{free_port()}"
        env = {**cli_env, "AWS_ENDPOINT_URL": endpoint}
        for args in (("ls",), ("invoke", "f"), ("logs", "f"), ("rm", "f", "--yes")):
            result = corral(env, *args, timeout=60)
            assert result.returncode == 1, args
            assert result.stderr == (f"corral: cannot reach the Corral server at {endpoint}: "
                                     "is `corral server` running?\n"), args
