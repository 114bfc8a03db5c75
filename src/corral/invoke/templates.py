"""The scheduler's side of per-version templates: which versions get one, and its slot.

A version's template is built in the background once its first instance is ready (so the
first cold start never waits for it), holds MemorySize of host capacity like an instance,
and is destroyed with its pool: at once when the pool has no busy instance, else when the
last one finishes (every instance forked from it dies with it). A version whose template
fails to build is retried `MAX_FAILURES` times, then runs without one.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from corral.config import Settings
from corral.runtimes import RuntimeInfo
from corral.sandbox.api import Template

TEMPLATE_TAG = "corral:template"  # "off" opts a function out
MAX_FAILURES = 2


def eligible(settings: Settings, runtime: RuntimeInfo, tags: dict[str, str]) -> bool:
    """Python on the built-in bootstrap's framed channel, unless opted out."""
    return (settings.templates and runtime.kind == "python"
            and tags.get(TEMPLATE_TAG, "on").lower() != "off"
            and tags.get("corral:protocol") != "runtime-api")


@dataclass
class TemplateSlot:
    """A pool's template: absent, building, ready, or given up on."""

    template: Template | None = None
    building: asyncio.Future[None] | None = None
    failures: int = 0
    holds_capacity: bool = False  # MemorySize taken for it (building or ready)

    def usable(self) -> Template | None:
        template = self.template
        return template if template is not None and template.alive else None

    def wanted(self) -> bool:
        return (self.template is None and self.building is None
                and self.failures < MAX_FAILURES)
