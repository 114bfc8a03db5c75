"""Settings from command-line flags and `CORRAL_*` environment variables."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from corral.config import DEFAULT_PORT, AsyncSettings, Limits, Settings, default_data_dir


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def running_endpoint(data_dir: Path) -> str | None:
    """The endpoint a server using `data_dir` announced in `server.json`, if any."""
    try:
        endpoint = json.loads((data_dir / "server.json").read_text()).get("endpoint")
    except (OSError, ValueError):
        return None
    return endpoint if isinstance(endpoint, str) else None


def parse_listen(listen: str | None) -> tuple[str, int]:
    if not listen:
        return "127.0.0.1", int(os.environ.get("CORRAL_PORT", DEFAULT_PORT))
    host, _, port = listen.rpartition(":")
    return host or "127.0.0.1", int(port)


def resolve_data_dir(data_dir: str | None) -> Path:
    return Path(data_dir or os.environ.get("CORRAL_DATA_DIR") or default_data_dir()).resolve()


def build_settings(data_dir: str | None, listen: str | None = None, *,
                   insecure: bool = False, sandbox: str | None = None,
                   keep_alive: float | None = None) -> Settings:
    host, port = parse_listen(listen)
    async_defaults = AsyncSettings()
    delays = os.environ.get("CORRAL_ASYNC_RETRY_DELAYS")
    async_settings = dataclasses.replace(
        async_defaults,
        retry_delays_s=tuple(float(d) for d in delays.split(",")) if delays
        else async_defaults.retry_delays_s)
    limits = Limits()
    concurrency = os.environ.get("CORRAL_ACCOUNT_CONCURRENCY")
    if concurrency:
        limits = dataclasses.replace(limits, account_concurrency=int(concurrency))
    return Settings(
        data_dir=resolve_data_dir(data_dir), host=host, port=port, limits=limits,
        keep_alive_s=keep_alive if keep_alive is not None
        else _env_float("CORRAL_KEEP_ALIVE", 600.0),
        async_invoke=async_settings,
        sandbox=sandbox or os.environ.get("CORRAL_SANDBOX", "auto"),
        allow_insecure=insecure or os.environ.get("CORRAL_INSECURE") == "1",
        billing_granularity_ms=int(os.environ.get("CORRAL_BILLING_GRANULARITY_MS", "100")),
        default_network=os.environ.get("CORRAL_DEFAULT_NETWORK", "host"),
        templates=os.environ.get("CORRAL_TEMPLATES", "on") != "off",
        template_min_init_ms=_env_float("CORRAL_TEMPLATE_MIN_INIT_MS", 100.0),
    )
