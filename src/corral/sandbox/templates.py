"""Per-version templates of the Linux sandbox (host side; docs/sandbox.md, "Per-version
templates").

A template is an ordinary Python sandbox started with `SandboxSpec.template`: the relaxed
seccomp program (`seccomp.program(template=True)`), no /proc masks, and CORRAL_TEMPLATE=1,
which makes the bootstrap import the handler, run the init code and then serve fork requests
(`runtime/python_template.py`) instead of invokes. `LinuxTemplate.fork()` asks it for one
instance and turns the answer into a `TemplateInstance`:

1. take a pooled cgroup and limit it to MemorySize minus the template's resident memory
   (the pages an instance shares with its template count against its MemorySize);
2. send `{"op": "fork"}` with the instance's control socket and log pipe attached;
3. read the instance's fixed-size HELLO with SCM_CREDENTIALS: the kernel translates the
   sender's pid into the server's PID namespace;
4. check that pid is in the template's cgroup, move it into the instance's cgroup (off the
   event loop: a cgroup move can wait for an RCU grace period), open a pidfd on it.

The template reaps its instances (they are re-parented to it, pid 1 of its namespace) and
reports each exit status with the instance's pid as the template sees it, which the host
reads from /proc/<pid>/status (`NSpid`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import struct
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from corral.errors import SandboxError
from corral.sandbox import cgroups, ephemeral
from corral.sandbox.accounting import CgroupAccounting
from corral.sandbox.api import ExitStatus, SandboxSpec, SandboxView
from corral.sandbox.launchers import wait_readable
from corral.sandbox.process import exit_status_from_wait

if TYPE_CHECKING:
    from corral.sandbox.linux import LinuxSandbox, LinuxSandboxFactory

log = logging.getLogger(__name__)

HELLO = b"corral-hello-v1\n"  # must match runtime/python_template.py
FAILED = b"corral-error-v1\n"
TEMPLATE_ENV = "CORRAL_TEMPLATE"
MIN_INSTANCE_MB = 16  # an instance's own cgroup limit never goes below this
MAX_CONTROL_LINE = 1 << 16  # a template is function code: bound what it can make us buffer
EXIT_REPORT_GRACE_S = 0.5  # how long to wait for the template's exit report of a dead pid
_CREDS = struct.Struct("iII")  # struct ucred: pid, uid, gid


def template_spec(spec: SandboxSpec) -> SandboxSpec:
    """The spec of a template for `spec`'s version."""
    return replace(spec, template=True, env={**spec.env, TEMPLATE_ENV: "1"})


class LinuxTemplate:
    """A running template: its sandbox, its control channel and the instances it forked."""

    def __init__(self, factory: LinuxSandboxFactory, sandbox: LinuxSandbox,
                 rss_bytes: int, spec: SandboxSpec) -> None:
        self._factory = factory
        self._sandbox = sandbox
        self.rss_bytes = rss_bytes
        self._spec = spec  # of the instance that asked for the template: spares use it
        self._spare: TemplateInstance | None = None
        self._refilling: asyncio.Future[None] | None = None
        self._discarding: set[asyncio.Future[None]] = set()
        self._children: dict[int, TemplateInstance] = {}  # by pid in the template's PID ns
        self._early_exits: dict[int, int] = {}  # reported before the instance registered
        self._buffer = b""
        self._destroyed = False
        self._exit = asyncio.ensure_future(sandbox.wait())
        loop = asyncio.get_running_loop()
        loop.add_reader(sandbox.control.fileno(), self._on_control)
        os.set_blocking(sandbox.log_fd, False)
        loop.add_reader(sandbox.log_fd, self._discard_logs)
        self._refill_spare()

    @property
    def alive(self) -> bool:
        return not self._destroyed and not self._exit.done()

    @property
    def pid(self) -> int:
        return self._sandbox.pid

    # ------------------------------------------------------------------------- start

    @classmethod
    async def start(cls, factory: LinuxSandboxFactory, spec: SandboxSpec) -> LinuxTemplate:
        """Spawn the template and wait until its init has run; raises SandboxError."""
        sandbox = await factory.spawn(template_spec(spec))
        try:
            ready = await _first_line(sandbox)
        except BaseException:
            await sandbox.destroy()
            raise
        if ready.get("op") != "ready":
            await sandbox.destroy()
            raise SandboxError(f"template init failed: {ready.get('message', 'exited')}")
        # No CPU quota (unlike an instance after init): the forks run in this cgroup until
        # the host moves them, and a quota of MemorySize/1769 of a CPU would stall them.
        return cls(factory, sandbox, int(ready.get("rss_bytes") or 0), spec)

    # ------------------------------------------------------------------------- control

    def _on_control(self) -> None:
        try:
            data = self._sandbox.control.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._sandbox.control.fileno())
            return
        self._buffer += data
        if len(self._buffer) > MAX_CONTROL_LINE and b"\n" not in self._buffer:
            log.warning("template of pid %d floods its channel: killed", self.pid)
            self._buffer = b""
            self._sandbox.kill()
            return
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            try:
                message = json.loads(line)
                if message.get("op") == "exit":
                    self._child_exited(int(message["pid"]), int(message["status"]))
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warning("template of pid %d sent a malformed message", self.pid)

    def _child_exited(self, ns_pid: int, status: int) -> None:
        child = self._children.pop(ns_pid, None)
        if child is None:
            self._early_exits[ns_pid] = status
            return
        child.exited(exit_status_from_wait(status))

    def _discard_logs(self) -> None:
        """Output of the template's init (each instance's own output goes to its pipe)."""
        try:
            while os.read(self._sandbox.log_fd, 65536):
                pass
        except BlockingIOError:
            return
        except OSError:
            pass
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._sandbox.log_fd)

    # ------------------------------------------------------------------------- fork

    async def fork(self, spec: SandboxSpec) -> TemplateInstance:
        """An instance for `spec`: the spare forked ahead of time when it fits, else a new
        fork; either way it takes spec's environment now (`activate`)."""
        if not self.alive:
            raise SandboxError("the template is gone")
        instance, self._spare = self._spare, None
        if instance is not None and not instance.fits(spec):
            task = asyncio.ensure_future(instance.destroy())
            self._discarding.add(task)
            task.add_done_callback(self._discarding.discard)
            instance = None
        if instance is None:
            instance = await self._new_instance(spec)
        try:
            instance.activate(spec, self._env_for(spec))
        except OSError as exc:
            await instance.destroy()
            raise SandboxError(f"template fork failed: {exc}") from exc
        self._refill_spare()
        return instance

    async def _new_instance(self, spec: SandboxSpec) -> TemplateInstance:
        instance = TemplateInstance(self, spec, self._factory.view(spec))
        try:
            await instance.start(self._request(spec))
        except OSError as exc:  # the instance died during setup (pidfd, /proc, cgroup move)
            await instance.destroy()
            raise SandboxError(f"template fork failed: {exc}") from exc
        except BaseException:
            await instance.destroy()
            raise
        return instance

    def _refill_spare(self) -> None:
        """Fork the next instance ahead of time, off the request path (one spare)."""
        if self._spare is not None or self._refilling is not None or not self.alive:
            return
        self._refilling = asyncio.ensure_future(self._make_spare())

    async def _make_spare(self) -> None:
        try:
            spare = await self._new_instance(self._spec)
        except (SandboxError, OSError) as exc:
            log.info("no spare for the template of pid %d: %s", self.pid, exc)
            return
        finally:
            self._refilling = None
        if self.alive and self._spare is None:
            self._spare = spare
        else:
            await spare.destroy()

    def _env_for(self, spec: SandboxSpec) -> dict[str, str]:
        """What an instance of `spec` sees differently from the template (its log stream,
        its initialization type)."""
        own = self._sandbox.spec.env
        return {k: v for k, v in spec.env.items() if own.get(k) != v}

    def _request(self, spec: SandboxSpec) -> dict[str, Any]:
        factory = self._factory
        return {
            "op": "fork",
            "netns": spec.network == "none",
            "tmp_mb": spec.ephemeral_mb,
            "shm_mb": factory.shm_mb,
            "proc_masks": list(factory.proc_masks),
            "cap_last": factory.cap_last,
            "seccomp": factory.seccomp_program.hex(),
        }

    def send_fork(self, request: dict[str, Any], fds: list[int]) -> None:
        sock = self._sandbox.control
        line = json.dumps(request).encode() + b"\n"
        sock.setblocking(True)
        try:
            socket.send_fds(sock, [line], fds)
        finally:
            sock.setblocking(False)

    def owns(self, pid: int) -> bool:
        """Whether `pid` is a process of this template's cgroup (its instances start there)."""
        return pid in self._sandbox.cgroup_pids()

    def register(self, ns_pid: int, child: TemplateInstance) -> None:
        status = self._early_exits.pop(ns_pid, None)
        if status is not None:
            child.exited(exit_status_from_wait(status))
        else:
            self._children[ns_pid] = child

    def forget(self, child: TemplateInstance) -> None:
        for key in [k for k, v in self._children.items() if v is child]:
            del self._children[key]

    # ------------------------------------------------------------------------- teardown

    async def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        if self._refilling is not None:
            self._refilling.cancel()
        spare, self._spare = self._spare, None
        if spare is not None:
            await spare.destroy()
        loop = asyncio.get_running_loop()
        for fd in (self._sandbox.control.fileno(), self._sandbox.log_fd):
            with contextlib.suppress(Exception):
                loop.remove_reader(fd)
        for child in list(self._children.values()):
            child.kill()
        await self._sandbox.destroy()  # pid 1 of their PID namespace: they die with it
        for child in list(self._children.values()):
            child.exited(ExitStatus(signal=signal.SIGKILL))
        self._children.clear()
        if not self._exit.done():
            self._exit.cancel()


class TemplateInstance(CgroupAccounting):
    """An instance forked from a template (satisfies `sandbox.api.Sandbox`)."""

    def __init__(self, template: LinuxTemplate, spec: SandboxSpec, view: SandboxView) -> None:
        self.spec = spec
        self.view = view
        self.pid = 0
        self.control, self._child_control = socket.socketpair(socket.AF_UNIX,
                                                              socket.SOCK_STREAM)
        self.control.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.runtime_api_socket: socket.socket | None = None
        self.log_fd = -1
        self.setup_timings: dict[str, float] = {}
        self._template = template
        self._cgroup: cgroups.Cgroup | None = None
        self._image: ephemeral.Image | None = None
        self._tmp_fd = -1  # the host's handle on that /tmp filesystem (to shut it down)
        self._pidfd = -1
        self._exit: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()
        self._oom_base = 0
        self._destroyed = False

    async def start(self, request: dict[str, Any]) -> None:
        begin = time.perf_counter()
        factory = self._template._factory
        self._cgroup = cgroup = await factory.new_cgroup()
        shared_mb = self._template.rss_bytes // (1024 * 1024)
        cgroup.configure(max(MIN_INSTANCE_MB, self.spec.memory_mb - shared_mb),
                         self.spec.pids_max)
        self._oom_base = cgroup.oom_kills()
        mount_fd = await self._tmp_mount(factory)
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        self.log_fd = read_fd
        fds = [self._child_control.fileno(), write_fd] + ([mount_fd] if mount_fd >= 0 else [])
        try:
            self._template.send_fork(request | {"fds": len(fds)}, fds)
        except OSError as exc:
            raise SandboxError(f"the template is gone: {exc}") from exc
        finally:
            os.close(write_fd)
            if mount_fd >= 0:
                os.close(mount_fd)
            self._child_control.close()
        self.setup_timings["host_sent"] = _ms(begin)
        pid = await self._hello(time.monotonic() + factory.setup_timeout)
        self.setup_timings["host_hello"] = _ms(begin)
        self.pid = pid
        self._pidfd = os.pidfd_open(pid)  # first: from here on `pid` cannot be reused
        if not self._template.owns(pid):
            raise SandboxError(f"pid {pid} announced itself but is not the template's")
        ns_pid = _template_ns_pid(pid)
        await asyncio.get_running_loop().run_in_executor(factory.spawn_executor,
                                                         _move, pid, cgroup)
        self.setup_timings["host_moved"] = _ms(begin)
        cgroup.reset_memory_peak()
        self._template.register(ns_pid, self)
        asyncio.get_running_loop().add_reader(self._pidfd, self._on_gone)
        self.control.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 0)
        self.control.setblocking(False)
        self.setup_timings["spawn_total"] = _ms(begin)

    def fits(self, spec: SandboxSpec) -> bool:
        """Whether this (spare) instance was made with what `spec` asks for."""
        mine = self.spec
        return (not self._exit.done() and not self._destroyed
                and (mine.network, mine.memory_mb, mine.ephemeral_mb, mine.pids_max)
                == (spec.network, spec.memory_mb, spec.ephemeral_mb, spec.pids_max))

    def activate(self, spec: SandboxSpec, env: dict[str, str]) -> None:
        """Hand the instance its invocation environment; it then runs the after-restore
        hooks and reports ready on the framed channel."""
        self.spec = spec
        self.control.setblocking(True)
        try:
            self.control.sendall(json.dumps({"env": env}).encode() + b"\n")
        finally:
            self.control.setblocking(False)

    async def _tmp_mount(self, factory: LinuxSandboxFactory) -> int:
        """A detached mount of a pooled ext4 image for the instance's /tmp (ENOSPC at
        EphemeralStorage, as for every other instance), or -1 without loop devices."""
        image = await factory.acquire_image(self.spec.ephemeral_mb)
        if image is None:
            return -1
        self._image = image
        mount_fd = ephemeral.detached_mount(image.device)
        self._tmp_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=mount_fd)
        with contextlib.suppress(OSError):  # an empty /tmp, like nsinit.mount_tmp leaves it
            os.rmdir("lost+found", dir_fd=self._tmp_fd)
        return mount_fd

    async def _hello(self, deadline: float) -> int:
        """Read the instance's HELLO and the pid the kernel attached to it."""
        sock = self.control
        sock.setblocking(False)
        data = b""
        pid = 0
        space = socket.CMSG_SPACE(_CREDS.size)
        while len(data) < len(HELLO):
            try:
                chunk, ancillary, _flags, _addr = sock.recvmsg(len(HELLO) - len(data), space)
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SandboxError("the template did not fork in time") from None
                try:
                    await wait_readable(sock, remaining)
                except TimeoutError:
                    raise SandboxError("the template did not fork in time") from None
                continue
            if not chunk:
                raise SandboxError("the template's fork died before it ran")
            for level, kind, blob in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and not pid:
                    pid = _CREDS.unpack(blob[:_CREDS.size])[0]
            data += chunk
        if data == FAILED:
            raise SandboxError(f"template fork failed: {_failure_detail(sock)}")
        if data != HELLO or pid <= 0:
            raise SandboxError("the template's fork answered garbage")
        return pid

    # ------------------------------------------------------------------------- exit

    def _on_gone(self) -> None:
        """The process is gone: its status comes from the template, or never (killed)."""
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._pidfd)
        asyncio.get_running_loop().call_later(
            EXIT_REPORT_GRACE_S, self.exited, ExitStatus(signal=signal.SIGKILL))

    def exited(self, status: ExitStatus) -> None:
        if self._exit.done():
            return
        if self._cgroup is not None:
            with contextlib.suppress(OSError):
                if self._cgroup.oom_kills() > self._oom_base:
                    status = replace(status, oom_killed=True)
        self._exit.set_result(status)

    # ------------------------------------------------------------------------- contract

    async def wait(self) -> ExitStatus:
        return await asyncio.shield(self._exit)

    def kill(self) -> None:
        if self._pidfd >= 0 and not self._exit.done():
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)  # pid 1: all of it

    def memory_peak_bytes(self) -> int | None:
        """Its own peak plus what it shares with the template (counted against MemorySize)."""
        peak = super().memory_peak_bytes()
        return None if peak is None else peak + self._template.rss_bytes

    async def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        self.kill()
        if self._pidfd >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            await asyncio.to_thread(_wait_gone, self._pidfd, 5.0)
            os.close(self._pidfd)
            self._pidfd = -1
        self.exited(ExitStatus(signal=signal.SIGKILL))
        self._template.forget(self)
        for sock in (self.control, self._child_control):
            sock.close()
        await self._release_host_resources(self._template._factory)


async def _first_line(sandbox: LinuxSandbox) -> dict[str, Any]:
    """The template's first message on its control channel; `{}` if it exited first."""
    sock = sandbox.control
    sock.setblocking(False)
    data = b""
    exit_task = asyncio.ensure_future(sandbox.wait())
    try:
        while b"\n" not in data:
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                readable = asyncio.ensure_future(wait_readable(sock, 3600.0))
                await asyncio.wait({readable, exit_task}, return_when=asyncio.FIRST_COMPLETED)
                if not readable.done():
                    readable.cancel()
                    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                        await readable
                    return {}
                continue
            if not chunk:
                return {}
            data += chunk
    finally:
        if not exit_task.done():
            exit_task.cancel()
    try:
        message = json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}


def _failure_detail(sock: socket.socket) -> str:
    """The JSON line that follows FAILED (the process writes it in one go, then exits)."""
    sock.settimeout(1.0)
    try:
        line = sock.recv(4096).split(b"\n", 1)[0]
        return str(json.loads(line).get("message"))
    except (OSError, ValueError, AttributeError):
        return "no detail"


def _move(pid: int, cgroup: cgroups.Cgroup) -> None:
    for path in cgroup.procs_files():
        with open(path, "w") as procs:
            procs.write(str(pid))


def _template_ns_pid(pid: int) -> int:
    """`pid` as its template sees it: the second entry of NSpid (host, template, own)."""
    with open(f"/proc/{pid}/status", "rb") as status:
        for line in status:
            if line.startswith(b"NSpid:"):
                levels = line.split()[1:]
                if len(levels) >= 3:
                    return int(levels[1])
    raise SandboxError(f"pid {pid} is not in a template's PID namespace")


def _wait_gone(pidfd: int, timeout: float) -> None:
    import select

    select.select([pidfd], [], [], timeout)


def _ms(begin: float) -> float:
    return round((time.perf_counter() - begin) * 1000, 3)
