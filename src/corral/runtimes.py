"""Which Lambda runtimes this host can run, and how to start each.

Python: one `python3.X` runtime per interpreter found (3.11 or newer), preferring the system's
over pyenv's. Node.js: the host's `node` as `nodejsNN.x`. Custom: `provided`, `provided.al2`,
`provided.al2023` always (an executable `bootstrap` in the package).
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

RUNTIME_DIR = Path(__file__).parent / "runtime"
PROVIDED = ("provided", "provided.al2", "provided.al2023")
_MIN_PYTHON = (3, 11)


@dataclass(frozen=True)
class RuntimeInfo:
    name: str  # Lambda runtime identifier, e.g. "python3.12"
    kind: str  # "python" | "node" | "provided"
    executable: str  # interpreter path ("" for provided)
    version: str
    prefix: str = ""  # install prefix to expose read-only when outside /usr

    def argv(self, view_runtime_root: str, task_root: str) -> list[str]:
        """The command that starts this runtime inside a sandbox."""
        if self.kind == "python":
            # Importing (not running) the bootstrap lets Python use its precompiled bytecode.
            return [self.executable, "-S", "-I", "-c",
                    f"import sys; sys.path.insert(0, {view_runtime_root!r}); "
                    "import python_bootstrap; python_bootstrap.run()"]
        if self.kind == "node":
            return [self.executable, f"{view_runtime_root}/node_bootstrap.js"]
        return [f"{task_root}/bootstrap"]


def _python_candidates() -> list[str]:
    patterns = ["/usr/bin/python3.*", "/usr/local/bin/python3.*",
                os.path.expanduser("~/.pyenv/versions/*/bin/python3.*"),
                "/opt/python*/bin/python3.*"]
    found: list[str] = []
    for pattern in patterns:
        found += sorted(glob.glob(pattern))
    return found


@functools.cache
def discover() -> dict[str, RuntimeInfo]:
    """Runtimes available on this host, keyed by Lambda runtime name (cached per process)."""
    runtimes: dict[str, RuntimeInfo] = {}
    for path in _python_candidates():
        match = re.fullmatch(r"python(3)\.(\d+)", os.path.basename(path))
        if not match or not os.access(path, os.X_OK) or not os.path.exists(path):
            continue
        version = (3, int(match.group(2)))
        name = f"python3.{version[1]}"
        if version < _MIN_PYTHON or name in runtimes:
            continue
        real = os.path.realpath(path)
        prefix = str(Path(real).parent.parent)
        runtimes[name] = RuntimeInfo(name, "python", real, f"3.{version[1]}",
                                     "" if prefix in ("/usr", "/") else prefix)
    node = shutil.which("node")
    if node:
        try:
            out = subprocess.run([node, "--version"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
            major = out.lstrip("v").split(".")[0]
            real = os.path.realpath(node)
            prefix = str(Path(real).parent.parent)
            runtimes[f"nodejs{major}.x"] = RuntimeInfo(
                f"nodejs{major}.x", "node", real, out.lstrip("v"),
                "" if prefix in ("/usr", "/") else prefix)
        except (OSError, subprocess.SubprocessError):
            pass
    for name in PROVIDED:
        runtimes[name] = RuntimeInfo(name, "provided", "", "")
    return runtimes


def handler_is_valid(runtime: RuntimeInfo, handler: str) -> bool:
    """Lambda's handler pattern is `[^\\s]+`; built-in runtimes need `module.function`."""
    if not handler or re.search(r"\s", handler) or len(handler) > 128:
        return False
    if runtime.kind == "provided":
        return True
    module, _, function = handler.rpartition(".")
    return bool(module) and bool(function)


def precompile(runtimes: dict[str, RuntimeInfo]) -> None:
    """Write the bootstrap's bytecode for every Python runtime (the sandbox sees it read-only)."""
    for info in runtimes.values():
        if info.kind == "python":
            subprocess.run([info.executable, "-m", "compileall", "-q", str(RUNTIME_DIR)],
                           capture_output=True, timeout=60, check=False)
