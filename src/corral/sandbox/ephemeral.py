"""Ephemeral storage: a private `/tmp` capped at the function's EphemeralStorage size.

Each instance gets its own ext4 filesystem in a sparse image file attached to a loop device.
Writing past the cap fails with ENOSPC, and the data lives on disk: a tmpfs would be charged
to the instance's memory cgroup, so a full `/tmp` would end in an OOM kill instead.

* The host prepares images off the request path: sparse file, loop device (`LOOP_CONFIGURE`
  with direct I/O, so the backing file is not cached twice, and autoclear, so a crashed
  server leaves no attached device behind), `mkfs.ext4` without journal or reserved blocks,
  root directory owned by the sandbox user. The image is a little larger than the cap so that
  `df` shows at least the promised size available (ext4 metadata takes ~13 MB at 512 MB).
* The sandbox's init mounts the device on `/tmp` inside its own mount namespace (about 1 ms).
  No host-visible mount exists; the mount dies with the namespace, i.e. with the instance.
* `mkfs.ext4` runs once per size, into a *golden* image; every image after that is a sparse
  copy of the golden one's data extents (≈1.5 ms instead of ≈11 ms for mkfs, which a burst
  of cold starts paid per instance once the pool ran dry).
* On release the image is detached and deleted (a loop device still mounted by a dying
  namespace clears itself when the mount goes) and a fresh copy takes its place in the pool.

Without loop devices (or `mkfs.ext4`) the pool says so and the sandbox falls back to a
size-limited tmpfs, which enforces the cap but counts against the memory limit.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LOOP_CLR_FD = 0x4C01
EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_NOLOGFLUSH = 2
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16
_LOOP_INFO64 = "QQQQQIIII64s64s32sQQ"
_LOOP_CONFIG = struct.Struct("=II" + _LOOP_INFO64 + "8Q")

_SBIN_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"


def image_size_bytes(size_mb: int) -> int:
    """Image size such that at least `size_mb` MiB are available in the filesystem.

    ext4 keeps min(2 %, 16 MiB) for delayed-allocation metadata, and with one 256-byte inode
    per 64 KiB the inode tables take 1/256 of the size; bitmaps and descriptors take <2 MiB.
    """
    reserve = min(-(-size_mb * 21 // 1000), 16)
    inodes = -(-size_mb // 256)
    return (size_mb + reserve + inodes + 4) * 1024 * 1024


def mkfs_path() -> str | None:
    return shutil.which("mkfs.ext4", path=_SBIN_PATH)


def loop_available() -> bool:
    """Loop devices and mkfs.ext4 are present (root is still needed to use them)."""
    return os.path.exists("/dev/loop-control") and mkfs_path() is not None


def shutdown_fs(fd: int) -> None:
    """Shut down the ext4 filesystem `fd` is on, dropping its dirty data: the instance is
    gone and the image is about to be wiped, so writing /tmp back to disk would be waste."""
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))


_FSOPEN, _FSCONFIG, _FSMOUNT = 430, 431, 432  # the same numbers on x86_64 and aarch64
_FSOPEN_CLOEXEC = _FSMOUNT_CLOEXEC = 1
_FSCONFIG_SET_STRING, _FSCONFIG_CMD_CREATE = 1, 6
_MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV = 0x2, 0x4


def detached_mount(device: str) -> int:
    """Mount the ext4 filesystem on `device` without attaching it anywhere (new mount API);
    returns the mount fd. A process may `move_mount` it onto a directory of a mount
    namespace it administers: how an instance forked from a template, in a user namespace
    that cannot mount ext4 itself, gets its disk-backed /tmp."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long

    def call(nr: int, *args: object) -> int:
        result = int(libc.syscall(ctypes.c_long(nr), *args))
        if result < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{os.strerror(err)} (mounting {device})")
        return result

    fs = call(_FSOPEN, b"ext4", ctypes.c_uint(_FSOPEN_CLOEXEC))
    try:
        call(_FSCONFIG, ctypes.c_int(fs), ctypes.c_uint(_FSCONFIG_SET_STRING), b"source",
             os.fsencode(device), ctypes.c_int(0))
        call(_FSCONFIG, ctypes.c_int(fs), ctypes.c_uint(_FSCONFIG_CMD_CREATE), None, None,
             ctypes.c_int(0))
        return call(_FSMOUNT, ctypes.c_int(fs), ctypes.c_uint(_FSMOUNT_CLOEXEC),
                    ctypes.c_uint(_MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV))
    finally:
        os.close(fs)


class Image:
    """One ext4 image file attached to a loop device; the host holds the device open."""

    def __init__(self, path: Path, size_mb: int, device: str, fd: int) -> None:
        self.path = path
        self.size_mb = size_mb
        self.device = device
        self._fd = fd

    def detach(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.ioctl(self._fd, LOOP_CLR_FD)
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __repr__(self) -> str:
        return f"Image({self.device}, {self.size_mb} MB)"


def attach(path: Path) -> tuple[str, int]:
    """Attach `path` to a free loop device (autoclear, direct I/O); returns (device, fd)."""
    backing = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(64):
                index = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                device = f"/dev/loop{index}"
                try:
                    fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
                except FileNotFoundError:
                    time.sleep(0.001)  # udev-less hosts: the node appears a moment later
                    continue
                config = _LOOP_CONFIG.pack(
                    backing, 4096,  # fd, logical block size (matches ext4 and direct I/O)
                    0, 0, 0, 0, 0, 0, 0, 0, LO_FLAGS_AUTOCLEAR,
                    path.name.encode()[:63], b"", b"", 0, 0, *([0] * 8))
                try:
                    fcntl.ioctl(fd, LOOP_CONFIGURE, config)
                except OSError as exc:
                    os.close(fd)
                    if exc.errno == 16:  # EBUSY: somebody else took it; ask again
                        continue
                    raise
                return device, fd
            raise OSError(16, "no free loop device")
        finally:
            os.close(control)
    finally:
        os.close(backing)


def copy_sparse(source: Path, target: Path) -> None:
    """Copy `source` into a new file `target`, its data extents only (holes stay holes)."""
    with open(source, "rb") as src, open(target, "xb") as dst:
        size = os.fstat(src.fileno()).st_size
        dst.truncate(size)
        offset = 0
        while offset < size:
            try:
                start = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after offset
                break
            end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            position = start
            while position < end:
                copied = os.copy_file_range(src.fileno(), dst.fileno(), end - position,
                                             position, position)
                if copied <= 0:
                    raise OSError(f"short copy of {source} at {position}")
                position += copied
            offset = end


class EphemeralPool:
    """Formatted, attached images by size, ready to be mounted by a sandbox on /tmp."""

    def __init__(self, directory: Path, uid: int, gid: int, max_idle_per_size: int = 4) -> None:
        self.directory = directory
        self.uid = uid
        self.gid = gid
        self._max_idle = max_idle_per_size
        self._idle: dict[int, list[Image]] = {}
        self._all: set[Image] = set()
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._goldens: dict[int, Path] = {}  # size -> a formatted image to copy
        self._closed = False
        self._mkfs = mkfs_path()
        self.available = loop_available() and self._probe()

    def _probe(self) -> bool:
        """Create one image to see whether loop devices work here; keep it for size 512."""
        try:
            image = self.create(512)
        except (OSError, subprocess.SubprocessError):
            return False
        self.put(image)
        return True

    def _format(self, device: str, discard: bool) -> None:
        assert self._mkfs is not None
        subprocess.run(
            [self._mkfs, "-q", "-F", "-m", "0", "-i", "65536", "-L", "corral-tmp",
             "-O", "^has_journal,^resize_inode",
             "-E", f"root_owner={self.uid}:{self.gid},{'discard' if discard else 'nodiscard'}",
             device],
            check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env={"PATH": _SBIN_PATH}, timeout=60)

    def create(self, size_mb: int) -> Image:
        """A new formatted image (blocking, ≈2 ms): a sparse copy of the size's golden
        image, formatted once with mkfs (≈11 ms, which bursts of cold starts paid per
        instance when the pool ran dry)."""
        golden = self._golden(size_mb)
        path = self.directory / f"tmp-{next(self._seq)}-{size_mb}m.ext4"
        copy_sparse(golden, path)
        try:
            device, fd = attach(path)
        except BaseException:
            path.unlink()
            raise
        image = Image(path, size_mb, device, fd)
        with self._lock:
            self._all.add(image)
        return image

    def _golden(self, size_mb: int) -> Path:
        with self._lock:
            found = self._goldens.get(size_mb)
        if found is not None:
            return found
        path = self.directory / f"golden-{next(self._seq)}-{size_mb}m.ext4"
        with open(path, "xb") as f:
            f.truncate(image_size_bytes(size_mb))
        try:
            device, fd = attach(path)
            try:
                self._format(device, discard=False)
            finally:
                with contextlib.suppress(OSError):
                    fcntl.ioctl(fd, LOOP_CLR_FD)
                os.close(fd)
        except BaseException:
            path.unlink()
            raise
        with self._lock:
            return self._goldens.setdefault(size_mb, path)

    def take(self, size_mb: int) -> Image | None:
        """An idle image of that size, or None (non-blocking)."""
        with self._lock:
            idle = self._idle.get(size_mb)
            return idle.pop() if idle else None

    def put(self, image: Image) -> None:
        """Keep a clean image for reuse (or drop it when the pool is full or closed)."""
        with self._lock:
            idle = self._idle.setdefault(image.size_mb, [])
            if not self._closed and len(idle) < self._max_idle:
                idle.append(image)
                return
        self.discard(image)

    def recycle(self, image: Image, tmp_fd: int = -1) -> None:
        """Drop a used image and pool a fresh one of its size in its place (blocking, ≈2 ms).
        `tmp_fd`, an fd on its (shut down) filesystem, is closed first. The used image is
        detached and deleted at once: a loop device still mounted by a dying namespace
        clears itself (autoclear) when that mount goes, so nothing waits for it."""
        if tmp_fd >= 0:
            os.close(tmp_fd)
        self.discard(image)
        with self._lock:
            full = self._closed or len(self._idle.get(image.size_mb, [])) >= self._max_idle
        if not full:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.put(self.create(image.size_mb))

    def discard(self, image: Image) -> None:
        with self._lock:
            self._all.discard(image)
        image.detach()

    def idle_count(self, size_mb: int) -> int:
        with self._lock:
            return len(self._idle.get(size_mb, []))

    def devices(self) -> list[str]:
        with self._lock:
            return sorted(image.device for image in self._all)

    def close(self) -> None:
        """Detach every loop device and delete every image file."""
        with self._lock:
            self._closed = True
            images = list(self._all)
            self._all.clear()
            self._idle.clear()
            goldens = list(self._goldens.values())
            self._goldens.clear()
        for image in images:
            image.detach()
        for golden in goldens:
            with contextlib.suppress(FileNotFoundError):
                golden.unlink()
