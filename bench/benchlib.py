"""Shared machinery for the benchmarks in bench/: servers, the peer, signing, clients, output.

Every benchmark starts what it needs itself and stops it at the end (also on failure):

* `CorralServer`: `python -m corral.cli.main server` on a free loopback port with a temp data dir,
  in its own session so everything it started can be signalled by its process group;
* `Peer`: serverless-offline (npm `serverless@3` + `serverless-offline@13`, installed into
  bench/.peer/ on first use) with a generated serverless.yml, on free loopback ports;
* `Signer`: botocore's `SigV4Auth`, used outside the timed sections; a signed request is replayed
  (Corral does not reject replays within the 5-minute skew window);
* `RawClient`: `http.client` keep-alive connection, the "raw keep-alive HTTP client".

Results go to bench/results/<name>.json with machine info, medians, p10/p90 and target verdicts,
which `run_all.py` turns into docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
PEER_DIR = BENCH / ".peer"
SPEC = "/work/shared/spec/performance.md"
ROLE = "arn:aws:iam::000000000000:role/lambda-role"
REGION = "us-east-1"
PEER_PACKAGES = ("serverless@3", "serverless-offline@13")
# The interpreter Corral runs `python3.11` functions with (system Python preferred, see
# corral.runtimes); the peer is given the same one so both sides run the same Python.
PYTHON_CANDIDATES = ("/usr/bin/python3.11", "/usr/local/bin/python3.11")

PY_TRIVIAL = """
def handler(event, context):
    return {"ok": True}
"""

NODE_TRIVIAL = """
exports.handler = async (event) => ({ ok: true });
"""


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None,
              what: str = "server", log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}: {tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout:.0f} s")


def python311() -> str:
    for path in PYTHON_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return os.path.realpath(sys.executable)


def make_zip(files: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.external_attr = (0o100000 | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            data = content if isinstance(content, bytes) else textwrap.dedent(content)
            zf.writestr(info, data)
    return buf.getvalue()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` in this mount namespace (never rmtree across one)."""
    found = []
    prefix = str(path.resolve())
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4]
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


def remove_tree(path: Path) -> None:
    if not path.exists():
        return
    busy = mounts_under(path)
    if busy:
        log(f"not removing {path}: still mounted: {busy[:3]}")
        return
    shutil.rmtree(path, ignore_errors=True)


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 20.0,
                 group: bool = True) -> int | None:
    """SIGTERM the process (and its process group, which it leads), then SIGKILL if needed."""
    if proc is None:
        return None

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    if proc.poll() is None:
        # The leader first, so it can shut down what it started in order; then the group.
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            proc.wait(10)
    if group:
        # Stragglers of the group (children that outlived the leader).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


# ----------------------------------------------------------------------------------------------
# statistics and verdicts
# ----------------------------------------------------------------------------------------------
def pct(samples: Sequence[float], q: float) -> float:
    """Percentile with linear interpolation (q in 0..100)."""
    data = sorted(samples)
    if not data:
        return float("nan")
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(samples: Sequence[float], digits: int = 3) -> dict[str, Any]:
    if not samples:
        return {"n": 0}
    return {
        "n": len(samples),
        "median": round(statistics.median(samples), digits),
        "p10": round(pct(samples, 10), digits),
        "p90": round(pct(samples, 90), digits),
        "p99": round(pct(samples, 99), digits),
        "min": round(min(samples), digits),
        "max": round(max(samples), digits),
        "mean": round(statistics.fmean(samples), digits),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or a != a or b != b:
        return None
    return round(a / b, 3)


def verdict(metric: str, measured: float | None, target: float, direction: str, unit: str,
            target_text: str, note: str = "", stretch: float | None = None) -> dict[str, Any]:
    """direction "le": measured must be <= target; "ge": measured must be >= target."""
    if measured is None or measured != measured:
        return {"metric": metric, "target": target_text, "target_value": target,
                "direction": direction, "unit": unit, "measured": None, "met": False,
                "verdict": "not measured", "note": note}
    met = measured <= target if direction == "le" else measured >= target
    if met:
        text = "met"
        if stretch is not None:
            hit = measured <= stretch if direction == "le" else measured >= stretch
            text = "met (stretch too)" if hit else f"met (stretch {stretch:g} {unit} missed)"
    elif direction == "le":
        text = (f"missed by {100.0 * (measured / target - 1):.0f}% "
                f"(needs a {100.0 * (1 - target / measured):.0f}% cut)")
    else:
        text = (f"missed by {100.0 * (1 - measured / target):.0f}% "
                f"(needs {target / measured:.2f}x)")
    return {"metric": metric, "target": target_text, "target_value": target,
            "direction": direction, "unit": unit, "measured": round(measured, 4), "met": met,
            "verdict": text, "note": note}


# ----------------------------------------------------------------------------------------------
# machine info, output
# ----------------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "nproc_affinity": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "function_python": python311(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem_total_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True,
                                      timeout=10).stdout.strip()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        info["git"] = out + ("+dirty" if dirty else "")
    return info


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """bench/results/<name>.json, plus a copy in $CORRAL_BENCH_OUT (run_all's own run dir, so a
    concurrent run by someone else cannot swap results under it)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name,
           "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
           "machine": machine_info(), **payload}
    text = json.dumps(doc, indent=2, sort_keys=False) + "\n"
    path = RESULTS / f"{name}.json"
    extra = os.environ.get("CORRAL_BENCH_OUT")
    for target in [path, *([Path(extra) / f"{name}.json"] if extra else [])]:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".json.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(target)
    log(f"wrote {path.relative_to(ROOT)}")
    return path


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    rows = [[("-" if v is None else str(v)) for v in row] for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain fallback
        print(f"\n{title}")
        widths = [max(len(str(c)), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True)))
        for r in rows:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
        return
    table = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    Console(width=160).print(table)


def print_verdicts(verdicts: Sequence[dict[str, Any]]) -> None:
    print_table("Targets (" + SPEC + ")", ["metric", "target", "measured", "verdict"],
                [[v["metric"], v["target"], fmt_measured(v), v["verdict"]] for v in verdicts])


def fmt_measured(v: dict[str, Any]) -> str:
    m = v.get("measured")
    if m is None:
        return "-"
    unit = v.get("unit", "")
    if unit == "x":
        return f"{m:.2f}x"
    if unit in ("req/s", "events/s"):
        return f"{m:,.0f} {unit}"
    if unit == "ms":
        return f"{m:.2f} ms" if m < 100 else f"{m:.0f} ms"
    if unit == "s":
        return f"{m:.3f} s"
    if unit == "MB":
        return f"{m:.1f} MB"
    return f"{m} {unit}".strip()


def ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def common_args(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a fast pass (under 30 s)")
    parser.add_argument("--sandbox", choices=["auto", "linux", "process"], default="auto",
                        help="Corral's sandbox (default auto; 'process' implies --insecure)")
    parser.add_argument("--insecure", action="store_true",
                        help="pass --insecure to the server (lets auto fall back to processes)")
    parser.add_argument("--memory", type=int, default=1792,
                        help="MemorySize of the benchmark functions in MB (default 1792: about one "
                             "full CPU under the MemorySize/1769 cgroup quota, as on AWS)")
    return parser


# ----------------------------------------------------------------------------------------------
# Corral
# ----------------------------------------------------------------------------------------------
class CorralServer:
    """A `corral server` subprocess with its own data dir and port, in its own session."""

    def __init__(self, workdir: Path, sandbox: str = "auto", insecure: bool = False,
                 keep_alive: float | None = None, data_dir: Path | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.data_dir = data_dir or workdir / "data"
        self.sandbox = sandbox
        self.insecure = insecure or sandbox == "process"
        self.keep_alive = keep_alive
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"corral-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._creds: dict[str, str] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> CorralServer:
        args = [sys.executable, "-m", "corral.cli.main", "server", "--data-dir",
                str(self.data_dir), "--listen", f"127.0.0.1:{self.port}",
                "--sandbox", self.sandbox]
        if self.insecure:
            args.append("--insecure")
        if self.keep_alive is not None:
            args += ["--keep-alive", str(self.keep_alive)]
        args += self.extra_args
        logf = open(self.log_path, "ab")  # noqa: SIM115 - owned by the subprocess
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, cwd=str(self.workdir))
        logf.close()
        wait_port(self.port, timeout, self.proc, "corral server", self.log_path)
        return self

    def stop(self, timeout: float = 30.0) -> int | None:
        return stop_process(self.proc, timeout)

    def kill(self) -> None:
        """SIGKILL the server (crash simulation), then its whole process group."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        stop_process(self.proc, 5)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def sandbox_used(self) -> str:
        """The sandbox line the server logged at start, e.g. 'linux (isolated)'."""
        for _ in range(50):
            match = re.search(r"sandbox: (.+)", self.log_text())
            if match:
                return match.group(1).strip()
            time.sleep(0.05)
        return "unknown"

    @property
    def credentials(self) -> dict[str, str]:
        if self._creds is None:
            out = subprocess.run(
                [sys.executable, "-m", "corral.cli.main", "env", "--data-dir",
                 str(self.data_dir), "--listen", f"127.0.0.1:{self.port}"],
                capture_output=True, text=True, check=True, timeout=60)
            values = {}
            for line in out.stdout.splitlines():
                key, _, value = line.removeprefix("export ").partition("=")
                values[key] = value
            self._creds = values
        return self._creds

    def client(self, service: str = "lambda", **config: Any) -> Any:
        import boto3
        from botocore.config import Config

        creds = self.credentials
        return boto3.client(  # type: ignore[call-overload]
            service, endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
            config=Config(retries={"max_attempts": 1}, read_timeout=300, **config))

    def signer(self) -> Signer:
        creds = self.credentials
        return Signer(self.endpoint, creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"])

    def health(self) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", "/_corral/health")
            found: dict[str, Any] = json.loads(conn.getresponse().read())
            return found
        finally:
            conn.close()

    def create_function(self, lam: Any, name: str, zip_bytes: bytes,
                        runtime: str = "python3.11", handler: str = "app.handler",
                        memory: int = 128, timeout: int = 30, **kwargs: Any) -> dict[str, Any]:
        resp = lam.create_function(FunctionName=name, Runtime=runtime, Role=ROLE,
                                   Handler=handler, Code={"ZipFile": zip_bytes},
                                   MemorySize=memory, Timeout=timeout, **kwargs)
        if resp.get("State") != "Active":
            lam.get_waiter("function_active_v2").wait(
                FunctionName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        return dict(resp)


@dataclass
class SignedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Signer:
    """Signs Invoke requests with botocore's SigV4Auth (outside any timed section)."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str) -> None:
        from botocore.auth import SigV4Auth
        from botocore.credentials import Credentials

        self.endpoint = endpoint
        self._auth = SigV4Auth(Credentials(access_key, secret_key), "lambda", REGION)

    def invoke(self, name: str, payload: bytes = b"{}", invocation_type: str = "RequestResponse",
               tail: bool = False) -> SignedRequest:
        from botocore.awsrequest import AWSRequest

        path = f"/2015-03-31/functions/{name}/invocations"
        headers = {"Content-Type": "application/json",
                   "X-Amz-Invocation-Type": invocation_type}
        if tail:
            headers["X-Amz-Log-Type"] = "Tail"
        req = AWSRequest(method="POST", url=self.endpoint + path, data=payload, headers=headers)
        self._auth.add_auth(req)
        prepared = req.prepare()
        out = {k: v for k, v in prepared.headers.items()}
        out["Host"] = self.endpoint.removeprefix("http://")
        return SignedRequest("POST", path, out, payload)


def unsigned_invoke(name: str, payload: bytes = b"{}", invocation_type: str = "RequestResponse",
                    host: str = "") -> SignedRequest:
    """The same request without a signature (serverless-offline does not check one)."""
    headers = {"Content-Type": "application/json", "X-Amz-Invocation-Type": invocation_type}
    if host:
        headers["Host"] = host
    return SignedRequest("POST", f"/2015-03-31/functions/{name}/invocations", headers, payload)


class RawClient:
    """One keep-alive HTTP/1.1 connection (http.client), reconnecting once if it was closed."""

    def __init__(self, port: int, timeout: float = 120.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, req: SignedRequest) -> tuple[int, bytes, dict[str, str]]:
        for attempt in (0, 1):
            try:
                self.conn.request(req.method, req.path, body=req.body, headers=req.headers)
                resp = self.conn.getresponse()
                data = resp.read()
                return resp.status, data, {k.lower(): v for k, v in resp.getheaders()}
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if attempt:
                    raise
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                       timeout=self.timeout)
        raise AssertionError("unreachable")

    def timed(self, req: SignedRequest) -> tuple[float, int, bytes, dict[str, str]]:
        """(milliseconds request to full response, status, body, headers)."""
        t0 = time.perf_counter_ns()
        status, data, headers = self.send(req)
        return (time.perf_counter_ns() - t0) / 1e6, status, data, headers

    def close(self) -> None:
        self.conn.close()


def init_duration_ms(headers: dict[str, str]) -> float | None:
    """`Init Duration` from the REPORT line of a `LogType=Tail` response, if it was cold."""
    import base64

    tail = headers.get("x-amz-log-result")
    if not tail:
        return None
    text = base64.b64decode(tail).decode(errors="replace")
    match = re.search(r"Init Duration: ([0-9.]+) ms", text)
    return float(match.group(1)) if match else None


# ----------------------------------------------------------------------------------------------
# serverless-offline, the peer
# ----------------------------------------------------------------------------------------------
def ensure_peer_installed() -> Path:
    """npm install serverless@3 serverless-offline@13 into bench/.peer/ (once)."""
    sls = PEER_DIR / "node_modules" / ".bin" / "sls"
    if sls.exists() and (PEER_DIR / "node_modules" / "serverless-offline").is_dir():
        return sls
    PEER_DIR.mkdir(parents=True, exist_ok=True)
    pkg = PEER_DIR / "package.json"
    if not pkg.exists():
        pkg.write_text(json.dumps({"name": "corral-bench-peer", "private": True,
                                   "version": "0.0.0"}) + "\n")
    log(f"installing {' '.join(PEER_PACKAGES)} into {PEER_DIR.relative_to(ROOT)} (npm)")
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(PEER_DIR),
                    *PEER_PACKAGES], cwd=PEER_DIR, check=True, timeout=900,
                   stdout=subprocess.DEVNULL)
    if not sls.exists():
        raise RuntimeError("npm install did not produce node_modules/.bin/sls")
    return sls


def peer_version() -> str:
    with contextlib.suppress(OSError, ValueError):
        v = json.loads((PEER_DIR / "node_modules" / "serverless-offline" / "package.json")
                       .read_text())["version"]
        s = json.loads((PEER_DIR / "node_modules" / "serverless" / "package.json")
                       .read_text())["version"]
        return f"serverless-offline {v} + serverless {s}"
    return "serverless-offline (unknown version)"


@dataclass
class PeerFunction:
    handler: str  # e.g. "app.handler" (path relative to the service dir, then the export)
    runtime: str  # python3.11, nodejs20.x


@dataclass
class Peer:
    """serverless-offline with the given functions and handler files, on free ports."""

    functions: dict[str, PeerFunction]
    files: dict[str, str]
    service: str = "bench"
    stage: str = "dev"
    extra_options: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    dir: Path | None = None
    lambda_port: int = 0

    def name(self, function: str) -> str:
        return f"{self.service}-{self.stage}-{function}"

    def _yaml(self) -> str:
        lines = [f"service: {self.service}", "frameworkVersion: '3'", "provider:",
                 "  name: aws", "  runtime: python3.11", f"  stage: {self.stage}",
                 f"  region: {REGION}", "  timeout: 30", "plugins:", "  - serverless-offline",
                 "custom:", "  serverless-offline:", "    noPrependStageInUrl: true",
                 "functions:"]
        for fn, spec in self.functions.items():
            lines += [f"  {fn}:", f"    handler: {spec.handler}", f"    runtime: {spec.runtime}"]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 120.0) -> Peer:
        sls = ensure_peer_installed()
        self.dir = Path(tempfile.mkdtemp(prefix="svc-", dir=PEER_DIR))
        for rel, content in self.files.items():
            path = self.dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(content))
        (self.dir / "serverless.yml").write_text(self._yaml())
        # The peer runs `python3` from PATH: give it the interpreter Corral uses (a pyenv shim
        # in front would add ~50 ms of bash to each of its process starts).
        bindir = self.dir / ".bin"
        bindir.mkdir()
        (bindir / "python3").symlink_to(python311())
        ports = [free_port() for _ in range(4)]
        self.lambda_port = ports[0]
        env = {**os.environ, "SLS_TELEMETRY_DISABLED": "1", "SLS_NOTIFICATIONS_MODE": "off",
               "SLS_INTERACTIVE_SETUP_DISABLE": "1", "AWS_ACCESS_KEY_ID": "x",
               "AWS_SECRET_ACCESS_KEY": "x", "PATH": f"{bindir}:{os.environ.get('PATH', '')}"}
        env.pop("VIRTUAL_ENV", None)
        # Not in a Corral sandbox either; it makes every Node.js start load a CA bundle.
        env.pop("NODE_EXTRA_CA_CERTS", None)
        self.log_path = self.dir / "offline.log"
        logf = open(self.log_path, "ab")  # noqa: SIM115 - owned by the subprocess
        self.proc = subprocess.Popen(
            [str(sls), "offline", "start", "--host", "127.0.0.1",
             "--lambdaPort", str(ports[0]), "--httpPort", str(ports[1]),
             "--websocketPort", str(ports[2]), "--albPort", str(ports[3]), "--noTimeout",
             *self.extra_options],
            cwd=self.dir, env=env, stdout=logf, stderr=subprocess.STDOUT,
            start_new_session=True)
        logf.close()
        wait_port(self.lambda_port, timeout, self.proc, "serverless-offline", self.log_path)
        return self

    def stop(self) -> None:
        stop_process(self.proc, 10)
        if self.dir is not None:
            remove_tree(self.dir)

    def request(self, function: str, payload: bytes = b"{}",
                invocation_type: str = "RequestResponse") -> SignedRequest:
        return unsigned_invoke(self.name(function), payload, invocation_type,
                               host=f"127.0.0.1:{self.lambda_port}")

    def python_pids(self) -> list[int]:
        """This peer's Python handler processes (descendants running its invoke.py)."""
        if self.proc is None:
            return []
        out = []
        for pid in descendants(self.proc.pid):
            cmd = cmdline(pid)
            if "invoke.py" in cmd and os.path.basename(cmd.split(" ", 1)[0]).startswith("python"):
                out.append(pid)
        return out


# ----------------------------------------------------------------------------------------------
# /proc
# ----------------------------------------------------------------------------------------------
def iter_procs() -> Iterator[tuple[int, str]]:
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
            yield int(entry.name), cmd


def proc_environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def pids_with_env(key: str, value: str) -> list[int]:
    return [pid for pid, _ in iter_procs() if proc_environ(pid).get(key) == value]


def smaps_rollup(pid: int) -> dict[str, int]:
    """Fields of /proc/<pid>/smaps_rollup in kB."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def status_kb(pid: int, field_name: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return None


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p, _ in iter_procs():
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{p}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(p)
    out, todo = [], [pid]
    while todo:
        cur = todo.pop()
        for c in children.get(cur, []):
            out.append(c)
            todo.append(c)
    return out


LOCK_PATH = Path(tempfile.gettempdir()) / "corral-bench.lock"
LOCK_WAIT_S = 900.0


@contextlib.contextmanager
def host_lock(what: str) -> Iterator[None]:
    """One benchmark at a time on this host: two overlapping runs would measure each other.

    Waits (bounded) for a benchmark someone else started; proceeds with a warning after
    LOCK_WAIT_S. The lock is an flock, released when the process exits, whatever happens.
    """
    import fcntl

    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                    log(f"waiting for another benchmark to finish ({holder or 'unknown'})")
                    waited = True
                if time.monotonic() > deadline:
                    log("gave up waiting for the benchmark lock: results may be disturbed")
                    break
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} {what} since {time.strftime('%H:%M:%S')}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A temp dir for the run, held with the host-wide benchmark lock."""
    with host_lock(prefix):
        path = Path(tempfile.mkdtemp(prefix=f"corral-bench-{prefix}-"))
        try:
            yield path
        finally:
            remove_tree(path)


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live descendants, including their reaped children."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / ticks


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


class Background:
    """Runs a slow start (the peer's) in a thread while the caller starts Corral."""

    def __init__(self, start: Callable[[], None]) -> None:
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(start,), daemon=True)
        self._thread.start()

    def _run(self, start: Callable[[], None]) -> None:
        try:
            start()
        except BaseException as exc:  # handed to the caller by join()
            self.error = exc

    def join(self, timeout: float = 180.0, *, raise_error: bool = True) -> None:
        self._thread.join(timeout)
        if raise_error and self.error is not None:
            raise self.error
