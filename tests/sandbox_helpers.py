"""Helpers for the sandbox tests: run small Python scripts in real sandboxes, collect their
exit status and output, and list what a sandbox could leave behind on the host."""

from __future__ import annotations

import asyncio
import glob
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from corral.sandbox.api import ExitStatus, SandboxSpec

PY = "/usr/bin/python3"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the Linux sandbox needs root")
needs_python = pytest.mark.skipif(not os.access(PY, os.X_OK), reason=f"{PY} is missing")


@dataclass
class Dirs:
    """Host directories a sandbox is built from."""

    base: Path
    code: Path
    runtime: Path


def spec_for(dirs: Dirs, code: str, **overrides: Any) -> SandboxSpec:
    """A spec running `python3 -S -I -c code` with small defaults."""
    fields: dict[str, Any] = {
        "instance_id": "test", "argv": [PY, "-S", "-I", "-c", code],
        "env": {"PATH": "/usr/bin:/bin"}, "code_dir": dirs.code, "runtime_dir": dirs.runtime,
        "memory_mb": 256, "ephemeral_mb": 512,
    }
    fields.update(overrides)
    return SandboxSpec(**fields)


async def collect(sandbox: Any, timeout: float = 30.0) -> tuple[ExitStatus, str]:
    """Read the merged log until EOF while waiting for the sandbox's main process to exit."""
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    eof: asyncio.Future[None] = loop.create_future()
    fd = sandbox.log_fd
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if data:
            chunks.append(data)
            return
        loop.remove_reader(fd)
        if not eof.done():
            eof.set_result(None)

    loop.add_reader(fd, readable)
    try:
        status = await asyncio.wait_for(sandbox.wait(), timeout)
        await asyncio.wait_for(eof, 10)
    finally:
        loop.remove_reader(fd)
    return status, b"".join(chunks).decode(errors="replace")


async def run_code(factory: Any, dirs: Dirs, code: str, timeout: float = 30.0,
                   **overrides: Any) -> tuple[ExitStatus, str]:
    """Spawn, collect and destroy one sandbox running `code`."""
    sandbox = await factory.spawn(spec_for(dirs, code, **overrides))
    try:
        return await collect(sandbox, timeout)
    finally:
        await sandbox.destroy()


def _read(path: str) -> str:
    """A sysfs file that may vanish while we look (loop devices detach asynchronously)."""
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def leftovers(base: Path) -> dict[str, list[str]]:
    """Host state this process's sandboxes could leak: cgroup dirs, loop devices with an image
    under `base`, mounts, child processes."""
    marker = f"corral-{os.getpid()}-"
    cgroup_dirs = sorted(glob.glob(f"/sys/fs/cgroup/*/**/{marker}*", recursive=True))
    loops = sorted(backing for p in glob.glob("/sys/block/loop*/loop/backing_file")
                   if (backing := _read(p)).startswith(str(base)))
    mounts = sorted(line.split()[4]
                    for line in Path("/proc/self/mountinfo").read_text().splitlines())
    ps = subprocess.run(["ps", "--ppid", str(os.getpid()), "-o", "pid=,comm="],
                        capture_output=True, text=True, check=False).stdout.splitlines()
    children = sorted(line.strip() for line in ps
                      if line.strip() and not line.strip().endswith(" ps"))
    return {"cgroups": cgroup_dirs, "loops": loops, "mounts": mounts, "children": children}
