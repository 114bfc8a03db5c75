"""Exec path vs zygote path through `LinuxSandboxFactory` alone (root; no server, no HTTP).

Round-robin, one factory per path: time from `spawn()` to its return, to the runtime's first
instruction and to a trivial handler imported, plus the medians of `setup_timings` (stage
marks, ms after the init received its config). Usage: .venv/bin/python bench/sandbox_stages.py [N]
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from corral.sandbox.api import SandboxSpec  # noqa: E402
from corral.sandbox.linux import LinuxSandboxFactory  # noqa: E402

PY = "/usr/bin/python3"
CODE = ("import time; t = time.monotonic(); import sys; sys.path.insert(0, '/var/task'); "
        "import json, handler; print(t, time.monotonic())")


async def run(n: int, base: Path) -> None:
    code = base / "code"
    code.mkdir(mode=0o755)
    (code / "handler.py").write_text("X = 1\n")
    runtime = base / "runtime"
    runtime.mkdir(mode=0o755)
    spec = SandboxSpec(instance_id="bench", argv=[PY, "-S", "-I", "-c", CODE],
                       env={"PATH": "/usr/bin:/bin", "LANG": "en_US.UTF-8"}, code_dir=code,
                       runtime_dir=runtime, memory_mb=256)
    factories = {"exec": LinuxSandboxFactory(base / "run-exec", zygote="off"),
                 "zygote": LinuxSandboxFactory(base / "run-zygote", zygote="any")}
    times: dict[str, list[tuple[float, float, float]]] = {k: [] for k in factories}
    stages: dict[str, list[dict[str, float]]] = {k: [] for k in factories}
    await asyncio.sleep(1.0)
    try:
        for i in range(n):
            for name in (("exec", "zygote") if i % 2 else ("zygote", "exec")):
                t0 = time.monotonic()
                sandbox: Any = await factories[name].spawn(spec)
                t1 = time.monotonic()
                out = b""
                os.set_blocking(sandbox.log_fd, True)
                while chunk := os.read(sandbox.log_fd, 4096):
                    out += chunk
                await sandbox.wait()
                await sandbox.destroy()
                first, done = map(float, out.split())
                times[name].append(((t1 - t0) * 1000, (first - t0) * 1000, (done - t0) * 1000))
                stages[name].append(dict(sandbox.setup_timings))
                await asyncio.sleep(0.25)
    finally:
        for factory in factories.values():
            await factory.close()
    for name, rows in times.items():
        spawned, first, imported = (statistics.median(c) for c in zip(*rows, strict=True))
        print(f"{name:7} spawn() {spawned:6.1f} ms  first instruction {first:6.1f} ms  "
              f"handler imported {imported:6.1f} ms")
        keys = sorted({k for d in stages[name] for k in d})
        print("        stages:", {k: round(statistics.median(
            [d[k] for d in stages[name] if k in d]), 2) for k in keys})


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    base = Path(tempfile.mkdtemp(prefix="corral-stages-"))
    base.chmod(0o755)
    try:
        asyncio.run(run(n, base))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
