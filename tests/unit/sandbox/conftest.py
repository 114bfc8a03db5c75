"""Fixtures for the sandbox tests: host directories and a real `LinuxSandboxFactory` (root
only), shared by the tests of one module."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox_helpers import Dirs


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> Dirs:
    base = tmp_path_factory.mktemp("sandbox")
    code = base / "code"
    code.mkdir(mode=0o755)
    (code / "handler.py").write_text("def handler(event, context):\n    return event\n")
    runtime = base / "runtime"
    runtime.mkdir(mode=0o755)
    (runtime / "bootstrap.txt").write_text("runtime files\n")
    return Dirs(base, code, runtime)


@pytest.fixture(scope="module")
def factory(dirs: Dirs) -> Iterator[Any]:
    """One factory per module (its launchers are children of this, the main, thread)."""
    if os.geteuid() != 0:
        pytest.skip("the Linux sandbox needs root")
    from corral.sandbox.linux import LinuxSandboxFactory

    made = LinuxSandboxFactory(dirs.base / "run")
    yield made
    asyncio.run(made.close())
