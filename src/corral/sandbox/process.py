"""The unisolated fallback: a plain child process limited by rlimits.

Used only when the operator passes `--insecure` on a host where namespaces or cgroups are not
available. It keeps the contract of `sandbox.api` (its own temp dir, merged log pipe, control
socketpair, everything released on destroy) but enforces only what rlimits can: address-space
size, open files, CPU time is not limited. The function sees host paths.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import resource
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from corral.errors import SandboxError
from corral.sandbox.api import ExitStatus, IsolationReport, SandboxSpec, SandboxView

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1

# Interpreters map large virtual regions they never touch; RLIMIT_AS must leave room for that.
_ADDRESS_SPACE_SLACK = 1024 * 1024 * 1024


def exit_status_from_wait(status: int) -> ExitStatus:
    if os.WIFSIGNALED(status):
        return ExitStatus(signal=os.WTERMSIG(status))
    return ExitStatus(code=os.waitstatus_to_exitcode(status))


def watch_exit(proc: subprocess.Popen[bytes]) -> asyncio.Future[ExitStatus]:
    """A future resolved when `proc` exits, reaped through a pidfd (no thread per process)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[ExitStatus] = loop.create_future()
    pidfd = os.pidfd_open(proc.pid)

    def reap() -> None:
        try:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = proc.pid, 0
        if pid == 0:
            return
        loop.remove_reader(pidfd)
        os.close(pidfd)
        result = exit_status_from_wait(status)
        proc.returncode = result.code if result.signal is None else -result.signal
        if not future.done():
            future.set_result(result)

    loop.add_reader(pidfd, reap)
    return future


class ProcessSandbox:
    """One runtime process started with fork/exec and rlimits."""

    def __init__(self, spec: SandboxSpec, view: SandboxView, work_dir: Path) -> None:
        self.spec = spec
        self.view = view
        self._work_dir = work_dir
        self.pid = 0
        self.control, self._child_control = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.runtime_api_socket: socket.socket | None = None
        self.log_fd = -1
        self._exit: asyncio.Future[ExitStatus] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._destroyed = False

    async def start(self) -> None:
        env = dict(self.spec.env)
        pass_fds: tuple[int, ...] = ()
        if self.spec.runtime_api:
            api = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            api.bind(("127.0.0.1", 0))
            api.listen(16)
            self.runtime_api_socket = api
            env["AWS_LAMBDA_RUNTIME_API"] = f"127.0.0.1:{api.getsockname()[1]}"
        else:
            env["CORRAL_CONTROL_FD"] = str(self._child_control.fileno())
            pass_fds = (self._child_control.fileno(),)
        read_fd, write_fd = os.pipe()
        memory = self.spec.memory_mb * 1024 * 1024 + _ADDRESS_SPACE_SLACK
        nofile = self.spec.nofile_max

        def limit() -> None:
            # Die with the server even if it is SIGKILLed.
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

        try:
            proc = subprocess.Popen(
                self.spec.argv, env=env, cwd=self.view.task_root, stdin=subprocess.DEVNULL,
                stdout=write_fd, stderr=write_fd, pass_fds=pass_fds, start_new_session=True,
                preexec_fn=limit,  # only setrlimit, before exec
            )
        finally:
            os.close(write_fd)
            self._child_control.close()
        self.pid = proc.pid
        self._proc = proc
        self.log_fd = read_fd
        self.control.setblocking(False)
        self._exit = watch_exit(proc)

    async def wait(self) -> ExitStatus:
        assert self._exit is not None
        return await asyncio.shield(self._exit)

    def kill(self) -> None:
        if self.pid and self._exit is not None and not self._exit.done():
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def after_init(self) -> None:
        """No CPU control without cgroups."""

    def memory_peak_bytes(self) -> int | None:
        return None

    def reset_memory_peak(self) -> None:
        """Nothing to reset: peak memory is not measured here."""

    async def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        self.kill()
        if self._exit is not None:
            await self.wait()
        for sock in (self.control, self.runtime_api_socket):
            if sock is not None:
                sock.close()
        if self.log_fd >= 0:
            try:
                os.close(self.log_fd)
            except OSError:
                pass
            self.log_fd = -1
        shutil.rmtree(self._work_dir, ignore_errors=True)


class ProcessSandboxFactory:
    """Spawns `ProcessSandbox`es under `run_dir`."""

    def __init__(self, run_dir: Path) -> None:
        self._run_dir = run_dir

    def report(self) -> IsolationReport:
        return IsolationReport(
            implementation="process",
            enforced=("address-space rlimit (memory size + 1 GiB)", "open files rlimit",
                      "private /tmp directory"),
            not_enforced=("namespaces: the function sees the host's files and processes",
                          "memory cgroup (exact memory limit, OOM accounting)",
                          "CPU share and quota", "pids limit", "seccomp", "unprivileged uid",
                          "/tmp size cap"),
            secure=False,
        )

    def view(self, spec: SandboxSpec) -> SandboxView:
        work = self._run_dir / spec.instance_id
        return SandboxView(task_root=str(spec.code_dir), runtime_root=str(spec.runtime_dir),
                           opt_root=str(work / "opt"), tmp_dir=str(work / "tmp"))

    async def spawn(self, spec: SandboxSpec) -> ProcessSandbox:
        view = self.view(spec)
        work = self._run_dir / spec.instance_id
        Path(view.tmp_dir).mkdir(parents=True)
        Path(view.opt_root).mkdir()
        spec = _with_tmp(spec, view.tmp_dir)
        sandbox = ProcessSandbox(spec, view, work)
        try:
            await sandbox.start()
        except OSError as exc:
            await sandbox.destroy()
            raise SandboxError(f"could not start {spec.argv[0]}: {exc}") from exc
        return sandbox

    def can_template(self, spec: SandboxSpec) -> bool:
        return False

    async def template(self, spec: SandboxSpec) -> None:
        """No templates: without namespaces a fork could not be isolated from its template."""
        return None

    async def close(self) -> None:
        """Nothing pooled."""


def _with_tmp(spec: SandboxSpec, tmp_dir: str) -> SandboxSpec:
    env = dict(spec.env)
    env["TMPDIR"] = tmp_dir
    return SandboxSpec(**{**spec.__dict__, "env": env})
