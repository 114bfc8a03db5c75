"""The scheduler's per-version templates with the real Linux sandbox and an injected clock:
when a template is built, that it holds capacity, and that it goes with its version."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from corral.config import Settings
from corral.invoke.scheduler import Scheduler
from corral.invoke.templates import TEMPLATE_TAG, eligible
from corral.model import FunctionConfig, Invocation, new_request_id
from corral.runtimes import discover
from corral.store.codepkg import CodeStore
from scheduler_support import FakeClock, Lines

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="templates need the Linux sandbox")

HANDLER = (b"import json, time\nINIT = time.time()\n"
           b"def handler(e, c):\n    time.sleep(e.get('sleep', 0))\n    return INIT\n")


Setup = Callable[..., tuple[Scheduler, FakeClock, Callable[[str], FunctionConfig]]]


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    from corral.sandbox.linux import LinuxSandboxFactory

    factory = LinuxSandboxFactory(tmp_path / "sandbox")
    schedulers: list[Scheduler] = []

    def make(capacity_mb: int = 4096, tags: dict[str, str] | None = None) -> Any:
        tags = {TEMPLATE_TAG: "on"} if tags is None else tags  # this handler's init is cheap
        settings = Settings(data_dir=tmp_path, keep_alive_s=600, node_capacity_mb=capacity_mb)
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        code = CodeStore(settings.code_dir, settings.limits)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("app.py", HANDLER)
        info = code.put(buf.getvalue())
        clock = FakeClock()
        scheduler = Scheduler(settings, factory, code.tree_path, discover().__getitem__,
                              Lines(), clock, tags_for=lambda name: dict(tags))
        schedulers.append(scheduler)

        def function(name: str) -> FunctionConfig:
            return FunctionConfig(name=name, runtime="python3.11", handler="app.handler",
                                  role="r", code=info, memory_mb=128)

        return scheduler, clock, function

    yield make
    for scheduler in schedulers:
        await scheduler.close()
    await factory.close()


def invocation(config: FunctionConfig, payload: bytes = b"{}") -> Invocation:
    return Invocation(request_id=new_request_id(), function=config, payload=payload,
                      invoked_arn=f"arn:aws:lambda:us-east-1:000000000000:function:{config.name}")


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def with_template(scheduler: Scheduler, fn: FunctionConfig) -> bytes:
    """Invoke once (cold), then wait for the version's template; returns the init marker."""
    first = await scheduler.invoke(invocation(fn))
    await until(lambda: scheduler.stats().templates == 1)
    return first.payload


class TestTemplates:
    async def test_template_after_first_instance_and_forks_share_its_init(self, setup):
        """Built once the first instance is ready; the next cold start forks from it."""
        scheduler, _, function = setup()
        fn = function("tpl")
        first_init = await with_template(scheduler, fn)
        held = asyncio.ensure_future(scheduler.invoke(invocation(fn, b'{"sleep": 0.5}')))
        await asyncio.sleep(0.1)
        forked = await scheduler.invoke(invocation(fn))
        await held
        assert forked.cold_start and forked.init_duration_ms is not None
        assert forked.payload != first_init  # the template's init, not the first instance's
        instance = next(i for i in scheduler.instances("tpl")
                        if i.instance_id == forked.instance_id)
        assert instance.forked

    async def test_cold_starts_wait_for_a_building_template(self, setup):
        """Cold starts arriving while the version's template is being built wait for it and
        fork, instead of running the init code themselves."""
        scheduler, _, function = setup()
        fn = function("burst")
        first = await scheduler.invoke(invocation(fn))  # the template starts building now
        results = await asyncio.gather(*(scheduler.invoke(invocation(fn, b'{"sleep": 0.3}'))
                                         for _ in range(5)))
        assert all(r.function_error is None for r in results)
        assert len({r.instance_id for r in results}) == 5
        new = [r for r in results if r.instance_id != first.instance_id]
        assert len(new) == 4 and all(r.cold_start for r in new)
        assert len({r.payload for r in new}) == 1 and new[0].payload != first.payload
        assert sum(1 for i in scheduler.instances("burst") if i.forked) == 4

    async def test_template_holds_capacity(self, setup):
        """MemorySize of capacity per template, like an instance; released with it."""
        scheduler, _, function = setup()
        await with_template(scheduler, function("cap"))
        assert scheduler.capacity.used_mb == 2 * 128  # the instance and the template
        scheduler.retire_function("cap")
        await scheduler.drain()
        assert scheduler.stats().templates == 0
        assert scheduler.capacity.used_mb == 0

    async def test_retire_waits_for_busy_forked_instances(self, setup):
        """A code update while a forked instance is busy: the invoke completes, then the
        template goes (killing it first would kill the instance)."""
        scheduler, _, function = setup()
        fn = function("busy")
        await with_template(scheduler, fn)
        held = asyncio.ensure_future(scheduler.invoke(invocation(fn, b'{"sleep": 0.6}')))
        await asyncio.sleep(0.1)
        busy = asyncio.ensure_future(scheduler.invoke(invocation(fn, b'{"sleep": 0.6}')))
        await asyncio.sleep(0.2)
        scheduler.retire_function("busy")
        results = await asyncio.gather(held, busy)
        assert all(r.function_error is None for r in results)
        await scheduler.drain()
        assert scheduler.stats().templates == 0 and scheduler.capacity.used_mb == 0

    async def test_reaped_with_its_version(self, setup):
        """Once keep-alive has taken the version's last instance, its template goes too."""
        scheduler, clock, function = setup()
        await with_template(scheduler, function("reap"))
        clock.now += 601
        assert scheduler.reap() == 1
        await scheduler.drain()
        assert scheduler.stats().templates == 0 and scheduler.capacity.used_mb == 0

    async def test_idle_version_template_is_evicted_for_room(self, setup):
        """Capacity: an instance may evict the template of a version that has no instance
        left; a template only ever takes free capacity (it is an optimization)."""
        scheduler, clock, function = setup(capacity_mb=256)
        await with_template(scheduler, function("old"))  # instance + template: full
        clock.now += 1
        new = function("new")
        first = await scheduler.invoke(invocation(new))  # evicts old's idle instance
        await scheduler.drain()
        assert scheduler.instances("old") == [] and scheduler.stats().templates == 1
        # no room for new's template: it does not evict anything to get one
        held = asyncio.ensure_future(scheduler.invoke(invocation(new, b'{"sleep": 0.5}')))
        await asyncio.sleep(0.1)
        second = await scheduler.invoke(invocation(new))  # needs room: old's template goes
        await held
        await scheduler.drain()
        assert first.function_error is None and second.function_error is None
        assert len(scheduler.instances("new")) == 2
        assert scheduler.stats().templates == 0
        assert scheduler.capacity.used_mb == 256

    async def test_opt_out_tag(self, setup):
        scheduler, _, function = setup(tags={TEMPLATE_TAG: "off"})
        fn = function("off")
        await scheduler.invoke(invocation(fn))
        await asyncio.sleep(1.0)
        assert scheduler.stats().templates == 0

    async def test_cheap_init_gets_no_template(self, setup):
        """Without the tag, a version whose init is cheaper than template_min_init_ms runs
        without a template (a zygote start costs what a fork costs)."""
        scheduler, _, function = setup(tags={})
        await scheduler.invoke(invocation(function("cheap")))
        await asyncio.sleep(1.0)
        assert scheduler.stats().templates == 0


def test_eligibility() -> None:
    runtimes = discover()
    python, node = runtimes["python3.11"], runtimes.get("nodejs20.x")
    settings = Settings()  # template_min_init_ms = 100
    assert eligible(settings, python, {}, 250.0)
    assert not eligible(settings, python, {}, 20.0)
    assert not eligible(settings, python, {}, None)
    assert eligible(settings, python, {TEMPLATE_TAG: "on"}, 1.0)
    assert not eligible(settings, python, {TEMPLATE_TAG: "off"}, 250.0)
    assert not eligible(settings, python, {"corral:protocol": "runtime-api"}, 250.0)
    assert not eligible(dataclasses.replace(settings, templates=False), python, {}, 250.0)
    if node is not None:
        assert not eligible(settings, node, {TEMPLATE_TAG: "on"}, 250.0)
