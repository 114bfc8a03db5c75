"""Hostile init code in a per-version template (real server, Linux sandbox).

A template runs the function's init code under a relaxed seccomp program (it may create user
namespaces and mount inside them, so that its forks can enter fresh namespaces). The init
code below tries what that relaxation could be abused for; the instances forked from the
template report what their template's init saw (they share its init state), the version's
first instance what an ordinary instance sees.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from typing import Any

import pytest

from functions import PY_ADD, create, unique

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or os.environ.get("CORRAL_TEST_SANDBOX") == "process",
    reason="needs root and the Linux sandbox")

HOSTILE = '''
import ctypes, os, platform, time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
BPF = {"x86_64": 321, "aarch64": 280}[platform.machine()]
CLONE = {"x86_64": 56, "aarch64": 220}[platform.machine()]


def errno_of(ret):
    return ctypes.get_errno() if ret != 0 else 0


def in_child(fn):
    """Run fn in a child process (namespaces it enters must not stick to init)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            value = fn()
        except Exception:
            value = -1
        os.write(w, str(value).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    return int(os.read(r, 64) or b"-2")


def userns_mount_over_task():
    """In a user namespace of its own: mount over /var/task, and over the host's view."""
    uid = os.getuid()
    if libc.unshare(0x10000000 | 0x00020000) != 0:
        return ctypes.get_errno()
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    return errno_of(libc.mount(b"tmpfs", b"/var/task", b"tmpfs", 0, None))


INIT = {
    "mount": errno_of(libc.mount(b"tmpfs", b"/var/task", b"tmpfs", 0, None)),
    "umount": errno_of(libc.umount2(b"/proc", 2)),
    "setns": errno_of(libc.setns(0, 0)),
    "unshare_cgroup": in_child(lambda: errno_of(libc.unshare(0x02000000))),
    "unshare_user": in_child(lambda: errno_of(libc.unshare(0x10000000))),
    "clone_newuser": errno_of(libc.syscall(ctypes.c_long(CLONE),
                                           ctypes.c_ulong(0x10000000 | 17), 0, 0, 0, 0)),
    "userns_mount": in_child(userns_mount_over_task),
    "ptrace": errno_of(libc.ptrace(0, 0, None, None)),
    "bpf": errno_of(libc.syscall(ctypes.c_long(BPF), 0, 0, 0)),
    "shadow": os.path.exists("/etc/shadow"),
    "uid": os.getuid(),
    "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "id": os.urandom(8).hex(),
}


def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return {"init": INIT, "task": sorted(os.listdir("/var/task"))}
'''

EPERM = 1


def health(srv: Any) -> dict[str, Any]:
    with urllib.request.urlopen(f"{srv.endpoint}/_corral/health", timeout=5) as resp:
        found: dict[str, Any] = json.load(resp)
        return found


def invoke(lam: Any, name: str, event: dict[str, Any]) -> dict[str, Any]:
    resp = lam.invoke(FunctionName=name, Payload=json.dumps(event).encode())
    assert "FunctionError" not in resp, resp["Payload"].read()
    body: dict[str, Any] = json.loads(resp["Payload"].read())
    return body


def test_hostile_template_init_stays_contained(make_server: Any) -> None:
    srv = make_server()
    lam = srv.client("lambda")
    name = unique("hostile-tpl")
    create(lam, name, {"app.py": HOSTILE}, Tags={"corral:template": "on"})
    first = invoke(lam, name, {})
    deadline = time.monotonic() + 30
    while health(srv)["instances"]["templates"] < 1:
        assert time.monotonic() < deadline, "no template"
        time.sleep(0.1)
    results: list[dict[str, Any]] = []
    held = threading.Thread(target=lambda: results.append(invoke(lam, name, {"sleep": 1.0})))
    held.start()
    time.sleep(0.3)
    forked = invoke(lam, name, {})
    held.join(30)
    assert forked["init"]["id"] != first["init"]["id"], "not forked from the template"

    ordinary, template = first["init"], forked["init"]
    # an ordinary instance: every namespace and mount call refused
    assert ordinary["unshare_user"] == EPERM and ordinary["userns_mount"] == EPERM
    # the template: the relaxation, and nothing more
    assert template["unshare_user"] == 0
    assert template["userns_mount"] == 0  # inside its own mount namespace only ...
    assert forked["task"] == ["app.py"] and first["task"] == ["app.py"]  # ... code intact
    for init in (ordinary, template):
        assert init["mount"] == EPERM  # the sandbox's own mount namespace: no
        assert init["umount"] == EPERM
        assert init["setns"] == EPERM
        assert init["unshare_cgroup"] == EPERM
        assert init["clone_newuser"] == EPERM
        assert init["ptrace"] == EPERM
        assert init["bpf"] == EPERM
        assert init["shadow"] is False
        assert init["uid"] == 10001
        assert init["pids"][0] == 1 and len(init["pids"]) <= 3  # its own PID namespace

    # the server and other functions are unaffected
    other = unique("bystander")
    create(lam, other, {"app.py": PY_ADD})
    assert invoke(lam, other, {"value1": 2, "value2": 3}) == 5
    assert health(srv)["status"] == "ok"
