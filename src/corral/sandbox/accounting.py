"""The host resources of a Linux sandbox (`sandbox.api.Sandbox`), shared by ordinary and
template-forked instances: the cgroup (CPU quota after init, memory peak), the log pipe and
the /tmp image, and how they are given back."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING

from corral.sandbox import cgroups, ephemeral
from corral.sandbox.api import SandboxSpec

if TYPE_CHECKING:
    from corral.sandbox.linux import LinuxSandboxFactory


class CgroupAccounting:
    """Mixed into a sandbox that owns `_cgroup`, `log_fd` and `_image` (with `_tmp_fd`,
    the host's handle on that filesystem) until it is `_destroyed`."""

    spec: SandboxSpec
    log_fd: int
    _cgroup: cgroups.Cgroup | None
    _image: ephemeral.Image | None
    _tmp_fd: int
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

    async def _release_host_resources(self, factory: LinuxSandboxFactory) -> None:
        """Once the processes are gone: close the log pipe, recycle the cgroup (killing
        anything left in it) and the /tmp image."""
        if self.log_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.log_fd)
            self.log_fd = -1
        cgroup, self._cgroup = self._cgroup, None
        if cgroup is not None:
            if cgroup.pids():  # cannot happen once the namespace's init is gone; be sure
                await asyncio.to_thread(cgroup.kill_all)
            factory.recycle_cgroup(cgroup)
        image, self._image = self._image, None
        tmp_fd, self._tmp_fd = self._tmp_fd, -1
        if image is not None:
            factory.recycle_image(image, tmp_fd)
        elif tmp_fd >= 0:
            os.close(tmp_fd)

    def cgroup_pids(self) -> list[int]:
        """Host pids of every process in this sandbox's cgroup (for tests and tools)."""
        return self._cgroup.pids() if self._cgroup is not None else []
