"""Choosing the sandbox implementation from the operator's settings.

`settings.sandbox`:

* `"auto"`: the Linux sandbox when this host can isolate (root, namespaces, a cgroup hierarchy
  with the memory, cpu and pids controllers, seccomp); otherwise refuse with the list of what
  is missing, unless `settings.allow_insecure`, in which case plain processes.
* `"linux"`: the Linux sandbox or a `ConfigError`.
* `"process"`: plain processes with rlimits; needs `allow_insecure`.

`probe()` is what `corral doctor` prints: cheap, read-only checks of /proc and /sys.
"""

from __future__ import annotations

import os
from pathlib import Path

from corral.config import Settings
from corral.errors import ConfigError, SandboxError
from corral.sandbox import cgroups, ephemeral, seccomp
from corral.sandbox.api import IsolationReport, SandboxFactory
from corral.sandbox.process import ProcessSandboxFactory

_NAMESPACES = ("mnt", "pid", "ipc", "uts", "cgroup", "net")


def _seccomp_available() -> bool:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False
    return "Seccomp:" in status and seccomp.supported()


def probe() -> IsolationReport:
    """What the Linux sandbox could enforce on this host, without creating anything."""
    enforced: list[str] = []
    missing: list[str] = []
    root = os.geteuid() == 0
    if root:
        enforced.append("running as root: namespaces, mounts and cgroups can be set up")
    else:
        missing.append("not root: no mount/pid namespaces, no pivot_root, no cgroups, "
                       "no uid switch (user namespaces are not implemented)")
    namespaces = [ns for ns in _NAMESPACES if Path(f"/proc/self/ns/{ns}").exists()]
    absent = [ns for ns in _NAMESPACES if ns not in namespaces]
    if absent:
        missing.append("namespaces unavailable: " + ", ".join(absent))
    else:
        enforced.append("namespaces: mount, pid, ipc, uts, cgroup, net")
    try:
        layout = cgroups.detect_layout()
    except OSError:
        layout = cgroups.Layout(version=0, v1={}, v2=None, v2_controllers=frozenset())
    if layout.version == 1:
        controllers = set(layout.v1)
    elif layout.version == 2:
        controllers = set(layout.v2_controllers) & set(cgroups.CONTROLLERS)
    else:
        controllers = set()
    for controller in cgroups.CONTROLLERS:
        if controller in controllers:
            enforced.append(f"{layout.describe().split(' (')[0]}: {controller} controller")
        else:
            effect = "no memory limit or OOM accounting" if controller == "memory" \
                else "not limited"
            missing.append(f"cgroups: no {controller} controller ({effect})")
    if _seccomp_available():
        enforced.append(f"seccomp filter ({seccomp.native_arch()})")
    else:
        missing.append("seccomp filters unavailable")
    if ephemeral.loop_available():
        enforced.append("/tmp on loop-mounted ext4 images (ENOSPC at EphemeralStorage)")
    else:
        missing.append("no loop devices or mkfs.ext4: /tmp would be a tmpfs charged to memory")
    secure = (root and not absent and {"memory", "pids"} <= controllers
              and _seccomp_available())
    return IsolationReport(implementation="linux" if secure else "linux (unavailable)",
                           enforced=tuple(enforced), not_enforced=tuple(missing),
                           secure=secure)


def _refuse(report: IsolationReport, why: str) -> ConfigError:
    lines = [why, *report.lines(),
             "pass --insecure (settings.allow_insecure) to run functions as plain processes"]
    return ConfigError("\n".join(lines))


def make_factory(settings: Settings) -> SandboxFactory:
    """The sandbox factory `settings.sandbox` asks for, or a ConfigError saying why not."""
    mode = settings.sandbox
    if mode not in ("auto", "linux", "process"):
        raise ConfigError(f"unknown sandbox {mode!r} (expected auto, linux or process)")
    if mode == "process":
        if not settings.allow_insecure:
            raise _refuse(ProcessSandboxFactory(settings.run_dir).report(),
                          "the process sandbox does not isolate functions")
        return ProcessSandboxFactory(settings.run_dir)
    report = probe()
    if not report.secure:
        if mode == "auto" and settings.allow_insecure:
            return ProcessSandboxFactory(settings.run_dir)
        raise _refuse(report, "this host cannot isolate functions")
    from corral.sandbox.linux import LinuxSandboxFactory

    try:
        return LinuxSandboxFactory(settings.run_dir)
    except SandboxError as exc:
        if mode == "auto" and settings.allow_insecure:
            return ProcessSandboxFactory(settings.run_dir)
        raise _refuse(report, f"the Linux sandbox could not start: {exc}") from exc
