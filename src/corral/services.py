"""The running server's components, wired once at start and shared by the HTTP front."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from corral.config import Settings
from corral.control.concurrency import ReservedConcurrency
from corral.control.provisioned import ProvisionedRepo
from corral.control.registry import Registry
from corral.iam.sigv4 import Verifier
from corral.invoke.scheduler import Scheduler

if TYPE_CHECKING:
    from corral.invoke.async_queue import AsyncInvoker


@dataclass
class Services:
    settings: Settings
    registry: Registry
    scheduler: Scheduler
    verifier: Verifier
    async_invoker: AsyncInvoker
    code_token_key: bytes
    reserved: ReservedConcurrency
    provisioned: ProvisionedRepo
    # AWS JSON 1.1 services by X-Amz-Target prefix (see api/jsonrpc.py).
    json_targets: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
