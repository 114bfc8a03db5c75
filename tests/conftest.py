"""Shared fixtures: a real Corral server started as a subprocess, and function packages."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CorralServer:
    """A `corral server` subprocess with its own data dir and port."""

    def __init__(self, data_dir: Path, extra_env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.extra_env = extra_env or {}
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"

    def start(self) -> None:
        env = {**os.environ, **self.extra_env}
        sandbox = os.environ.get("CORRAL_TEST_SANDBOX")
        args = list(self.args)
        if sandbox:
            args += ["--sandbox", sandbox]
            if sandbox == "process":
                args.append("--insecure")
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the subprocess
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "corral.cli.main", "server", "--data-dir", str(self.data_dir),
             "--listen", f"127.0.0.1:{self.port}", *args],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not start in 30 s")

    @property
    def credentials(self) -> dict[str, str]:
        out = subprocess.run(
            [sys.executable, "-m", "corral.cli.main", "env", "--data-dir", str(self.data_dir),
             "--listen", f"127.0.0.1:{self.port}"], capture_output=True, text=True, check=True)
        values = {}
        for line in out.stdout.splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            values[key] = value
        return values

    def client(self, service: str = "lambda", **config: Any) -> Any:
        creds = self.credentials
        return boto3.client(
            service, endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
            config=Config(retries={"max_attempts": 1}, read_timeout=120, **config))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorralServer]:
    """One server shared by the tests that only need a running Corral."""
    srv = CorralServer(tmp_path_factory.mktemp("corral") / "data")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def lam(server: CorralServer) -> Any:
    return server.client("lambda")


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Any]:
    """Start dedicated servers (for restart, crash and shutdown tests)."""
    started: list[CorralServer] = []

    def make(data_dir: Path | None = None, **kwargs: Any) -> CorralServer:
        srv = CorralServer(data_dir or tmp_path / f"data{len(started)}", **kwargs)
        srv.start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop(signal.SIGKILL if srv.proc and srv.proc.poll() is None else signal.SIGTERM)


@pytest.fixture(scope="module")
def make_server_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Dedicated servers shared by one test module (stopped after it)."""
    started: list[CorralServer] = []

    def make(**kwargs: Any) -> CorralServer:
        srv = CorralServer(tmp_path_factory.mktemp("corral-module") / "data", **kwargs)
        srv.start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()
