"""Warm launchers, zygotes and the setup-socket messages of the Linux sandbox (host side).

`WarmLauncher` is a pre-started `nsinit.py` process waiting in a pooled cgroup; `Zygote` is a
per-interpreter fork server and `ForkedProcess` one of its children (a keeper). Messages on the
setup socket are `marshal` dicts with file descriptors attached (`send_message`,
`recv_message`). `linux.LinuxSandboxFactory` owns the pools of all three.
"""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import os
import select
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from corral.errors import SandboxError
from corral.sandbox import cgroups, ephemeral

NSINIT = Path(__file__).with_name("nsinit.py")
RUNTIME_ROOT = "/var/runtime"  # where the sandbox sees Corral's runtime files

BACKGROUND_NICE = 10  # launchers while warm, image formatting, cgroup recycling

MSG_MAX = 1 << 16

CMDLINE_PAD = 1024  # room for the instance's argv in the zygote's argument area

ENVIRON_PAD = 16384  # and for its environment (Lambda allows 4 KB of variables)



def lower_priority() -> None:
    """Nice the calling thread (Linux priorities are per thread; mkfs inherits it)."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0)
                                               + BACKGROUND_NICE))


class WarmLauncher:
    """A warm launcher: nsinit.py waiting in its cgroup for one sandbox config."""

    def __init__(self, proc: subprocess.Popen[bytes] | ForkedProcess, sock: socket.socket,
                 cgroup: cgroups.Cgroup, image: ephemeral.Image | None,
                 zygote: Zygote | None = None) -> None:
        self.proc = proc
        self.sock = sock
        self.cgroup: cgroups.Cgroup | None = cgroup  # None once a sandbox took it over
        self.image = image  # mounted on the skeleton's /tmp once joined
        self.tmp_fd = -1  # the host's handle on that /tmp filesystem
        self.timings: dict[str, float] = {}
        self.zygote = zygote  # the zygote this keeper was forked from, if any
        self.joined = False
        self.init_pid = 0  # zygote path: the sandbox init, forked while warm
        self.init_pidfd = -1

    def kill(self) -> None:
        if self.init_pidfd >= 0:  # zygote path: the warm init, then its keeper
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self.init_pidfd, signal.SIGKILL)
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        self.sock.close()
        if isinstance(self.proc, ForkedProcess):
            self.proc.close()
        if self.init_pidfd >= 0:  # gone means its mount namespace (and /tmp) is gone
            select.select([self.init_pidfd], [], [], 5)
            os.close(self.init_pidfd)
            self.init_pidfd = -1


class ForkedProcess:
    """A keeper forked by a zygote: not a child of the server, so it is signalled and
    watched through the pidfd the zygote sends (the zygote's kernel auto-reaps it)."""

    def __init__(self) -> None:
        self.pid = 0
        self.pidfd = -1
        self.returncode: int | None = None

    def attach(self, pid: int, pidfd: int) -> None:
        self.pid, self.pidfd = pid, pidfd

    def exited(self) -> bool:
        if (self.returncode is None and self.pidfd >= 0
                and select.select([self.pidfd], [], [], 0)[0]):
            self.returncode = 0
        return self.returncode is not None

    def kill(self) -> None:
        if self.pidfd >= 0 and not self.exited():
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int | None:
        if self.pidfd < 0:
            return self.returncode
        if self.returncode is None:
            if not select.select([self.pidfd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired("keeper", timeout or 0.0)
            self.returncode = 0
        return self.returncode

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


class Zygote:
    """A fork server for one interpreter: `<python3.X> -S -I nsinit.py zygote` (root,
    single-threaded, environment empty, runtime modules preloaded). Never answers on its
    own socket: each fork request carries the keeper's setup socket, on which the zygote
    reports the keeper's pid and pidfd."""

    def __init__(self, interpreter: str) -> None:
        self.interpreter = interpreter
        self.forks = 0
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [interpreter, "-S", "-I", str(NSINIT), "zygote", str(child.fileno()),
                 str(os.getpid()), str(BACKGROUND_NICE), " " * CMDLINE_PAD],
                pass_fds=(child.fileno(),), env={"_CORRAL_PAD": " " * ENVIRON_PAD}, cwd="/",
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            parent.close()
            raise SandboxError(f"could not start the {interpreter} zygote: {exc}") from exc
        finally:
            child.close()
        self.sock = parent
        from corral.runtimes import RUNTIME_DIR

        # the locale variables of the runtime environment (instance.runtime_environment)
        send_message(parent, {"op": "preload", "runtime_dir": str(RUNTIME_DIR),
                       "view_runtime_dir": RUNTIME_ROOT,
                       "locales": [{"LANG": "en_US.UTF-8"}, {}]})

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def fork(self, join: dict[str, Any], setup_end: socket.socket) -> None:
        """Ask for one keeper; `setup_end` is its end of the setup socket (sent, not kept)."""
        send_message(self.sock, join, [setup_end.fileno()])
        self.forks += 1

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
        self.sock.close()


async def wait_readable(sock: socket.socket, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await asyncio.wait_for(ready, timeout)
    finally:
        loop.remove_reader(sock.fileno())


async def recv_message(sock: socket.socket,
                       deadline: float) -> tuple[dict[str, Any] | None, list[int]]:
    """One setup message (None at EOF) and the fds attached to it."""
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, MSG_MAX, 4,
                                                       socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("sandbox setup timed out") from None
            await wait_readable(sock, remaining)
            continue
        if not data:
            for fd in fds:
                os.close(fd)
            return None, []
        message = marshal.loads(data)
        assert isinstance(message, dict)
        return message, fds


def send_message(sock: socket.socket, message: dict[str, Any],
                 fds: list[int] | None = None) -> None:
    socket.send_fds(sock, [marshal.dumps(message, 4)], fds or [])
