"""Escape attempts from inside real Linux sandboxes (root only).

Every test spawns real sandboxes running small Python scripts with the system interpreter
(`/usr/bin/python3 -S -I -c CODE`). The scripts *try* to break out: read the host's secrets,
see its processes, write where they must not, exhaust pids, memory and disk, mount, ptrace,
unshare, open raw sockets, reach the host's loopback. Each attempt must fail the way the kernel
reports it (ENOENT, EROFS, EAGAIN, ENOSPC, EPERM, SIGKILL by the OOM killer), and the host and a
bystander instance must stay healthy. The positive side checks the security state the kernel
reports (/proc/self/status) and that memory and CPU accounting match what Lambda promises.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.sandbox.api import ExitStatus, SandboxSpec
from sandbox_helpers import collect

PY = "/usr/bin/python3"
UID = 10001
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the Linux sandbox needs root"),
    pytest.mark.skipif(not os.access(PY, os.X_OK), reason=f"{PY} is missing"),
    pytest.mark.timeout(120),
]


# ----------------------------------------------------------------------------- harness


class Host:
    """The host side of the tests: a factory, two functions' code dirs and a secret."""

    def __init__(self, base: Path) -> None:
        from corral.sandbox.linux import LinuxSandboxFactory

        self.base = base
        self.code = self._dir("fn-a", {"handler.py": "print('a')\n"})
        self.other_code = self._dir("fn-b", {"secret_b.py": "TOKEN = 'function-b-token'\n"})
        self.runtime = self._dir("runtime", {"bootstrap": "#!/bin/sh\n"})
        self.data_dir = base / "server-data"
        self.data_dir.mkdir(mode=0o700)
        self.secret = "server-secret-7f3a9c"
        (self.data_dir / "credentials").write_text(self.secret)
        self.factory = LinuxSandboxFactory(base / "run")

    def _dir(self, name: str, files: dict[str, str]) -> Path:
        path = self.base / name
        path.mkdir(mode=0o755)
        for file, content in files.items():
            (path / file).write_text(content)
        return path

    def spec(self, code: str, **overrides: Any) -> SandboxSpec:
        fields: dict[str, Any] = {
            "instance_id": "attacker", "argv": [PY, "-S", "-I", "-c", code],
            "env": {"PATH": "/usr/bin:/bin", "AWS_LAMBDA_FUNCTION_NAME": "fn-a"},
            "code_dir": self.code, "runtime_dir": self.runtime, "memory_mb": 256,
            "ephemeral_mb": 512, "pids_max": 256,
        }
        fields.update(overrides)
        return SandboxSpec(**fields)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    made = Host(tmp_path_factory.mktemp("escapes"))
    yield made
    asyncio.run(made.factory.close())


async def read_line(sandbox: Any, timeout: float = 20.0) -> str:
    """The first line the sandbox writes to its log (while it keeps running)."""
    loop = asyncio.get_running_loop()
    fd = sandbox.log_fd
    os.set_blocking(fd, False)
    data = b""
    deadline = loop.time() + timeout
    while b"\n" not in data:
        assert loop.time() < deadline, data
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            await asyncio.sleep(0.02)
            continue
        assert chunk, "log closed before a full line"
        data += chunk
    return data.decode().splitlines()[0]


async def attempt(host: Host, code: str, **overrides: Any) -> tuple[ExitStatus, str]:
    sandbox = await host.factory.spawn(host.spec(code, **overrides))
    try:
        return await collect(sandbox)
    finally:
        await sandbox.destroy()


def run_json(host: Host, code: str, **overrides: Any) -> Any:
    """Run `code` (which prints one JSON document) and return the decoded result."""
    status, out = asyncio.run(attempt(host, code, **overrides))
    assert status.code == 0, out
    return json.loads(out)


# Scripts share this prelude: `err(fn)` is the errno name a call fails with, or "OK".
PRELUDE = """
import ctypes, errno, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def err(fn):
    try:
        r = fn()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    if isinstance(r, int) and r == -1:
        return errno.errorcode[ctypes.get_errno()]
    return "OK"
def read(path):
    with open(path) as f:
        return f.read()
"""


class Bystander:
    """Another instance that must keep working while its neighbour attacks."""

    CODE = "import os\nwhile True:\n    data = os.read(3, 64)\n    if not data: break\n" \
           "    os.write(3, data.upper())\n"

    def __init__(self, host: Host) -> None:
        self.host = host
        self.sandbox: Any = None

    async def __aenter__(self) -> Bystander:
        self.sandbox = await self.host.factory.spawn(
            self.host.spec(self.CODE, instance_id="bystander", memory_mb=128))
        await self.check()
        return self

    async def check(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.sandbox.control, b"ping")
        assert await asyncio.wait_for(loop.sock_recv(self.sandbox.control, 64), 10) == b"PING"

    async def __aexit__(self, *exc: object) -> None:
        await self.sandbox.destroy()


def host_is_healthy() -> None:
    assert subprocess.run(["true"], check=False).returncode == 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))


# ------------------------------------------------------------------------ reading secrets


def test_cannot_read_etc_shadow(host: Host) -> None:
    """/etc/shadow and gshadow do not exist inside; /etc/passwd lists only the sandbox's users."""
    result = run_json(host, PRELUDE + """
print(json.dumps({"shadow": err(lambda: read("/etc/shadow")),
                  "gshadow": err(lambda: read("/etc/gshadow")),
                  "users": sorted(l.split(":")[0] for l in read("/etc/passwd").splitlines())}))
""")
    assert result == {"shadow": "ENOENT", "gshadow": "ENOENT",
                      "users": ["nobody", "root", "sbx_user1051"]}


def test_cannot_read_server_data_dir(host: Host) -> None:
    """Neither the server's data dir path nor its secret is reachable anywhere in the sandbox."""
    result = run_json(host, PRELUDE + f"""
found = []
for top in ("/etc", "/var", "/tmp", "/opt", "/dev/shm", "/bin"):
    for root, dirs, files in os.walk(top):
        for name in files:
            try:
                if {host.secret!r} in read(os.path.join(root, name)):
                    found.append(os.path.join(root, name))
            except (OSError, UnicodeDecodeError):
                pass
print(json.dumps({{"direct": err(lambda: read({str(host.data_dir / "credentials")!r})),
                  "dir": os.path.exists({str(host.data_dir)!r}),
                  "base": os.path.exists({str(host.base)!r}), "found": found}}))
""")
    assert result == {"direct": "ENOENT", "dir": False, "base": False, "found": []}


def test_cannot_read_another_functions_code(host: Host) -> None:
    """Function A sees only its own code at /var/task; B's code dir does not exist for it."""
    result = run_json(host, PRELUDE + f"""
print(json.dumps({{"task": sorted(os.listdir("/var/task")),
                  "other": err(lambda: read({str(host.other_code / "secret_b.py")!r})),
                  "other_dir": os.path.exists({str(host.other_code)!r})}}))
""")
    assert result == {"task": ["handler.py"], "other": "ENOENT", "other_dir": False}


def test_sees_only_its_own_processes(host: Host) -> None:
    """/proc lists only the sandbox's processes: its init (pid 1) and its own child."""
    result = run_json(host, PRELUDE + """
import time
child = os.fork()
if child == 0:
    time.sleep(30)
    os._exit(0)
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
cmd = read("/proc/1/cmdline").split("\\0")[:3]
os.kill(child, 9)
print(json.dumps({"pids": pids, "child": child, "cmd": cmd, "ppid": os.getppid()}))
""")
    assert result["pids"] == sorted([1, result["child"]])
    assert result["cmd"] == [PY, "-S", "-I"] and result["ppid"] == 0


def test_cannot_read_host_environment(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret in the server's environment is absent from the function's, which holds
    exactly what the spec gave plus the control fd variable."""
    monkeypatch.setenv("CORRAL_TEST_SERVER_SECRET", "env-secret-4411")
    result = run_json(host, PRELUDE + """
print(json.dumps({"env": sorted(k for k in os.environ if k != "LC_CTYPE"),
                  "init": "env-secret-4411" in read("/proc/1/environ")}))
""")
    # LC_CTYPE is set by Python itself at startup (PEP 538 locale coercion), not by us
    assert result == {"env": ["AWS_LAMBDA_FUNCTION_NAME", "CORRAL_CONTROL_FD", "PATH"],
                      "init": False}


# --------------------------------------------------------------------------- writing


def test_cannot_write_code_runtime_usr_etc_or_root(host: Host) -> None:
    """Every path outside /tmp and /dev/shm is read-only (EROFS), whoever owns it."""
    result = run_json(host, PRELUDE + """
def write(path):
    with open(path, "w") as f:
        f.write("x")
targets = ["/var/task/handler.py", "/var/task/new.py", "/var/runtime/x", "/usr/bin/evil",
           "/usr/lib/x", "/etc/passwd", "/etc/evil", "/evil", "/opt/x", "/var/evil"]
out = {t: err(lambda t=t: write(t)) for t in targets}
out["mkdir /usr/x"] = err(lambda: os.mkdir("/usr/x"))
out["chmod task"] = err(lambda: os.chmod("/var/task/handler.py", 0o777))
out["tmp"] = err(lambda: write("/tmp/ok"))
out["shm"] = err(lambda: write("/dev/shm/ok"))
print(json.dumps(out))
""")
    allowed = {"tmp": "OK", "shm": "OK"}
    for target, outcome in result.items():
        assert outcome == allowed.get(target, "EROFS"), (target, outcome)


def test_setuid_binary_does_not_grant_root(host: Host) -> None:
    """A setuid-root program in the code dir runs with the sandbox uid (nosuid, no_new_privs)."""
    suid = host.code / "suid-python"
    shutil.copy(PY, suid)
    os.chmod(suid, 0o4755)
    try:
        status, out = asyncio.run(attempt(host, "", argv=[
            "/var/task/suid-python", "-S", "-I", "-c", "import os; print(os.geteuid())"]))
        assert status.code == 0 and out.strip() == str(UID)
    finally:
        suid.unlink()


def test_no_devices_beyond_the_minimal_set(host: Host) -> None:
    """Only harmless device nodes exist, new ones cannot be made, /sys is absent, and the
    sensitive /proc files are masked."""
    result = run_json(host, PRELUDE + """
print(json.dumps({"dev": sorted(os.listdir("/dev")),
                  "mknod": err(lambda: os.mknod("/tmp/sda", 0o600 | 0o060000, os.makedev(8, 0))),
                  "sys": os.path.exists("/sys"),
                  "kcore": os.path.getsize("/proc/kcore") if os.path.exists("/proc/kcore") else 0,
                  "timer_list": read("/proc/timer_list"),
                  "sysrq": err(lambda: open("/proc/sysrq-trigger", "w").write("b"))}))
""")
    assert result["dev"] == ["fd", "full", "null", "random", "shm", "stderr", "stdin",
                             "stdout", "tty", "urandom", "zero"]
    assert result["mknod"] == "EPERM" and result["sys"] is False
    assert result["kcore"] == 0 and result["timer_list"] == ""
    assert result["sysrq"] in ("EACCES", "EROFS", "EPERM", "ENOENT")  # ENOENT: no SysRq


# ------------------------------------------------------------------------- exhaustion


def test_fork_bomb_hits_the_pids_limit(host: Host) -> None:
    """Forking without end fails with EAGAIN at the pids limit; a bystander instance and the
    host keep working, and destroy() leaves no process behind."""
    code = PRELUDE + """
import time
children, error = 0, None
while True:
    try:
        pid = os.fork()
    except OSError as e:
        error = errno.errorcode[e.errno]
        break
    if pid == 0:
        try:
            os.fork()  # grandchildren compete for the same limit
        except OSError:
            pass
        time.sleep(60)
        os._exit(0)
    children += 1
print(json.dumps({"children": children, "error": error}), flush=True)
time.sleep(60)
"""

    async def scenario() -> tuple[dict[str, Any], list[int]]:
        async with Bystander(host) as bystander:
            sandbox = await host.factory.spawn(host.spec(code, pids_max=64))
            line = await read_line(sandbox)
            pids = sandbox.cgroup_pids()
            await bystander.check()
            host_is_healthy()
            await sandbox.destroy()
            await bystander.check()
            return json.loads(line), pids

    result, pids = asyncio.run(scenario())
    assert result["error"] == "EAGAIN"
    assert 10 <= result["children"] < 64
    assert 50 <= len(pids) <= 64
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    host_is_healthy()


def test_allocating_twice_the_memory_is_oom_killed(host: Host) -> None:
    """Touching 2x MemorySize gets the instance SIGKILLed with oom_killed=True; a bystander
    survives and the next instance works."""
    code = "data = b'x' * (256 << 20)\nprint('survived', len(data))\n"

    async def scenario() -> tuple[ExitStatus, str, ExitStatus]:
        async with Bystander(host) as bystander:
            status, out = await attempt(host, code, memory_mb=128)
            await bystander.check()
            after, _ = await attempt(host, "print('next')", memory_mb=128)
            return status, out, after

    status, out, after = asyncio.run(scenario())
    assert status.signal == 9 and status.oom_killed, (status, out)
    assert status.describe() == "signal: killed"
    assert "survived" not in out
    assert after.code == 0 and not after.oom_killed
    host_is_healthy()


def test_writing_past_the_tmp_cap_gives_enospc(host: Host) -> None:
    """/tmp fills up with ENOSPC at EphemeralStorage (larger than the memory limit: the data
    is on disk, not charged as unreclaimable memory) and the process lives on."""
    result = run_json(host, PRELUDE + """
written, error = 0, None
try:
    with open("/tmp/fill", "wb") as f:
        while True:
            f.write(b"x" * (1 << 20))
            written += 1
except OSError as e:
    error = errno.errorcode[e.errno]
st = os.statvfs("/tmp")
os.unlink("/tmp/fill")
with open("/tmp/after", "w") as f:
    f.write("still alive")
print(json.dumps({"written": written, "error": error,
                  "size_mb": st.f_blocks * st.f_frsize >> 20, "alive": read("/tmp/after")}))
""", memory_mb=128, ephemeral_mb=192)
    assert result["error"] == "ENOSPC"
    assert 192 <= result["written"] <= 200
    assert result["alive"] == "still alive"


# ------------------------------------------------------------------------ privileges


def test_mount_ptrace_unshare_and_raw_sockets_fail(host: Host) -> None:
    """Mounting, ptrace (TRACEME and ATTACH), unshare, setns, chroot, raw, packet and vsock
    sockets (vsock would reach the hypervisor), bpf, keyrings, perf, module loading and
    reboot all fail with EPERM."""
    result = run_json(host, PRELUDE + """
import platform, time
child = os.fork()
if child == 0:
    time.sleep(30)
    os._exit(0)
nr = {"bpf": 321, "perf_event_open": 298, "keyctl": 250, "init_module": 175,
      "kexec_load": 246, "io_uring_setup": 425, "userfaultfd": 323}
out = {
    "mount": err(lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
    "mount_proc": err(lambda: libc.mount(b"proc", b"/tmp", b"proc", 0, None)),
    "umount": err(lambda: libc.umount2(b"/proc", 2)),
    "ptrace_traceme": err(lambda: libc.ptrace(0, 0, None, None)),
    "ptrace_attach": err(lambda: libc.ptrace(16, child, None, None)),
    "unshare_user": err(lambda: libc.unshare(0x10000000)),
    "unshare_ns": err(lambda: libc.unshare(0x00020000)),
    "setns": err(lambda: libc.setns(os.open("/proc/self/ns/net", os.O_RDONLY), 0)),
    "chroot": err(lambda: os.chroot("/tmp")),
    "raw_socket": err(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)),
    "raw6_socket": err(lambda: socket.socket(socket.AF_INET6, socket.SOCK_RAW, 58)),
    "packet_socket": err(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)),
    "vsock_socket": err(lambda: socket.socket(40, socket.SOCK_STREAM)),
    "setuid0": err(lambda: os.setuid(0)),
    "reboot": err(lambda: libc.reboot(0x4321fedc)),
    "sethostname": err(lambda: libc.sethostname(b"evil", 4)),
}
if platform.machine() == "x86_64":
    for name, number in nr.items():
        out[name] = err(lambda number=number: libc.syscall(ctypes.c_long(number), 0, 0, 0, 0, 0))
os.kill(child, 9)
print(json.dumps(out))
""")
    for name, outcome in result.items():
        assert outcome == "EPERM", (name, outcome)
    assert {"mount", "ptrace_traceme", "ptrace_attach", "unshare_user", "raw_socket"} <= set(
        result)


def test_status_shows_seccomp_and_no_capabilities(host: Host) -> None:
    """/proc/self/status: seccomp filter mode, no_new_privs, every capability set empty, the
    unprivileged uid and gid everywhere, no supplementary groups."""
    result = run_json(host, PRELUDE + """
status = dict(l.split(":", 1) for l in read("/proc/self/status").splitlines() if ":" in l)
print(json.dumps({k: status[k].split() for k in ("Seccomp", "NoNewPrivs", "CapEff", "CapPrm",
                  "CapBnd", "CapInh", "CapAmb", "Uid", "Gid", "Groups")}))
""")
    zero = ["0000000000000000"]
    assert result == {"Seccomp": ["2"], "NoNewPrivs": ["1"], "CapEff": zero, "CapPrm": zero,
                      "CapBnd": zero, "CapInh": zero, "CapAmb": zero, "Uid": [str(UID)] * 4,
                      "Gid": [str(UID)] * 4, "Groups": []}


# --------------------------------------------------------------------------- network


def test_network_none_cannot_reach_host_loopback(host: Host) -> None:
    """With network=none a server on the host's 127.0.0.1 is unreachable (refused: the
    sandbox's loopback is its own) and other addresses have no route; with network=host the
    same connection succeeds (the control case)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        code = PRELUDE + f"""
def connect(addr):
    s = socket.create_connection(addr, timeout=2)
    s.close()
print(json.dumps({{"loopback": err(lambda: connect(("127.0.0.1", {port}))),
                  "outside": err(lambda: connect(("10.255.255.1", 80)))}}))
"""
        isolated = run_json(host, code, network="none")
        shared = run_json(host, code, network="host")
    assert isolated == {"loopback": "ECONNREFUSED", "outside": "ENETUNREACH"}
    assert shared["loopback"] == "OK"


# ------------------------------------------------------------------------ accounting

_HANDSHAKE = """
import os, time
os.write(3, b"r")
os.read(3, 1)
"""


async def _interact(host: Host, code: str, memory_mb: int, before_go: Any) -> tuple[str, Any]:
    sandbox = await host.factory.spawn(host.spec(code, memory_mb=memory_mb))
    try:
        loop = asyncio.get_running_loop()
        assert await asyncio.wait_for(loop.sock_recv(sandbox.control, 1), 10) == b"r"
        extra = before_go(sandbox)
        await loop.sock_sendall(sandbox.control, b"g")
        if code.rstrip().endswith("os.read(3, 1)"):  # the script reports through fd 3 first
            assert await asyncio.wait_for(loop.sock_recv(sandbox.control, 1), 10) == b"k"
            extra = (extra, sandbox.memory_peak_bytes())
            await loop.sock_sendall(sandbox.control, b"q")
        status, out = await collect(sandbox)
        assert status.code == 0, out
        return out, extra
    finally:
        await sandbox.destroy()


def test_memory_peak_tracks_a_known_allocation(host: Host) -> None:
    """After reset_memory_peak(), touching 50 MB raises the cgroup's peak by 50 MB +-15%."""
    code = _HANDSHAKE + "data = b'a' * (50 << 20)\nos.write(3, b'k')\nos.read(3, 1)\n"

    def reset(sandbox: Any) -> int:
        sandbox.reset_memory_peak()
        base: int = sandbox.memory_peak_bytes()
        return base

    _, (base, peak) = asyncio.run(_interact(host, code, 256, reset))
    grown = (peak - base) / (50 << 20)
    assert 0.85 <= grown <= 1.15, (base, peak)


_SPIN = """
start, cpu = time.monotonic(), time.process_time()
while time.monotonic() - start < 1.0:
    pass
print((time.process_time() - cpu) / (time.monotonic() - start))
"""


def _spin_cpu_fraction(host: Host, memory_mb: int) -> tuple[float, float]:
    """CPU fraction a sandbox spinner gets for 1 s after init, and what an unconfined spinner
    on the host got at the same time (the reference on a busy machine)."""
    spinners: list[subprocess.Popen[str]] = []

    def go(sandbox: Any) -> None:
        sandbox.after_init()
        spinners.append(subprocess.Popen([PY, "-S", "-I", "-c", "import time\n" + _SPIN],
                                         stdout=subprocess.PIPE, text=True))

    out, _ = asyncio.run(_interact(host, _HANDSHAKE + _SPIN, memory_mb, go))
    reference, _ = spinners[0].communicate(timeout=10)
    return float(out), float(reference)


def test_cpu_quota_128mb_gets_about_seven_percent(host: Host) -> None:
    """A 128 MB instance spinning for 1 s after init gets ~128/1769 = 7.2% of a CPU (never more
    than the quota; the lower bound is scaled down when the host itself is busy)."""
    fraction, reference = _spin_cpu_fraction(host, 128)
    assert 0.03 * min(1.0, reference / 0.9) <= fraction <= 0.15, (fraction, reference)


def test_cpu_quota_1769mb_gets_about_one_cpu(host: Host) -> None:
    """A 1769 MB instance spinning for 1 s after init gets about one CPU: at least 70% of one
    on a quiet host; on a saturated one (where nobody gets a whole CPU), at least 60% of what
    an unconfined spinner got in the same second (measured: 0.65-0.98 of it at load 13)."""
    fraction, reference = _spin_cpu_fraction(host, 1769)
    assert fraction >= min(0.70, 0.60 * reference), (fraction, reference)


def test_code_dir_permissions_are_what_the_function_sees(host: Host) -> None:
    """The code is owned by root and read-only inside: the function cannot chmod or replace
    it even though it can read it."""
    mode = stat.S_IMODE(host.code.stat().st_mode)
    result = run_json(host, PRELUDE + """
st = os.stat("/var/task")
print(json.dumps({"uid": st.st_uid, "mode": st.st_mode & 0o777,
                  "read": read("/var/task/handler.py"),
                  "rename": err(lambda: os.rename("/var/task/handler.py", "/var/task/h.py"))}))
""")
    assert result == {"uid": 0, "mode": mode, "read": "print('a')\n", "rename": "EROFS"}
