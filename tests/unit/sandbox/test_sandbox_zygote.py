"""The Python zygote of the Linux sandbox: instances forked from a per-interpreter fork server
get the same sandbox as exec'd ones, their own random state, and leave nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.runtimes import RuntimeInfo
from sandbox_helpers import (
    PY,
    Dirs,
    collect,
    leftovers,
    needs_python,
    needs_root,
    run_code,
    spec_for,
)

pytestmark = [needs_root, needs_python]

BOOTSTRAP = RuntimeInfo("python3.11", "python", PY, "3.11").argv("/var/runtime", "/var/task")


@pytest.fixture(scope="module")
def zfactory(dirs: Dirs) -> Iterator[Any]:
    """A factory whose every `python3 -S -I -c CODE` instance forks from the zygote."""
    from corral.sandbox.linux import LinuxSandboxFactory

    made = LinuxSandboxFactory(dirs.base / "zrun", zygote="any")
    yield made
    asyncio.run(made.close())


@pytest.fixture(scope="module")
def efactory(dirs: Dirs) -> Iterator[Any]:
    """A factory that execs every instance (whatever CORRAL_SANDBOX_ZYGOTE says)."""
    from corral.sandbox.linux import LinuxSandboxFactory

    made = LinuxSandboxFactory(dirs.base / "erun", zygote="off")
    yield made
    asyncio.run(made.close())


def _run_json(zfactory: Any, dirs: Dirs, code: str, **overrides: Any) -> tuple[Any, Any]:
    async def scenario() -> tuple[Any, str, dict[str, float]]:
        sandbox = await zfactory.spawn(spec_for(dirs, code, **overrides))
        try:
            status, out = await collect(sandbox)
        finally:
            await sandbox.destroy()
        return status, out, dict(sandbox.setup_timings)

    status, out, timings = asyncio.run(scenario())
    assert "zygote_fallback" not in timings
    assert status.code == 0, out
    return status, json.loads(out.strip().splitlines()[-1])


def test_selection(zfactory: Any, dirs: Dirs, tmp_path: Path) -> None:
    """Mode "python" takes only the bootstrap command; "any" every `-S -I -c`; never an
    interpreter the sandbox would see at another path than the host."""
    from corral.sandbox.linux import LinuxSandboxFactory

    real = os.path.realpath(PY)
    boot = spec_for(dirs, BOOTSTRAP[4])
    other = spec_for(dirs, "print(1)")
    assert zfactory._zygote_interpreter(boot) == real
    assert zfactory._zygote_interpreter(other) == real
    assert zfactory._zygote_interpreter(spec_for(dirs, "pass", argv=["/opt/python3.11", "-S", "-I",
                                                                     "-c", "pass"])) is None
    assert zfactory._zygote_interpreter(spec_for(dirs, "pass", argv=[PY, "-c", "pass"])) is None
    python_only = LinuxSandboxFactory(tmp_path / "run", zygote="python", warm_shells=0,
                                      warm_images=0, zygote_shells=0)
    try:
        assert python_only._zygote_interpreter(boot) == real
        assert python_only._zygote_interpreter(other) is None
    finally:
        asyncio.run(python_only.close())
    off = LinuxSandboxFactory(tmp_path / "run2", zygote="off", warm_shells=0, warm_images=0)
    try:
        assert off._zygote_interpreter(boot) is None
    finally:
        asyncio.run(off.close())


def test_same_sandbox_as_exec(zfactory: Any, dirs: Dirs) -> None:
    """Identity, capabilities, seccomp, environment, argv and cwd as an exec'd runtime has."""
    code = """
import json, os, sys
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
print(json.dumps({
    "status": {k: status[k].split() for k in ("Uid", "Gid", "CapInh", "CapPrm", "CapEff",
                                               "CapBnd", "CapAmb", "Seccomp", "NoNewPrivs")},
    "pid": os.getpid(), "env": dict(os.environ), "argv": sys.argv, "cwd": os.getcwd(),
    "procs": sorted(p for p in os.listdir("/proc") if p.isdigit()),
    "fds": sorted(os.listdir("/proc/self/fd")), "main": __name__,
    "path0": sys.path[0], "hostname": os.uname().nodename,
    "cmdline": [a for a in open("/proc/1/cmdline").read().split("\\0") if a],
    "environ": [a for a in open("/proc/1/environ").read().split("\\0") if a],
}))
"""
    _, seen = _run_json(zfactory, dirs, code, env={"PATH": "/usr/bin:/bin", "X_ONE": "1"})
    status = seen["status"]
    assert status["Uid"] == ["10001"] * 4 and status["Gid"] == ["10001"] * 4
    assert all(status[k] == ["0000000000000000"] for k in ("CapInh", "CapPrm", "CapEff",
                                                             "CapBnd", "CapAmb"))
    assert status["Seccomp"] == ["2"] and status["NoNewPrivs"] == ["1"]
    assert seen["pid"] == 1 and seen["procs"] == ["1"]  # the keeper is outside the namespace
    env = dict(seen["env"])
    assert env.pop("CORRAL_CONTROL_FD") == "3"
    env.pop("LC_CTYPE", None)  # PEP 538 coercion, as a fresh interpreter does
    assert env == {"PATH": "/usr/bin:/bin", "X_ONE": "1"}
    assert seen["argv"] == ["-c"] and seen["main"] == "__main__"
    assert seen["cwd"] == "/var/task" and seen["hostname"] == "corral"
    assert set(seen["fds"]) <= {"0", "1", "2", "3", "4"}  # 4: the listdir fd itself
    assert seen["path0"].startswith("/usr/lib/python3")
    # /proc shows the runtime's argv and environment, not the zygote's (nsinit.py's path)
    assert seen["cmdline"][:3] == [PY, "-S", "-I"] and "nsinit" not in str(seen["cmdline"])
    assert sorted(seen["environ"]) == ["CORRAL_CONTROL_FD=3", "PATH=/usr/bin:/bin", "X_ONE=1"]


def test_random_state_differs_between_instances(zfactory: Any, dirs: Dirs) -> None:
    """Two instances forked from one zygote: different random.random() and os.urandom, a
    different tempfile name sequence. The ASLR layout is the zygote's (same addresses)."""
    code = """
import json, os, sys
preloaded = "random" in sys.modules
import random, tempfile
print(json.dumps({"random": random.random(), "urandom": os.urandom(16).hex(),
                  "tmpname": next(tempfile._get_candidate_names()), "preloaded": preloaded,
                  "id_none": id(None)}))
"""
    _, first = _run_json(zfactory, dirs, code)
    _, second = _run_json(zfactory, dirs, code)
    assert first["preloaded"] and second["preloaded"]  # imported in the zygote, reseeded
    assert first["random"] != second["random"]
    assert first["urandom"] != second["urandom"]
    assert first["tmpname"] != second["tmpname"]
    # Documented caveat (docs/sandbox.md, "Zygote"): forked children share the zygote's
    # address-space layout. If this ever fails, the note can go.
    assert first["id_none"] == second["id_none"]


def test_exit_status_exceptions_and_kill(zfactory: Any, dirs: Dirs) -> None:
    """sys.exit codes, uncaught exceptions (traceback, status 1), atexit, and SIGKILL."""

    async def scenario() -> None:
        status, out = await run_code(zfactory, dirs, "import sys; sys.exit(3)")
        assert status.code == 3
        status, out = await run_code(zfactory, dirs, "raise ValueError('boom')")
        assert status.code == 1 and "ValueError: boom" in out and "Traceback" in out
        status, out = await run_code(
            zfactory, dirs, "import atexit; atexit.register(print, 'bye'); print('hi', end='')")
        assert status.code == 0 and out == "hibye\n"
        sandbox = await zfactory.spawn(spec_for(dirs, "import time; time.sleep(60)"))
        sandbox.kill()
        status = await asyncio.wait_for(sandbox.wait(), 10)
        assert status.signal == 9
        await sandbox.destroy()
        await sandbox.destroy()

    asyncio.run(scenario())


def test_network_none_and_runtime_api(zfactory: Any, dirs: Dirs) -> None:
    """The init unshares the network namespace itself when the spec asks for it."""
    code = "import socket, json; print(json.dumps([n for _, n in socket.if_nameindex()]))"
    _, names = _run_json(zfactory, dirs, code, network="none")
    assert list(names) == ["lo"]


def test_memory_is_limited_and_accounted(zfactory: Any, dirs: Dirs) -> None:
    """The forked instance is in its own memory cgroup: over the limit it is OOM-killed."""

    async def scenario() -> Any:
        code = "b = bytearray(300 << 20); b[::4096] = b'x' * len(b[::4096])"
        return await run_code(zfactory, dirs, code, memory_mb=128)

    status, _ = asyncio.run(scenario())
    assert status.signal == 9 and status.oom_killed


def test_nothing_leaks_after_close(dirs: Dirs, tmp_path: Path) -> None:
    """Zygote, keepers, warm inits, instances, cgroups, mounts, loops: all gone after close."""
    from corral.sandbox.linux import LinuxSandboxFactory

    before = leftovers(tmp_path)
    run_dir = tmp_path / "run"
    owned: dict[str, list[Any]] = {}

    async def scenario() -> None:
        made = LinuxSandboxFactory(run_dir, zygote="any")
        sandboxes = [await made.spawn(spec_for(
            dirs, "import os, time; os.fork(); time.sleep(60)", network=network,
            ephemeral_mb=size)) for network, size in (("host", 512), ("none", 1024))]
        await asyncio.sleep(0.3)
        during = leftovers(tmp_path)
        assert during["mounts"] == before["mounts"]
        assert made._cgroups is not None
        owned["cgroups"] = made._cgroups.driver.parent_dirs()
        owned["pids"] = [pid for sb in sandboxes for pid in sb.cgroup_pids()]
        owned["pids"] += [z.proc.pid for z in made._zygotes.values()]
        owned["pids"] += [shell.proc.pid for pool in made._zshells.values() for shell in pool]
        owned["pids"] += [shell.init_pid for pool in made._zshells.values() for shell in pool]
        assert len(owned["pids"]) >= 7
        await sandboxes[0].destroy()
        await made.close()

    asyncio.run(scenario())
    after = leftovers(tmp_path)
    assert after["loops"] == [] and after["mounts"] == before["mounts"]
    assert all(not Path(d).exists() for d in owned["cgroups"])
    alive = [pid for pid in owned["pids"] if pid and Path(f"/proc/{pid}").exists()
             and "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]]
    assert alive == []
    assert list(run_dir.iterdir()) == []


def test_zygote_restarts_after_it_dies(zfactory: Any, dirs: Dirs) -> None:
    """A killed zygote is replaced; already forked keepers and instances keep working."""

    async def scenario() -> None:
        zygote = next(iter(zfactory._zygotes.values()))
        zygote.proc.kill()
        zygote.proc.wait()
        for _ in range(3):  # the warm pool first, then keepers of a new zygote
            status, out = await run_code(zfactory, dirs, "print('ok')")
            assert status.code == 0 and out == "ok\n"
        assert all(z.alive for z in zfactory._zygotes.values())

    asyncio.run(scenario())


@pytest.mark.parametrize("lang", ["en_US.UTF-8", "C.UTF-8", None])
def test_environment_and_locale_match_exec(zfactory: Any, efactory: Any, dirs: Dirs,
                                           lang: str | None) -> None:
    """os.environ (PEP 538 coercion included), the locale and the stdio encoding are what the
    exec'd interpreter has, for the runtime's usual LANG and others."""
    code = """
import json, os, sys, _locale
print(json.dumps({"env": dict(os.environ), "ctype": _locale.setlocale(_locale.LC_CTYPE),
                  "enc": sys.stdout.encoding, "fs": sys.getfilesystemencoding()}))
"""
    env = {"PATH": "/usr/bin:/bin"} | ({"LANG": lang} if lang else {})
    assert efactory._zygote_interpreter(spec_for(dirs, code)) is None  # the exec path

    async def on_exec() -> Any:
        status, out = await run_code(efactory, dirs, code, env=env)
        assert status.code == 0, out
        return json.loads(out)

    _, forked = _run_json(zfactory, dirs, code, env=env)
    assert forked == asyncio.run(on_exec())


def test_bootstrap_served_precompiled_as_from_var_runtime(zfactory: Any, dirs: Dirs) -> None:
    """With Corral's own runtime dir, the zygote's compiled bootstrap is used, as if imported
    from /var/runtime, its module body run with the instance's environment; afterwards a
    module of the function named like a runtime module is still found normally."""
    from corral.runtimes import RUNTIME_DIR

    code = """
import json, sys
sys.path.insert(0, '/var/runtime')
import python_bootstrap as pb
framing = pb._import_framing()
del sys.path[0]
sys.path.insert(0, '/var/task')
import framing as user_framing
print(json.dumps({"file": pb.__file__, "self_dir": pb._SELF_DIR, "ascii": pb._RESPONSE_ENSURE_ASCII,
                  "loader": type(pb.__loader__).__name__, "framing": framing.__file__,
                  "user": user_framing.__file__, "code": pb.run.__code__.co_filename}))
"""
    (dirs.code / "framing.py").write_text("MINE = True\n")
    env = {"PATH": "/usr/bin:/bin", "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12"}
    try:
        _, seen = _run_json(zfactory, dirs, code, runtime_dir=RUNTIME_DIR, env=env)
    finally:
        (dirs.code / "framing.py").unlink()
    assert seen["file"] == seen["code"] == "/var/runtime/python_bootstrap.py"
    assert seen["self_dir"] == "/var/runtime" and seen["ascii"] is False
    assert seen["loader"] == "_PrecompiledFinder"
    assert seen["framing"] == "/var/runtime/framing.py"
    assert seen["user"] == "/var/task/framing.py"


def test_zygote_is_replaced_after_max_forks(dirs: Dirs, tmp_path: Path) -> None:
    """After `zygote_max_forks` forks a new zygote (new layout, new hash secret) takes over;
    instances keep starting, from it."""
    from corral.sandbox.linux import LinuxSandboxFactory

    code = "import json, sys; print(json.dumps(hash('corral')))"

    async def scenario() -> tuple[set[int], set[int]]:
        made = LinuxSandboxFactory(tmp_path / "run", zygote="any", zygote_shells=1,
                                   zygote_max_forks=2)
        zygotes, hashes = set(), set()
        try:
            for _ in range(6):
                zygotes |= {z.proc.pid for z in made._zygotes.values()}
                status, out = await run_code(made, dirs, code)
                assert status.code == 0, out
                hashes.add(int(out))
        finally:
            await made.close()
        return zygotes, hashes

    zygotes, hashes = asyncio.run(scenario())
    assert len(zygotes) >= 2 and len(hashes) >= 2
