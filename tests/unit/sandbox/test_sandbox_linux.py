"""The Linux sandbox factory against the real kernel: spawn and destroy, the view the function
gets, the control socket and Runtime API socket, layers, failures, and that nothing is left on
the host afterwards. Root only."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from corral.errors import SandboxError
from sandbox_helpers import Dirs, collect, leftovers, needs_python, needs_root, run_code, spec_for

pytestmark = [needs_root, needs_python, pytest.mark.timeout(120)]


def test_trivial_program_runs_and_exits(factory: Any, dirs: Dirs) -> None:
    """A sandboxed program's output reaches the log pipe and its exit code is reported."""
    status, out = asyncio.run(run_code(factory, dirs, "print('hello'); raise SystemExit(3)"))
    assert out == "hello\n"
    assert status.code == 3 and status.signal is None and not status.oom_killed
    assert status.describe() == "exit status 3"


def test_function_view(factory: Any, dirs: Dirs) -> None:
    """Code, runtime files, /tmp and the identity are where the view says they are."""
    code = """
import json, os, socket
print(json.dumps({
    "cwd": os.getcwd(), "root": sorted(os.listdir("/")),
    "task": sorted(os.listdir("/var/task")), "runtime": sorted(os.listdir("/var/runtime")),
    "tmp": sorted(os.listdir("/tmp")), "tmp_writable": os.access("/tmp", os.W_OK),
    "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "pid": os.getpid(),
    "hostname": socket.gethostname(), "dev": sorted(os.listdir("/dev")),
    "passwd": open("/etc/passwd").read(),
}))
"""
    status, out = asyncio.run(run_code(factory, dirs, code))
    assert status.code == 0, out
    seen = json.loads(out)
    view = factory.view(spec_for(dirs, "pass"))
    assert (view.task_root, view.runtime_root, view.opt_root, view.tmp_dir) == (
        "/var/task", "/var/runtime", "/opt", "/tmp")
    assert seen["cwd"] == "/var/task"
    assert seen["root"] == ["bin", "dev", "etc", "lib", "lib64", "opt", "proc", "sbin", "tmp",
                            "usr", "var"]
    assert seen["task"] == ["handler.py"]
    assert seen["runtime"] == ["bootstrap.txt"]
    assert seen["tmp"] == [] and seen["tmp_writable"]
    assert (seen["uid"], seen["gid"], seen["groups"], seen["pid"]) == (10001, 10001, [], 1)
    assert seen["hostname"] == "corral"
    assert {"null", "zero", "urandom", "shm", "fd"} <= set(seen["dev"])
    assert "sbx_user1051:x:10001:10001" in seen["passwd"]


def test_control_socket_is_fd_3(factory: Any, dirs: Dirs) -> None:
    """Without the Runtime API the child gets the control socket as fd 3 and nothing else."""
    code = """
import os
os.write(3, b"ready:" + os.environ["CORRAL_CONTROL_FD"].encode() + b":" +
         ",".join(sorted(os.listdir("/proc/self/fd"))).encode())
os.write(3, os.read(3, 100).upper())
"""

    async def scenario() -> tuple[bytes, bytes]:
        sandbox = await factory.spawn(spec_for(dirs, code))
        try:
            loop = asyncio.get_running_loop()
            first = await asyncio.wait_for(loop.sock_recv(sandbox.control, 100), 10)
            await loop.sock_sendall(sandbox.control, b"ping")
            second = await asyncio.wait_for(loop.sock_recv(sandbox.control, 100), 10)
            status, _ = await collect(sandbox)
            assert status.code == 0
            return first, second
        finally:
            await sandbox.destroy()

    first, second = asyncio.run(scenario())
    # 0-2 stdio, 3 control, 4 the directory os.listdir is reading
    assert first == b"ready:3:0,1,2,3,4"
    assert second == b"PING"


@pytest.mark.parametrize("network", ["none", "host"])
def test_runtime_api_socket(factory: Any, dirs: Dirs, network: str) -> None:
    """With the Runtime API the function reaches the host's listener at AWS_LAMBDA_RUNTIME_API
    (inside its own network namespace for network=none, on the host's loopback otherwise)."""
    code = """
import os, socket
host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
s = socket.create_connection((host, int(port)), timeout=5)
s.sendall(b"GET /next")
print(s.recv(100).decode(), "CORRAL_CONTROL_FD" in os.environ)
"""

    async def scenario() -> str:
        sandbox = await factory.spawn(spec_for(dirs, code, runtime_api=True, network=network))
        try:
            listener = sandbox.runtime_api_socket
            assert listener is not None
            listener.setblocking(False)
            loop = asyncio.get_running_loop()
            conn, _ = await asyncio.wait_for(loop.sock_accept(listener), 10)
            with conn:
                assert await loop.sock_recv(conn, 100) == b"GET /next"
                await loop.sock_sendall(conn, b"event")
            status, out = await collect(sandbox)
            assert status.code == 0, out
            return out
        finally:
            await sandbox.destroy()

    assert asyncio.run(scenario()) == "event False\n"


def test_runtime_api_address_for_network_none(factory: Any, dirs: Dirs) -> None:
    """In its own network namespace the Runtime API is at the Lambda address 127.0.0.1:9001."""
    code = "import os; print(os.environ['AWS_LAMBDA_RUNTIME_API'])"
    status, out = asyncio.run(run_code(factory, dirs, code, runtime_api=True, network="none"))
    assert status.code == 0 and out == "127.0.0.1:9001\n"


def test_network_none_has_only_loopback(factory: Any, dirs: Dirs) -> None:
    """network=none gives an empty network namespace whose only interface, lo, is up."""
    code = "import socket; print(sorted(n for _, n in socket.if_nameindex()))"
    status, out = asyncio.run(run_code(factory, dirs, code, network="none"))
    assert status.code == 0 and out == "['lo']\n"


def test_layers_are_merged_later_wins(factory: Any, dirs: Dirs, tmp_path: Path) -> None:
    """Several layers are merged read-only at /opt, later layers shadowing earlier ones."""
    first, second = tmp_path / "layer1", tmp_path / "layer2"
    for layer, files in ((first, {"python/a.py": "1", "python/only1.py": "1"}),
                         (second, {"python/a.py": "2", "bin/tool": "2"})):
        for name, content in files.items():
            (layer / name).parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            (layer / name).write_text(content)
    os.chmod(tmp_path, 0o755)
    code = """
import os
for root, _, files in sorted(os.walk("/opt")):
    for f in sorted(files):
        print(os.path.join(root, f), open(os.path.join(root, f)).read())
"""
    status, out = asyncio.run(run_code(factory, dirs, code, layer_dirs=(first, second)))
    assert status.code == 0, out
    assert out.splitlines() == ["/opt/bin/tool 2", "/opt/python/a.py 2", "/opt/python/only1.py 1"]
    status, out = asyncio.run(run_code(factory, dirs, code, layer_dirs=(first,)))
    assert out.splitlines() == ["/opt/python/a.py 1", "/opt/python/only1.py 1"]


def test_extra_ro_paths_under_private_parents(factory: Any, dirs: Dirs) -> None:
    """An interpreter under a root-only directory (pyenv in /root) runs from extra_ro_paths."""
    prefix = Path(sys.base_prefix)
    if str(prefix).startswith("/usr") or not prefix.is_dir():
        pytest.skip("the test interpreter lives under /usr")
    python = prefix / "bin" / "python3"
    status, out = asyncio.run(run_code(
        factory, dirs, "import sys; print(sys.version_info[:2])",
        argv=[str(python), "-S", "-I", "-c", "import sys; print(tuple(sys.version_info[:2]))"],
        extra_ro_paths=(prefix,)))
    assert status.code == 0, out
    assert out.strip() == str(tuple(sys.version_info[:2]))


def test_missing_program_raises_and_releases(factory: Any, dirs: Dirs) -> None:
    """exec failing inside the sandbox raises SandboxError and leaves nothing running."""

    async def scenario() -> None:
        with pytest.raises(SandboxError, match="exec /nonexistent"):
            await factory.spawn(spec_for(dirs, "", argv=["/nonexistent", "x"]))

    asyncio.run(scenario())
    assert not factory._live


def test_invalid_specs_are_rejected(factory: Any, dirs: Dirs) -> None:
    """Bad paths and modes are refused before anything is allocated."""

    async def scenario() -> None:
        for overrides in ({"network": "bridge"}, {"code_dir": Path("/nonexistent")},
                          {"extra_ro_paths": (Path("/etc"),)}, {"extra_ro_paths": (Path("/"),)},
                          {"extra_ro_paths": (Path("/var"),)}, {"argv": []}):
            with pytest.raises(SandboxError):
                await factory.spawn(spec_for(dirs, "pass", **overrides))

    asyncio.run(scenario())


def test_kill_and_destroy_are_idempotent(factory: Any, dirs: Dirs) -> None:
    """kill() ends a sleeping sandbox with SIGKILL; destroy() twice is harmless."""

    async def scenario() -> None:
        sandbox = await factory.spawn(spec_for(dirs, "import time; time.sleep(60)"))
        sandbox.kill()
        status = await asyncio.wait_for(sandbox.wait(), 10)
        assert status.signal == 9 and status.describe() == "signal: killed"
        await sandbox.destroy()
        await sandbox.destroy()
        assert sandbox.memory_peak_bytes() is None

    asyncio.run(scenario())


def test_destroy_kills_every_process(factory: Any, dirs: Dirs) -> None:
    """destroy() of a sandbox whose processes fork and detach leaves no process behind."""
    code = """
import os, time
for _ in range(3):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(60)
        os._exit(0)
print("forked", flush=True)
time.sleep(60)
"""

    async def scenario() -> list[int]:
        sandbox = await factory.spawn(spec_for(dirs, code))
        await asyncio.sleep(0.5)
        pids = sandbox.cgroup_pids()
        assert len(pids) >= 4
        await sandbox.destroy()
        return pids

    pids = asyncio.run(scenario())
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_setup_timings_are_reported(factory: Any, dirs: Dirs) -> None:
    """The sandbox reports how long each setup stage took (for the cold-start benchmark)."""

    async def scenario() -> dict[str, float]:
        sandbox = await factory.spawn(spec_for(dirs, "pass"))
        await collect(sandbox)
        await sandbox.destroy()
        return dict(sandbox.setup_timings)

    timings = asyncio.run(scenario())
    assert {"clone", "pivot", "privileges", "spawn_total"} <= set(timings)
    assert 0 < timings["spawn_total"] < 5000


def test_nothing_leaks_after_close(dirs: Dirs, tmp_path: Path) -> None:
    """After factory.close() no cgroup dir, loop device, mount, process or directory remains."""
    from corral.sandbox.linux import LinuxSandboxFactory

    before = leftovers(tmp_path)
    run_dir = tmp_path / "run"
    owned: dict[str, list[Any]] = {}

    async def scenario() -> None:
        made = LinuxSandboxFactory(run_dir)
        sandboxes = [await made.spawn(spec_for(
            dirs, "import os, time; os.fork(); time.sleep(60)", network=network,
            ephemeral_mb=size, runtime_api=network == "none"))
            for network, size in (("host", 512), ("none", 1024), ("host", 600))]
        await asyncio.sleep(0.2)
        during = leftovers(tmp_path)
        assert len(during["loops"]) >= 3
        assert during["mounts"] == before["mounts"]  # nothing is mounted in the host namespace
        assert made._cgroups is not None
        owned["cgroups"] = made._cgroups.driver.parent_dirs()
        owned["pids"] = [pid for sb in sandboxes for pid in sb.cgroup_pids()]
        owned["pids"] += [shell.proc.pid for shell in made._shells]
        assert len(owned["pids"]) >= 6
        await sandboxes[0].destroy()
        await made.close()  # destroys the other two

    asyncio.run(scenario())
    after = leftovers(tmp_path)
    assert after["loops"] == [] and after["mounts"] == before["mounts"]
    assert all(not Path(d).exists() for d in owned["cgroups"])
    assert all(not Path(f"/proc/{pid}").exists() for pid in owned["pids"])
    assert list(run_dir.iterdir()) == []


def test_socket_family_of_runtime_api(factory: Any, dirs: Dirs) -> None:
    """The Runtime API socket handed to the host is a listening TCP socket on 127.0.0.1."""

    async def scenario() -> tuple[Any, ...]:
        sandbox = await factory.spawn(spec_for(dirs, "pass", runtime_api=True, network="none"))
        try:
            sock = sandbox.runtime_api_socket
            assert sock is not None
            return (sock.family, sock.type, sock.getsockname(),
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        finally:
            await sandbox.destroy()

    family, kind, address, listening = asyncio.run(scenario())
    assert (family, kind, address, listening) == (
        socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 9001), 1)



def test_cancelled_spawns_leave_no_zombie(factory: Any, dirs: Dirs) -> None:
    """Cancelling spawn() at any point of the setup kills and reaps whatever was started."""

    async def scenario() -> None:
        for delay in (0, 0.001, 0.002, 0.004, 0.008, 0.015, 0.03):
            spec = spec_for(dirs, "import time; time.sleep(60)")
            task = asyncio.ensure_future(factory.spawn(spec))
            await asyncio.sleep(delay)
            task.cancel()
            try:
                sandbox = await task
            except asyncio.CancelledError:
                continue
            await sandbox.destroy()

    def zombies() -> set[str]:
        states = subprocess.run(["ps", "--ppid", str(os.getpid()), "-o", "stat=,pid=,comm="],
                                capture_output=True, text=True, check=False).stdout
        return {line.split()[1] for line in states.splitlines() if line.strip().startswith("Z")}

    asyncio.run(scenario())
    assert not factory._live
    first = zombies()  # background mkfs can be caught between its exit and its reaping
    time.sleep(0.5)
    assert not first & zombies()
