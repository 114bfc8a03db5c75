"""The seccomp deny-list: the BPF program's shape, and what a process that loads it can and
cannot do (a forked child loads it; the test process itself stays unfiltered)."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from corral.sandbox import seccomp

needs_native_filter = pytest.mark.skipif(not seccomp.supported(),
                                         reason="no filter for this architecture")


def _insns(program: bytes) -> list[tuple[int, int, int, int]]:
    return [struct.unpack("=HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_program_shape(arch: str) -> None:
    """The program checks the architecture first, kills foreign ones and ends in returns."""
    program = seccomp.build(arch)
    assert len(program) % 8 == 0 and 0 < len(program) // 8 < 4096
    insns = _insns(program)
    assert insns[0] == (0x20, 0, 0, 4)  # ld [arch]
    assert insns[1][0] == 0x15 and insns[1][3] == seccomp._AUDIT_ARCH[arch]
    assert insns[2] == (0x06, 0, 0, seccomp.RET_KILL_PROCESS)
    assert insns[-1] == (0x06, 0, 0, seccomp.RET_ERRNO | errno.ENOSYS)
    assert (0x06, 0, 0, seccomp.RET_ERRNO | errno.EPERM) in insns
    assert (0x06, 0, 0, seccomp.RET_ALLOW) in insns


def test_program_is_cached_and_lists_names() -> None:
    """program() is built once; denied_names() covers what the issue requires."""
    assert seccomp.program("x86_64") is seccomp.program("x86_64")
    names = set(seccomp.denied_names("x86_64"))
    required = {"mount", "umount2", "pivot_root", "ptrace", "unshare", "setns", "kexec_load",
                "kexec_file_load", "bpf", "perf_event_open", "keyctl", "add_key",
                "request_key", "init_module", "finit_module", "delete_module", "reboot",
                "swapon", "swapoff", "process_vm_readv", "process_vm_writev",
                "open_by_handle_at", "userfaultfd", "acct", "settimeofday", "clock_settime",
                "iopl", "ioperm", "lookup_dcookie", "name_to_handle_at", "quotactl",
                "mount_setattr", "move_mount", "open_tree", "fsopen", "fsmount", "fspick"}
    assert required <= names
    assert "iopl" not in seccomp.denied_names("aarch64")
    with pytest.raises(ValueError):
        seccomp.build("mips")


def _in_filtered_child(probe: Callable[[], dict[str, Any]],
                       program: bytes | None = None) -> dict[str, Any]:
    """Fork, load the filter in the child, run `probe` there and return its result."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(read_fd)
            seccomp.install(program or seccomp.program())
            result = probe()
        except BaseException as exc:
            result = {"crash": repr(exc)}
        os.write(write_fd, json.dumps(result).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, data
    result: dict[str, Any] = json.loads(data)
    return result


def _errno_of(call: Callable[[], int]) -> str:
    if call() == -1:
        return errno.errorcode[ctypes.get_errno()]
    return "OK"


def _socket_errno(family: int, kind: int, proto: int = 0) -> str:
    try:
        socket.socket(family, kind, proto).close()
        return "OK"
    except OSError as exc:
        return errno.errorcode[exc.errno or 0]


@needs_native_filter
@pytest.mark.skipif(os.geteuid() != 0, reason="only meaningful when the calls would succeed")
def test_filtered_child_gets_eperm() -> None:
    """As root (where they would succeed) the denied calls fail with EPERM; clone3 with ENOSYS;
    packet, raw and vsock sockets are refused; fork, TCP and netlink sockets still work."""

    def probe() -> dict[str, Any]:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        nr = {"x86_64": {"clone": 56, "clone3": 435}, "aarch64": {"clone": 220, "clone3": 435}}[
            seccomp.native_arch()]
        out = {
            "unshare": _errno_of(lambda: libc.unshare(0x00020000)),
            "mount": _errno_of(lambda: libc.mount(b"none", b"/mnt", b"tmpfs", 0, None)),
            "umount2": _errno_of(lambda: libc.umount2(b"/proc", 0)),
            "ptrace": _errno_of(lambda: libc.ptrace(0, 0, None, None)),
            "clone_newuser": _errno_of(lambda: libc.syscall(
                ctypes.c_long(nr["clone"]), ctypes.c_ulong(0x10000000 | 17), 0, 0, 0, 0)),
            "clone3": _errno_of(lambda: libc.syscall(ctypes.c_long(nr["clone3"]), None, 0)),
            "raw": _socket_errno(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
            "packet": _socket_errno(socket.AF_PACKET, socket.SOCK_DGRAM),
            "vsock": _socket_errno(40, socket.SOCK_STREAM),
            "tcp": _socket_errno(socket.AF_INET, socket.SOCK_STREAM),
            "netlink": _socket_errno(socket.AF_NETLINK, socket.SOCK_RAW),
        }
        child = os.fork()
        if child == 0:
            os._exit(7)
        out["fork"] = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
        return out

    result = _in_filtered_child(probe)
    assert result == {"unshare": "EPERM", "mount": "EPERM", "umount2": "EPERM",
                      "ptrace": "EPERM", "clone_newuser": "EPERM", "clone3": "ENOSYS",
                      "raw": "EPERM", "packet": "EPERM", "vsock": "EPERM", "tcp": "OK",
                      "netlink": "OK",
                      "fork": 7}


@needs_native_filter
def test_filtered_child_status_line() -> None:
    """A process that loaded the filter shows `Seccomp: 2` and `NoNewPrivs: 1`."""

    def probe() -> dict[str, Any]:
        text = Path("/proc/self/status").read_text()
        status = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
        return {"seccomp": status["Seccomp"].strip(), "nnp": status["NoNewPrivs"].strip()}

    assert _in_filtered_child(probe) == {"seccomp": "2", "nnp": "1"}


@needs_native_filter
@pytest.mark.skipif(os.geteuid() != 0, reason="only meaningful when the calls would succeed")
def test_template_program_allows_only_fresh_namespaces_and_mounts() -> None:
    """A per-version template may unshare the namespaces its forks enter, and mount (inside
    their user namespace); any other unshare flag, setns, umount, pivot_root and namespace
    flags on clone stay refused. Stacking the instance program takes it all back."""

    def probe() -> dict[str, Any]:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        clone = {"x86_64": 56, "aarch64": 220}[seccomp.native_arch()]

        def in_child(call: Callable[[], int]) -> str:  # namespaces must not leak into probe
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.write(write_fd, _errno_of(call).encode())
                os._exit(0)
            os.close(write_fd)
            os.waitpid(pid, 0)
            with os.fdopen(read_fd) as f:
                return f.read()

        out = {
            "unshare_user_ns_pid": in_child(lambda: libc.unshare(0x10000000 | 0x00020000
                                                                 | 0x20000000)),
            "unshare_cgroup": in_child(lambda: libc.unshare(0x02000000)),
            "unshare_files": in_child(lambda: libc.unshare(0x00000400)),
            "setns": _errno_of(lambda: libc.setns(0, 0)),
            "umount2": _errno_of(lambda: libc.umount2(b"/proc", 0)),
            "pivot_root": _errno_of(lambda: libc.syscall(155 if clone == 56 else 41, b"/",
                                                         b"/")),
            "clone_newuser": _errno_of(lambda: libc.syscall(
                ctypes.c_long(clone), ctypes.c_ulong(0x10000000 | 17), 0, 0, 0, 0)),
        }
        seccomp.install(seccomp.program())  # what a forked instance stacks on top
        out["stacked_unshare"] = in_child(lambda: libc.unshare(0x10000000))
        return out

    result = _in_filtered_child(probe, seccomp.program(template=True))
    assert result == {"unshare_user_ns_pid": "OK", "unshare_cgroup": "EPERM",
                      "unshare_files": "EPERM", "setns": "EPERM", "umount2": "EPERM",
                      "pivot_root": "EPERM", "clone_newuser": "EPERM",
                      "stacked_unshare": "EPERM"}
