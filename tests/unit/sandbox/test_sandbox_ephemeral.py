"""Ephemeral-storage images: sizing, the pool's lifecycle on real loop devices, and that a
mounted image fills up with ENOSPC at the promised size."""

from __future__ import annotations

import ctypes
import errno
import glob
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.sandbox import ephemeral

needs_loop = pytest.mark.skipif(os.geteuid() != 0 or not ephemeral.loop_available(),
                                reason="needs root, loop devices and mkfs.ext4")


def _backing_files() -> set[str]:
    found = set()
    for path in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:  # loop devices detach asynchronously: the file may vanish while we look
            found.add(Path(path).read_text().strip())
        except OSError:
            pass
    return found


def test_image_size_leaves_room_for_metadata() -> None:
    """Images are a little larger than the cap (ext4 metadata), never smaller."""
    for size in (64, 512, 10240):
        assert size + 4 < image_mb(size) < size * 1.03 + 8
    assert image_mb(10240) == 10240 + 16 + 40 + 4


def image_mb(size: int) -> float:
    return ephemeral.image_size_bytes(size) / (1 << 20)


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[ephemeral.EphemeralPool]:
    made = ephemeral.EphemeralPool(tmp_path, uid=10001, gid=10001)
    if not made.available:
        made.close()
        pytest.skip("loop devices do not work here")
    yield made
    made.close()


@needs_loop
def test_pool_lifecycle(pool: ephemeral.EphemeralPool, tmp_path: Path) -> None:
    """The probe leaves one 512 MB image; take/recycle/put keep it; close() detaches all."""
    assert pool.idle_count(512) == 1
    image = pool.take(512)
    assert image is not None and image.device.startswith("/dev/loop")
    assert pool.take(512) is None
    pool.recycle(image)
    assert pool.idle_count(512) == 1
    other = pool.create(100)
    assert str(other.path) in _backing_files()
    pool.put(other)
    assert pool.idle_count(100) == 1
    paths = {str(image.path), str(other.path)}
    pool.close()
    assert not paths & _backing_files()
    assert list(tmp_path.iterdir()) == []


@needs_loop
def test_mounted_image_is_capped(pool: ephemeral.EphemeralPool, tmp_path: Path) -> None:
    """A mounted 32 MB image is owned by the sandbox user, empty but for lost+found, has at
    least 32 MB free, and writing past it fails with ENOSPC."""
    image = pool.create(32)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mount(image.device.encode(), str(mnt).encode(), b"ext4", 6, None) == 0, \
        os.strerror(ctypes.get_errno())
    try:
        st = mnt.stat()
        assert (st.st_uid, st.st_gid) == (10001, 10001)
        assert os.listdir(mnt) == ["lost+found"]
        fs = os.statvfs(mnt)
        assert fs.f_bavail * fs.f_frsize >= 32 << 20
        written = 0
        with pytest.raises(OSError) as info, open(mnt / "fill", "wb") as f:
            while True:
                f.write(b"x" * (1 << 20))
                f.flush()
                written += 1
        assert info.value.errno == errno.ENOSPC
        assert 32 <= written <= 40
        fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
        ephemeral.shutdown_fs(fd)  # dirty data is dropped rather than written back
        os.close(fd)
    finally:
        assert libc.umount2(str(mnt).encode(), 0) == 0
    pool.recycle(image)  # re-format after the shutdown works
    assert pool.idle_count(32) == 1
