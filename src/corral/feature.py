"""The contract for optional subsystems (metering, triggers, ...) plugged into the server.

A feature module exposes `install(runtime) -> Feature`; the server collects the features'
routes into the HTTP front and starts and stops them with itself, in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from starlette.routing import BaseRoute


class Feature(Protocol):
    name: str
    routes: list[BaseRoute]

    async def start(self) -> None:
        """Start background work; called after the core (store, scheduler) is up."""
        ...

    async def stop(self) -> None:
        """Stop background work; called before the core shuts down. Idempotent."""
        ...


class WithoutBackgroundWork:
    """Mixin for features that only serve routes: start and stop have nothing to do."""

    async def start(self) -> None:
        """Nothing to start."""

    async def stop(self) -> None:
        """Nothing to stop."""


@dataclass
class SimpleFeature(WithoutBackgroundWork):
    """A feature with routes and no background work."""

    name: str
    routes: list[BaseRoute] = field(default_factory=list)
