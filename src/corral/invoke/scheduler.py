"""The scheduler: per-version pools of instances, cold and warm starts, concurrency, keep-alive.

An invocation takes the most recently used idle instance of its version (warm), or starts a new
one if the account's concurrency allows (cold), or is throttled with `TooManyRequestsException`.
One request at a time per instance. Idle instances live until their keep-alive expires; the
reaper destroys them. Updating or deleting a function retires its pools: idle instances go at
once, busy ones when their invocation ends. The clock is injected so keep-alive is tested
without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from corral.config import Settings
from corral.errors import SandboxError, ThrottleReason, TooManyRequestsException
from corral.invoke import templates
from corral.invoke.capacity import Capacity, host_capacity_mb
from corral.invoke.instance import Instance, LogSink, State
from corral.model import FunctionConfig, Invocation, InvocationResult
from corral.runtimes import RuntimeInfo
from corral.sandbox.api import SandboxFactory, SandboxSpec, Template

log = logging.getLogger(__name__)

PoolKey = tuple[str, str, str]  # function name, version, revision id
# Called after every invocation that ran (metering, metrics, destinations); must not block.
InvocationObserver = Callable[[Invocation, InvocationResult], None]
# Called when an invocation is throttled.
ThrottleObserver = Callable[[Invocation, TooManyRequestsException], None]


@dataclass
class Pool:
    """The instances of one function version (one revision of its configuration)."""

    config: FunctionConfig
    idle: list[Instance] = field(default_factory=list)  # most recently used last
    busy: set[Instance] = field(default_factory=set)
    retired: bool = False
    provisioned_target: int = 0  # instances kept initialized (provisioned concurrency)
    provisioning: int = 0  # provisioned instances being started
    template: templates.TemplateSlot = field(default_factory=templates.TemplateSlot)

    def provisioned(self) -> int:
        return sum(1 for inst in (*self.idle, *self.busy) if inst.pinned and inst.alive)


@dataclass(frozen=True)
class SchedulerStats:
    pools: int
    idle: int
    busy: int
    cold_starts: int
    warm_starts: int
    throttles: int
    templates: int  # per-version templates initialized and ready to fork


class Scheduler:
    def __init__(self, settings: Settings, factory: SandboxFactory,
                 code_tree: Callable[[str], Path],
                 runtime_for: Callable[[str], RuntimeInfo], logs: LogSink,
                 clock: Callable[[], float] = time.monotonic,
                 tags_for: Callable[[str], dict[str, str]] = lambda name: {}) -> None:
        self._settings = settings
        self._factory = factory
        self._code_tree = code_tree
        self._runtime_for = runtime_for
        self._logs = logs
        self._clock = clock
        self._tags_for = tags_for  # `corral:*` tags choose per-function sandbox options
        self._pools: dict[PoolKey, Pool] = {}
        self._active = 0  # instances busy or starting, across all functions
        self._active_by_function: dict[str, int] = {}
        self._reserved: dict[str, int] = {}  # function -> reserved concurrency
        self._cold = self._warm = self._throttles = 0
        self._closing = False
        self._teardown: set[asyncio.Task[None]] = set()
        self.capacity = Capacity(host_capacity_mb(settings))
        self._live: set[Instance] = set()
        self.observers: list[InvocationObserver] = []
        self.throttle_observers: list[ThrottleObserver] = []

    # accounting -------------------------------------------------------------------------------
    @property
    def concurrent_executions(self) -> int:
        return self._active

    def function_concurrency(self, name: str) -> int:
        return self._active_by_function.get(name, 0)

    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            pools=len(self._pools), idle=sum(len(p.idle) for p in self._pools.values()),
            busy=sum(len(p.busy) for p in self._pools.values()), cold_starts=self._cold,
            warm_starts=self._warm, throttles=self._throttles,
            templates=sum(1 for p in self._pools.values() if p.template.usable()))

    def instances(self, name: str) -> list[Instance]:
        return [inst for (fn, _, _), pool in self._pools.items() if fn == name
                for inst in (*pool.idle, *pool.busy)]

    def set_reserved(self, name: str, reserved: int | None) -> None:
        """Reserve concurrency for a function (None removes the reservation)."""
        if reserved is None:
            self._reserved.pop(name, None)
        else:
            self._reserved[name] = reserved

    def _admit(self, invocation: Invocation) -> None:
        """Throttle unless the function's reservation or the unreserved pool has room."""
        name = invocation.function.name
        if self._closing:
            self._throttle(invocation, TooManyRequestsException(
                "Rate Exceeded.", ThrottleReason.CONCURRENT_INVOCATION_LIMIT))
        reserved = self._reserved.get(name)
        if reserved is not None:
            if self._active_by_function.get(name, 0) >= reserved:
                self._throttle(invocation, TooManyRequestsException(
                    "Rate Exceeded.", ThrottleReason.RESERVED_FUNCTION_CONCURRENCY))
            return
        unreserved_limit = self._settings.limits.account_concurrency - sum(
            self._reserved.values())
        unreserved_active = self._active - sum(
            self._active_by_function.get(fn, 0) for fn in self._reserved)
        if unreserved_active >= unreserved_limit:
            self._throttle(invocation, TooManyRequestsException(
                "Rate Exceeded.", ThrottleReason.CONCURRENT_INVOCATION_LIMIT))

    # invoke -------------------------------------------------------------------------------------
    async def invoke(self, invocation: Invocation) -> InvocationResult:
        config = invocation.function
        self._admit(invocation)
        pool = self._pool_for(config)
        instance = self._take_idle(pool)
        if instance is None:
            if not self._make_room(config.memory_mb):
                self._throttle(invocation, TooManyRequestsException(
                    f"Host capacity exhausted: {self.capacity.used_mb} of "
                    f"{self.capacity.limit_mb} MB are held by busy instances.",
                    ThrottleReason.CONCURRENT_INVOCATION_LIMIT))
            instance = self._new_instance(config, template=pool.template.usable())
            self._cold += 1
        else:
            self._warm += 1
        self._active += 1
        self._active_by_function[config.name] = self._active_by_function.get(config.name, 0) + 1
        pool.busy.add(instance)
        return await self._run(pool, instance, invocation)

    def _throttle(self, invocation: Invocation, exc: TooManyRequestsException) -> None:
        self._throttles += 1
        for observer in self.throttle_observers:
            try:
                observer(invocation, exc)
            except Exception:
                log.exception("throttle observer failed")
        raise exc

    async def _run(self, pool: Pool, instance: Instance,
                   invocation: Invocation) -> InvocationResult:
        try:
            if instance.state is State.STARTING:
                await self._wait_for_template(pool, instance)
                await instance.start()
                self._template_after_start(pool, instance)
            result = await instance.invoke(invocation)
            for observer in self.observers:
                try:
                    observer(invocation, result)
                except Exception:
                    log.exception("invocation observer failed")
            return result
        finally:
            self._active -= 1
            name = invocation.function.name
            self._active_by_function[name] -= 1
            if not self._active_by_function[name]:
                del self._active_by_function[name]
            pool.busy.discard(instance)
            if instance.alive and not pool.retired and not self._closing:
                pool.idle.append(instance)
            else:
                self._destroy_later(instance)
                self._replenish(pool)
                if pool.retired and not pool.busy:
                    self._drop_template(pool)

    # provisioned concurrency ----------------------------------------------------------------
    def provision(self, config: FunctionConfig, count: int) -> None:
        """Keep `count` initialized instances of this version (0 releases them)."""
        pool = self._pool_for(config)
        pool.provisioned_target = count
        pinned = [inst for inst in pool.idle if inst.pinned]
        for instance in pinned[count:]:
            instance.pinned = False  # surplus: back to keep-alive rules
        self._replenish(pool)

    def provisioned_status(self, config: FunctionConfig) -> tuple[int, int]:
        """(requested, allocated) for a version."""
        pool = self._pools.get((config.name, config.version, config.revision_id))
        return (pool.provisioned_target, pool.provisioned()) if pool else (0, 0)

    def _replenish(self, pool: Pool) -> None:
        if pool.retired or self._closing:
            return
        missing = pool.provisioned_target - pool.provisioned() - pool.provisioning
        for _ in range(max(0, missing)):
            if not self._make_room(pool.config.memory_mb):
                log.warning("no capacity for provisioned instances of %s", pool.config.name)
                return
            pool.provisioning += 1
            task = asyncio.ensure_future(self._start_provisioned(pool))
            self._teardown.add(task)
            task.add_done_callback(self._teardown.discard)

    async def _start_provisioned(self, pool: Pool) -> None:
        instance = self._new_instance(pool.config, pinned=True,
                                      template=pool.template.usable())
        try:
            await instance.start()
            self._template_after_start(pool, instance)
        finally:
            pool.provisioning -= 1
        if instance.alive and not pool.retired and not self._closing:
            pool.idle.insert(0, instance)
        else:
            self._destroy_later(instance)

    def _new_instance(self, config: FunctionConfig, pinned: bool = False,
                      template: Template | None = None) -> Instance:
        tags = self._tags_for(config.name)
        network = tags.get("corral:network", self._settings.default_network)
        instance = Instance(config, self._runtime_for(config.runtime),
                            self._code_tree(config.code.sha256_hex), self._factory,
                            self._logs, self._settings, self._clock, pinned=pinned,
                            network=network if network in ("none", "host") else "host",
                            runtime_api=tags.get("corral:protocol") == "runtime-api",
                            template=template)
        self.capacity.take(config.memory_mb)
        self._live.add(instance)
        return instance

    def _make_room(self, memory_mb: int) -> bool:
        """Evict idle instances, least recently used first, until `memory_mb` fits."""
        if self.capacity.fits(memory_mb):
            return True
        idle = sorted(((inst, pool) for pool in self._pools.values() for inst in pool.idle
                       if not inst.pinned), key=lambda pair: pair[0].last_used)
        for instance, pool in idle:
            pool.idle.remove(instance)
            self._destroy_later(instance)  # releases its memory at once
            if self.capacity.fits(memory_mb):
                return True
        for pool in self._pools.values():  # then templates of versions with no instance
            if pool.template.holds_capacity and not pool.idle and not pool.busy:
                self._drop_template(pool)
                if self.capacity.fits(memory_mb):
                    return True
        return False

    # per-version templates ------------------------------------------------------------------
    def _template_after_start(self, pool: Pool, instance: Instance) -> None:
        """Build the version's template once one of its instances is ready, and no other
        is still starting (a burst's cold starts need the CPU more than a template does)."""
        if not instance.alive or instance.forked:
            return
        if any(other.state is State.STARTING for other in pool.busy if other is not instance):
            return  # the last of them to become ready starts it
        self._start_template(pool, instance)

    async def _wait_for_template(self, pool: Pool, instance: Instance) -> None:
        """A cold start while the version's template is being built waits for it instead
        of running the init code once more."""
        slot = pool.template
        if instance.template is not None:
            return
        building = slot.building
        if building is None:
            return
        budget = self._settings.init_timeout_s + pool.config.timeout_s
        await asyncio.wait({building}, timeout=budget)
        instance.template = slot.usable()

    def _start_template(self, pool: Pool, instance: Instance) -> None:
        slot = pool.template
        if slot.template is not None and not slot.template.alive:  # it died: try again
            slot.failures += 1
            self._drop_template(pool)
        if pool.retired or self._closing or not slot.wanted():
            return
        if not templates.eligible(self._settings, instance.runtime,
                                  self._tags_for(pool.config.name), instance.handler_init_ms):
            return
        spec = instance.sandbox_spec()
        # an optimization: only free capacity, never an evicted warm instance
        if not self._factory.can_template(spec) or not self.capacity.fits(pool.config.memory_mb):
            return
        self.capacity.take(pool.config.memory_mb)
        slot.holds_capacity = True
        slot.building = asyncio.ensure_future(self._build_template(pool, spec))
        self._teardown.add(slot.building)
        slot.building.add_done_callback(self._teardown.discard)

    async def _build_template(self, pool: Pool, spec: SandboxSpec) -> None:
        slot = pool.template
        budget = self._settings.init_timeout_s + pool.config.timeout_s
        try:
            template = await asyncio.wait_for(self._factory.template(spec), budget)
        except (TimeoutError, SandboxError):
            template = None
        finally:
            slot.building = None
        if template is None:
            slot.failures += 1
            self._release_template_capacity(pool)
            return
        if pool.retired or self._closing:
            self._release_template_capacity(pool)
            await template.destroy()
            return
        slot.template = template

    def _drop_template(self, pool: Pool) -> None:
        """Destroy the pool's template (its instances must be gone or going)."""
        slot = pool.template
        if slot.building is not None:
            slot.building.cancel()
            slot.building = None
        template, slot.template = slot.template, None
        self._release_template_capacity(pool)
        if template is not None:
            task = asyncio.ensure_future(template.destroy())
            self._teardown.add(task)
            task.add_done_callback(self._teardown.discard)

    def _release_template_capacity(self, pool: Pool) -> None:
        if pool.template.holds_capacity:
            pool.template.holds_capacity = False
            self.capacity.release(pool.config.memory_mb)

    def _take_idle(self, pool: Pool) -> Instance | None:
        while pool.idle:
            instance = pool.idle.pop()
            if instance.alive:
                return instance
        return None

    def _pool_for(self, config: FunctionConfig) -> Pool:
        key = (config.name, config.version, config.revision_id)
        pool = self._pools.get(key)
        if pool is None:
            # A new revision of a version retires the previous ones.
            for old_key in [k for k in self._pools if k[:2] == key[:2]]:
                self._retire(old_key)
            pool = self._pools[key] = Pool(config)
        return pool

    # retirement and reaping -------------------------------------------------------------------
    def retire_function(self, name: str) -> None:
        """Stop reusing every instance of `name` (its code or configuration changed)."""
        for key in [k for k in self._pools if k[0] == name]:
            self._retire(key)

    def _retire(self, key: PoolKey) -> None:
        pool = self._pools.pop(key)
        pool.retired = True
        for instance in pool.idle:
            self._destroy_later(instance)
        pool.idle.clear()
        if not pool.busy:
            self._drop_template(pool)

    def _destroy_later(self, instance: Instance) -> None:
        if instance in self._live:
            self._live.discard(instance)
            self.capacity.release(instance.config.memory_mb)
        task = asyncio.ensure_future(instance.destroy())
        self._teardown.add(task)
        task.add_done_callback(self._teardown.discard)

    def reap(self) -> int:
        """Destroy idle instances whose keep-alive has expired; returns how many."""
        deadline = self._clock() - self._settings.keep_alive_s
        reaped = 0
        for pool in self._pools.values():
            keep = [inst for inst in pool.idle if inst.pinned or inst.last_used > deadline]
            for instance in pool.idle:
                if not instance.pinned and instance.last_used <= deadline:
                    self._destroy_later(instance)
                    reaped += 1
            pool.idle[:] = keep
        for key in [k for k, p in self._pools.items()
                    if not p.idle and not p.busy and not p.provisioned_target
                    and not p.provisioning]:
            self._drop_template(self._pools.pop(key))
        return reaped

    async def run_reaper(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._settings.reap_interval_s)
            try:
                self.reap()
            except Exception:  # the reaper must survive anything
                log.exception("reaper failed")

    async def drain(self) -> None:
        """Wait for pending teardowns (tests and shutdown)."""
        while self._teardown:
            await asyncio.gather(*list(self._teardown), return_exceptions=True)

    async def close(self) -> None:
        """Destroy every instance, busy ones included."""
        self._closing = True
        for pool in list(self._pools.values()):
            pool.retired = True
            for instance in (*pool.idle, *pool.busy):
                self._destroy_later(instance)
            pool.idle.clear()
        with contextlib.suppress(Exception):
            await self.drain()
        for pool in self._pools.values():  # after their instances
            self._drop_template(pool)
        self._pools.clear()
        with contextlib.suppress(Exception):
            await self.drain()
