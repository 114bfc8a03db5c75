"""One function instance: a sandbox running a runtime, driven through an explicit state machine.

    STARTING --ready--> IDLE --invoke--> BUSY --reply--> IDLE
        |                 |                |
        +--init error-----+---reap/kill----+--timeout/crash/too large--> DEAD

Transitions not in `_ALLOWED` raise; DEAD is final. Whatever goes wrong inside (the sandbox dies,
the channel breaks, a deadline passes) ends in DEAD with the sandbox destroyed, so the pool never
sees a half-dead instance. The instance also frames the invocation's log (START/END/REPORT) and
keeps the tail for `LogType=Tail`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Protocol

from corral.config import Settings
from corral.errors import FunctionErrorType, SandboxError
from corral.invoke import report
from corral.invoke.channels import (
    FramedChannel,
    Reply,
    RuntimeApiChannel,
    RuntimeChannel,
)
from corral.model import FunctionConfig, Invocation, InvocationResult
from corral.runtimeapi.backend import NextInvocation
from corral.runtimes import RUNTIME_DIR, RuntimeInfo
from corral.sandbox.api import (
    ExitStatus,
    Sandbox,
    SandboxFactory,
    SandboxSpec,
    SandboxView,
    Template,
)

log = logging.getLogger(__name__)

TAIL_BYTES = 4096


class LogSink(Protocol):
    def emit(self, group: str, stream: str, timestamp_ms: int, message: str) -> None: ...


class State(Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    DEAD = "dead"


_ALLOWED: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.IDLE, State.DEAD}),
    State.IDLE: frozenset({State.BUSY, State.DEAD}),
    State.BUSY: frozenset({State.IDLE, State.DEAD}),
    State.DEAD: frozenset(),
}


class InvalidTransition(RuntimeError):
    pass


def runtime_environment(config: FunctionConfig, runtime: RuntimeInfo, view: SandboxView,
                        stream: str, region: str) -> dict[str, str]:
    """The environment a runtime sees: the function's variables, then Lambda's reserved ones."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin/:/bin:/opt/bin",
        "LANG": "en_US.UTF-8",
        "LD_LIBRARY_PATH": f"/lib64:/usr/lib64:{view.runtime_root}:{view.runtime_root}/lib:"
                           f"{view.task_root}:{view.task_root}/lib:/opt/lib",
    }
    if runtime.kind == "node":
        env["NODE_PATH"] = f"/opt/nodejs/node{runtime.version.split('.')[0]}/node_modules:" \
                           f"/opt/nodejs/node_modules:{view.runtime_root}/node_modules"
    env.update(config.environment)
    env.update({
        "_HANDLER": config.handler,
        "LAMBDA_TASK_ROOT": view.task_root,
        "LAMBDA_RUNTIME_DIR": view.runtime_root,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_LAMBDA_FUNCTION_NAME": config.name,
        "AWS_LAMBDA_FUNCTION_VERSION": config.version,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(config.memory_mb),
        "AWS_LAMBDA_LOG_GROUP_NAME": config.log_group_name,
        "AWS_LAMBDA_LOG_STREAM_NAME": stream,
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_LAMBDA_LOG_FORMAT": config.log_format,
        "TZ": ":UTC",
    })
    if config.application_log_level:
        env["AWS_LAMBDA_LOG_LEVEL"] = config.application_log_level
    if runtime.kind != "provided":
        env["AWS_EXECUTION_ENV"] = f"AWS_Lambda_{runtime.name}"
    return env


def _error_body(request_id: str, error_type: str, message: str) -> bytes:
    return json.dumps({"errorMessage": f"RequestId: {request_id} Error: {message}",
                       "errorType": error_type}).encode()


class Instance:
    """A warm (or warming) execution environment for one function version."""

    def __init__(self, config: FunctionConfig, runtime: RuntimeInfo, code_dir: Path,
                 factory: SandboxFactory, logs: LogSink, settings: Settings,
                 clock: Callable[[], float] = time.monotonic, pinned: bool = False,
                 network: str = "host", runtime_api: bool = False,
                 template: Template | None = None) -> None:
        self.config = config
        # Provisioned concurrency: kept initialized, never reaped, reports no Init Duration.
        self.pinned = pinned
        self.network = network
        # Custom runtimes always speak the HTTP Runtime API; built-in ones may be asked to.
        self.runtime_api = runtime_api or runtime.kind == "provided"
        self.runtime = runtime
        self.instance_id = uuid.uuid4().hex
        self.state = State.STARTING
        self.stream = report.log_stream_name(config.version, self.instance_id)
        self.last_used = clock()
        self.init_duration_ms: float | None = None
        self.invocations = 0
        self._code_dir = code_dir
        self._factory = factory
        self._logs = logs
        self._settings = settings
        self._clock = clock
        self._sandbox: Sandbox | None = None
        self.template = template  # fork from this version's template when given
        self.forked = False  # started from the template (its init ran there)
        self.handler_init_ms: float | None = None  # the runtime's own report, when it has one
        self._channel: RuntimeChannel | None = None
        self._init_failure: Reply | None = None
        self._exit: ExitStatus | None = None
        self._exit_task: asyncio.Future[ExitStatus] | None = None
        self._timed_out = False
        self._partial = b""
        self._tail: bytearray | None = None

    # state machine ----------------------------------------------------------------------------
    def _move(self, new: State) -> None:
        if new not in _ALLOWED[self.state]:
            raise InvalidTransition(f"{self.state.value} -> {new.value}")
        self.state = new

    @property
    def alive(self) -> bool:
        return self.state is not State.DEAD

    # logs -------------------------------------------------------------------------------------
    def _log(self, line: str) -> None:
        self._logs.emit(self.config.log_group_name, self.stream, int(time.time() * 1000), line)
        if self._tail is not None:
            self._tail += line.encode("utf-8", "replace") + b"\n"
            if len(self._tail) > 2 * TAIL_BYTES:
                del self._tail[: len(self._tail) - TAIL_BYTES]

    def _on_log_readable(self) -> None:
        self._drain_logs()

    def _drain_logs(self) -> None:
        sandbox = self._sandbox
        if sandbox is None or sandbox.log_fd < 0:
            return
        while True:
            try:
                chunk = os.read(sandbox.log_fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self._stop_log_reader(flush=True)
                return
            data = self._partial + chunk
            *lines, self._partial = data.split(b"\n")
            for raw in lines:
                self._log(raw.decode("utf-8", "replace"))

    def _stop_log_reader(self, flush: bool) -> None:
        sandbox = self._sandbox
        if sandbox is not None and sandbox.log_fd >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(sandbox.log_fd)
        if flush and self._partial:
            self._log(self._partial.decode("utf-8", "replace"))
            self._partial = b""

    # lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Spawn the sandbox and wait for the runtime to initialize (or fail to)."""
        started = self._clock()
        spec = self._spec()
        try:
            self._sandbox = await self._fork(spec) or await self._factory.spawn(spec)
        except SandboxError as exc:
            self._init_failure = Reply("init_error", json.dumps(
                {"errorMessage": str(exc), "errorType": FunctionErrorType.SANDBOX_FAILURE}
            ).encode(), error_type=FunctionErrorType.SANDBOX_FAILURE)
            self._move(State.DEAD)
            return
        sandbox = self._sandbox
        os.set_blocking(sandbox.log_fd, False)
        asyncio.get_running_loop().add_reader(sandbox.log_fd, self._on_log_readable)
        self._exit_task = asyncio.ensure_future(sandbox.wait())
        if sandbox.runtime_api_socket is not None:
            channel = RuntimeApiChannel(self._settings.limits.response_max_bytes)
            await channel.serve(sandbox.runtime_api_socket)
            self._channel = channel
        else:
            self._channel = await FramedChannel.open(sandbox.control)
        budget = self._settings.init_timeout_s + self.config.timeout_s
        reply = await self._race(self._channel.wait_ready(), budget)
        self.init_duration_ms = (self._clock() - started) * 1000
        if reply is not None and reply.kind == "ready":
            self.handler_init_ms = reply.init_ms
            sandbox.after_init()
            self._move(State.IDLE)
            return
        self._drain_logs()
        if reply is None:  # exited or timed out during init
            status = self._exit
            message = ("Runtime exited with error: " + status.describe()) if status else \
                f"Init timed out after {budget:.2f} seconds"
            error_type = (FunctionErrorType.OUT_OF_MEMORY if status and status.oom_killed else
                          FunctionErrorType.EXIT)
            reply = Reply("init_error", message.encode(), error_type=error_type)
        self._init_failure = reply
        await self._die()

    async def _fork(self, spec: SandboxSpec) -> Sandbox | None:
        """An instance forked from the version's template, or None (start one the usual way)."""
        if self.template is None or not self.template.alive:
            return None
        try:
            sandbox = await self.template.fork(spec)
        except SandboxError as exc:
            log.warning("template fork of %s failed, starting normally: %s",
                        self.config.name, exc)
            return None
        self.forked = True
        return sandbox

    def sandbox_spec(self) -> SandboxSpec:
        """What this instance's sandbox is started from (a template of its version too)."""
        return self._spec()

    def _spec(self) -> SandboxSpec:
        spec = SandboxSpec(
            instance_id=self.instance_id, argv=[], env={}, code_dir=self._code_dir,
            runtime_dir=RUNTIME_DIR, memory_mb=self.config.memory_mb,
            ephemeral_mb=self.config.ephemeral_mb, network=self.network,
            runtime_api=self.runtime_api,
            extra_ro_paths=(Path(self.runtime.prefix),) if self.runtime.prefix else (),
        )
        view = self._factory.view(spec)
        env = runtime_environment(self.config, self.runtime, view, self.stream,
                                  self._settings.region)
        if self.pinned:
            env["AWS_LAMBDA_INITIALIZATION_TYPE"] = "provisioned-concurrency"
        return SandboxSpec(**{**spec.__dict__, "argv": self.runtime.argv(
            view.runtime_root, view.task_root), "env": env})

    async def _race(self, operation: asyncio.Future[Reply], timeout: float) -> Reply | None:
        """Await `operation` unless the sandbox exits or `timeout` passes first (→ None).

        Callbacks and one timer instead of tasks: this runs on every warm invoke."""
        assert self._sandbox is not None and self._exit_task is not None
        exit_task = self._exit_task
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake(_: object = None) -> None:
            if not done.done():
                done.set_result(None)

        operation.add_done_callback(wake)
        exit_task.add_done_callback(wake)
        timer = asyncio.get_running_loop().call_later(timeout, wake)
        try:
            await done
        finally:
            timer.cancel()
            operation.remove_done_callback(wake)
            exit_task.remove_done_callback(wake)
        answered = operation.done()
        if answered and not operation.cancelled() and operation.exception() is None:
            return operation.result()
        if not answered:
            operation.cancel()
        if exit_task.done():
            self._exit = exit_task.result()
        elif answered:  # the channel broke: the runtime is exiting; collect its status
            with contextlib.suppress(asyncio.TimeoutError):
                self._exit = await asyncio.wait_for(asyncio.shield(exit_task), 2.0)
        else:
            self._timed_out = True
        return None

    async def _die(self) -> None:
        if self.state is not State.DEAD:
            self._move(State.DEAD)
        sandbox, channel = self._sandbox, self._channel
        self._channel = None
        if sandbox is not None:
            sandbox.kill()
            self._drain_logs()
            self._stop_log_reader(flush=True)
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()
        if sandbox is not None:
            await sandbox.destroy()
        if self._exit_task is not None and not self._exit_task.done():
            self._exit_task.cancel()

    async def destroy(self) -> None:
        """Kill and release the instance (idempotent)."""
        if self._sandbox is None and self.state is State.DEAD:
            return
        if self.state is not State.DEAD:
            self.state = State.DEAD  # any state may be torn down from outside
        await self._die()
        self._sandbox = None

    # invoke -----------------------------------------------------------------------------------
    async def invoke(self, invocation: Invocation) -> InvocationResult:
        """Run one invocation. Never raises for function-level failures."""
        request_id = invocation.request_id
        self._tail = bytearray() if invocation.tail_log else None
        cold = self.invocations == 0
        self.invocations += 1
        init_ms = self.init_duration_ms if cold and not self.pinned else None
        self._log(report.start_line(request_id, self.config.version))
        if self._init_failure is not None:
            return self._finish(invocation, self._init_error_result(invocation), 0.0, init_ms,
                                cold, status="error")
        self._move(State.BUSY)
        assert self._channel is not None and self._sandbox is not None
        timeout = float(self.config.timeout_s)
        deadline_ms = int((time.time() + timeout) * 1000)
        event = NextInvocation(
            request_id=request_id, body=invocation.payload, deadline_ms=deadline_ms,
            invoked_function_arn=invocation.invoked_arn, trace_id=invocation.trace_id,
            client_context=invocation.client_context,
            cognito_identity=invocation.cognito_identity)
        self._sandbox.reset_memory_peak()
        began = time.perf_counter()
        try:
            reply = await self._race(self._channel.invoke(event), timeout)
        except asyncio.CancelledError:
            # The caller went away mid-invoke: the instance cannot be trusted to be idle.
            await asyncio.shield(self._die())
            raise
        duration_ms = (time.perf_counter() - began) * 1000
        self._drain_logs()
        if reply is not None and reply.kind in ("response", "error"):
            result = self._result(invocation, reply.body, reply.content_type,
                                  reply.error_type if reply.kind == "error" else None)
            if reply.kind == "response" and len(reply.body) > \
                    self._settings.limits.response_max_bytes:
                result = self._too_large(invocation, len(reply.body))
            if result.error_type == FunctionErrorType.RESPONSE_TOO_LARGE:
                await self._die()
            else:
                self._move(State.IDLE)
            status = "error" if result.function_error else None
            return self._finish(invocation, result, duration_ms, init_ms, cold, status=status)
        if reply is not None and reply.kind == "too_large":
            result = self._too_large(invocation, int(reply.body or b"0"))
            await self._die()
            return self._finish(invocation, result, duration_ms, init_ms, cold, status="error")
        if self._timed_out:
            # Deadline passed: Lambda kills the environment and reports the timeout.
            duration_ms = timeout * 1000
            self._log(report.timeout_line(request_id, timeout))
            result = self._result(invocation, _error_body(
                request_id, FunctionErrorType.TIMEOUT, f"Task timed out after {timeout:.2f} seconds"
            ), "application/json", FunctionErrorType.TIMEOUT)
            await self._die()
            return self._finish(invocation, result, duration_ms, init_ms, cold, status="timeout")
        status_exit = self._exit or ExitStatus(code=-1)
        await self._die()
        error_type = (FunctionErrorType.OUT_OF_MEMORY if status_exit.oom_killed
                      else FunctionErrorType.EXIT)
        if status_exit.code == 0 and status_exit.signal is None:
            message = "Runtime exited without providing a reason"
        else:
            message = "Runtime exited with error: " + status_exit.describe()
        self._log(f"RequestId: {request_id} Error: {message}\n{error_type.value}")
        result = self._result(invocation, _error_body(request_id, error_type, message),
                              "application/json", error_type)
        return self._finish(invocation, result, duration_ms, init_ms, cold, status="error")

    def _result(self, invocation: Invocation, body: bytes, content_type: str,
                error_type: str | None) -> InvocationResult:
        return InvocationResult(
            request_id=invocation.request_id, payload=body, content_type=content_type,
            function_error="Unhandled" if error_type is not None else None,
            error_type=error_type, executed_version=self.config.version,
            instance_id=self.instance_id)

    def _too_large(self, invocation: Invocation, size: int) -> InvocationResult:
        limit = self._settings.limits.response_max_bytes
        message = (f"Response payload size ({size} bytes) exceeded maximum allowed payload "
                   f"size ({limit} bytes).")
        body = json.dumps({"errorMessage": message,
                           "errorType": FunctionErrorType.RESPONSE_TOO_LARGE.value}).encode()
        return self._result(invocation, body, "application/json",
                            FunctionErrorType.RESPONSE_TOO_LARGE)

    def _init_error_result(self, invocation: Invocation) -> InvocationResult:
        failure = self._init_failure
        assert failure is not None
        error_type = failure.error_type or FunctionErrorType.UNKNOWN
        body = failure.body
        try:
            json.loads(body)
        except ValueError:
            body = _error_body(invocation.request_id, error_type, body.decode("utf-8", "replace"))
        return self._result(invocation, body, "application/json", error_type)

    def _memory_used_mb(self) -> int:
        peak = self._sandbox.memory_peak_bytes() if self._sandbox is not None else None
        if peak is None and self._sandbox is not None:
            peak = _vm_hwm(self._sandbox.pid)
        return max(1, round((peak or 0) / (1024 * 1024)))

    def _finish(self, invocation: Invocation, result: InvocationResult, duration_ms: float,
                init_ms: float | None, cold: bool, status: str | None) -> InvocationResult:
        billed = report.billed_duration_ms(duration_ms, self._settings.billing_granularity_ms)
        used = self._memory_used_mb()
        result.duration_ms = duration_ms
        result.billed_duration_ms = billed
        result.init_duration_ms = init_ms
        result.max_memory_used_mb = used
        result.cold_start = cold
        self._log(report.end_line(invocation.request_id))
        self._log(report.report_line(invocation.request_id, duration_ms, billed,
                                     self.config.memory_mb, used, init_ms,
                                     status=status if status != "error" or result.error_type
                                     else None,
                                     error_type=result.error_type if status else None))
        if self._tail is not None:
            result.log_tail = bytes(self._tail[-TAIL_BYTES:])
            self._tail = None
        self.last_used = self._clock()
        return result


def _vm_hwm(pid: int) -> int | None:
    """Peak resident memory of a process from /proc (used when no cgroup measures it)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
