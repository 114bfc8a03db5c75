"""The scheduler with real runtime processes and an injected clock: keep-alive, eviction,
capacity and concurrency limits, without sleeping through keep-alive periods."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import zipfile
from pathlib import Path

import pytest

from corral.config import Limits, Settings
from corral.errors import TooManyRequestsException
from corral.invoke.scheduler import Scheduler
from corral.model import FunctionConfig, Invocation, new_request_id
from corral.runtimes import discover
from corral.sandbox.process import ProcessSandboxFactory
from corral.store.codepkg import CodeStore
from scheduler_support import FakeClock, Lines

HANDLER = b"import time\ndef handler(e, c):\n    time.sleep(e.get('sleep', 0))\n    return 1\n"


@pytest.fixture
def setup(tmp_path: Path):
    def make(capacity_mb: int = 4096, concurrency: int = 1000):
        settings = Settings(data_dir=tmp_path, keep_alive_s=600, node_capacity_mb=capacity_mb,
                            limits=dataclasses.replace(Limits(), account_concurrency=concurrency),
                            allow_insecure=True)
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        code = CodeStore(settings.code_dir, settings.limits)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("app.py", HANDLER)
        info = code.put(buf.getvalue())
        clock = FakeClock()
        runtimes = discover()
        scheduler = Scheduler(settings, ProcessSandboxFactory(settings.run_dir), code.tree_path,
                              runtimes.__getitem__, Lines(), clock)

        def function(name: str, memory: int = 128) -> FunctionConfig:
            return FunctionConfig(name=name, runtime="python3.11", handler="app.handler",
                                  role="r", code=info, memory_mb=memory)

        return scheduler, clock, function
    return make


def invocation(config: FunctionConfig, payload: bytes = b"{}") -> Invocation:
    return Invocation(request_id=new_request_id(), function=config, payload=payload,
                      invoked_arn=f"arn:aws:lambda:us-east-1:000000000000:function:{config.name}")


class TestKeepAlive:
    async def test_idle_instance_is_reused_until_keep_alive_expires(self, setup):
        """An idle instance serves the next invoke warm, and is reaped after keep-alive."""
        scheduler, clock, function = setup()
        fn = function("ka")
        first = await scheduler.invoke(invocation(fn))
        second = await scheduler.invoke(invocation(fn))
        assert first.cold_start and not second.cold_start
        assert first.instance_id == second.instance_id
        clock.now += 599
        assert scheduler.reap() == 0
        clock.now += 2
        assert scheduler.reap() == 1
        third = await scheduler.invoke(invocation(fn))
        assert third.cold_start and third.instance_id != first.instance_id
        await scheduler.close()

    async def test_concurrent_invokes_start_separate_instances(self, setup):
        """Two invokes at once run on two instances."""
        scheduler, _, function = setup()
        fn = function("par")
        results = await asyncio.gather(*(scheduler.invoke(invocation(fn, b'{"sleep": 0.3}'))
                                         for _ in range(2)))
        assert len({r.instance_id for r in results}) == 2
        assert scheduler.stats().idle == 2
        await scheduler.close()


class TestCapacity:
    async def test_least_recently_used_idle_instance_is_evicted(self, setup):
        """When memory is short the least recently used idle instance makes room."""
        scheduler, clock, function = setup(capacity_mb=256)
        a, b, c = function("a"), function("b"), function("c")
        await scheduler.invoke(invocation(a))
        clock.now += 1
        await scheduler.invoke(invocation(b))
        clock.now += 1
        await scheduler.invoke(invocation(c))  # needs room: evicts a (oldest)
        await scheduler.drain()
        assert [i.config.name for i in scheduler.instances("a")] == []
        assert len(scheduler.instances("b")) == 1 and len(scheduler.instances("c")) == 1
        assert scheduler.capacity.used_mb == 256
        await scheduler.close()

    async def test_busy_instances_are_never_evicted(self, setup):
        """With all memory held by busy instances a new cold start is throttled."""
        scheduler, _, function = setup(capacity_mb=128)
        slow = asyncio.ensure_future(scheduler.invoke(invocation(function("busy"),
                                                                 b'{"sleep": 1}')))
        await asyncio.sleep(0.3)
        with pytest.raises(TooManyRequestsException) as exc:
            await scheduler.invoke(invocation(function("other")))
        assert "capacity" in exc.value.message
        await slow
        await scheduler.close()


class TestConcurrency:
    async def test_account_limit_throttles(self, setup):
        """Beyond the account concurrency limit an invoke is throttled."""
        scheduler, _, function = setup(concurrency=1)
        fn = function("limit")
        slow = asyncio.ensure_future(scheduler.invoke(invocation(fn, b'{"sleep": 1}')))
        await asyncio.sleep(0.3)
        with pytest.raises(TooManyRequestsException) as exc:
            await scheduler.invoke(invocation(fn))
        assert exc.value.reason == "ConcurrentInvocationLimitExceeded"
        await slow
        await scheduler.close()

    async def test_reserved_zero_throttles(self, setup):
        """A function with zero reserved concurrency never runs."""
        scheduler, _, function = setup()
        fn = function("zero")
        scheduler.set_reserved("zero", 0)
        with pytest.raises(TooManyRequestsException) as exc:
            await scheduler.invoke(invocation(fn))
        assert exc.value.reason == "ReservedFunctionConcurrentInvocationLimitExceeded"
        await scheduler.close()
