"""`corral server`: wire the components, serve in the foreground, shut down cleanly.

Start: lock the data dir, open the store, load (or create) the root key, pick the sandbox,
release async-queue leases a crashed predecessor held, collect unreferenced code.
Stop (SIGTERM/SIGINT, handled by uvicorn): stop accepting, stop the dispatcher, destroy every
instance, flush logs, release pooled sandbox resources, remove the run dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette

from corral.api.app import build_app
from corral.api.invoke import InvokeFastPath
from corral.config import Settings
from corral.control.aliases import SqliteAliasRepo
from corral.control.concurrency import ReservedConcurrency
from corral.control.provisioned import ProvisionedRepo
from corral.control.registry import Registry
from corral.errors import ConfigError, LambdaApiError
from corral.feature import Feature
from corral.iam.keys import KeyStore
from corral.iam.sigv4 import Verifier
from corral.invoke.async_queue import AsyncInvoker
from corral.invoke.scheduler import Scheduler
from corral.logs.api import LogsApi
from corral.logs.store import SqliteLogStore
from corral.logs.writer import BufferedLogWriter
from corral.model import Invocation, InvocationResult
from corral.runtimes import discover, precompile
from corral.sandbox.api import SandboxFactory
from corral.services import Services
from corral.store.api import AsyncEvent
from corral.store.codepkg import CodeStore
from corral.store.sqlite import Database, SqliteEventQueue, SqliteFunctionRepo

log = logging.getLogger("corral")

# Optional subsystems: modules with `install(runtime) -> Feature`, started in this order.
FEATURES: tuple[str, ...] = ("corral.metering.feature", "corral.events.async_feature",
                             "corral.events.schedule_feature", "corral.triggers.urls",
                             "corral.triggers.routes", "corral.triggers.s3notify",
                             "corral.triggers.esm")


def keys_path(data_dir: Path) -> Path:
    return data_dir / "keys.json"


class DataDirLock:
    """One server per data directory."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(data_dir / "server.lock", "w")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._file.close()
            raise ConfigError(f"another Corral server is using {data_dir}") from exc
        self._file.write(str(os.getpid()))
        self._file.flush()
        self._info = data_dir / "server.json"

    def announce(self, endpoint: str, sandbox: str) -> None:
        """Record where this server listens, for `corral env` and the CLI."""
        self._info.write_text(json.dumps({"endpoint": endpoint, "pid": os.getpid(),
                                          "sandbox": sandbox}))

    def release(self) -> None:
        self._info.unlink(missing_ok=True)
        self._file.close()


class Runtime:
    """Everything one server run owns, created and closed in order."""

    def __init__(self, settings: Settings, factory: SandboxFactory | None = None) -> None:
        self.settings = settings
        shutil.rmtree(settings.run_dir, ignore_errors=True)
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.db_path)
        self.keys = KeyStore(keys_path(settings.data_dir))
        self.root_key = self.keys.load_or_create_root()
        if factory is None:
            from corral.sandbox.select import make_factory

            factory = make_factory(settings)
        self.factory = factory
        self.code = CodeStore(settings.code_dir, settings.limits)
        self.functions = SqliteFunctionRepo(self.db)
        self.queue = SqliteEventQueue(self.db)
        self.log_store = SqliteLogStore(self.db)
        self.log_writer = BufferedLogWriter(self.log_store)
        self.registry = Registry(settings, self.functions, self.code, discover(),
                                 SqliteAliasRepo(self.db))
        self.scheduler = Scheduler(settings, self.factory, self.code.tree_path,
                                   self.registry.runtimes.__getitem__, self.log_writer,
                                   tags_for=self.registry.cached_tags)
        self.registry.on_change(self.scheduler.retire_function)
        self.reserved = ReservedConcurrency(self.db, settings.limits)
        self.provisioned = ProvisionedRepo(self.db)
        for name, value in self.reserved.reserved.items():
            self.scheduler.set_reserved(name, value)
        self.registry.on_change(self._forget_deleted)
        self.async_invoker = AsyncInvoker(self.queue, settings.async_invoke, self._run_event)
        self.services = Services(
            settings=settings, registry=self.registry, scheduler=self.scheduler,
            verifier=Verifier(self.keys.secret_for), async_invoker=self.async_invoker,
            code_token_key=os.urandom(32), reserved=self.reserved,
            provisioned=self.provisioned)
        self.logs_api = LogsApi(self.log_store, settings.region, settings.account_id, time.time)
        self.services.json_targets["Logs_20140328"] = self.logs_api
        self.services.extras["sandbox"] = self.factory.report().implementation
        self._tasks: list[asyncio.Task[Any]] = []
        self.features: list[Feature] = []

    def add_feature(self, feature: Feature) -> None:
        self.features.append(feature)

    def _forget_deleted(self, name: str) -> None:
        if not self.registry.exists(name):
            self.reserved.forget(name)
            self.scheduler.set_reserved(name, None)
        else:
            self._apply_provisioned(name)

    def _apply_provisioned(self, name: str | None = None) -> None:
        """(Re)start the instances provisioned concurrency asks for (at start, after aliases
        move)."""
        for config in self.provisioned.list(name):
            try:
                version = self.registry.get(config.function_name, config.qualifier)
            except LambdaApiError:
                continue
            self.scheduler.provision(version, config.requested)

    async def _run_event(self, event: AsyncEvent) -> InvocationResult:
        qualifier = None if event.qualifier == "$LATEST" else event.qualifier
        config = self.registry.resolve(event.function_name, qualifier)
        invocation = Invocation(request_id=event.event_id, function=config,
                                payload=event.payload,
                                invoked_arn=self.registry.arn(event.function_name, qualifier))
        return await self.scheduler.invoke(invocation)

    async def start(self) -> None:
        recovered = self.async_invoker.recover()
        if recovered:
            log.info("redelivering %d asynchronous events accepted before a crash", recovered)
        self.registry.collect_garbage()
        await asyncio.get_running_loop().run_in_executor(None, precompile, self.registry.runtimes)
        self._apply_provisioned()
        self._tasks = [asyncio.ensure_future(t) for t in (
            self.scheduler.run_reaper(), self.async_invoker.run(), self.log_writer.run())]
        for feature in self.features:
            await feature.start()

    async def stop(self) -> None:
        for feature in reversed(self.features):
            try:
                await feature.stop()
            except Exception:
                log.exception("stopping %s failed", feature.name)
        await self.async_invoker.close()
        await self.scheduler.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.log_writer.close()
        await self.factory.close()
        self.db.close()
        shutil.rmtree(self.settings.run_dir, ignore_errors=True)


def create_app(settings: Settings, factory: SandboxFactory | None = None) -> InvokeFastPath:
    runtime = Runtime(settings, factory)
    for module_name in FEATURES:
        install: Callable[[Runtime], Feature] = importlib.import_module(module_name).install
        runtime.add_feature(install(runtime))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = build_app(runtime.services, [r for f in runtime.features for r in f.routes])
    app.router.lifespan_context = lifespan
    app.state.runtime = runtime
    return InvokeFastPath(app, runtime.services)


def serve(settings: Settings) -> None:
    """Run the server in the foreground until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    lock = DataDirLock(settings.data_dir)
    try:
        app = create_app(settings)
        report = app.app.state.runtime.factory.report()
        for line in report.lines():
            log.info("%s", line)
        lock.announce(settings.endpoint_url, report.implementation)
        log.info("Corral listening on %s (data dir %s)", settings.endpoint_url, settings.data_dir)
        config = uvicorn.Config(app, host=settings.host, port=settings.port, lifespan="on",
                                log_level="warning", access_log=False, loop="uvloop",
                                http="httptools", timeout_graceful_shutdown=5)
        # uvicorn re-raises the signal that stopped it once shutdown is complete; by then
        # everything is released, so that signal means a clean exit (status 0).
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _exit_cleanly)
        uvicorn.Server(config).run()
        log.info("Corral stopped")
    finally:
        lock.release()


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)
