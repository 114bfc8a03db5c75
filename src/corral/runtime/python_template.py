"""A per-version template: an initialized Python instance that forks further instances of
its version into fresh namespaces (stdlib only; runs inside the template's sandbox).

The bootstrap calls `serve()` once the handler is imported and the init code has run. The
template then answers no invokes itself. Its control channel (an AF_UNIX stream socket, the
host trusted, lines of JSON) carries, host -> template, `{"op": "fork", ...}` with two fds
attached (the new instance's control socket and log pipe) and, template -> host,
`{"op": "ready"}`, `{"op": "exit", "pid": N, "status": S}` for every instance it reaps (it is
pid 1 of its PID namespace, so every instance is re-parented to it), `{"op": "error"}`.

A fork goes through an intermediate process, because a new PID namespace only applies to
the children of the process that unshares it:

* intermediate: `unshare(NEWUSER | NEWNS | NEWPID | NEWIPC | NEWUTS [| NEWNET])` (the
  template's seccomp program allows exactly these flags), maps its own uid and gid, forks
  the instance and exits;
* instance (pid 1 of its own namespaces, all owned by its own user namespace): mounts a
  private tmpfs on /tmp and /dev/shm and a /proc of its PID namespace, brings `lo` up,
  drops every capability of its user namespace, locks securebits, stacks the full seccomp
  program of an ordinary instance on top of the template's, points stdout/stderr at its log
  pipe and writes `HELLO` on its control socket. The host reads it with SCM_CREDENTIALS,
  learns the instance's pid and moves it into its own cgroup; then (at once, or when a
  cold start takes a spare forked ahead of time) it sends one JSON line with the
  instance's environment (log stream name, initialization type), which the instance takes
  before running the after-restore hooks and the bootstrap's invoke loop.

`os.fork` runs the at-fork hooks, so `random` reseeds itself in every instance;
`register_after_restore` hooks (snapshot_restore_py, Lambda SnapStart's API) run in every
instance before its first invoke.
"""

import ctypes
import gc
import json
import os
import select
import signal
import socket
import struct
import sys

HELLO = b"corral-hello-v1\n"  # fixed size: the host reads exactly this many bytes first
FAILED = b"corral-error-v1\n"  # followed by one JSON line, then the process exits

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND = 2, 4, 8, 4096
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_SECCOMP = 22
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2
SECUREBITS = 0x01 | 0x02 | 0x08 | 0x20 | 0x40 | 0x80
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
IFF_UP, IFF_RUNNING = 0x1, 0x40
MOVE_MOUNT = 429  # the same number on x86_64 and aarch64
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100

_libc = ctypes.CDLL(None, use_errno=True)
_ulong = ctypes.c_ulong


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _check(result, what):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source, target, fstype, flags, data=None):
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                       _ulong(flags), data.encode() if data else None), f"mount {target}")


def _write_file(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _send(sock, message):
    sock.sendall(json.dumps(message).encode() + b"\n")


def _rss_bytes():
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# ----------------------------------------------------------------------------- template


def _hooks():
    """The function's snapshot_restore_py registry, if its code imported it."""
    return sys.modules.get("snapshot_restore_py")


def serve(control_fd):
    """Report ready and fork instances on request. Returns only in a forked instance, with
    that instance's control fd; the template itself exits when the host closes the
    channel (and its instances with it: they are in its PID namespace)."""
    ctl = socket.socket(fileno=control_fd)
    ctl.setblocking(True)
    hooks = _hooks()
    if hooks is not None:
        hooks.run_before_snapshot()
    # The collector of an instance must not walk (and so copy) the template's objects.
    gc.collect()
    gc.freeze()
    _send(ctl, {"op": "ready", "rss_bytes": _rss_bytes()})
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    intermediates = set()
    pending = b""
    fds = []
    while True:
        try:
            readable, _, _ = select.select([ctl, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in readable:
            _drain(wake_r)
            _reap(ctl, intermediates)
        if ctl not in readable:
            continue
        data, ancillary, _flags, _addr = ctl.recvmsg(
            65536, socket.CMSG_SPACE(16 * struct.calcsize("i")))
        for level, kind, blob in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(blob) - len(blob) % struct.calcsize("i")
                fds.extend(struct.unpack(f"{usable // 4}i", blob[:usable]))
        if not data:
            os._exit(0)
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            count = int(request.get("fds", 2))
            if request.get("op") != "fork" or len(fds) < count:
                continue
            mine, fds = fds[:count], fds[count:]
            pid = os.fork()
            if pid == 0:
                control = _become_instance(request, mine, (ctl.detach(), wake_r, wake_w))
                _activate(control)
                return control
            intermediates.add(pid)
            for fd in mine:
                os.close(fd)


def _drain(fd):
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _reap(ctl, intermediates):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in intermediates:
            intermediates.discard(pid)
        else:
            _send(ctl, {"op": "exit", "pid": pid, "status": status})


# ----------------------------------------------------------------------------- instance


def _become_instance(request, fds, template_fds):
    """In the intermediate, then in the instance; returns the instance's control fd."""
    control, log = fds[0], fds[1]
    tmp_mount = fds[2] if len(fds) > 2 else -1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in template_fds:  # the template's channel must not reach an instance
            os.close(fd)
        netns = bool(request.get("netns"))
        uid, gid = os.getuid(), os.getgid()
        flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
        _check(_libc.unshare(flags | (CLONE_NEWNET if netns else 0)), "unshare")
        _write_file("/proc/self/setgroups", "deny")
        _write_file("/proc/self/uid_map", f"{uid} {uid} 1")
        _write_file("/proc/self/gid_map", f"{gid} {gid} 1")
        if os.fork():
            os._exit(0)  # the instance is re-parented to the template, which reaps it
        _build_view(request, netns, tmp_mount)
        _drop_privileges(int(request["cap_last"]))
        _load_seccomp(bytes.fromhex(request["seccomp"]))
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.set_inheritable(control, False)
        _show_environ(dict(os.environ))
        os.write(control, HELLO)
        return control
    except BaseException as exc:
        try:
            os.write(control, FAILED + json.dumps(
                {"op": "error", "message": f"{type(exc).__name__}: {exc}"}).encode() + b"\n")
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(127)


def _activate(control):
    """Wait for the host to hand this instance an invocation's environment (at once, or
    later for a spare forked ahead of time), then run the after-restore hooks. A failure
    here is the function's (a hook raised): it ends the bootstrap like an init error."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(control, 65536 - len(line))
        if not chunk or len(line) + len(chunk) >= 65536:
            os._exit(0)  # the host gave up on this instance
        line += chunk
    os.environ.update(json.loads(line).get("env") or {})
    _show_environ(dict(os.environ))
    hooks = _hooks()
    if hooks is not None:
        hooks.run_after_restore()


def _build_view(request, netns, tmp_mount):
    """What differs from the template: a private /tmp (the ext4 image the host mounted,
    detached, for this instance; a tmpfs when the host has no loop devices) and /dev/shm,
    a /proc of this PID namespace (masked like an ordinary instance's), and loopback in a
    new network."""
    if tmp_mount >= 0:
        _check(_libc.syscall(ctypes.c_long(MOVE_MOUNT), ctypes.c_int(tmp_mount), b"",
                             ctypes.c_int(AT_FDCWD), b"/tmp",
                             ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), "move_mount /tmp")
        os.close(tmp_mount)
    else:
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
               f"size={int(request['tmp_mb'])}m,mode=1777")
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
           f"size={int(request['shm_mb'])}m,mode=1777")
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in request.get("proc_masks") or ():
        if os.path.exists(f"/proc/{name}"):
            _mount("/dev/null", f"/proc/{name}", None, MS_BIND)
    if netns:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            import fcntl

            request_lo = struct.pack("16sH22x", b"lo", 0)
            current = struct.unpack("16sH", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS,
                                                        request_lo)[:18])[1]
            fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS,
                        struct.pack("16sH22x", b"lo", current | IFF_UP | IFF_RUNNING))
        finally:
            sock.close()


def _show_environ(env):
    """Make /proc/<pid>/environ show this instance's environment, not the template's (the
    area the kernel shows is the one the process started with: overwrite it in place, as
    nsinit.set_proc_strings does; what does not fit is left out)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[47]), int(fields[48])  # env_start, env_end (proc(5))
    except (OSError, ValueError, IndexError):
        return
    data = b""
    for key, value in env.items():
        entry = os.fsencode(f"{key}={value}") + b"\0"
        if len(data) + len(entry) > end - start:
            break
        data += entry
    if end > start:
        ctypes.memmove(ctypes.c_void_p(start), data + bytes(end - start - len(data)),
                       end - start)


def _drop_privileges(cap_last):
    """Give up every capability the new user namespace granted (no_new_privs is inherited)."""
    for cap in range(cap_last + 1):
        if _libc.prctl(PR_CAPBSET_DROP, _ulong(cap), _ulong(0), _ulong(0), _ulong(0)) != 0:
            pass  # EINVAL: a capability this kernel does not know
    _check(_libc.prctl(PR_CAP_AMBIENT, _ulong(PR_CAP_AMBIENT_CLEAR_ALL), _ulong(0), _ulong(0),
                       _ulong(0)), "ambient")
    _check(_libc.prctl(PR_SET_SECUREBITS, _ulong(SECUREBITS), _ulong(0), _ulong(0),
                       _ulong(0)), "securebits")
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")


def _load_seccomp(program):
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    _check(_libc.prctl(PR_SET_SECCOMP, _ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog),
                       _ulong(0), _ulong(0)), "seccomp")
