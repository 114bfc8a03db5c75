"""cgroup v1 and v2 drivers behind one small interface, and a pool of pre-created cgroups.

One `Cgroup` is one instance's resource box. In v1 it is a directory of the same name in each
of the `memory`, `cpu` and `pids` hierarchies; in v2 it is one directory of the unified tree.
Everything lives under a per-factory parent, `corral-<server pid>-<n>`, created *inside the
server's own cgroup* in each hierarchy (the delegation-friendly place: the sandboxes are
accounted to whoever runs the server, and a systemd `Delegate=yes` unit owns that subtree).

Limits are written when an instance is spawned (four small writes) and reset when its cgroup
goes back to the pool, so `mkdir` never happens on the request path once the pool is warm.

Who joins: the sandbox's launcher process (`nsinit.py`) writes `0` into each `cgroup.procs`
itself, while it waits in the warm pool, before any namespace exists. The sandbox's init is
then *cloned* inside the cgroup, so no task is moved when a request arrives. Moving a task can
stall for an RCU grace period (5-14 ms measured here); see docs/sandbox.md.

Mapping (memory in MB, AWS's ratio of 1769 MB per vCPU):

    v1 memory.limit_in_bytes = memory.memsw.limit_in_bytes = memory     v2 memory.max, swap.max=0
    v1 cpu.shares = 1024 * memory / 1769 (min 2)                          v2 cpu.weight (converted)
    v1 cpu.cfs_quota_us = 100000 * memory / 1769 after init               v2 cpu.max
    v1/v2 pids.max
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import signal
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

MB_PER_VCPU = 1769
CFS_PERIOD_US = 100_000
CONTROLLERS = ("memory", "cpu", "pids")
PARENT_PREFIX = "corral-"
_UNLIMITED_V1 = "-1"
_counter = itertools.count()


def cpu_shares(memory_mb: int) -> int:
    """v1 `cpu.shares` proportional to memory: 1024 at 1769 MB, never below 2."""
    return max(2, 1024 * memory_mb // MB_PER_VCPU)


def cpu_weight(memory_mb: int) -> int:
    """v2 `cpu.weight` equivalent of `cpu_shares` (the kernel's own conversion)."""
    shares = cpu_shares(memory_mb)
    return min(10000, max(1, 1 + (shares - 2) * 9999 // 262142))


def cpu_quota_us(memory_mb: int) -> int:
    """Quota per 100 ms period: memory/1769 of one CPU (at least the kernel's 1 ms)."""
    return max(1000, round(CFS_PERIOD_US * memory_mb / MB_PER_VCPU))


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: Path) -> str:
    with open(path, encoding="ascii") as f:
        return f.read()


def _read_pids(path: Path) -> list[int]:
    try:
        return [int(line) for line in _read(path).split()]
    except FileNotFoundError:
        return []


def _kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True)
class Layout:
    """Where the cgroup hierarchies are mounted and where this process sits in them."""

    version: int  # 1 or 2: the driver that owns the memory controller (0: none usable)
    v1: dict[str, Path]  # controller -> directory of *this process's* cgroup in that hierarchy
    v2: Path | None  # this process's cgroup in the unified hierarchy
    v2_controllers: frozenset[str]  # controllers the unified hierarchy offers
    mounts: tuple[Path, ...] = ()  # where the hierarchies above are mounted (for sweeping)

    def describe(self) -> str:
        if self.version == 1:
            return "cgroup v1 (" + ", ".join(sorted(self.v1)) + ")"
        if self.version == 2:
            return "cgroup v2 (" + ", ".join(sorted(self.v2_controllers)) + ")"
        return "no usable cgroup hierarchy"


def _own_cgroups() -> tuple[dict[str, str], str | None]:
    v1: dict[str, str] = {}
    v2: str | None = None
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        hid, controllers, path = line.split(":", 2)
        if hid == "0" and controllers == "":
            v2 = path
        for controller in controllers.split(","):
            if controller:
                v1[controller] = path
    return v1, v2


def _join(mount: str, mount_root: str, path: str) -> Path:
    rel = path
    if mount_root != "/" and (path == mount_root or path.startswith(mount_root + "/")):
        rel = path[len(mount_root):]
    return Path(mount) / rel.lstrip("/")


def detect_layout() -> Layout:
    """Read /proc/self/mountinfo and /proc/self/cgroup; no side effects."""
    own_v1, own_v2 = _own_cgroups()
    v1: dict[str, Path] = {}
    v2: Path | None = None
    v2_controllers: frozenset[str] = frozenset()
    mounts: list[Path] = []
    for line in _read(Path("/proc/self/mountinfo")).splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        root, mount, fstype, options = fields[3], fields[4], rfields[0], rfields[2].split(",")
        if fstype == "cgroup":
            for controller in CONTROLLERS:
                if controller in options and controller not in v1 and controller in own_v1:
                    v1[controller] = _join(mount, root, own_v1[controller])
                    mounts.append(Path(mount))
        elif fstype == "cgroup2" and v2 is None and own_v2 is not None:
            v2 = _join(mount, root, own_v2)
            mounts.append(Path(mount))
            try:
                names = _read(Path(mount) / "cgroup.controllers").split()
            except OSError:
                names = []
            v2_controllers = frozenset(names)
    version = 0
    if "memory" in v1:
        version = 1
    elif v2 is not None and "memory" in v2_controllers:
        version = 2
    return Layout(version=version, v1=v1, v2=v2, v2_controllers=v2_controllers,
                  mounts=tuple(mounts))


class Cgroup(ABC):
    """One instance's resource box."""

    name: str

    @abstractmethod
    def procs_files(self) -> list[str]:
        """The `cgroup.procs` files a process writes `0` into to join this cgroup."""

    @abstractmethod
    def configure(self, memory_mb: int, pids_max: int) -> None:
        """Write memory (no swap), CPU weight and pids limits; no CPU quota yet."""

    @abstractmethod
    def set_cpu_quota(self, memory_mb: int) -> None:
        """Apply the CPU quota proportional to memory (after init)."""

    @abstractmethod
    def memory_peak(self) -> int | None:
        """Peak memory in bytes since the last reset, or None when not measured."""

    @abstractmethod
    def reset_memory_peak(self) -> None: ...

    @abstractmethod
    def oom_kills(self) -> int:
        """The cgroup's cumulative OOM-kill counter (compare against a baseline)."""

    @abstractmethod
    def pids(self) -> list[int]:
        """Every process in the cgroup (host pid namespace)."""

    @abstractmethod
    def cpu_usage_ns(self) -> int | None:
        """CPU time consumed by the cgroup's tasks, when measurable."""

    @abstractmethod
    def kill_all(self, timeout: float = 5.0) -> None:
        """SIGKILL every task and wait until the cgroup is empty."""

    @abstractmethod
    def reset(self) -> None:
        """Back to unlimited, with stale page-cache charges reclaimed (tasks must be gone)."""

    @abstractmethod
    def remove(self) -> None:
        """Kill what is left and rmdir."""


class CgroupDriver(ABC):
    """Creates cgroups under a per-factory parent; `close()` removes the parent."""

    version: int

    @abstractmethod
    def enforced(self) -> frozenset[str]:
        """Which of memory, cpu, pids this driver really limits."""

    @abstractmethod
    def create(self, name: str) -> Cgroup: ...

    @abstractmethod
    def parent_dirs(self) -> list[Path]: ...

    @abstractmethod
    def close(self) -> None: ...


def _stale_owner(name: str) -> bool:
    """`corral-<pid>-<n>` whose creating server is gone."""
    if not name.startswith(PARENT_PREFIX):
        return False
    try:
        pid = int(name.split("-")[1])
    except (IndexError, ValueError):
        return False
    return pid != os.getpid() and not Path(f"/proc/{pid}").exists()


def _has_tasks(directory: Path) -> bool:
    for root, _dirs, _files in os.walk(directory):
        if _read_pids(Path(root) / "cgroup.procs"):
            return True
    return False


def sweep_stale(top: Path, depth: int = 4) -> list[Path]:
    """Remove the task-free `corral-<pid>-*` parents of servers that died (SIGKILL leaves them:
    the sandboxes die with the server, their cgroup directories do not), searching `top` to
    `depth` levels. Trees that still hold tasks are left alone. Returns what was removed."""
    removed: list[Path] = []
    try:
        entries = [e for e in top.iterdir() if e.is_dir()]
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(PARENT_PREFIX):
            if _stale_owner(entry.name) and not _has_tasks(entry):
                with contextlib.suppress(OSError):
                    _remove_tree(entry)
                    removed.append(entry)
        elif depth > 1:
            removed += sweep_stale(entry, depth - 1)
    return removed


def _remove_tree(directory: Path) -> None:
    """Depth-first rmdir of a cgroup subtree, killing any task found."""
    with contextlib.suppress(OSError):
        for child in directory.iterdir():
            if child.is_dir():
                _remove_tree(child)
    deadline = time.monotonic() + 5.0
    while True:
        _kill_pids(_read_pids(directory / "cgroup.procs"))
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.002)


# --------------------------------------------------------------------------------------- v1


class V1Cgroup(Cgroup):
    def __init__(self, name: str, dirs: dict[str, Path]) -> None:
        self.name = name
        self.dirs = dirs
        self._memsw = (dirs["memory"] / "memory.memsw.limit_in_bytes").exists() \
            if "memory" in dirs else False
        # Read (and reset) on every invoke: keep the file open instead of opening it each time.
        self._peak_fd = os.open(dirs["memory"] / "memory.max_usage_in_bytes",
                                os.O_RDWR | os.O_CLOEXEC) if "memory" in dirs else -1

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def configure(self, memory_mb: int, pids_max: int) -> None:
        limit = str(memory_mb * 1024 * 1024)
        if "memory" in self.dirs:
            mem = self.dirs["memory"]
            _write(mem / "memory.limit_in_bytes", limit)  # lower memory before memsw
            if self._memsw:
                _write(mem / "memory.memsw.limit_in_bytes", limit)
        if "cpu" in self.dirs:
            _write(self.dirs["cpu"] / "cpu.shares", str(cpu_shares(memory_mb)))
        if "pids" in self.dirs:
            _write(self.dirs["pids"] / "pids.max", str(pids_max))

    def set_cpu_quota(self, memory_mb: int) -> None:
        if "cpu" in self.dirs:
            _write(self.dirs["cpu"] / "cpu.cfs_period_us", str(CFS_PERIOD_US))
            _write(self.dirs["cpu"] / "cpu.cfs_quota_us", str(cpu_quota_us(memory_mb)))

    def memory_peak(self) -> int | None:
        if self._peak_fd < 0:
            return None
        return int(os.pread(self._peak_fd, 64, 0))

    def reset_memory_peak(self) -> None:
        if self._peak_fd >= 0:
            os.pwrite(self._peak_fd, b"0", 0)

    def oom_kills(self) -> int:
        if "memory" not in self.dirs:
            return 0
        for line in _read(self.dirs["memory"] / "memory.oom_control").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def pids(self) -> list[int]:
        seen: set[int] = set()
        for d in self.dirs.values():
            seen.update(_read_pids(d / "cgroup.procs"))
        return sorted(seen)

    def cpu_usage_ns(self) -> int | None:
        return None

    def kill_all(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while pids := self.pids():
            _kill_pids(pids)
            if time.monotonic() > deadline:
                raise TimeoutError(f"cgroup {self.name} still has tasks {pids}")
            time.sleep(0.001)

    def reset(self) -> None:
        if "memory" in self.dirs:
            mem = self.dirs["memory"]
            if self._memsw:
                _write(mem / "memory.memsw.limit_in_bytes", _UNLIMITED_V1)  # raise memsw first
            _write(mem / "memory.limit_in_bytes", _UNLIMITED_V1)
            with contextlib.suppress(OSError):
                _write(mem / "memory.force_empty", "0")  # reclaim cache charged by the last user
            _write(mem / "memory.max_usage_in_bytes", "0")
        if "cpu" in self.dirs:
            _write(self.dirs["cpu"] / "cpu.cfs_quota_us", _UNLIMITED_V1)
            _write(self.dirs["cpu"] / "cpu.shares", "1024")
        if "pids" in self.dirs:
            _write(self.dirs["pids"] / "pids.max", "max")

    def remove(self) -> None:
        if self._peak_fd >= 0:
            os.close(self._peak_fd)
            self._peak_fd = -1
        for d in self.dirs.values():
            _remove_tree(d)


class V1Driver(CgroupDriver):
    """cgroup v1: one directory per instance in each of the memory, cpu and pids hierarchies."""

    version = 1

    def __init__(self, own: dict[str, Path], parent_name: str | None = None,
                 sweep: tuple[Path, ...] = ()) -> None:
        self._parents: dict[str, Path] = {}
        self._name = parent_name or f"{PARENT_PREFIX}{os.getpid()}-{next(_counter)}"
        try:
            for top in sweep or tuple(own.values()):
                sweep_stale(top)
            for controller, directory in own.items():
                if controller not in CONTROLLERS:
                    continue
                parent = directory / self._name
                parent.mkdir()
                self._parents[controller] = parent
        except BaseException:
            self.close()
            raise

    def enforced(self) -> frozenset[str]:
        return frozenset(self._parents)

    def parent_dirs(self) -> list[Path]:
        return list(self._parents.values())

    def create(self, name: str) -> V1Cgroup:
        dirs: dict[str, Path] = {}
        try:
            for controller, parent in self._parents.items():
                (parent / name).mkdir()
                dirs[controller] = parent / name
        except BaseException:
            V1Cgroup(name, dirs).remove()
            raise
        return V1Cgroup(name, dirs)

    def close(self) -> None:
        for parent in self._parents.values():
            with contextlib.suppress(FileNotFoundError):
                _remove_tree(parent)
        self._parents.clear()


# --------------------------------------------------------------------------------------- v2


class V2Cgroup(Cgroup):
    def __init__(self, name: str, directory: Path, controllers: frozenset[str]) -> None:
        self.name = name
        self.dir = directory
        self._controllers = controllers
        self._peak_fd = -1
        if "memory" in controllers:
            with contextlib.suppress(OSError):
                _write(directory / "memory.oom.group", "1")
            with contextlib.suppress(OSError):
                # memory.peak resets per open file (Linux 6.12+): keep one fd for the reset
                self._peak_fd = os.open(directory / "memory.peak", os.O_RDWR | os.O_CLOEXEC)
        self._peak_resettable = True

    def procs_files(self) -> list[str]:
        return [str(self.dir / "cgroup.procs")]

    def configure(self, memory_mb: int, pids_max: int) -> None:
        if "memory" in self._controllers:
            _write(self.dir / "memory.max", str(memory_mb * 1024 * 1024))
            with contextlib.suppress(FileNotFoundError):
                _write(self.dir / "memory.swap.max", "0")
        if "cpu" in self._controllers:
            _write(self.dir / "cpu.weight", str(cpu_weight(memory_mb)))
        if "pids" in self._controllers:
            _write(self.dir / "pids.max", str(pids_max))

    def set_cpu_quota(self, memory_mb: int) -> None:
        if "cpu" in self._controllers:
            _write(self.dir / "cpu.max", f"{cpu_quota_us(memory_mb)} {CFS_PERIOD_US}")

    def memory_peak(self) -> int | None:
        if self._peak_fd < 0:
            return None
        return int(os.pread(self._peak_fd, 64, 0))

    def reset_memory_peak(self) -> None:
        if self._peak_fd >= 0 and self._peak_resettable:
            try:
                os.pwrite(self._peak_fd, b"reset\n", 0)
            except OSError:
                self._peak_resettable = False  # before 6.12: peak since creation

    def oom_kills(self) -> int:
        if "memory" not in self._controllers:
            return 0
        for line in _read(self.dir / "memory.events").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def pids(self) -> list[int]:
        return _read_pids(self.dir / "cgroup.procs")

    def cpu_usage_ns(self) -> int | None:
        for line in _read(self.dir / "cpu.stat").splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) * 1000
        return None

    def kill_all(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        try:
            _write(self.dir / "cgroup.kill", "1")
        except OSError:
            _kill_pids(self.pids())  # before 5.14
        while pids := self.pids():
            if time.monotonic() > deadline:
                raise TimeoutError(f"cgroup {self.name} still has tasks {pids}")
            _kill_pids(pids)
            time.sleep(0.001)

    def reset(self) -> None:
        if "memory" in self._controllers:
            _write(self.dir / "memory.max", "max")
            with contextlib.suppress(OSError):
                _write(self.dir / "memory.reclaim", str(1 << 40))
            self.reset_memory_peak()
        if "cpu" in self._controllers:
            _write(self.dir / "cpu.max", f"max {CFS_PERIOD_US}")
            _write(self.dir / "cpu.weight", "100")
        if "pids" in self._controllers:
            _write(self.dir / "pids.max", "max")

    def remove(self) -> None:
        if self._peak_fd >= 0:
            os.close(self._peak_fd)
            self._peak_fd = -1
        _remove_tree(self.dir)


class V2Driver(CgroupDriver):
    """cgroup v2: one directory per instance in the unified tree.

    The parent gets `+memory +cpu +pids` in `cgroup.subtree_control` (whatever the tree
    offers). That needs the server's own cgroup to delegate them; when it cannot (the
    "no internal processes" rule, or controllers bound to v1 as on a hybrid host), the
    driver still creates, joins and kills cgroups and `enforced()` says what is missing.
    """

    version = 2

    def __init__(self, own: Path, parent_name: str | None = None,
                 sweep: tuple[Path, ...] = ()) -> None:
        self._name = parent_name or f"{PARENT_PREFIX}{os.getpid()}-{next(_counter)}"
        for top in sweep or (own,):
            sweep_stale(top)
        offered = frozenset(_read(own / "cgroup.controllers").split()) & set(CONTROLLERS)
        self._parent: Path | None = own / self._name
        self._parent.mkdir()
        enabled: set[str] = set()
        for controller in offered:
            try:
                _write(own / "cgroup.subtree_control", f"+{controller}")
                _write(self._parent / "cgroup.subtree_control", f"+{controller}")
                enabled.add(controller)
            except OSError:
                continue
        self._controllers = frozenset(enabled)

    def enforced(self) -> frozenset[str]:
        return self._controllers

    def parent_dirs(self) -> list[Path]:
        return [self._parent] if self._parent else []

    def create(self, name: str) -> V2Cgroup:
        assert self._parent is not None, "driver closed"
        directory = self._parent / name
        directory.mkdir()
        return V2Cgroup(name, directory, self._controllers)

    def close(self) -> None:
        if self._parent is not None:
            with contextlib.suppress(FileNotFoundError):
                _remove_tree(self._parent)
            self._parent = None


def open_driver(layout: Layout | None = None) -> CgroupDriver:
    """The driver for the hierarchy that owns the memory controller on this host."""
    layout = layout or detect_layout()
    if layout.version == 1:
        return V1Driver(layout.v1, sweep=layout.mounts)
    if layout.version == 2 and layout.v2 is not None:
        return V2Driver(layout.v2, sweep=layout.mounts)
    raise OSError(errno.ENOENT, "no cgroup hierarchy with the memory controller is mounted")


# ------------------------------------------------------------------------------------- pool


class CgroupPool:
    """Pre-created cgroups, handed out one per instance and recycled after it ends.

    Thread-safe: release runs in a worker thread (it waits for the tasks to die and
    reclaims the cgroup's page cache), acquire on the event loop.
    """

    def __init__(self, driver: CgroupDriver, prefill: int = 4, max_idle: int = 32) -> None:
        self.driver = driver
        self._idle: list[Cgroup] = []
        self._all: dict[str, Cgroup] = {}
        self._lock = threading.Lock()
        self._max_idle = max_idle
        self._seq = itertools.count()
        self._closed = False
        for _ in range(prefill):
            self._idle.append(self._create())

    def _create(self) -> Cgroup:
        cgroup = self.driver.create(f"i{next(self._seq)}")
        self._all[cgroup.name] = cgroup
        return cgroup

    def acquire(self) -> Cgroup:
        with self._lock:
            if self._closed:
                raise RuntimeError("cgroup pool closed")
            if self._idle:
                return self._idle.pop()
            return self._create()

    def release(self, cgroup: Cgroup) -> None:
        """Kill what is left in `cgroup`, reset its limits and keep it (blocking)."""
        try:
            cgroup.kill_all()
            cgroup.reset()
        except (OSError, TimeoutError):
            self._discard(cgroup)
            return
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(cgroup)
                return
        self._discard(cgroup)

    def _discard(self, cgroup: Cgroup) -> None:
        with self._lock:
            self._all.pop(cgroup.name, None)
        with contextlib.suppress(OSError, TimeoutError):
            cgroup.remove()

    def idle_count(self) -> int:
        with self._lock:
            return len(self._idle)

    def close(self) -> None:
        """Kill every task in every cgroup of the pool and remove them all and the parent."""
        with self._lock:
            self._closed = True
            cgroups = list(self._all.values())
            self._all.clear()
            self._idle.clear()
        for cgroup in cgroups:
            with contextlib.suppress(OSError, TimeoutError):
                cgroup.remove()
        self.driver.close()
