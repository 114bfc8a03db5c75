"""Host capacity: the memory the instances of this node may reserve, never overcommitted."""

from __future__ import annotations

from corral.config import Settings

_DEFAULT_SHARE = 0.8  # of the machine's memory, leaving room for the server and the OS


def host_capacity_mb(settings: Settings) -> int:
    """The configured node capacity, or 80% of the machine's memory."""
    if settings.node_capacity_mb > 0:
        return settings.node_capacity_mb
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(int(line.split()[1]) / 1024 * _DEFAULT_SHARE)
    except OSError:
        pass
    return 4096


class Capacity:
    """Memory reserved by live instances (their MemorySize) against the node's capacity."""

    def __init__(self, limit_mb: int) -> None:
        self.limit_mb = limit_mb
        self.used_mb = 0

    def fits(self, memory_mb: int) -> bool:
        return self.used_mb + memory_mb <= self.limit_mb

    def take(self, memory_mb: int) -> None:
        self.used_mb += memory_mb

    def release(self, memory_mb: int) -> None:
        self.used_mb = max(0, self.used_mb - memory_mb)
