"""cgroup drivers against the real hierarchies of this host: the v1 driver with the memory, cpu
and pids controllers, the v2 driver on the (controller-less) unified tree for what exists there
(mkdir, joining, killing, removal), the limit arithmetic and the pool."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.sandbox import cgroups

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="creating cgroups needs root")


def test_cpu_arithmetic() -> None:
    """Shares, weight and quota are proportional to memory at AWS's 1769 MB per vCPU."""
    assert cgroups.cpu_shares(1769) == 1024
    assert cgroups.cpu_shares(128) == 74
    assert cgroups.cpu_shares(1) == 2
    assert cgroups.cpu_quota_us(1769) == 100_000
    assert cgroups.cpu_quota_us(128) == 7236
    assert cgroups.cpu_quota_us(10240) == 578_858  # about 5.8 CPUs
    assert cgroups.cpu_quota_us(1) == 1000
    assert cgroups.cpu_weight(1769) == 39  # the kernel's shares->weight mapping
    assert 1 <= cgroups.cpu_weight(128) < cgroups.cpu_weight(1769)


def test_detect_layout_reads_this_host() -> None:
    """The layout names the hierarchy owning the memory controller and our place in it."""
    layout = cgroups.detect_layout()
    if layout.version == 1:
        assert "memory" in layout.v1 and all(p.is_dir() for p in layout.v1.values())
    elif layout.version == 2:
        assert layout.v2 is not None and layout.v2.is_dir()
    assert layout.describe()


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"])


@pytest.fixture
def v1() -> Iterator[cgroups.V1Driver]:
    layout = cgroups.detect_layout()
    if os.geteuid() != 0 or layout.version != 1:
        pytest.skip("needs root and a cgroup v1 memory hierarchy")
    driver = cgroups.V1Driver(layout.v1)
    yield driver
    driver.close()


def test_v1_limits_join_kill_remove(v1: cgroups.V1Driver) -> None:
    """Limits are written where v1 expects them, a joined process is listed, killed and the
    cgroup is reset and removed."""
    assert v1.enforced() == {"memory", "cpu", "pids"}
    cg = v1.create("t0")
    assert isinstance(cg, cgroups.V1Cgroup)
    cg.configure(128, 64)
    mem, cpu, pids = cg.dirs["memory"], cg.dirs["cpu"], cg.dirs["pids"]
    assert int((mem / "memory.limit_in_bytes").read_text()) == 128 << 20
    if (mem / "memory.memsw.limit_in_bytes").exists():
        assert int((mem / "memory.memsw.limit_in_bytes").read_text()) == 128 << 20
    assert int((cpu / "cpu.shares").read_text()) == 74
    assert int((cpu / "cpu.cfs_quota_us").read_text()) == -1  # no quota before init
    assert (pids / "pids.max").read_text().strip() == "64"
    cg.set_cpu_quota(128)
    assert int((cpu / "cpu.cfs_quota_us").read_text()) == 7236

    proc = _sleeper()
    try:
        for path in cg.procs_files():
            Path(path).write_text(str(proc.pid))
        assert cg.pids() == [proc.pid]
        assert cg.oom_kills() == 0
        peak = cg.memory_peak()
        assert peak is not None and peak >= 0
        cg.kill_all()
        assert proc.wait(5) == -9
        assert cg.pids() == []
    finally:
        proc.kill()
        proc.wait()
    cg.reset()
    assert int((mem / "memory.limit_in_bytes").read_text()) > 1 << 50
    assert int((cpu / "cpu.cfs_quota_us").read_text()) == -1
    assert (pids / "pids.max").read_text().strip() == "max"
    cg.remove()
    assert not any(d.exists() for d in cg.dirs.values())


def test_v1_pool_reuses_and_cleans_up(v1: cgroups.V1Driver) -> None:
    """The pool hands out pre-created cgroups, takes them back, and close() removes all."""
    pool = cgroups.CgroupPool(v1, prefill=2)
    assert pool.idle_count() == 2
    first = pool.acquire()
    second = pool.acquire()
    third = pool.acquire()  # beyond the prefill: created on demand
    assert len({first.name, second.name, third.name}) == 3
    pool.release(first)
    assert pool.idle_count() == 1
    assert pool.acquire() is first
    parents = v1.parent_dirs()
    pool.close()
    assert not any(p.exists() for p in parents)


def test_stale_parents_of_dead_servers_are_swept(tmp_path: Path) -> None:
    """Task-free `corral-<dead pid>-N` parents anywhere in the hierarchy (not only in our own
    cgroup) are removed by the next driver; ones with tasks or a live owner are kept."""
    layout = cgroups.detect_layout()
    if os.geteuid() != 0 or layout.version != 1:
        pytest.skip("needs root and a cgroup v1 memory hierarchy")
    dead = subprocess.Popen(["true"])
    dead.wait()
    pids_root = layout.v1["pids"]
    nested = pids_root / f"other-test-{os.getpid()}"  # stands in for another process's cgroup
    stale = nested / f"corral-{dead.pid}-0"
    (stale / "i0").mkdir(parents=True)
    busy = pids_root / f"corral-{dead.pid}-1"
    (busy / "i0").mkdir(parents=True)
    alive = pids_root / f"corral-{os.getppid()}-7"
    alive.mkdir()
    sleeper = _sleeper()
    try:
        (busy / "i0" / "cgroup.procs").write_text(str(sleeper.pid))
        driver = cgroups.V1Driver(layout.v1, sweep=(pids_root,))
        try:
            assert not stale.exists()
            assert busy.exists() and alive.exists()
        finally:
            driver.close()
    finally:
        sleeper.kill()
        sleeper.wait()
        for leftover in (busy / "i0", busy, alive, nested):
            with contextlib.suppress(OSError):
                leftover.rmdir()


@pytest.fixture
def v2() -> Iterator[cgroups.V2Driver]:
    layout = cgroups.detect_layout()
    if os.geteuid() != 0 or layout.v2 is None:
        pytest.skip("needs root and a cgroup2 mount")
    driver = cgroups.V2Driver(layout.v2)
    yield driver
    driver.close()


def test_v2_join_kill_remove(v2: cgroups.V2Driver) -> None:
    """On the unified tree the v2 driver creates, joins (cgroup.procs), kills (cgroup.kill)
    and removes cgroups; limits only for the controllers the tree delegates."""
    cg = v2.create("t0")
    cg.configure(128, 64)  # writes only what exists: nothing on a controller-less tree
    cg.set_cpu_quota(128)
    if "memory" not in v2.enforced():
        assert cg.memory_peak() is None and cg.oom_kills() == 0
    procs = [_sleeper(), _sleeper()]
    try:
        for proc in procs:
            Path(cg.procs_files()[0]).write_text(str(proc.pid))
        assert cg.pids() == sorted(p.pid for p in procs)
        begin = time.monotonic()
        cg.kill_all()
        assert time.monotonic() - begin < 2
        assert [p.wait(5) for p in procs] == [-9, -9]
        assert cg.pids() == []
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    cg.reset()
    cg.remove()
    assert not cg.dir.exists()


def test_v2_pool(v2: cgroups.V2Driver) -> None:
    """The pool works the same on the v2 driver and removes its parent on close."""
    pool = cgroups.CgroupPool(v2, prefill=1)
    cg = pool.acquire()
    pool.release(cg)
    parents = v2.parent_dirs()
    assert parents and parents[0].is_dir()
    pool.close()
    assert not parents[0].exists()


@needs_root
def test_open_driver_matches_layout() -> None:
    """open_driver() picks the hierarchy that owns the memory controller."""
    layout = cgroups.detect_layout()
    if layout.version == 0:
        with pytest.raises(OSError):
            cgroups.open_driver(layout)
        return
    driver = cgroups.open_driver(layout)
    try:
        assert driver.version == layout.version and "memory" in driver.enforced()
    finally:
        driver.close()
