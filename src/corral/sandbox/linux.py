"""The Linux sandbox: namespaces, pivot_root, cgroups, an unprivileged uid, no capabilities,
no_new_privs and seccomp around every function instance (root required).

Host side of the design in docs/sandbox.md. The factory keeps a few *warm launchers*: system
Python processes running `nsinit.py`, each already inside its own pooled cgroup and waiting
for a config. `spawn()` takes one, writes the instance's limits, hands it the config with the
log pipe and control socket over a SOCK_SEQPACKET setup socket, and the launcher clones the
sandbox's init with CLONE_PARENT, so the init is a direct child of the server (reaped through a
pidfd, like `process.ProcessSandbox`) and starts inside the cgroup without being moved. The
init builds the root, drops privileges and execs the runtime; EOF on the setup socket means the
exec happened.

Thread model: call `spawn()` from one long-lived thread running the event loop (the server's
main loop). Launchers are started from that thread and the sandboxes are children of it;
their PDEATHSIG fires when that thread exits, so nothing outlives the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import marshal
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future as ThreadFuture
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from corral.errors import SandboxError
from corral.sandbox import cgroups, ephemeral, seccomp
from corral.sandbox.accounting import CgroupAccounting
from corral.sandbox.api import ExitStatus, IsolationReport, SandboxSpec, SandboxView
from corral.sandbox.launchers import (
    BACKGROUND_NICE,
    MSG_MAX,
    NSINIT,
    RUNTIME_ROOT,
    ForkedProcess,
    WarmLauncher,
    Zygote,
    lower_priority,
    recv_message,
    send_message,
)
from corral.sandbox.process import exit_status_from_wait
from corral.sandbox.templates import LinuxTemplate

log = logging.getLogger(__name__)

DEFAULT_UID = 10001
DEFAULT_GID = 10001
USER_NAME = "sbx_user1051"
HOSTNAME = "corral"
RUNTIME_API_PORT = 9001
TASK_ROOT = "/var/task"
OPT_ROOT = "/opt"
TMP_DIR = "/tmp"
SHM_MB = 64
DEFAULT_TMP_MB = 512
REFILL_DELAY_S = 0.1  # start replacement launchers after the instance's runtime is up
# extra_ro_paths may not be these, under them, or above them (binding /var would hide /var/task)
_RESERVED = ("/etc", "/proc", "/dev", "/tmp", "/var/task", "/var/runtime", "/opt")
# extra_ro_paths under these are visible already (the /usr bind and the bin/lib links)
_VISIBLE = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
# Python instances fork from a per-interpreter zygote (see docs/sandbox.md, "Zygote"):
# "python": the bootstrap command RuntimeInfo.argv builds; "any": every `-S -I -c CODE`
# (tests); "off": every instance execs. The environment variable overrides the default.
ZYGOTE_ENV = "CORRAL_SANDBOX_ZYGOTE"
ZYGOTE_MODES = ("off", "python", "any")
DEFAULT_ZYGOTE = "python"
_BOOTSTRAP_CODE = re.compile(r"import sys; sys\.path\.insert\(0, '/[^'\\]*'\); "
                             r"import python_bootstrap; python_bootstrap\.run\(\)")
_PYTHON_NAME = re.compile(r"python3(\.\d+)?")
ZYGOTE_START_ATTEMPTS = 3  # zygote restarts per interpreter before falling back to exec
# A zygote is replaced after this many forks, which bounds how many instances share its
# address-space layout and hash secret (docs/sandbox.md, "Zygote").
ZYGOTE_MAX_FORKS = 1000
_PROC_MASKS = ("kcore", "timer_list", "sysrq-trigger", "sched_debug")
_ETC_COPY = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone",
             "ssl/certs", "ssl/openssl.cnf", "pki/tls/certs", "pki/ca-trust/extracted",
             "alternatives", "mime.types", "protocols", "services", "host.conf", "gai.conf",
             "os-release", "debian_version", "python3")
_NSSWITCH = """passwd: files
group: files
shadow: files
hosts: files dns
networks: files
protocols: files
services: files
ethers: files
rpc: files
"""


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root + "/") for root in roots)


def _default_python() -> str:
    """A system Python for nsinit.py (fast `-S -I` start), else the server's interpreter."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


def _fs_type(path: Path) -> str:
    """The filesystem type of the mount that holds `path` (from mountinfo)."""
    target = str(path.resolve())
    best, kind = "", ""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mount_point = left.split()[4].replace("\\040", " ")
            prefix = mount_point.rstrip("/") + "/"
            inside = target == mount_point or target.startswith(prefix)
            if inside and len(mount_point) >= len(best):
                best, kind = mount_point, right.split()[0]
    return kind


def build_etc(directory: Path, uid: int, gid: int, hostname: str) -> None:
    """The sandbox's /etc: generated identity files plus copies of what runtimes read."""
    directory.mkdir(mode=0o755)
    for name in _ETC_COPY:
        source = Path("/etc") / name
        target = directory / name
        if not (source.exists() or source.is_symlink()):
            continue
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if source.is_symlink() and not source.is_dir():
            os.symlink(os.readlink(source), target)
        elif source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy2(source, target)
    for source in Path("/etc").glob("python3.*"):
        if source.is_dir():
            shutil.copytree(source, directory / source.name, symlinks=True)
    with contextlib.suppress(OSError):
        (directory / "resolv.conf").write_bytes(Path("/etc/resolv.conf").read_bytes())
    files = {
        "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
                  f"{USER_NAME}:x:{uid}:{gid}::/tmp:/usr/sbin/nologin\n"
                  f"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "group": f"root:x:0:\n{USER_NAME}:x:{gid}:\nnogroup:x:65534:\n",
        "hostname": f"{hostname}\n",
        "hosts": f"127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        "nsswitch.conf": _NSSWITCH,
    }
    for name, content in files.items():
        (directory / name).write_text(content)
    for path in [directory, *directory.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


class LinuxSandbox(CgroupAccounting):
    """One instance in its namespaces and cgroup. Created by `LinuxSandboxFactory.spawn`."""

    def __init__(self, factory: LinuxSandboxFactory, spec: SandboxSpec, view: SandboxView) -> None:
        self.spec = spec
        self.view = view
        self.pid = 0
        self.control, self._child_control = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.runtime_api_socket: socket.socket | None = None
        self.log_fd = -1
        self.setup_timings: dict[str, float] = {}  # ms from config receipt, plus join/total
        self._factory = factory
        self._shell: WarmLauncher | None = None
        self._cgroup: cgroups.Cgroup | None = None
        self._image: ephemeral.Image | None = None
        self._tmp_fd = -1
        self._spare: tuple[ephemeral.Image, int] | None = None
        self._pidfd = -1
        self._exit: asyncio.Future[ExitStatus] | None = None
        self._oom_base = 0
        self._config_sent = False
        self._destroyed = False
        self._keeper: WarmLauncher | None = None  # zygote path: the keeper, parent of the init
        self._setup_error: str | None = None

    # ----------------------------------------------------------------------------- startup

    async def _start(self) -> None:
        factory, spec = self._factory, self.spec
        begin = time.perf_counter()
        interpreter = factory._zygote_interpreter(spec)
        zshell = await factory._acquire_zshell(interpreter) if interpreter else None
        if interpreter and zshell is None:
            self.setup_timings["zygote_fallback"] = 1.0
        if zshell is not None:
            self._keeper = self._shell = shell = zshell
        else:
            self._shell = shell = await factory._acquire_shell()
        # Take over what the launcher holds, with no await in between: from here on this
        # sandbox alone releases the cgroup and the images (the launcher only its process).
        assert shell.cgroup is not None
        self._cgroup = cgroup = shell.cgroup
        premounted = (shell.tmp_fd >= 0 and shell.image is not None
                      and shell.image.size_mb == spec.ephemeral_mb)
        if premounted:
            self._image, self._tmp_fd = shell.image, shell.tmp_fd  # already on /tmp
            self.setup_timings["tmp_premounted"] = 1.0
        elif shell.image is not None:  # wrong size: recycled once the launcher is gone
            self._spare = (shell.image, shell.tmp_fd)
        shell.cgroup, shell.image, shell.tmp_fd = None, None, -1
        if shell.zygote is not None:  # the init exists already, waiting for the config
            self.pid, self._pidfd = shell.init_pid, shell.init_pidfd
            shell.init_pidfd = -1
            self._exit = asyncio.get_running_loop().create_future()
        tmp_device = ""
        if not premounted:
            self._image = await factory._acquire_image(spec.ephemeral_mb)
            tmp_device = self._image.device if self._image is not None else ""
        cgroup.configure(spec.memory_mb, spec.pids_max)
        self._oom_base = cgroup.oom_kills()

        env = dict(spec.env)
        api_port = 0  # nonzero: nsinit listens on this port inside the new netns
        if spec.runtime_api and spec.network == "none":
            api_port = RUNTIME_API_PORT
            env["AWS_LAMBDA_RUNTIME_API"] = f"127.0.0.1:{api_port}"
        elif spec.runtime_api:  # host network: listen on the host's loopback, any port
            api = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            api.bind(("127.0.0.1", 0))
            api.listen(128)
            self.runtime_api_socket = api
            env["AWS_LAMBDA_RUNTIME_API"] = f"127.0.0.1:{api.getsockname()[1]}"
        else:
            env["CORRAL_CONTROL_FD"] = "3"
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        self.log_fd = read_fd
        fds = [write_fd]
        control_index = -1
        if not spec.runtime_api:
            fds.append(self._child_control.fileno())
            control_index = 1
        config = factory._config(spec, tmp_device, env, api_port, control_index)
        if shell.zygote is not None:
            from corral.runtimes import RUNTIME_DIR

            config["zygote"] = True
            # the zygote compiled the bootstrap of this runtime dir: skip finding and reading it
            config["precompiled"] = spec.runtime_dir.resolve() == RUNTIME_DIR.resolve()
        self.setup_timings["host_before_send"] = round((time.perf_counter() - begin) * 1000, 3)
        try:
            send_message(shell.sock, config, fds)
            self._config_sent = True
        finally:
            os.close(write_fd)
            self._child_control.close()
        if shell.zygote is not None:
            await self._finish_zygote_start(shell, begin)
            return

        deadline = time.monotonic() + factory.setup_timeout
        error: str | None = None
        execed = False
        while True:
            message, received = await recv_message(shell.sock, deadline)
            if message is None:
                break
            op = message.get("op")
            self.setup_timings["host_" + str(op)] = round((time.perf_counter() - begin) * 1000, 3)
            if op == "pid":
                self._watch(int(message["pid"]))
            elif op == "api" and received:
                self.runtime_api_socket = socket.socket(fileno=received.pop(0))
            elif op == "tmp" and received:
                self._tmp_fd = received.pop(0)
            elif op == "exec":
                execed = True
                self.setup_timings.update(message.get("timings_ms", {}))
            elif op == "error":
                error = str(message.get("msg"))
            for fd in received:
                os.close(fd)
        self.setup_timings["host_eof"] = round((time.perf_counter() - begin) * 1000, 3)
        try:
            shell.proc.wait(timeout=5)  # it closed its end: it is exiting (microseconds)
        except subprocess.TimeoutExpired:
            shell.proc.kill()
            shell.proc.wait()
        shell.sock.close()
        self._shell = None
        if self._spare is not None:
            factory._recycle_image(*self._spare)
            self._spare = None
        if error is not None or not execed or self._exit is None:
            raise SandboxError(f"could not start {spec.argv[0]} in the sandbox: "
                               f"{error or 'sandbox init died before exec'}")
        cgroup.reset_memory_peak()  # the launcher's own pages do not count
        self.setup_timings.update(shell.timings)
        self.setup_timings["spawn_total"] = round((time.perf_counter() - begin) * 1000, 3)
        self.control.setblocking(False)

    async def _finish_zygote_start(self, shell: WarmLauncher, begin: float) -> None:
        """The keeper forked the init, which builds the sandbox and reports `exec` once the
        runtime is about to run (in that process, not by execve): the keeper stays, as the
        init's parent, and reports its wait status on the same socket."""
        deadline = time.monotonic() + self._factory.setup_timeout
        execed = False
        while True:
            message, received = await recv_message(shell.sock, deadline)
            if message is None:
                break
            op = self._keeper_message(message, received)
            self.setup_timings["host_" + op] = round((time.perf_counter() - begin) * 1000, 3)
            if op == "exec":
                execed = True
                break
            if op == "exit":
                break
        if self._setup_error is not None or not execed or self._exit is None:
            raise SandboxError(f"could not start {self.spec.argv[0]} in the sandbox: "
                               f"{self._setup_error or 'sandbox init died before it ran'}")
        self._shell = None
        loop = asyncio.get_running_loop()
        loop.add_reader(shell.sock.fileno(), self._on_keeper_readable)
        assert self._cgroup is not None
        self._cgroup.reset_memory_peak()  # the keeper's and the init's setup do not count
        self.setup_timings.update(shell.timings)
        self.setup_timings["spawn_total"] = round((time.perf_counter() - begin) * 1000, 3)
        self.control.setblocking(False)

    def _keeper_message(self, message: dict[str, Any], received: list[int]) -> str:
        """Apply one message of the keeper or the init (zygote path); returns its op."""
        op = str(message.get("op"))
        if op == "pid":
            self.pid = int(message["pid"])
            if received:
                self._pidfd = received.pop(0)
            if self._exit is None:
                self._exit = asyncio.get_running_loop().create_future()
            if self._destroyed:
                self.kill()
        elif op == "api" and received:
            self.runtime_api_socket = socket.socket(fileno=received.pop(0))
        elif op == "tmp" and received:
            self._tmp_fd = received.pop(0)
        elif op == "exec":
            self.setup_timings.update(message.get("timings_ms", {}))
        elif op == "error":
            self._setup_error = str(message.get("msg"))
        elif op == "exit":
            result = exit_status_from_wait(int(message["status"]))
            if self._cgroup is not None:
                with contextlib.suppress(OSError):
                    if self._cgroup.oom_kills() > self._oom_base:
                        result = ExitStatus(code=result.code, signal=result.signal,
                                            oom_killed=True)
            if self._exit is not None and not self._exit.done():
                self._exit.set_result(result)
        for fd in received:
            os.close(fd)
        return op

    def _on_keeper_readable(self) -> None:
        shell = self._keeper
        if shell is None:
            return
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(shell.sock, MSG_MAX, 4,
                                                           socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                for fd in fds:
                    os.close(fd)
                with contextlib.suppress(Exception):
                    asyncio.get_running_loop().remove_reader(shell.sock.fileno())
                self._keeper_vanished()
                return
            message = marshal.loads(data)
            if isinstance(message, dict):
                self._keeper_message(message, fds)
            else:
                for fd in fds:
                    os.close(fd)

    def _keeper_vanished(self) -> None:
        """EOF from the keeper without an exit report: it was killed, and the init with it
        (PDEATHSIG)."""
        if self._exit is not None and not self._exit.done():
            with contextlib.suppress(RuntimeError):  # its loop may have ended
                self._exit.set_result(ExitStatus(signal=signal.SIGKILL))

    async def _stop_keeper(self, shell: WarmLauncher) -> None:
        """Kill the init, collect its status from the keeper, and wait for the keeper to be
        gone (it is in the instance's cgroup)."""
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(shell.sock.fileno())
        if not self._config_sent:  # a warm keeper that never got the config
            self._factory._discard_shell(shell)  # its cgroup and image are the sandbox's
            return
        self.kill()
        deadline = time.monotonic() + 5.0
        with contextlib.suppress(OSError, TimeoutError, EOFError):
            while True:
                message, received = await recv_message(shell.sock, deadline)
                if message is None:
                    break
                self._keeper_message(message, received)
        shell.proc.kill()  # exiting already, unless it hung
        with contextlib.suppress(subprocess.TimeoutExpired):
            shell.proc.wait(5)
        shell.sock.close()
        if isinstance(shell.proc, ForkedProcess):
            shell.proc.close()
        self._keeper_vanished()

    def _watch(self, pid: int) -> None:
        """Reap `pid` (our child through CLONE_PARENT) via a pidfd when it exits."""
        self.pid = pid
        self._pidfd = os.pidfd_open(pid)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ExitStatus] = loop.create_future()
        self._exit = future
        pidfd = self._pidfd

        def reap() -> None:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                return
            loop.remove_reader(pidfd)
            result = exit_status_from_wait(status)
            if self._cgroup is not None:
                with contextlib.suppress(OSError):
                    if self._cgroup.oom_kills() > self._oom_base:
                        result = ExitStatus(code=result.code, signal=result.signal,
                                            oom_killed=True)
            if not future.done():
                future.set_result(result)

        loop.add_reader(pidfd, reap)

    async def _abort_setup(self, shell: WarmLauncher) -> None:
        """Setup did not finish. If the launcher got the config it may have cloned the init
        already: read its pid (sent right after clone) before killing the launcher, so the
        init is killed and reaped too, never left as an unreaped child of the server."""
        if self._config_sent and self._exit is None:
            deadline = time.monotonic() + 2.0
            with contextlib.suppress(OSError, TimeoutError, EOFError):
                while self._exit is None:
                    message, received = await recv_message(shell.sock, deadline)
                    for fd in received:
                        os.close(fd)
                    if message is None:
                        break
                    if message.get("op") == "pid":
                        self._watch(int(message["pid"]))
            if self._exit is not None:
                self.kill()
                await asyncio.shield(self._exit)
        self._factory._discard_shell(shell)

    def _reap_blocking(self) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)

    # ------------------------------------------------------------------------------ contract

    async def wait(self) -> ExitStatus:
        assert self._exit is not None, "sandbox not started"
        return await asyncio.shield(self._exit)

    def kill(self) -> None:
        if self._pidfd >= 0 and self._exit is not None and not self._exit.done():
            with contextlib.suppress(ProcessLookupError):
                # pid 1 of the PID namespace: the kernel kills every other process in it
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    async def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        if self._keeper is not None:
            keeper, self._keeper, self._shell = self._keeper, None, None
            await self._stop_keeper(keeper)
        if self._shell is not None:  # failed or cancelled during setup
            await self._abort_setup(self._shell)
            self._shell = None
        self.kill()
        if self._exit is not None and self._exit.done():
            pass
        elif self._exit is not None:
            if self._exit.get_loop() is asyncio.get_running_loop():
                await asyncio.shield(self._exit)
            elif not self._exit.done():  # spawned on a loop that has ended: reap directly
                await asyncio.to_thread(self._reap_blocking)
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        if self._spare is not None:
            self._factory._recycle_image(*self._spare)
            self._spare = None
        for sock in (self.control, self._child_control, self.runtime_api_socket):
            if sock is not None:
                sock.close()
        await self._release_host_resources(self._factory)
        self._factory._live.discard(self)


class LinuxSandboxFactory:
    """Spawns `LinuxSandbox`es. Needs root, namespaces and a cgroup hierarchy with memory.

    `run_dir` receives a private state directory (root mount point, generated /etc, /tmp
    images) that `close()` removes. `warm_shells` launchers are kept joined to their cgroups
    with the root skeleton built and a 512 MB /tmp mounted; `warm_images` more 512 MB images
    are kept formatted for the launchers that replace them. Construct the factory on the
    thread that will run the event loop (see the module docstring).
    """

    def __init__(self, run_dir: Path, *, uid: int = DEFAULT_UID, gid: int = DEFAULT_GID,
                 warm_shells: int = 2, warm_images: int = 2, python: str | None = None,
                 setup_timeout: float = 10.0, hostname: str = HOSTNAME,
                 cgroup_driver: cgroups.CgroupDriver | None = None,
                 zygote: str | None = None, zygote_shells: int | None = None,
                 zygote_max_forks: int = ZYGOTE_MAX_FORKS) -> None:
        if os.geteuid() != 0:
            raise SandboxError("the Linux sandbox needs root (namespaces, mounts, cgroups)")
        if not seccomp.supported():
            raise SandboxError(f"no seccomp filter for {seccomp.native_arch()}")
        self.uid, self.gid, self.hostname = uid, gid, hostname
        self.setup_timeout = setup_timeout
        self._python = python or _default_python()
        self._warm_shells = warm_shells
        self._warm_images = warm_images
        self._shells: list[WarmLauncher] = []
        mode = zygote or os.environ.get(ZYGOTE_ENV) or DEFAULT_ZYGOTE
        if mode not in ZYGOTE_MODES:
            raise SandboxError(f"unknown zygote mode {mode!r} (expected one of {ZYGOTE_MODES})")
        self.zygote_mode = mode
        self._zygote_shells = warm_shells if zygote_shells is None else zygote_shells
        self._zygote_max_forks = zygote_max_forks
        self._zygotes: dict[str, Zygote] = {}
        self._zygote_failures: dict[str, int] = {}
        self._zshells: dict[str, list[WarmLauncher]] = {}
        self._live: set[LinuxSandbox] = set()
        self._pending: set[ThreadFuture[None]] = set()
        self._prefilling = 0
        self._prefill_lock = threading.Lock()
        self._closed = False
        self._cgroups: cgroups.CgroupPool | None = None
        self._images: ephemeral.EphemeralPool | None = None
        self._images_dir: Path | None = None
        run_dir.mkdir(parents=True, exist_ok=True)
        self._state = Path(tempfile.mkdtemp(prefix="linux-sandbox-", dir=run_dir))
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="corral-sandbox",
                                            initializer=lower_priority)
        # Request-path work of a burst that outruns the pools (cgroup mkdir, /tmp images):
        # not niced, and off the event loop.
        self._spawn_executor = ThreadPoolExecutor(max_workers=4,
                                                  thread_name_prefix="corral-spawn")
        try:
            self._root = self._state / "root"
            self._root.mkdir(mode=0o700)
            self._etc = self._state / "etc"
            build_etc(self._etc, uid, gid, hostname)
            self._images_dir = self._pick_images_dir()
            try:
                driver = cgroup_driver or cgroups.open_driver()
            except OSError as exc:
                raise SandboxError(f"no usable cgroup hierarchy: {exc}") from exc
            if "memory" not in driver.enforced():
                driver.close()
                raise SandboxError("the cgroup hierarchy has no memory controller")
            self._cgroups = cgroups.CgroupPool(driver, prefill=warm_shells + 2)
            self._images = ephemeral.EphemeralPool(self._images_dir, uid, gid)
            self._seccomp = seccomp.program()
            self._template_seccomp = seccomp.program(template=True)
            self._cap_last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
            self._links, self._binds = self._base_layout()
            first = warm_shells + (self._zygote_shells if self.zygote_mode != "off" else 0)
            if self._images.available:  # the first launchers get their /tmp mounted
                for _ in range(first - self._images.idle_count(DEFAULT_TMP_MB)):
                    self._images.put(self._images.create(DEFAULT_TMP_MB))
            self._refill()  # launchers are children of this thread: construct on the loop's
            if self.zygote_mode != "off":  # the system Python's zygote, ahead of time
                system = os.path.realpath(self._python)
                if _PYTHON_NAME.fullmatch(os.path.basename(system)):
                    self._refill_zygote(system)
        except BaseException:
            self._close_sync()
            raise

    # ----------------------------------------------------------------------------- layout

    def _pick_images_dir(self) -> Path:
        """Images must sit on a disk: on tmpfs, /tmp writes would be charged to memory."""
        preferred = self._state / "images"
        if _fs_type(self._state) not in ("tmpfs", "ramfs"):
            preferred.mkdir(mode=0o700)
            return preferred
        fallback = Path(tempfile.mkdtemp(prefix="corral-images-", dir="/var/tmp"))
        if _fs_type(fallback) in ("tmpfs", "ramfs"):
            fallback.rmdir()
            preferred.mkdir(mode=0o700)
            return preferred
        return fallback

    def _base_layout(self) -> tuple[list[tuple[str, str]], list[tuple[str, str, bool]]]:
        links: list[tuple[str, str]] = []
        binds: list[tuple[str, str, bool]] = [("/usr", "/usr", True),
                                              (str(self._etc), "/etc", True)]
        for name in ("bin", "sbin", "lib", "lib64", "lib32", "libx32"):
            path = Path("/") / name
            if path.is_symlink():
                links.append((os.readlink(path), f"/{name}"))
            elif path.is_dir():
                binds.append((str(path), f"/{name}", True))
        return links, binds

    def _skeleton(self, image: ephemeral.Image | None) -> dict[str, Any]:
        """What a warm launcher builds before any spec is known."""
        return {
            "op": "join",
            "root": str(self._root),
            "links": [list(link) for link in self._links],
            "binds": [list(b) for b in self._binds],
            "tmp_device": image.device if image is not None else "",
            "shm_mb": SHM_MB,
        }

    def _config(self, spec: SandboxSpec, tmp_device: str, env: dict[str, str],
                api_port: int, control_index: int) -> dict[str, Any]:
        binds = [[str(spec.code_dir), TASK_ROOT, True], [str(spec.runtime_dir), RUNTIME_ROOT, True]]
        overlay: list[str] = []
        if len(spec.layer_dirs) == 1:
            binds.append([str(spec.layer_dirs[0]), OPT_ROOT, True])
        elif spec.layer_dirs:
            overlay = [str(p) for p in reversed(spec.layer_dirs)]  # later layers win
        for path in spec.extra_ro_paths:
            text = os.path.normpath(str(path))
            if not _under(text, _VISIBLE):
                binds.append([text, text, path.is_dir()])
        return {
            "op": "spawn",
            "root": str(self._root),
            "hostname": self.hostname,
            "uid": self.uid,
            "gid": self.gid,
            "cap_last": self._cap_last,
            "binds": binds,
            "overlay": overlay,
            "tmp_device": tmp_device,
            "tmp_mb": spec.ephemeral_mb,
            # a template's instances mount their own /proc: one with masks would be refused
            "proc_masks": [] if spec.template else list(_PROC_MASKS),
            "netns": spec.network == "none",
            "api_port": api_port,
            "nofile": spec.nofile_max,
            "log_index": 0,
            "control_index": control_index,
            "cwd": TASK_ROOT,
            "argv": list(spec.argv),
            "env": env,
            "seccomp": self._template_seccomp if spec.template else self._seccomp,
        }

    # ------------------------------------------------------------------------- resources

    def _start_shell(self) -> WarmLauncher:
        """Start a launcher: it joins a pooled cgroup and builds the root skeleton, with the
        default-size /tmp image mounted when one is ready (runs on the loop thread)."""
        assert self._cgroups is not None
        cgroup = self._cgroups.acquire()
        image = self._images.take(DEFAULT_TMP_MB) if self._images is not None else None
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [self._python, "-S", "-I", str(NSINIT), str(child.fileno()), str(os.getpid()),
                 str(BACKGROUND_NICE)],
                pass_fds=(child.fileno(),), env={}, cwd="/", stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            parent.close()
            self._recycle_cgroup(cgroup)
            if image is not None:
                self._recycle_image(image)
            raise SandboxError(f"could not start the sandbox launcher: {exc}") from exc
        finally:
            child.close()
        shell = WarmLauncher(proc, parent, cgroup, image)
        try:
            send_message(parent, self._skeleton(image) | {"procs": cgroup.procs_files()})
        except OSError:
            self._discard_shell(shell)
            raise
        parent.setblocking(False)
        return shell

    def _discard_shell(self, shell: WarmLauncher) -> None:
        """Kill a launcher that will not be used and recycle what it still holds."""
        if isinstance(shell.proc, ForkedProcess) and shell.proc.pidfd < 0:
            self._drain_keeper(shell)
        shell.kill()
        if shell.cgroup is not None:
            self._recycle_cgroup(shell.cgroup)
        if shell.image is not None:
            self._recycle_image(shell.image, shell.tmp_fd)
        elif shell.tmp_fd >= 0:
            os.close(shell.tmp_fd)
        shell.cgroup, shell.image, shell.tmp_fd = None, None, -1

    def _refill(self) -> None:
        """Keep `warm_shells` launchers joined and waiting (runs on the loop thread), and
        `warm_images` default-size images formatted for the next ones."""
        while not self._closed and len(self._shells) < self._warm_shells:
            try:
                self._shells.append(self._start_shell())
            except (SandboxError, OSError):
                break
        images = self._images
        if images is not None and images.available and not self._closed:
            missing = self._warm_images - images.idle_count(DEFAULT_TMP_MB) - self._prefilling
            for _ in range(max(0, missing)):
                with self._prefill_lock:
                    self._prefilling += 1
                self._background(self._prefill_image, DEFAULT_TMP_MB)

    async def _acquire_shell(self) -> WarmLauncher:
        """A launcher that has joined its cgroup and built the skeleton (waits if needed)."""
        loop = asyncio.get_running_loop()
        message: dict[str, Any] | None = None
        try:
            for _ in range(3):
                shell = self._shells.pop(0) if self._shells else self._start_shell()
                try:
                    message, fds = await recv_message(shell.sock,
                                               time.monotonic() + self.setup_timeout)
                except (OSError, TimeoutError):
                    message, fds = None, []
                except asyncio.CancelledError:
                    self._shells.insert(0, shell)  # still good for the next spawn
                    raise
                if message is not None and message.get("op") == "joined":
                    if fds:
                        shell.tmp_fd = fds[0]
                    shell.timings = {"offpath_cgroup_join": float(message["join_ms"]),
                                     "offpath_skeleton": float(message["skeleton_ms"])}
                    return shell
                for fd in fds:
                    os.close(fd)
                self._discard_shell(shell)
            raise SandboxError("the sandbox launcher failed: "
                               f"{message.get('msg') if message else 'no answer'}")
        finally:
            # later, and niced: the replacement must not compete with this instance's start
            loop.call_later(REFILL_DELAY_S, self._refill)

    # ------------------------------------------------------------------------- zygotes

    def _zygote_interpreter(self, spec: SandboxSpec) -> str | None:
        """The host path of the interpreter whose zygote can start `spec`, or None (exec).

        Only `<python3.X> -S -I -c CODE` (CODE = the bootstrap command unless the mode is
        "any"), and only interpreters the sandbox sees at the same path as the host: under
        /usr or under one of the spec's extra read-only paths."""
        argv = spec.argv
        if self.zygote_mode == "off" or len(argv) != 5 or argv[1:4] != ["-S", "-I", "-c"]:
            return None
        if self.zygote_mode == "python" and not _BOOTSTRAP_CODE.fullmatch(argv[4]):
            return None
        if not os.path.isabs(argv[0]) or _under(os.path.normpath(argv[0]), _RESERVED):
            return None
        real = os.path.realpath(argv[0])
        shared = _VISIBLE + tuple(os.path.normpath(str(p)) for p in spec.extra_ro_paths)
        if not (_under(real, shared) and _under(os.path.normpath(argv[0]), shared)):
            return None
        if not _PYTHON_NAME.fullmatch(os.path.basename(real)) or not os.access(real, os.X_OK):
            return None
        if self._zygote_failures.get(real, 0) >= ZYGOTE_START_ATTEMPTS:
            return None
        return real

    def _get_zygote(self, interpreter: str) -> Zygote | None:
        """The running zygote for `interpreter`, started (again) if needed (loop thread)."""
        zygote = self._zygotes.get(interpreter)
        if zygote is not None and zygote.alive and zygote.forks >= self._zygote_max_forks:
            # Replace it: keepers it forked keep working (they no longer need it), requests
            # it has not served yet fail and are retried with the new one.
            del self._zygotes[interpreter]
            zygote.kill()
            zygote = None
        if zygote is not None and not zygote.alive:
            self._stop_zygote(interpreter)
            self._zygote_failures[interpreter] = self._zygote_failures.get(interpreter, 0) + 1
            zygote = None
        if zygote is None:
            if self._closed or self._zygote_failures.get(interpreter, 0) >= ZYGOTE_START_ATTEMPTS:
                return None
            try:
                zygote = Zygote(interpreter)
            except (SandboxError, OSError):
                self._zygote_failures[interpreter] = ZYGOTE_START_ATTEMPTS
                return None
            self._zygotes[interpreter] = zygote
        return zygote

    def _stop_zygote(self, interpreter: str) -> None:
        zygote = self._zygotes.pop(interpreter, None)
        for shell in self._zshells.pop(interpreter, []):
            self._discard_shell(shell)
        if zygote is not None:
            zygote.kill()

    def _start_zshell(self, zygote: Zygote, cgroup: cgroups.Cgroup | None = None) -> WarmLauncher:
        """Ask `zygote` for a keeper that joins a pooled cgroup and builds the skeleton."""
        assert self._cgroups is not None
        cgroup = cgroup or self._cgroups.acquire()
        image = self._images.take(DEFAULT_TMP_MB) if self._images is not None else None
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            zygote.fork(self._skeleton(image) | {"op": "fork", "procs": cgroup.procs_files()},
                        child)
        except OSError as exc:
            parent.close()
            self._recycle_cgroup(cgroup)
            if image is not None:
                self._recycle_image(image)
            raise SandboxError(f"the {zygote.interpreter} zygote is gone: {exc}") from exc
        finally:
            child.close()
        parent.setblocking(False)
        return WarmLauncher(ForkedProcess(), parent, cgroup, image, zygote)

    def _drain_keeper(self, shell: WarmLauncher) -> None:
        """Read what a keeper's setup socket holds already (the zygote's `forked` with the
        keeper's pidfd, `joined`), without waiting."""
        proc = shell.proc
        assert isinstance(proc, ForkedProcess)
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(shell.sock, MSG_MAX, 4,
                                                           socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, OSError):
                return
            message = marshal.loads(data) if data else None
            if isinstance(message, dict) and message.get("op") == "forked" and fds:
                proc.attach(int(message["pid"]), fds.pop(0))
            elif isinstance(message, dict) and message.get("op") == "joined" and fds:
                shell.joined = True
                shell.init_pid, shell.init_pidfd = int(message["pid"]), fds.pop(0)
                if fds:
                    shell.tmp_fd = fds.pop(0)
            for fd in fds:
                os.close(fd)
            if message is None:
                return

    async def _await_keeper(self, shell: WarmLauncher) -> bool:
        """Wait until the zygote reported the keeper and the keeper joined its cgroup."""
        proc = shell.proc
        assert isinstance(proc, ForkedProcess)
        deadline = time.monotonic() + self.setup_timeout
        while not (shell.joined and proc.pidfd >= 0):
            try:
                message, fds = await recv_message(shell.sock, deadline)
            except (OSError, TimeoutError):
                return False
            if message is None:
                return False
            op = message.get("op")
            if op == "forked" and fds:
                proc.attach(int(message["pid"]), fds.pop(0))
            elif op == "joined" and fds:
                shell.joined = True
                shell.init_pid, shell.init_pidfd = int(message["pid"]), fds.pop(0)
                if fds:
                    shell.tmp_fd = fds.pop(0)
                shell.timings = {"offpath_cgroup_join": float(message["join_ms"]),
                                 "offpath_skeleton": float(message["skeleton_ms"])}
            elif op == "error":
                for fd in fds:
                    os.close(fd)
                return False
            for fd in fds:
                os.close(fd)
        return True

    async def _acquire_zshell(self, interpreter: str) -> WarmLauncher | None:
        """A keeper of `interpreter`'s zygote, joined and with the skeleton built; None
        when the zygote cannot be used (the caller falls back to a launcher and exec)."""
        loop = asyncio.get_running_loop()
        if interpreter not in self._zygotes:  # first use: warm it up, exec this one instance
            loop.call_soon(self._refill_zygote, interpreter)
            return None
        try:
            for _ in range(3):
                zygote = self._get_zygote(interpreter)
                if zygote is None:
                    return None
                pool = self._zshells.setdefault(interpreter, [])
                try:
                    if pool:
                        shell = pool.pop(0)
                    else:  # a burst: create the cgroup off the loop (mkdir in 3 hierarchies)
                        shell = self._start_zshell(zygote, await self._new_cgroup())
                except (SandboxError, OSError, RuntimeError):
                    continue  # the zygote died: _get_zygote restarts it
                try:
                    ready = await self._await_keeper(shell)
                except asyncio.CancelledError:
                    pool.insert(0, shell)  # still good for the next spawn
                    raise
                if ready:
                    return shell
                self._discard_shell(shell)
            return None
        finally:
            loop.call_later(REFILL_DELAY_S, self._refill_zygote, interpreter)

    async def _new_cgroup(self) -> cgroups.Cgroup:
        assert self._cgroups is not None
        future = asyncio.get_running_loop().run_in_executor(self._spawn_executor,
                                                            self._cgroups.acquire)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            def recycle(done: asyncio.Future[cgroups.Cgroup]) -> None:
                if not done.cancelled() and done.exception() is None:
                    self._recycle_cgroup(done.result())

            future.add_done_callback(recycle)
            raise

    def _refill_zygote(self, interpreter: str) -> None:
        """Keep `zygote_shells` keepers of `interpreter` forked and joining (loop thread)."""
        if self._closed:
            return
        pool = self._zshells.setdefault(interpreter, [])
        while len(pool) < self._zygote_shells:
            zygote = self._get_zygote(interpreter)
            if zygote is None:
                break
            try:
                pool.append(self._start_zshell(zygote))
            except (SandboxError, OSError):
                break
        self._refill()  # and the /tmp images they will mount

    async def _acquire_image(self, size_mb: int) -> ephemeral.Image | None:
        images = self._images
        if images is None or not images.available:
            return None
        image = images.take(size_mb)
        if image is not None:
            return image
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._spawn_executor, images.create, size_mb)
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxError(f"could not create the /tmp image: {exc}") from exc

    def _background(self, fn: Any, *args: Any) -> None:
        future: ThreadFuture[None] = self._executor.submit(fn, *args)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    def _prefill_image(self, size_mb: int) -> None:
        assert self._images is not None
        try:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self._images.put(self._images.create(size_mb))
        finally:
            with self._prefill_lock:
                self._prefilling -= 1

    def _recycle_cgroup(self, cgroup: cgroups.Cgroup) -> None:
        if self._cgroups is not None:
            self._background(self._cgroups.release, cgroup)

    def _recycle_image(self, image: ephemeral.Image, tmp_fd: int = -1) -> None:
        """Wipe and pool an image in the background. `tmp_fd` is the host's handle on the
        mounted filesystem: shut it down first so dirty data is dropped, not written."""
        if tmp_fd >= 0:
            ephemeral.shutdown_fs(tmp_fd)
        if self._images is not None:
            self._background(self._images.recycle, image, tmp_fd)
        elif tmp_fd >= 0:
            os.close(tmp_fd)

    # ------------------------------------------------------------------------- contract

    def report(self) -> IsolationReport:
        driver = self._cgroups.driver if self._cgroups else None
        controllers = driver.enforced() if driver else frozenset()
        version = f"cgroup v{driver.version}" if driver else "cgroups"
        loop_tmp = bool(self._images and self._images.available)
        enforced = [
            "namespaces: mount, pid, ipc, uts, cgroup; network (only lo) for network=none",
            "root: pivot_root into a read-only tmpfs; read-only /usr, generated /etc "
            "(no shadow), code at /var/task, layers at /opt; host files invisible",
            f"identity: uid {self.uid}/gid {self.gid}, no groups, no capabilities "
            "(bounding, ambient, inheritable), securebits locked, no_new_privs",
            f"seccomp: {len(seccomp.denied_names())} syscalls denied, namespace clone "
            "flags, raw and packet sockets; foreign arch killed",
            "environment: only the function's variables",
        ]
        if "memory" in controllers:
            enforced.append(f"{version}: memory limit = MemorySize without swap, "
                            "OOM detection, peak memory")
        if "cpu" in controllers:
            enforced.append(f"{version}: CPU weight by memory; quota MemorySize/1769 "
                            "of a CPU after init")
        if "pids" in controllers:
            enforced.append(f"{version}: pids limit")
        if loop_tmp:
            enforced.append("/tmp: private ext4 image capped at EphemeralStorage (ENOSPC)")
        not_enforced = [
            "network=host: the function shares the host's network, including services "
            "listening on its loopback",
            "disk and network bandwidth (no io controller, no traffic shaping)",
            "device cgroup (devices are limited by the minimal /dev and nodev mounts)",
        ]
        not_enforced += [f"{version}: {c} controller unavailable"
                         for c in cgroups.CONTROLLERS if c not in controllers]
        if self.zygote_mode != "off":
            not_enforced.append("python instances fork from a per-interpreter zygote: they "
                                "share its address-space layout and hash secret, and pages "
                                "shared with it are not charged to the instance")
        if self.zygote_mode != "off":
            not_enforced.append("per-version templates (CORRAL_TEMPLATES=off, tag "
                                "corral:template=off): a template's init code may create user "
                                "namespaces and mount inside them")
        if not loop_tmp:
            not_enforced.append("/tmp size cap on disk: no loop devices, /tmp is a tmpfs "
                                "capped at EphemeralStorage but charged to the memory limit")
        return IsolationReport(implementation="linux", enforced=tuple(enforced),
                               not_enforced=tuple(not_enforced), secure=True)

    def view(self, spec: SandboxSpec) -> SandboxView:
        return SandboxView(task_root=TASK_ROOT, runtime_root=RUNTIME_ROOT, opt_root=OPT_ROOT,
                           tmp_dir=TMP_DIR)

    def _validate(self, spec: SandboxSpec) -> None:
        if self._closed:
            raise SandboxError("sandbox factory is closed")
        if not spec.argv:
            raise SandboxError("empty argv")
        if spec.network not in ("host", "none"):
            raise SandboxError(f"unknown network mode {spec.network!r}")
        if spec.memory_mb <= 0 or spec.ephemeral_mb <= 0 or spec.pids_max <= 0:
            raise SandboxError("memory, ephemeral storage and pids limits must be positive")
        for path in (spec.code_dir, spec.runtime_dir, *spec.layer_dirs):
            if not path.is_absolute() or not path.is_dir():
                raise SandboxError(f"{path} is not an existing absolute directory")
        for path in spec.layer_dirs:
            if any(c in str(path) for c in ":,\n"):
                raise SandboxError(f"layer path {path} contains ':' or ','")
        for path in spec.extra_ro_paths:
            text = os.path.normpath(str(path))
            if not path.is_absolute() or not path.exists():
                raise SandboxError(f"{path} is not an existing absolute path")
            if _under(text, _RESERVED) or any(r.startswith(text.rstrip("/") + "/")
                                               for r in _RESERVED):
                raise SandboxError(f"{path} cannot be bound into the sandbox")

    async def spawn(self, spec: SandboxSpec) -> LinuxSandbox:
        self._validate(spec)
        sandbox = LinuxSandbox(self, spec, self.view(spec))
        self._live.add(sandbox)
        try:
            await sandbox._start()
        except BaseException as exc:
            await sandbox.destroy()
            if isinstance(exc, SandboxError | asyncio.CancelledError):
                raise
            raise SandboxError(f"could not start the sandbox: {exc}") from exc
        return sandbox

    # ------------------------------------------------------------------------- templates

    def can_template(self, spec: SandboxSpec) -> bool:
        """Python runtimes on the built-in bootstrap, through a zygote."""
        return (not self._closed and not spec.runtime_api
                and self._zygote_interpreter(spec) is not None)

    async def template(self, spec: SandboxSpec) -> LinuxTemplate | None:
        """A per-version template of `spec`'s version, or None when its init fails."""
        if not self.can_template(spec):
            return None
        try:
            return await LinuxTemplate.start(self, spec)
        except SandboxError as exc:
            log.info("no template for %s: %s", spec.env.get("AWS_LAMBDA_FUNCTION_NAME"), exc)
            return None

    # what templates.py needs of the factory
    shm_mb = SHM_MB
    proc_masks = _PROC_MASKS

    @property
    def cap_last(self) -> int:
        return self._cap_last

    @property
    def seccomp_program(self) -> bytes:
        return self._seccomp

    @property
    def spawn_executor(self) -> ThreadPoolExecutor:
        return self._spawn_executor

    async def new_cgroup(self) -> cgroups.Cgroup:
        return await self._new_cgroup()

    def recycle_cgroup(self, cgroup: cgroups.Cgroup) -> None:
        self._recycle_cgroup(cgroup)

    async def acquire_image(self, size_mb: int) -> ephemeral.Image | None:
        return await self._acquire_image(size_mb)

    def recycle_image(self, image: ephemeral.Image, tmp_fd: int = -1) -> None:
        self._recycle_image(image, tmp_fd)

    async def close(self) -> None:
        """Destroy live sandboxes, stop launchers, remove every cgroup, image and directory."""
        if self._closed:
            return
        self._closed = True
        try:
            for sandbox in list(self._live):
                try:
                    await sandbox.destroy()
                except Exception:  # keep going: everything else must still be released
                    sandbox.kill()
        finally:
            await asyncio.to_thread(self._close_sync)

    def _close_sync(self) -> None:
        self._closed = True
        for shell in self._shells:
            shell.kill()
        self._shells.clear()
        for interpreter in list(self._zygotes):
            pool = self._zshells.get(interpreter, [])
            for shell in pool:
                if isinstance(shell.proc, ForkedProcess) and shell.proc.pidfd < 0:
                    self._drain_keeper(shell)
            self._zygotes.pop(interpreter).kill()  # warm keepers die with it (PDEATHSIG)
        for pool in self._zshells.values():
            for shell in pool:
                shell.kill()  # like the launchers: the pools below release the rest
                if shell.tmp_fd >= 0:  # read from `joined`: the host's handle on /tmp
                    os.close(shell.tmp_fd)
                    shell.tmp_fd = -1
        self._zshells.clear()
        self._spawn_executor.shutdown(wait=True)
        self._executor.shutdown(wait=True)
        if self._cgroups is not None:
            self._cgroups.close()
        if self._images is not None:
            self._images.close()
        if self._images_dir is not None and not self._images_dir.is_relative_to(self._state):
            shutil.rmtree(self._images_dir, ignore_errors=True)
        shutil.rmtree(self._state, ignore_errors=True)

