"""The sandbox layer's contract: an isolated process tree running one function instance.

Lifecycle guarantees every implementation gives:

* `SandboxFactory.spawn(spec)` either returns a running `Sandbox` or raises `SandboxError`
  having released everything it allocated (processes, cgroups, mounts, temp dirs, fds).
* Inside the sandbox the function sees its code read-only at `view.task_root`, layers at
  `view.opt_root`, a private writable `view.tmp_dir`, the environment in `spec.env` plus
  `AWS_LAMBDA_RUNTIME_API` (when `spec.runtime_api`) and `CORRAL_CONTROL_FD` (the child end
  of `control`), and nothing of the server's environment.
* The runtime's stdout and stderr are merged into `Sandbox.log_fd` (the read end of a pipe).
* `destroy()` is idempotent, kills every process of the sandbox, waits for them and releases
  every resource; after it returns nothing of the sandbox remains on the host.
* Accounting (`memory_peak_bytes`, `oom_killed`) is best effort: `None`/`False` when the
  implementation cannot measure.
* `SandboxFactory.template(spec)` returns a `Template` whose init has run, or None when the
  implementation has none (the caller keeps using `spawn`). `Template.fork(spec)` gives a
  `Sandbox` with the same guarantees as `spawn`'s, except that the runtime is initialized
  already and the isolation is the one docs/sandbox.md states for templates. Every sandbox
  forked from a template dies with it: `destroy()` the template only once its instances
  are gone.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class SandboxSpec:
    """Everything needed to start one instance."""

    instance_id: str
    argv: list[str]  # argv[0] is resolved inside the sandbox's view
    env: dict[str, str]
    code_dir: Path  # host path, exposed read-only at view.task_root
    runtime_dir: Path  # host path of Corral's in-sandbox runtime files (view.runtime_root)
    memory_mb: int
    ephemeral_mb: int = 512
    layer_dirs: tuple[Path, ...] = ()  # merged read-only at view.opt_root
    network: str = "host"  # "host" | "none"
    runtime_api: bool = False  # serve the HTTP Runtime API (custom runtimes and RICs)
    pids_max: int = 1024
    nofile_max: int = 1024
    extra_ro_paths: tuple[Path, ...] = field(default_factory=tuple)
    template: bool = False  # start a per-version template instead of an instance


@dataclass(frozen=True)
class SandboxView:
    """Paths as the function sees them."""

    task_root: str
    runtime_root: str
    opt_root: str
    tmp_dir: str


@dataclass(frozen=True)
class ExitStatus:
    """How the sandbox's main process ended, rendered the way Lambda renders it."""

    code: int | None = None
    signal: int | None = None
    oom_killed: bool = False

    def describe(self) -> str:
        """`exit status N` or `signal: killed`, as Go's exec.ExitError prints it."""
        if self.signal is not None:
            return f"signal: {_signal_name(self.signal)}"
        return f"exit status {self.code}"


def _signal_name(signum: int) -> str:
    names = {9: "killed", 11: "segmentation fault", 6: "aborted", 15: "terminated",
             7: "bus error", 4: "illegal instruction", 8: "floating point exception",
             1: "hangup", 2: "interrupt", 13: "broken pipe", 31: "bad system call"}
    return names.get(signum, f"signal {signum}")


@dataclass(frozen=True)
class IsolationReport:
    """What this host can enforce; printed by `corral doctor` and at server start."""

    implementation: str
    enforced: tuple[str, ...]
    not_enforced: tuple[str, ...]
    secure: bool  # False means code would run without real isolation

    def lines(self) -> list[str]:
        out = [f"sandbox: {self.implementation} ({'isolated' if self.secure else 'INSECURE'})"]
        out += [f"  enforced:     {item}" for item in self.enforced]
        out += [f"  not enforced: {item}" for item in self.not_enforced]
        return out


class Sandbox(Protocol):
    """A running instance sandbox. Owned by exactly one instance."""

    pid: int
    view: SandboxView
    control: socket.socket  # host end of the framed control channel (socketpair)
    log_fd: int  # read end of the merged stdout/stderr pipe
    runtime_api_socket: socket.socket | None  # listening socket when spec.runtime_api

    async def wait(self) -> ExitStatus:
        """Wait for the main process to exit (may be awaited by several tasks)."""
        ...

    def kill(self) -> None:
        """Kill every process of the sandbox now (SIGKILL); does not wait."""
        ...

    def after_init(self) -> None:
        """Called once the runtime has initialized: apply the CPU quota."""
        ...

    def memory_peak_bytes(self) -> int | None:
        """Peak memory since the last `reset_memory_peak`, or None if unknown."""
        ...

    def reset_memory_peak(self) -> None: ...

    async def destroy(self) -> None:
        """Kill, reap and release everything. Idempotent."""
        ...


class Template(Protocol):
    """An initialized instance of one version that forks further instances of it."""

    @property
    def alive(self) -> bool: ...

    async def fork(self, spec: SandboxSpec) -> Sandbox:
        """A new instance (spec: its memory, network, environment); raises SandboxError."""
        ...

    async def destroy(self) -> None:
        """Kill the template and every instance forked from it. Idempotent."""
        ...


class SandboxFactory(Protocol):
    def report(self) -> IsolationReport: ...

    def can_template(self, spec: SandboxSpec) -> bool:
        """Whether `template(spec)` could give a template (cheap; no process started)."""
        ...

    async def template(self, spec: SandboxSpec) -> Template | None:
        """Start a template of spec's version and wait for its init; None when this
        factory has no templates or the init failed (instances then start with spawn)."""
        ...

    def view(self, spec: SandboxSpec) -> SandboxView:
        """The paths the function will see, known before spawning (to build env and argv)."""
        ...

    async def spawn(self, spec: SandboxSpec) -> Sandbox: ...

    async def close(self) -> None:
        """Release pooled resources (cgroups, zygotes). Called at server shutdown."""
        ...
