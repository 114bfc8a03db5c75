"""Operator settings: limits, paths, listen address, price table.

Everything is a frozen dataclass with the documented defaults; the CLI builds one from flags
and environment variables (`CORRAL_*`), tests build one directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 9009
DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT = "000000000000"


def default_data_dir() -> Path:
    """A per-user data directory following the XDG base directory convention."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "corral"


@dataclass(frozen=True)
class Limits:
    """The Lambda quotas Corral enforces; the defaults are the contract."""

    memory_min_mb: int = 128
    memory_max_mb: int = 3008
    memory_step_mb: int = 64
    timeout_min_s: int = 1
    timeout_max_s: int = 900
    ephemeral_min_mb: int = 512
    ephemeral_max_mb: int = 10240
    zipped_max_bytes: int = 50 * 1024 * 1024
    unzipped_max_bytes: int = 250 * 1024 * 1024
    sync_payload_max_bytes: int = 6 * 1024 * 1024
    async_payload_max_bytes: int = 256 * 1024
    response_max_bytes: int = 6 * 1024 * 1024 + 100
    env_vars_max_bytes: int = 4096
    account_concurrency: int = 1000
    unreserved_concurrency_min: int = 100
    total_code_size_bytes: int = 80 * 1024 * 1024 * 1024


@dataclass(frozen=True)
class AsyncSettings:
    """Asynchronous invocation: retries and their backoff (scalable down for tests)."""

    max_retry_attempts: int = 2
    retry_delays_s: tuple[float, ...] = (60.0, 120.0)
    max_event_age_s: int = 21600
    workers: int = 8


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    region: str = DEFAULT_REGION
    account_id: str = DEFAULT_ACCOUNT
    limits: Limits = field(default_factory=Limits)
    keep_alive_s: float = 600.0
    init_timeout_s: float = 10.0
    async_invoke: AsyncSettings = field(default_factory=AsyncSettings)
    # "auto" picks the strongest isolation this host supports; "process" runs plain
    # processes with rlimits and needs allow_insecure.
    sandbox: str = "auto"
    allow_insecure: bool = False
    default_network: str = "host"  # "host" | "none"; a function's `corral:network` tag wins
    node_capacity_mb: int = 0  # 0 = derive from the machine's memory
    # Billed duration is rounded up to this many ms (100 as the classic price sheet; AWS bills
    # 1 ms today).
    billing_granularity_ms: int = 100
    reap_interval_s: float = 5.0
    # Per-version templates (docs/sandbox.md): further instances of a Python version fork
    # from an initialized one. A function opts out with the tag `corral:template=off`.
    templates: bool = True
    # ... for versions whose handler init takes at least this long, not counting time spent
    # waiting for a CPU (below it a zygote start costs what a fork costs); the tag
    # `corral:template=on` asks for one regardless.
    template_min_init_ms: float = 100.0

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "corral.db"

    @property
    def code_dir(self) -> Path:
        return self.data_dir / "code"

    @property
    def run_dir(self) -> Path:
        """Per-run scratch space (instance temp dirs); emptied at start and shutdown."""
        return self.data_dir / "run"
