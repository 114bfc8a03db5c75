"""Builds one function sandbox and execs the runtime in it. Runs as root; STDLIB ONLY.

The host runs this file as a script with a system Python, `python3 -S -I nsinit.py FD PPID
NICE`, where FD is one end of an AF_UNIX SOCK_SEQPACKET socketpair (the *setup socket*), PPID
the server's pid and NICE how much lower to run while warming up (the priority is restored
before the sandbox is cloned). It never imports Corral, and imports only os, sys, time,
marshal, struct, fcntl, _socket and ctypes, so that it starts in a few milliseconds. Messages
in both directions are `marshal` dicts (the host is trusted; no user data is decoded here
except as opaque strings).

Life of one launcher (pid L):

1. *Warm, in the pool (off the request path).* L sets PR_SET_PDEATHSIG and receives
   `{"op": "join", "procs": [...], skeleton...}`. It writes `0` into each `cgroup.procs`,
   moving itself into the instance's cgroups now (a move can stall for an RCU grace period,
   5-14 ms here). It unshares a mount namespace (a slave of the host's: host unmounts reach
   it, its mounts never reach the host) and builds the spec-independent *skeleton* of the
   root on a small tmpfs: symlinks bin/lib/..., read-only binds of /usr and of the generated
   /etc, /dev (null, zero, full, random, urandom, tty, fd links, a tmpfs /dev/shm) and, when
   the host attached one, the default-size ext4 image on /tmp. It answers `joined` with an fd
   on /tmp (the host keeps it: see ephemeral.shutdown_fs) and blocks.
2. *Spawn.* It receives `{"op": "spawn", ...config}` with the log pipe (and the control
   socket) attached as SCM_RIGHTS, and calls `clone(CLONE_PARENT | CLONE_NEWNS | NEWPID |
   NEWIPC | NEWUTS | NEWCGROUP [| NEWNET] | SIGCHLD)`. CLONE_PARENT makes the new process a
   child of the *server*, so the server reaps it and gets its exit status directly; it is pid 1
   of its PID namespace, starts inside the cgroups L joined (no move), its cgroup namespace is
   rooted at the instance cgroup, and its mount namespace is a copy of L's, skeleton included.
   L reports the child's pid and exits.
3. *The child (sandbox init)* then, in this order: brings `lo` up in the new network namespace
   and creates the Runtime API listening socket there, sending it to the host; sets the
   hostname; makes every mount private; adds the function's read-only binds (/var/task,
   /var/runtime, /opt or an overlay of several layers, extra paths), mounts /tmp itself if
   the skeleton's is missing or of the wrong size, mounts a /proc of the new PID namespace and
   masks kcore, timer_list and sysrq-trigger; `pivot_root`s, detaches the old root with every
   host mount under it and makes `/` read-only; sets rlimits; drops every capability from the
   bounding and ambient sets and locks securebits; `setgroups([])`, `setresgid`, `setresuid`
   to the sandbox user; clears the remaining capability sets; sets no_new_privs; re-arms
   PDEATHSIG; arranges fds 0-3 and closes every other fd; reports `exec`; loads the seccomp
   filter; and `execve`s the runtime with exactly the environment it was given. The setup
   socket is close-on-exec: EOF on the host means the exec happened. Any failure is reported
   as `{"op": "error"}` and the child exits 127.
"""

from __future__ import annotations

import _socket
import ctypes
import fcntl
import marshal
import os
import struct
import sys
import time

ARCH = os.uname().machine
_NR = {
    "x86_64": {"clone": 56, "pivot_root": 155, "capset": 126, "close_range": 436},
    "aarch64": {"clone": 220, "pivot_root": 41, "capset": 91, "close_range": 436},
}[ARCH]

CLONE_PARENT = 0x00008000
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
SIGCHLD = 17
SIGKILL = 9

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_MM = 35
PR_SET_MM_ARG_START = 8
PR_SET_MM_ARG_END = 9
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2
# NOROOT, NO_SETUID_FIXUP and KEEP_CAPS locked off/on, no ambient raise: 0b11101011
SECUREBITS = 0x01 | 0x02 | 0x08 | 0x20 | 0x40 | 0x80
CAP_VERSION_3 = 0x20080522

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFF_RUNNING = 0x40
MSG_CMSG_CLOEXEC = 0x40000000
RLIMIT_CORE = 4
RLIMIT_NOFILE = 7
HIGH_FD = 100

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
_ulong = ctypes.c_ulong
_long = ctypes.c_long


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _Rlimit(ctypes.Structure):
    _fields_ = [("cur", ctypes.c_ulong), ("max", ctypes.c_ulong)]


def _check(result: int, what: str) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _enc(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    _check(int(libc.mount(_enc(source), _enc(target), _enc(fstype), _ulong(flags), _enc(data))),
           f"mount {source} on {target}")


def umount2(target: str, flags: int) -> None:
    _check(int(libc.umount2(_enc(target), ctypes.c_int(flags))), f"umount {target}")


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    return _check(int(libc.prctl(ctypes.c_int(option), _ulong(arg2), _ulong(arg3), _ulong(0),
                                 _ulong(0))), f"prctl({option})")


def syscall(name: str, *args: int) -> int:
    return _check(int(libc.syscall(_long(_NR[name]), *[_long(a) for a in args])), name)


def clone(flags: int) -> int:
    """Raw clone without CLONE_VM: a fork whose flags we choose; returns 0 in the child."""
    return syscall("clone", flags, 0, 0, 0, 0)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(int(libc.syscall(_long(_NR["pivot_root"]), _enc(new_root), _enc(put_old))),
           "pivot_root")


def capset_zero() -> None:
    header = ctypes.create_string_buffer(struct.pack("=Ii", CAP_VERSION_3, 0), 8)
    data = ctypes.create_string_buffer(bytes(24), 24)  # two {effective, permitted, inheritable}
    _check(int(libc.syscall(_long(_NR["capset"]), header, data)), "capset")


def setrlimit(resource: int, value: int) -> None:
    limit = _Rlimit(value, value)
    _check(int(libc.setrlimit(ctypes.c_int(resource), ctypes.byref(limit))), "setrlimit")


def close_range(first: int, last: int) -> None:
    if first <= last:
        syscall("close_range", first, last, 0)


# ----------------------------------------------------------------------------- messages


def send(sock: _socket.socket, message: dict[str, object], fds: tuple[int, ...] = ()) -> None:
    ancillary = []
    if fds:
        ancillary.append((_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                          struct.pack(f"{len(fds)}i", *fds)))
    sock.sendmsg([marshal.dumps(message, 4)], ancillary)


def recv(sock: _socket.socket) -> tuple[dict[str, object] | None, list[int]]:
    data, ancillary, _flags, _addr = sock.recvmsg(1 << 20, _socket.CMSG_SPACE(16 * 4),
                                                  MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(struct.unpack(f"{usable // 4}i", payload[:usable]))
    if not data:
        return None, fds
    message = marshal.loads(data)
    assert isinstance(message, dict)
    return message, fds


# ------------------------------------------------------------------------- root building


def _mkdirs(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)


def _touch(path: str) -> None:
    _mkdirs(os.path.dirname(path))
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))


def bind_ro(source: str, target: str, is_dir: bool) -> None:
    if is_dir:
        _mkdirs(target)
    else:
        _touch(target)
    mount(source, target, None, MS_BIND)
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def mount_tmp(root: str, device: str) -> int:
    """Mount the ext4 image on <root>/tmp; returns an fd on it for the host to hold."""
    tmp = root + "/tmp"
    mount(device, tmp, "ext4", MS_NOSUID | MS_NODEV)
    try:
        os.rmdir(tmp + "/lost+found")
    except OSError:
        pass
    return os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def build_skeleton(cfg: dict[str, object]) -> int:
    """The spec-independent part of the root, built by a warm launcher in its own mount
    namespace (a slave of the host's): tmpfs root, /usr, /etc, /dev, and /tmp when the host
    gave an image. Returns an fd on /tmp, or -1."""
    root = str(cfg["root"])
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    for target, link in cfg["links"]:  # type: ignore[attr-defined]
        os.symlink(target, root + link)
    for source, target, is_dir in cfg["binds"]:  # type: ignore[attr-defined]
        bind_ro(source, root + target, is_dir)
    for name in ("opt", "tmp", "proc", "var/task", "var/runtime"):
        _mkdirs(f"{root}/{name}")
    dev = root + "/dev"
    _mkdirs(dev)
    for name in ("null", "zero", "full", "random", "urandom", "tty"):
        _touch(f"{dev}/{name}")
        mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    _mkdirs(dev + "/shm")
    mount("tmpfs", dev + "/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
          f"size={cfg['shm_mb']}m,mode=1777")
    device = str(cfg["tmp_device"])
    return mount_tmp(root, device) if device else -1


def finish_root(cfg: dict[str, object], premounted: bool, setup: _socket.socket,
                marks: dict[str, float]) -> None:
    """In the sandbox's init: the function's own binds, /tmp if the launcher had none of
    the right size, a /proc of the new PID namespace, then pivot_root."""
    root = str(cfg["root"])
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    for source, target, is_dir in cfg["binds"]:  # type: ignore[attr-defined]
        bind_ro(source, root + target, is_dir)
    lower = cfg["overlay"]
    if lower:
        mount("overlay", root + "/opt", "overlay", MS_RDONLY | MS_NOSUID | MS_NODEV,
              "lowerdir=" + ":".join(lower))  # type: ignore[arg-type]
    marks["binds"] = time.perf_counter()

    device = str(cfg["tmp_device"])
    if device or not premounted:
        if premounted:  # wrong size: drop the launcher's image (the host recycles it)
            umount2(root + "/tmp", MNT_DETACH)
        if device:
            fd = mount_tmp(root, device)
            send(setup, {"op": "tmp"}, (fd,))
            os.close(fd)
        else:
            mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
                  f"size={cfg['tmp_mb']}m,mode=1777")
    marks["tmp"] = time.perf_counter()

    proc = root + "/proc"
    mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in cfg["proc_masks"]:  # type: ignore[attr-defined]
        if os.path.exists(f"{proc}/{name}"):
            mount(f"{root}/dev/null", f"{proc}/{name}", None, MS_BIND)
    marks["proc"] = time.perf_counter()

    os.chdir(root)
    pivot_root(".", ".")  # the old root is stacked on top of the new one ...
    umount2(".", MNT_DETACH)  # ... and detached with every host mount under it
    os.chdir("/")
    mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    marks["pivot"] = time.perf_counter()


def loopback_up() -> None:
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request)[:18])[1]
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS,
                    struct.pack("16sH22x", b"lo", flags | IFF_UP | IFF_RUNNING))
    finally:
        sock.close()


def drop_privileges(uid: int, gid: int, cap_last: int) -> None:
    for cap in range(cap_last + 1):
        try:
            prctl(PR_CAPBSET_DROP, cap)
        except OSError:
            pass  # EINVAL: capability unknown to this kernel
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    prctl(PR_SET_SECUREBITS, SECUREBITS)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # clears permitted and effective (KEEP_CAPS is locked off)
    capset_zero()  # and inheritable
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_PDEATHSIG, SIGKILL)  # the credential change reset it


def set_proc_strings(argv: list[str], env: dict[str, str]) -> None:
    """Make /proc/<pid>/cmdline and /proc/<pid>/environ show the runtime's argv and
    environment instead of the zygote's (the argv names nsinit.py on the host): overwrite
    both areas in place, as setproctitle does (PR_SET_MM would need CAP_SYS_RESOURCE).
    The zygote is started with a padding argument and a padding variable so that the areas
    are large enough; the rest is NUL-filled. Best effort: what does not fit is left out."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        # fields 48-51 of proc(5): arg_start, arg_end, env_start, env_end
        areas = [(int(fields[45]), int(fields[46])), (int(fields[47]), int(fields[48]))]
    except (OSError, ValueError, IndexError):
        return
    items = [[os.fsencode(a) + b"\0" for a in argv],
             [os.fsencode(f"{k}={v}") + b"\0" for k, v in env.items()]]
    for (start, end), entries in zip(areas, items, strict=True):
        size = end - start
        data = b""
        for entry in entries:
            if len(data) + len(entry) > size:
                break
            data += entry
        if size > 0:
            ctypes.memmove(ctypes.c_void_p(start), data + bytes(size - len(data)), size)


def load_seccomp(program: bytes) -> None:
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    _check(int(libc.prctl(ctypes.c_int(PR_SET_SECCOMP), _ulong(SECCOMP_MODE_FILTER),
                          ctypes.byref(fprog), _ulong(0), _ulong(0))), "seccomp")


def _high(fd: int) -> int:
    return int(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, HIGH_FD))


def sandbox_init(sock: _socket.socket, cfg: dict[str, object], fds: list[int],
                 started: float, premounted: bool) -> None:
    """Runs in the cloned child (pid 1 of the new PID namespace); never returns."""
    marks = {"clone": time.perf_counter()}
    setup = _socket.socket(fileno=_high(sock.fileno()))
    sock.detach()
    try:
        prctl(PR_SET_PDEATHSIG, SIGKILL)
        _sandbox_init(setup, cfg, fds, started, premounted, marks)
    except BaseException as exc:  # report anything, then die without cleanup handlers
        try:
            send(setup, {"op": "error", "msg": f"{type(exc).__name__}: {exc}"})
        except BaseException:
            pass
    os._exit(127)


def _sandbox_init(setup: _socket.socket, cfg: dict[str, object], fds: list[int],
                  started: float, premounted: bool, marks: dict[str, float]) -> None:
    log_fd = _high(fds[int(cfg["log_index"])])  # type: ignore[call-overload]
    control_index = int(cfg["control_index"])  # type: ignore[call-overload]
    control_fd = _high(fds[control_index]) if control_index >= 0 else -1

    if cfg["netns"]:
        loopback_up()
        port = int(cfg["api_port"])  # type: ignore[call-overload]
        if port:
            api = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
            api.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            api.bind(("127.0.0.1", port))
            api.listen(128)
            send(setup, {"op": "api"}, (api.fileno(),))
            api.close()
    name = os.fsencode(str(cfg["hostname"]))
    _check(int(libc.sethostname(name, _ulong(len(name)))), "sethostname")
    marks["net"] = time.perf_counter()

    finish_root(cfg, premounted, setup, marks)

    setrlimit(RLIMIT_NOFILE, int(cfg["nofile"]))  # type: ignore[call-overload]
    setrlimit(RLIMIT_CORE, 0)
    if cfg.get("zygote"):
        set_proc_strings([str(a) for a in cfg["argv"]],  # type: ignore[attr-defined]
                         {str(k): str(v) for k, v in cfg["env"].items()})  # type: ignore[attr-defined]
    drop_privileges(int(cfg["uid"]), int(cfg["gid"]), int(cfg["cap_last"]))  # type: ignore[call-overload]
    if cfg.get("zygote"):  # what execve of a plain binary does: /proc/<pid> owned by us
        prctl(PR_SET_DUMPABLE, 1)
    marks["privileges"] = time.perf_counter()

    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    keep = setup.fileno()
    if control_fd >= 0:
        os.dup2(control_fd, 3)
        close_range(4, keep - 1)
    else:
        close_range(3, keep - 1)
    close_range(keep + 1, 0xFFFFFFFF)
    os.chdir(str(cfg["cwd"]))
    os.umask(0o022)
    argv = [str(a) for a in cfg["argv"]]  # type: ignore[attr-defined]
    env = {str(k): str(v) for k, v in cfg["env"].items()}  # type: ignore[attr-defined]
    marks["fds"] = time.perf_counter()
    program = cfg["seccomp"]
    assert isinstance(program, bytes)
    if cfg.get("zygote"):  # forked from a zygote: run the runtime in this process
        load_seccomp(program)
        marks["seccomp"] = time.perf_counter()
        send(setup, {"op": "exec", "timings_ms": {
            key: round((value - started) * 1000, 3) for key, value in marks.items()}})
        os.close(setup.detach())  # the host's EOF is the keeper's business now
        run_in_process(argv, env, bool(cfg.get("precompiled")))  # never returns
    send(setup, {"op": "exec", "timings_ms": {
        key: round((value - started) * 1000, 3) for key, value in marks.items()}})
    load_seccomp(program)
    try:
        if "/" in argv[0]:
            os.execve(argv[0], argv, env)
        else:
            os.execvpe(argv[0], argv, env)
    except OSError as exc:
        raise OSError(exc.errno, f"exec {argv[0]}: {exc.strerror}") from None


# ------------------------------------------------------------------------------- zygote

_BASE_PATH: list[str] = []  # sys.path of the zygote at start, before any preloading
ZYGOTE_PRELOAD = ("json", "struct", "io", "traceback", "logging", "select", "signal", "random")


def _reseed() -> None:
    """Per-process state a fork duplicates. `os.fork` already runs the at-fork hooks (the
    `random` module reseeds itself there); do it again explicitly, and for every other
    generator the zygote may hold."""
    rnd = sys.modules.get("random")
    if rnd is not None:
        rnd.seed()  # from os.urandom
    tmp = sys.modules.get("tempfile")
    if tmp is not None:
        tmp._name_sequence = None  # type: ignore[attr-defined]


_LOCALE_KEYS = ("LC_ALL", "LC_CTYPE", "LANG")
# (LC_ALL, LC_CTYPE, LANG) -> (the LC_CTYPE locale a fresh interpreter ends with, the
# LC_CTYPE variable PEP 538 sets or None): probed in the zygote for the usual environment
_LOCALE_SEEN: dict[tuple[str | None, ...], tuple[str, str | None]] = {}


def _coerce_locale(env: dict[str, str]) -> None:
    """What a fresh interpreter does at start (PEP 538): LC_CTYPE from the environment, and
    C.UTF-8 when that is the C locale. Skipped (the zygote's locale is the answer) when the
    zygote probed the same variables."""
    import _locale

    key = tuple(env.get(name) for name in _LOCALE_KEYS)
    seen = _LOCALE_SEEN.get(key)
    if seen is not None and _locale.setlocale(_locale.LC_CTYPE) == seen[0]:
        if seen[1] is not None:
            os.environ["LC_CTYPE"] = seen[1]
        return
    _locale.setlocale(_locale.LC_CTYPE, "C")  # where a fresh process starts
    try:
        _locale.setlocale(_locale.LC_CTYPE, "")
    except Exception:  # _locale.Error
        pass
    current = _locale.setlocale(_locale.LC_CTYPE)
    if current in ("C", "POSIX") and not env.get("LC_ALL"):
        for name in ("C.UTF-8", "C.utf8", "UTF-8"):
            try:
                _locale.setlocale(_locale.LC_CTYPE, name)
            except Exception:  # _locale.Error
                continue
            os.environ["LC_CTYPE"] = name
            break


def _probe_locale(env: dict[str, str]) -> None:
    """Record what `_coerce_locale(env)` does, then put the zygote's locale back."""
    import _locale

    saved_env = dict(os.environ)
    saved = _locale.setlocale(_locale.LC_CTYPE)
    try:
        os.environ.clear()
        os.environ.update(env)
        _coerce_locale(env)
        _LOCALE_SEEN[tuple(env.get(name) for name in _LOCALE_KEYS)] = (
            _locale.setlocale(_locale.LC_CTYPE), os.environ.get("LC_CTYPE"))
    except Exception:
        pass
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        _locale.setlocale(_locale.LC_CTYPE, saved)


def _finalize(code: object) -> None:
    """Interpreter shutdown as `python -c` does it, then _exit: wait for non-daemon threads,
    run atexit callbacks, flush stdio. Never returns."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code & 0xFF
    else:
        try:
            sys.stderr.write(f"{code}\n")
        except BaseException:
            pass
        status = 1
    try:
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()
    except BaseException:
        pass
    try:
        import atexit

        atexit._run_exitfuncs()
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except BaseException:
            pass
    os._exit(status)


def run_in_process(argv: list[str], env: dict[str, str], precompiled: bool = False) -> None:
    """Become `argv` = `<python> -S -I -c CODE` without exec: the environment, sys.argv,
    sys.path and __main__ a fresh interpreter would have, then run CODE. Never returns."""
    code: object = 0
    try:
        import gc

        gc.enable()  # the zygote's objects are frozen: collections here leave them alone
        os.environ.clear()
        os.environ.update(env)
        _coerce_locale(env)
        _reseed()
        sys.argv[:] = ["-c"]
        try:
            sys.orig_argv[:] = argv
        except AttributeError:
            pass
        sys.path[:] = _BASE_PATH
        main_module = type(sys)("__main__")
        main_module.__dict__["__builtins__"] = __builtins__
        sys.modules["__main__"] = main_module
        for name in ("python_bootstrap", "framing"):
            sys.modules.pop(name, None)
        if precompiled and _PRECOMPILED:
            sys.meta_path.insert(0, _PrecompiledFinder())  # type: ignore[arg-type]
        source = argv[4]
        exec(compile(source, "<string>", "exec"), main_module.__dict__)
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        try:
            sys.excepthook(*sys.exc_info())
        except BaseException:
            pass
        code = 1
    _finalize(code)


# name -> (code compiled under its in-sandbox path, that path, (mtime_ns, size) of the file)
_PRECOMPILED: dict[str, tuple[object, str, tuple[int, int]]] = {}


class _PrecompiledFinder:
    """Serves the runtime modules the zygote compiled, each once, exactly where a normal
    import would find them (their directory first on sys.path, the file unchanged), then
    leaves sys.meta_path: the module body still runs in the instance, with its environment;
    only finding, reading and unmarshalling the file is saved (~1.7 ms)."""

    def __init__(self) -> None:
        self.table = dict(_PRECOMPILED)

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        entry = self.table.get(name)
        if entry is None:
            return None
        del self.table[name]
        meta: list[object] = sys.meta_path  # type: ignore[assignment]
        if not self.table and self in meta:
            meta.remove(self)
        code, origin, stamp = entry
        if not sys.path or sys.path[0] != os.path.dirname(origin):
            return None
        try:
            st = os.stat(origin)
        except OSError:
            return None
        if (st.st_mtime_ns, st.st_size) != stamp:
            return None  # changed since the zygote started: import it normally
        spec = sys.modules["_frozen_importlib"].ModuleSpec(name, self, origin=origin)
        spec.has_location = True
        spec.loader_state = code
        return spec

    def create_module(self, spec: object) -> None:
        return None

    def exec_module(self, module: object) -> None:
        exec(module.__spec__.loader_state, module.__dict__)  # type: ignore[attr-defined]


def _wait_status(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue
        except ChildProcessError:
            return 0x7F00  # exit status 127: cannot happen, it is our child


def keeper(sock: _socket.socket, join: dict[str, object], priority: int) -> int:
    """A process forked by the zygote (pid K). Off the request path it joins the cgroup,
    builds the skeleton in its own mount namespace, unshares the PID, IPC, UTS and cgroup
    namespaces and forks the sandbox init, which waits for the config. K stays as the
    init's parent: it reports the init's wait status to the host on the setup socket, and
    kills the init if the host goes away (the socket hangs up). K never reads the socket."""
    begin = time.perf_counter()
    try:
        for path in join["procs"]:  # type: ignore[attr-defined]
            with open(path, "w") as f:
                f.write("0")
        joined = time.perf_counter()
        _check(int(libc.unshare(ctypes.c_int(CLONE_NEWNS))), "unshare")
        mount(None, "/", None, MS_REC | MS_SLAVE)
        tmp_fd = build_skeleton(join)
        _check(int(libc.unshare(ctypes.c_int(CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
                                             | CLONE_NEWCGROUP))), "unshare")
        oom = os.open("/proc/self/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
        pid = os.fork()
    except OSError as exc:
        try:
            send(sock, {"op": "error", "msg": f"preparing the sandbox: {exc}"})
        except OSError:
            pass
        return 1
    if pid == 0:
        os.close(oom)
        warm_init(sock, priority, tmp_fd >= 0)  # never returns
    prctl(PR_SET_PDEATHSIG, 0)  # the instance outlives a zygote restart; the host's
    pidfd = os.pidfd_open(pid)  # socket hanging up is what ends it
    try:
        os.write(oom, b"-1000")  # a memory cgroup OOM picks the function, never its keeper
    except OSError:
        pass
    os.close(oom)
    fds = (pidfd, tmp_fd) if tmp_fd >= 0 else (pidfd,)
    try:
        send(sock, {"op": "joined", "pid": pid, "join_ms": round((joined - begin) * 1000, 3),
                    "skeleton_ms": round((time.perf_counter() - joined) * 1000, 3)}, fds)
    except OSError:
        pass
    if tmp_fd >= 0:
        os.close(tmp_fd)
    import select as _select

    poller = _select.poll()
    poller.register(pidfd, _select.POLLIN)
    poller.register(sock.fileno(), 0)  # POLLHUP only: the init reads this socket, not K
    while True:
        events = dict(poller.poll())
        if pidfd in events:
            status = _wait_status(pid)
            try:
                send(sock, {"op": "exit", "status": status})
            except OSError:
                pass
            return 0
        if sock.fileno() in events:  # the host closed its end: the instance must go
            try:
                signal_pidfd(pidfd, SIGKILL)
            except OSError:
                pass
            _wait_status(pid)
            return 0


def warm_init(sock: _socket.socket, priority: int, premounted: bool) -> None:
    """The sandbox init forked ahead of time (pid 1 of its PID namespace, still root):
    waits for the config, then does what a cloned init does. Never returns."""
    try:
        prctl(PR_SET_PDEATHSIG, SIGKILL)
        # Built at nice 10; waits at the server's priority, so that it wakes up promptly.
        os.setpriority(os.PRIO_PROCESS, 0, priority)
        cfg, fds = recv(sock)
    except BaseException:
        os._exit(0)
    if cfg is None or cfg.get("op") != "spawn":
        os._exit(0)  # the pool was closed
    started = time.perf_counter()
    try:
        if cfg["netns"]:
            _check(int(libc.unshare(ctypes.c_int(CLONE_NEWNET))), "unshare")
    except OSError as exc:
        try:
            send(sock, {"op": "error", "msg": str(exc)})
        except BaseException:
            pass
        os._exit(127)
    sandbox_init(sock, cfg, fds, started, premounted)


def signal_pidfd(pidfd: int, signum: int) -> None:
    import signal as _signal

    _signal.pidfd_send_signal(pidfd, signum)


def zygote_main(argv: list[str]) -> int:
    """`python3.X -S -I nsinit.py zygote FD PPID NICE`: a fork server for one interpreter.

    Root, single-threaded, no secrets: it preloads the runtime's modules, then for each
    `{"op": "fork", ...join}` with a setup socket attached forks a keeper that joins the
    cgroup and builds the skeleton off the request path. It tells the host the keeper's pid
    (with a pidfd) on that setup socket, and never answers on its own socket."""
    fd, server_pid, nice = int(argv[2]), int(argv[3]), int(argv[4])
    prctl(PR_SET_PDEATHSIG, SIGKILL)
    priority = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, min(19, priority + nice))
    os.umask(0o022)
    if os.getppid() != server_pid:
        return 1
    _BASE_PATH[:] = sys.path
    import gc
    import signal as _signal

    gc.disable()  # no collection may dirty the pages the children share (gc.freeze docs)

    _signal.signal(_signal.SIGCHLD, _signal.SIG_IGN)  # keepers are reaped by the kernel
    sock = _socket.socket(fileno=fd)
    while True:
        try:
            message, fds = recv(sock)
        except OSError:
            return 0
        if message is None:
            return 0
        op = message.get("op")
        if op == "preload":
            _preload(message)
        elif op == "fork" and len(fds) == 1:
            gc.freeze()  # whatever the zygote allocated: out of the children's collections
            try:
                pid = os.fork()
            except OSError as exc:
                child = _socket.socket(fileno=fds[0])
                try:
                    send(child, {"op": "error", "msg": f"zygote fork: {exc}"})
                except OSError:
                    pass
                child.close()
                continue
            if pid == 0:
                code = 1
                try:
                    sock.close()
                    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
                    prctl(PR_SET_PDEATHSIG, SIGKILL)  # while warm: dies with the zygote
                    child = _socket.socket(fileno=fds[0])
                    code = keeper(child, message, priority)
                except BaseException as exc:
                    try:
                        sys.stderr.write(f"corral zygote keeper: {exc!r}\n")
                    except BaseException:
                        pass
                os._exit(code)
            child = _socket.socket(fileno=fds[0])
            try:
                pidfd = os.pidfd_open(pid)
                send(child, {"op": "forked", "pid": pid}, (pidfd,))
                os.close(pidfd)
            except OSError:
                pass
            child.close()
            continue
        for extra in fds:
            os.close(extra)


def _preload(message: dict[str, object]) -> None:
    """Import what every instance imports, so the children start with it (best effort)."""
    begin = time.perf_counter()
    for name in ZYGOTE_PRELOAD:
        try:
            __import__(name)
        except Exception:
            pass
    for env in message.get("locales") or ():  # type: ignore[attr-defined]
        _probe_locale(dict(env))
    path = str(message.get("runtime_dir") or "")
    view = str(message.get("view_runtime_dir") or "")
    for name in ("framing", "python_bootstrap") if path and view else ():
        try:
            with open(f"{path}/{name}.py", "rb") as f:
                st = os.fstat(f.fileno())
                source = f.read()
            origin = f"{view}/{name}.py"
            _PRECOMPILED[name] = (compile(source, origin, "exec", dont_inherit=True), origin,
                                  (st.st_mtime_ns, st.st_size))
        except (OSError, SyntaxError, ValueError):
            _PRECOMPILED.clear()
            break
    if path:
        sys.path.insert(0, path)
        try:
            for name in ("framing", "python_bootstrap"):
                try:
                    __import__(name)
                except Exception:
                    pass
        finally:
            sys.path[:] = _BASE_PATH
            for name in ("framing", "python_bootstrap"):
                sys.modules.pop(name, None)
            sys.path_importer_cache.clear()
    _ = begin


def main(argv: list[str]) -> int:
    fd, server_pid, nice = int(argv[1]), int(argv[2]), int(argv[3])
    prctl(PR_SET_PDEATHSIG, SIGKILL)
    priority = os.getpriority(os.PRIO_PROCESS, 0)  # the server's: restored before clone
    os.setpriority(os.PRIO_PROCESS, 0, min(19, priority + nice))  # warming up is background
    os.umask(0o022)  # skeleton directories must be traversable by the sandbox user
    if os.getppid() != server_pid:
        return 1  # the server died before we could arm PDEATHSIG
    sock = _socket.socket(fileno=fd)
    try:
        message, _ = recv(sock)
    except OSError:
        return 0  # the server went away
    if message is None or message.get("op") != "join":
        return 0
    begin = time.perf_counter()
    try:
        for path in message["procs"]:  # type: ignore[attr-defined]
            with open(path, "w") as f:
                f.write("0")
        joined = time.perf_counter()
        _check(int(libc.unshare(ctypes.c_int(CLONE_NEWNS))), "unshare")
        mount(None, "/", None, MS_REC | MS_SLAVE)  # host changes reach us, ours stay here
        tmp_fd = build_skeleton(message)
    except OSError as exc:
        try:
            send(sock, {"op": "error", "msg": f"preparing the sandbox: {exc}"})
        except OSError:
            pass
        return 1
    try:
        send(sock, {"op": "joined", "join_ms": round((joined - begin) * 1000, 3),
                    "skeleton_ms": round((time.perf_counter() - joined) * 1000, 3)},
             (tmp_fd,) if tmp_fd >= 0 else ())
    except OSError:
        return 0  # the server went away
    premounted = tmp_fd >= 0
    if premounted:
        os.close(tmp_fd)

    try:
        cfg, fds = recv(sock)
    except OSError:
        return 0  # the server went away
    if cfg is None or cfg.get("op") != "spawn":
        return 0  # pool closed
    started = time.perf_counter()
    os.setpriority(os.PRIO_PROCESS, 0, priority)  # the sandbox runs at the server's priority
    flags = (CLONE_PARENT | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
             | CLONE_NEWCGROUP | SIGCHLD)
    if cfg["netns"]:
        flags |= CLONE_NEWNET
    try:
        pid = clone(flags)
    except OSError as exc:
        send(sock, {"op": "error", "msg": str(exc)})
        return 1
    if pid == 0:
        sandbox_init(sock, cfg, fds, started, premounted)  # never returns
    send(sock, {"op": "pid", "pid": pid})
    return 0


if __name__ == "__main__":
    os._exit(zygote_main(sys.argv) if sys.argv[1:2] == ["zygote"] else main(sys.argv))
