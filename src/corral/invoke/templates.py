"""The scheduler's side of per-version templates: which versions get one, and its slot.

A version's template is built in the background once an instance of it is ready (so no cold
start waits for it) and reported an init worth skipping (`Settings.template_min_init_ms`, or
the tag `corral:template=on`); it holds MemorySize of host capacity like an instance,
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

TEMPLATE_TAG = "corral:template"  # "off": never; "on": whatever the init costs
MAX_FAILURES = 2


def eligible(settings: Settings, runtime: RuntimeInfo, tags: dict[str, str],
             init_ms: float | None) -> bool:
    """Python on the built-in bootstrap's framed channel, unless opted out, when the
    handler's init took long enough to be worth skipping (or the function asks for it).
    The runtime reports that time less what it spent waiting for a CPU, so that a busy host
    (a burst of cold starts) does not make a trivial init look expensive."""
    choice = tags.get(TEMPLATE_TAG, "auto").lower()
    if (not settings.templates or runtime.kind != "python" or choice == "off"
            or tags.get("corral:protocol") == "runtime-api"):
        return False
    return choice == "on" or (init_ms is not None
                              and init_ms >= settings.template_min_init_ms)


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
