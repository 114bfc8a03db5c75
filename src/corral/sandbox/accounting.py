"""The cgroup side of a Linux sandbox (`sandbox.api.Sandbox`): the CPU quota after init and
the memory peak, shared by ordinary and template-forked instances."""

from __future__ import annotations

import contextlib

from corral.sandbox import cgroups
from corral.sandbox.api import SandboxSpec


class CgroupAccounting:
    """Mixed into a sandbox that owns `_cgroup` until it is `_destroyed`."""

    spec: SandboxSpec
    _cgroup: cgroups.Cgroup | None
    _destroyed: bool

    def after_init(self) -> None:
        if self._cgroup is not None and not self._destroyed:
            self._cgroup.set_cpu_quota(self.spec.memory_mb)

    def memory_peak_bytes(self) -> int | None:
        if self._cgroup is None or self._destroyed:
            return None
        try:
            return self._cgroup.memory_peak()
        except OSError:
            return None

    def reset_memory_peak(self) -> None:
        if self._cgroup is not None and not self._destroyed:
            with contextlib.suppress(OSError):
                self._cgroup.reset_memory_peak()

    def cgroup_pids(self) -> list[int]:
        """Host pids of every process in this sandbox's cgroup (for tests and tools)."""
        return self._cgroup.pids() if self._cgroup is not None else []
