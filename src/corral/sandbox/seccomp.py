"""A seccomp BPF deny-list for function instances, assembled in pure Python.

The program is a classic-BPF `sock_filter` array (8 bytes per instruction, native endian)
that the sandbox's init loads with `prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)` right before
`execve`. It is built once per architecture and cached as bytes (`program()`); the child gets
the bytes in its setup message, so nothing is compiled on the request path.

Policy (default allow, then deny what an unprivileged function never needs):

* foreign architecture (e.g. i386 through `int 0x80` on x86_64) -> kill the process;
* x32 ABI syscalls (x86_64 numbers with bit 30 set) -> EPERM;
* mount and new-mount-API calls, `pivot_root`, `chroot`, namespaces (`unshare`, `setns`,
  `clone` with any `CLONE_NEW*` flag), `ptrace` and its relatives (`process_vm_*`,
  `pidfd_getfd`, `kcmp`, `process_madvise`), kernel keyrings, BPF, perf, module loading,
  kexec, reboot, swap, clock setting, accounting, quotas, file handles, `userfaultfd`,
  io_uring, raw I/O ports -> EPERM;
* `clone3` -> ENOSYS (its flags live in memory the filter cannot read; libc falls back to
  `clone`, whose flags are checked);
* `socket(AF_PACKET, ...)` and `SOCK_RAW`/`SOCK_PACKET` sockets of AF_INET/AF_INET6 -> EPERM
  (also impossible without CAP_NET_RAW, which the sandbox does not have);
* `socket(AF_VSOCK, ...)` -> EPERM: vsock is not scoped by network namespaces, and on a VM
  host it reaches the hypervisor's services even from `network=none`.

Most of these already fail because the sandbox has no capabilities; the filter is the second
wall, and it removes attack surface (io_uring, bpf, perf, userfaultfd, keyrings) that is
reachable without privileges.
"""

from __future__ import annotations

import errno
import functools
import platform
import struct

# classic BPF opcodes
_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x05 | 0x10 | 0x00  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x05 | 0x30 | 0x00  # BPF_JMP | BPF_JGE | BPF_K
_JSET_K = 0x05 | 0x40 | 0x00  # BPF_JMP | BPF_JSET | BPF_K
_AND_K = 0x04 | 0x50 | 0x00  # BPF_ALU | BPF_AND | BPF_K
_RET_K = 0x06 | 0x00  # BPF_RET | BPF_K

RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000

# offsets in struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6];} (little endian)
_OFF_NR = 0
_OFF_ARCH = 4


def _arg_lo(index: int) -> int:
    return 16 + 8 * index


CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = (CLONE_NEWTIME | CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC
                   | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET)

AF_INET = 2
AF_INET6 = 10
AF_PACKET = 17
AF_VSOCK = 40
SOCK_RAW = 3
SOCK_PACKET = 10
_SOCK_TYPE_MASK = 0xF

# name: (x86_64 number, aarch64 number or None when the syscall does not exist there)
DENIED: dict[str, tuple[int, int | None]] = {
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "mount_setattr": (442, 442),
    "move_mount": (429, 429),
    "open_tree": (428, 428),
    "open_tree_attr": (467, 467),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "unshare": (272, 97),
    "setns": (308, 268),
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "process_madvise": (440, 440),
    "pidfd_getfd": (438, 438),
    "kcmp": (312, 272),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "reboot": (169, 142),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264),
    "userfaultfd": (323, 282),
    "acct": (163, 89),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "clock_adjtime": (305, 266),
    "adjtimex": (159, 171),
    "lookup_dcookie": (212, 18),
    "quotactl": (179, 60),
    "quotactl_fd": (443, 443),
    "fanotify_init": (300, 262),
    "syslog": (103, 116),
    "vhangup": (153, 58),
    "nfsservctl": (180, 42),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    # x86_64 only
    "iopl": (172, None),
    "ioperm": (173, None),
    "modify_ldt": (154, None),
    "uselib": (134, None),
    "_sysctl": (156, None),
    "create_module": (174, None),
    "get_kernel_syms": (177, None),
    "query_module": (178, None),
}

# syscalls inspected by argument
_CLONE = {"x86_64": 56, "aarch64": 220}
_CLONE3 = {"x86_64": 435, "aarch64": 435}
_SOCKET = {"x86_64": 41, "aarch64": 198}
_AUDIT_ARCH = {"x86_64": AUDIT_ARCH_X86_64, "aarch64": AUDIT_ARCH_AARCH64}


def native_arch() -> str:
    """This machine's architecture as the filter names it (`x86_64` or `aarch64`)."""
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def supported(arch: str | None = None) -> bool:
    """Whether a filter can be built for `arch` (default: this machine)."""
    return (arch or native_arch()) in _AUDIT_ARCH


class _Assembler:
    """Forward-only classic BPF with symbolic jump targets."""

    def __init__(self) -> None:
        self._code: list[tuple[int, str | int, str | int, int]] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self._labels[name] = len(self._code)

    def stmt(self, code: int, k: int) -> None:
        self._code.append((code, 0, 0, k))

    def jump(self, code: int, k: int, jt: str | int = 0, jf: str | int = 0) -> None:
        self._code.append((code, jt, jf, k))

    def assemble(self) -> bytes:
        out = bytearray()
        for index, (code, jt, jf, k) in enumerate(self._code):
            out += struct.pack("=HBBI", code, self._offset(index, jt), self._offset(index, jf), k)
        return bytes(out)

    def _offset(self, index: int, target: str | int) -> int:
        if isinstance(target, int):
            return target
        offset = self._labels[target] - index - 1
        if not 0 <= offset <= 255:
            raise ValueError(f"BPF jump to {target} out of range ({offset})")
        return offset


# What a per-version template may still do, so that each fork can enter fresh namespaces
# (docs/sandbox.md, "Per-version templates"): `unshare` with exactly these flags, `mount`
# and `move_mount` (the host's detached /tmp filesystem onto the fork's /tmp).
# Every instance forked from it stacks the full program on top before running any invoke.
TEMPLATE_UNSHARE_FLAGS = (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC
                          | CLONE_NEWUTS | CLONE_NEWNET)
TEMPLATE_ALLOWED = ("unshare", "mount", "move_mount")


def build(arch: str | None = None, template: bool = False) -> bytes:
    """Assemble the deny-list program for `arch` (default: this machine); `template`
    relaxes it for a per-version template (TEMPLATE_ALLOWED, unshare flags checked)."""
    arch = arch or native_arch()
    if arch not in _AUDIT_ARCH:
        raise ValueError(f"no seccomp filter for architecture {arch}")
    a = _Assembler()
    a.stmt(_LD_W_ABS, _OFF_ARCH)
    a.jump(_JEQ_K, _AUDIT_ARCH[arch], jt=1, jf=0)
    a.stmt(_RET_K, RET_KILL_PROCESS)
    a.stmt(_LD_W_ABS, _OFF_NR)
    if arch == "x86_64":
        a.jump(_JGE_K, X32_SYSCALL_BIT, jt="eperm")
    a.jump(_JEQ_K, _CLONE[arch], jt="clone")
    a.jump(_JEQ_K, _CLONE3[arch], jt="enosys")
    a.jump(_JEQ_K, _SOCKET[arch], jt="socket")
    index = 0 if arch == "x86_64" else 1
    if template:
        a.jump(_JEQ_K, DENIED["unshare"][index] or 0, jt="unshare")
    numbers = sorted({nr for name, nrs in DENIED.items()
                      if (nr := nrs[index]) is not None
                      and not (template and name in TEMPLATE_ALLOWED)})
    for nr in numbers:
        a.jump(_JEQ_K, nr, jt="eperm")
    a.stmt(_RET_K, RET_ALLOW)

    a.label("clone")
    a.stmt(_LD_W_ABS, _arg_lo(0))
    a.jump(_JSET_K, NAMESPACE_FLAGS, jt="eperm")
    a.stmt(_RET_K, RET_ALLOW)

    if template:
        a.label("unshare")
        a.stmt(_LD_W_ABS, _arg_lo(0))
        a.jump(_JSET_K, 0xFFFFFFFF & ~TEMPLATE_UNSHARE_FLAGS, jt="eperm")
        a.stmt(_RET_K, RET_ALLOW)

    a.label("socket")
    a.stmt(_LD_W_ABS, _arg_lo(0))
    a.jump(_JEQ_K, AF_PACKET, jt="eperm")
    a.jump(_JEQ_K, AF_VSOCK, jt="eperm")
    a.jump(_JEQ_K, AF_INET, jt="inet")
    a.jump(_JEQ_K, AF_INET6, jt="inet")
    a.stmt(_RET_K, RET_ALLOW)
    a.label("inet")
    a.stmt(_LD_W_ABS, _arg_lo(1))
    a.stmt(_AND_K, _SOCK_TYPE_MASK)
    a.jump(_JEQ_K, SOCK_RAW, jt="eperm")
    a.jump(_JEQ_K, SOCK_PACKET, jt="eperm")
    a.stmt(_RET_K, RET_ALLOW)

    a.label("eperm")
    a.stmt(_RET_K, RET_ERRNO | errno.EPERM)
    a.label("enosys")
    a.stmt(_RET_K, RET_ERRNO | errno.ENOSYS)
    return a.assemble()


@functools.cache
def program(arch: str | None = None, template: bool = False) -> bytes:
    """The cached filter for `arch` (default: this machine)."""
    return build(arch, template)


def denied_names(arch: str | None = None) -> list[str]:
    """The syscalls the filter refuses outright on `arch` (for reports and docs)."""
    arch = arch or native_arch()
    index = 0 if arch == "x86_64" else 1
    return sorted(name for name, nrs in DENIED.items() if nrs[index] is not None)


def install(prog: bytes) -> None:
    """Load `prog` into the calling thread (sets no_new_privs first). For tests and tools.

    The sandbox itself loads the program from `nsinit.py`, which cannot import Corral.
    """
    import ctypes

    class _Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _Fprog(len(prog) // 8, ctypes.addressof(buf))
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    ulong = ctypes.c_ulong
    if libc.prctl(pr_set_no_new_privs, ulong(1), ulong(0), ulong(0), ulong(0)) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(pr_set_seccomp, ulong(seccomp_mode_filter), ctypes.byref(fprog),
                  ulong(0), ulong(0)) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
