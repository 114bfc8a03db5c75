"""Escapes attempted by real functions through the real server, in the Linux sandbox.

Each attack runs as function code invoked with boto3; it must fail, and the server and other
functions must stay healthy afterwards. Positive checks confirm the limits are really applied.
"""

from __future__ import annotations

import json
import os
import socket
import threading

import pytest

from functions import create, unique

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or os.environ.get("CORRAL_TEST_SANDBOX") == "process",
    reason="needs root and the Linux sandbox")

PROBE = '''
import ctypes, errno, json, os, socket, subprocess, sys, time

libc = ctypes.CDLL(None, use_errno=True)


def attempt(fn):
    try:
        out = fn()
        return {"ok": True, "value": out if isinstance(out, (int, str, bool)) else repr(out)}
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__, "errno": getattr(exc, "errno", None)}


def syscall_errno(ret):
    return ctypes.get_errno() if ret != 0 else 0


def handler(event, context):
    kind = event["kind"]
    if kind == "read":
        return attempt(lambda: open(event["path"], "rb").read(64).decode("latin-1"))
    if kind == "listdir":
        return attempt(lambda: os.listdir(event["path"]))
    if kind == "write":
        return attempt(lambda: open(event["path"], "w").write("x"))
    if kind == "env":
        return dict(os.environ)
    if kind == "pids":
        return sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    if kind == "status":
        return {k: v.strip() for k, v in (l.split(":", 1) for l in open("/proc/self/status")
                                             if ":" in l)}
    if kind == "mount":
        return syscall_errno(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, None))
    if kind == "unshare":
        return syscall_errno(libc.unshare(0x00020000))  # CLONE_NEWNS
    if kind == "ptrace":
        return syscall_errno(libc.ptrace(0, 0, None, None))  # PTRACE_TRACEME
    if kind == "raw_socket":
        return attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
    if kind == "connect":
        return attempt(lambda: socket.create_connection(("127.0.0.1", event["port"]), timeout=2)
                       .recv(16).decode())
    if kind == "forkbomb":
        pids, err = [], None
        try:
            for _ in range(5000):
                pid = os.fork()
                if pid == 0:  # exec at once: a tiny process, so pids run out before memory
                    os.execv("/bin/sleep", ["sleep", "5"])
                pids.append(pid)
        except OSError as exc:
            err = exc.errno
        for pid in pids:
            os.kill(pid, 9)
        for pid in pids:
            os.waitpid(pid, 0)
        return {"forked": len(pids), "errno": err}
    if kind == "alloc":
        blob = bytearray(event["mb"] * 1024 * 1024)
        for i in range(0, len(blob), 4096):
            blob[i] = 1
        return len(blob) // (1024 * 1024)
    if kind == "fill_tmp":
        written = 0
        try:
            with open("/tmp/fill", "wb") as f:
                chunk = b"x" * (1024 * 1024)
                while written < event["mb"]:
                    f.write(chunk)
                    f.flush()
                    written += 1
                os.fsync(f.fileno())
        except OSError as exc:
            os.unlink("/tmp/fill")
            return {"written_mb": written, "errno": exc.errno}
        os.unlink("/tmp/fill")
        return {"written_mb": written, "errno": None}
    if kind == "spin":
        end = time.time() + event["seconds"]
        start_cpu = time.process_time()
        while time.time() < end:
            pass
        return (time.process_time() - start_cpu) / event["seconds"]
    if kind == "whoami":
        return {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid(),
                "hostname": socket.gethostname(), "cwd": os.getcwd()}
    return "unknown"
'''


def call(lam, name, **event):
    resp = lam.invoke(FunctionName=name, Payload=json.dumps(event).encode())
    body = json.loads(resp["Payload"].read())
    return resp, body


@pytest.fixture(scope="module")
def probe(server):
    lam = server.client()
    name = unique("probe")
    create(lam, name, {"app.py": PROBE}, Timeout=30, MemorySize=128)
    return lam, name


class TestConfidentiality:
    def test_cannot_read_shadow(self, probe):
        """/etc/shadow is not visible inside the sandbox."""
        lam, name = probe
        assert call(lam, name, kind="read", path="/etc/shadow")[1]["ok"] is False

    def test_cannot_read_server_data_dir(self, probe, server):
        """The server's data directory (keys, database) is not visible."""
        lam, name = probe
        for path in (server.data_dir / "keys.json", server.data_dir / "corral.db"):
            assert call(lam, name, kind="read", path=str(path))[1]["ok"] is False

    def test_cannot_read_other_functions_code(self, probe, server):
        """Another function's package on the host is not visible."""
        lam, name = probe
        other = unique("victim")
        create(lam, other, {"app.py": "SECRET = 'x'\ndef handler(e, c):\n    return 1\n"})
        trees = server.data_dir / "code" / "trees"
        assert call(lam, name, kind="listdir", path=str(trees))[1]["ok"] is False
        listing = call(lam, name, kind="listdir", path="/var/task")[1]
        assert listing["ok"] and "app.py" in listing["value"]

    def test_cannot_see_host_processes(self, probe):
        """Only the sandbox's own processes appear in /proc."""
        lam, name = probe
        pids = call(lam, name, kind="pids")[1]
        assert len(pids) <= 3 and 1 in pids
        assert os.getpid() not in pids or len(pids) <= 3

    def test_server_environment_is_not_inherited(self, make_server):
        """A secret in the server's environment does not reach functions."""
        srv = make_server(extra_env={"CORRAL_TEST_SECRET_VALUE": "hunter2"})
        lam = srv.client()
        name = unique("envprobe")
        create(lam, name, {"app.py": PROBE})
        env = call(lam, name, kind="env")[1]
        assert "CORRAL_TEST_SECRET_VALUE" not in env
        assert "hunter2" not in json.dumps(env)
        assert env["AWS_LAMBDA_FUNCTION_NAME"] == name


class TestIntegrity:
    @pytest.mark.parametrize("path", ["/var/task/app.py", "/var/task/new.py", "/usr/evil",
                                      "/etc/passwd"])
    def test_read_only_paths(self, probe, path):
        """Code, system directories and /etc cannot be written."""
        lam, name = probe
        assert call(lam, name, kind="write", path=path)[1]["ok"] is False

    @pytest.mark.parametrize("kind", ["mount", "unshare", "ptrace"])
    def test_privileged_syscalls_fail(self, probe, kind):
        """mount, unshare and ptrace are refused with EPERM."""
        lam, name = probe
        assert call(lam, name, kind=kind)[1] == 1  # EPERM

    def test_raw_socket_fails(self, probe):
        """A raw socket cannot be opened."""
        lam, name = probe
        assert call(lam, name, kind="raw_socket")[1]["ok"] is False


class TestResources:
    def test_fork_bomb_is_contained(self, server):
        """A fork bomb hits the pids limit; the function and the server carry on."""
        lam = server.client()
        name = unique("forkbomb")
        # 512 MB so that the pids limit, not the memory limit, is what stops the bomb.
        create(lam, name, {"app.py": PROBE}, Timeout=30, MemorySize=512)
        result = call(lam, name, kind="forkbomb")[1]
        assert result["errno"] == 11  # EAGAIN
        assert result["forked"] < 1100
        assert call(lam, name, kind="whoami")[1]["uid"] != 0

    def test_out_of_memory(self, probe):
        """Allocating twice the memory size is an OOM error; the next invoke works."""
        lam, name = probe
        resp, body = call(lam, name, kind="alloc", mb=256)
        assert resp["FunctionError"] == "Unhandled"
        assert body["errorType"] in ("Runtime.OutOfMemory", "Runtime.ExitError")
        assert "signal: killed" in body["errorMessage"]
        assert call(lam, name, kind="alloc", mb=16)[1] == 16

    def test_tmp_is_capped(self, probe):
        """Writing past the 512 MB /tmp cap fails with ENOSPC, not an OOM kill."""
        lam, name = probe
        result = call(lam, name, kind="fill_tmp", mb=700)[1]
        assert result["errno"] == 28  # ENOSPC
        assert 400 <= result["written_mb"] <= 520

    def test_max_memory_used_tracks_allocation(self, server):
        """REPORT's Max Memory Used reflects a known allocation."""
        import base64

        lam = server.client()
        name = unique("memreport")
        create(lam, name, {"app.py": PROBE}, MemorySize=512)
        resp = lam.invoke(FunctionName=name, LogType="Tail",
                          Payload=json.dumps({"kind": "alloc", "mb": 200}).encode())
        tail = base64.b64decode(resp["LogResult"]).decode()
        used = int(tail.split("Max Memory Used: ")[1].split(" MB")[0])
        assert 200 <= used <= 260, tail


class TestPositive:
    def test_status_shows_seccomp_and_no_capabilities(self, probe):
        """/proc/self/status shows a seccomp filter, no_new_privs and no capabilities."""
        lam, name = probe
        status = call(lam, name, kind="status")[1]
        assert status["Seccomp"] == "2"
        assert status["NoNewPrivs"] == "1"
        for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[key], 16) == 0, key
        who = call(lam, name, kind="whoami")[1]
        assert who["uid"] != 0 and who["cwd"] == "/var/task"

    @pytest.mark.parametrize(("memory", "low", "high"), [(128, 0.03, 0.15), (1792, 0.7, 1.1)])
    def test_cpu_is_proportional_to_memory(self, server, memory, low, high):
        """A 128 MB function gets about 7% of a CPU, a 1792 MB one about one CPU (relative to
        what an unconfined process gets on this machine right now, for busy hosts)."""
        lam = server.client()
        name = unique(f"cpu{memory}")
        create(lam, name, {"app.py": PROBE}, MemorySize=memory)
        call(lam, name, kind="whoami")  # init happens without a quota
        share = call(lam, name, kind="spin", seconds=1.0)[1]
        available = min(1.0, _unconfined_share(1.0))
        if memory >= 1769:
            low = min(low, 0.6 * available)
        assert low <= share <= high, (share, available)


class TestNetwork:
    def test_network_none_cannot_reach_host_loopback(self, server):
        """With corral:network=none a function cannot connect to the host's loopback."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                conn.sendall(b"host-secret")
                conn.close()
            except OSError:
                pass

        threading.Thread(target=serve, daemon=True).start()
        lam = server.client()
        isolated, open_ = unique("netnone"), unique("nethost")
        create(lam, isolated, {"app.py": PROBE}, Tags={"corral:network": "none"})
        create(lam, open_, {"app.py": PROBE}, Tags={"corral:network": "host"})
        try:
            assert call(lam, isolated, kind="connect", port=port)[1]["ok"] is False
            reached = call(lam, open_, kind="connect", port=port)[1]
            assert reached == {"ok": True, "value": "host-secret"}
        finally:
            listener.close()


def _unconfined_share(seconds: float) -> float:
    """The CPU share a plain spinning process gets here right now."""
    import time

    end = time.time() + seconds
    start = time.process_time()
    while time.time() < end:
        pass
    return (time.process_time() - start) / seconds
