"""Vendoring the official Python runtime interface client into test packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "awslambdaric-cp311"


def awslambdaric_files() -> dict[str, str | bytes]:
    """awslambdaric and its dependencies (from PyPI, cached), as zip entries."""
    if not (CACHE / "awslambdaric").is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(CACHE),
             "--python-version", "3.11", "--only-binary=:all:", "--platform",
             "manylinux2014_x86_64", "--implementation", "cp", "awslambdaric"],
            check=True, timeout=300)
    files: dict[str, str | bytes] = {}
    for path in CACHE.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            files[str(path.relative_to(CACHE))] = path.read_bytes()
    return files
