"""Tests of the code-package store: validation, zip-slip defences, extraction and collection.

Every archive is a real zip built here with `zipfile`; hostile ones are made either with
`ZipInfo` fields `zipfile` lets us set (modes, symlink types) or by patching the bytes of an
honest archive (NUL names, lying sizes, the encryption flag).
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import io
import os
import stat
import struct
import threading
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from corral.config import Limits
from corral.errors import (
    InvalidParameterValueException,
    LambdaApiError,
    RequestEntityTooLargeException,
    ServiceException,
)
from corral.store.codepkg import MSG_EMPTY, MSG_NOT_A_ZIP, CodeStore

Member = tuple[str | zipfile.ZipInfo, bytes]


def file_info(name: str, mode: int = 0o644) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 2, 3, 4, 6))
    info.create_system = 3
    info.external_attr = (stat.S_IFREG | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def dir_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name.rstrip("/") + "/")
    info.create_system = 3
    info.external_attr = (stat.S_IFDIR | 0o755) << 16 | 0x10
    return info


def special_info(name: str, file_type: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (file_type | 0o777) << 16
    return info


def symlink(name: str, target: str) -> Member:
    return special_info(name, stat.S_IFLNK), target.encode()


def make_zip(members: Sequence[Member]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return buf.getvalue()


def patch_u32(data: bytes, signature: bytes, field_offset: int, value: int) -> bytes:
    """Overwrite a 32-bit field of the first header with `signature` (single-entry zips)."""
    at = data.index(signature) + field_offset
    return data[:at] + struct.pack("<I", value) + data[at + 4 :]


def set_declared_size(data: bytes, size: int) -> bytes:
    """Make a one-entry zip lie about its uncompressed size in both headers."""
    data = patch_u32(data, b"PK\x03\x04", 22, size)  # local file header
    return patch_u32(data, b"PK\x01\x02", 24, size)  # central directory header


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "code"


@pytest.fixture
def store(root: Path) -> CodeStore:
    return CodeStore(root, Limits())


def assert_clean(root: Path) -> None:
    """Nothing at all was left behind: no blob, no tree, no staging file."""
    assert list((root / "blobs").iterdir()) == []
    assert list((root / "trees").iterdir()) == []


def rejected(store: CodeStore, data: bytes) -> LambdaApiError:
    with pytest.raises(LambdaApiError) as caught:
        store.put(data)
    assert_clean(store.root)
    return caught.value


VALID = [
    (file_info("bootstrap", 0o755), b"#!/bin/sh\necho hi\n"),
    (dir_info("lib/"), b""),
    (file_info("lib/python/pkg/__init__.py"), b"X = 1\n"),
    (file_info("lib/python/pkg/data.bin", 0o600), bytes(range(256)) * 40),
    (file_info("bin/tool", 0o700), b"\x7fELF..."),
]


# -- accepted packages ----------------------------------------------------------------------


def test_valid_package_is_extracted_with_normalised_modes(store: CodeStore) -> None:
    """Nested files land in the tree; executables get 0o755, others 0o644, directories 0o755."""
    info = store.put(make_zip(VALID))
    tree = store.tree_path(info.sha256_hex)
    assert (tree / "bootstrap").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (tree / "lib/python/pkg/__init__.py").read_text() == "X = 1\n"
    assert (tree / "lib/python/pkg/data.bin").read_bytes() == bytes(range(256)) * 40
    assert stat.S_IMODE((tree / "bootstrap").stat().st_mode) == 0o755
    assert stat.S_IMODE((tree / "bin/tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((tree / "lib/python/pkg/__init__.py").stat().st_mode) == 0o644
    assert stat.S_IMODE((tree / "lib/python/pkg/data.bin").stat().st_mode) == 0o644
    for directory in (tree, tree / "lib", tree / "lib/python", tree / "lib/python/pkg"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755


def test_code_info_matches_hashlib_and_declared_sizes(store: CodeStore) -> None:
    """CodeInfo carries the sha256 (hex and Lambda's base64 CodeSha256) and both sizes."""
    data = make_zip(VALID)
    info = store.put(data)
    digest = hashlib.sha256(data).digest()
    assert info.sha256_hex == digest.hex()
    assert info.sha256_b64 == base64.b64encode(digest).decode()
    assert info.size == len(data)
    assert info.unzipped_size == sum(len(body) for _, body in VALID)
    assert store.read_zip(info.sha256_hex) == data
    assert store.zip_path(info.sha256_hex) == store.root / "blobs" / f"{digest.hex()}.zip"


def test_reput_is_idempotent_and_reuses_the_tree(store: CodeStore) -> None:
    """Putting identical bytes again returns the same CodeInfo and keeps the existing tree."""
    data = make_zip(VALID)
    first = store.put(data)
    inode = (store.tree_path(first.sha256_hex) / "bootstrap").stat().st_ino
    second = store.put(data)
    assert second == first
    assert (store.tree_path(first.sha256_hex) / "bootstrap").stat().st_ino == inode
    assert [p.name for p in (store.root / "trees").iterdir()] == [first.sha256_hex]
    assert [p.name for p in (store.root / "blobs").iterdir()] == [f"{first.sha256_hex}.zip"]


def test_missing_tree_is_rebuilt_on_reput(store: CodeStore) -> None:
    """A package whose tree vanished is extracted again while its blob is kept."""
    data = make_zip(VALID)
    info = store.put(data)
    tree = store.tree_path(info.sha256_hex)
    for path in sorted(tree.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    tree.rmdir()
    store.put(data)
    assert (tree / "bootstrap").is_file()


def test_file_mtimes_come_from_the_archive(store: CodeStore) -> None:
    """Extracted files carry the entry's timestamp (read as UTC), keeping shipped .pyc valid."""
    info = store.put(make_zip(VALID))
    mtime = (store.tree_path(info.sha256_hex) / "bootstrap").stat().st_mtime
    assert mtime == calendar.timegm((2024, 1, 2, 3, 4, 6, 0, 0, 0))


def test_zip_without_unix_modes_gets_default_permissions(store: CodeStore) -> None:
    """Entries from non-Unix zippers (no mode bits) become readable 0o644 files."""
    info = zipfile.ZipInfo("handler.py")
    info.create_system = 0
    info.external_attr = 0x20  # MS-DOS "archive" attribute only
    code = store.put(make_zip([(info, b"def handler(e, c): pass\n")]))
    path = store.tree_path(code.sha256_hex) / "handler.py"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_inner_symlinks_are_recreated(store: CodeStore) -> None:
    """Symlinks whose targets stay inside the tree are kept as symlinks."""
    data = make_zip(
        [
            (file_info("lib/v1/mod.py"), b"V = 1\n"),
            symlink("lib/current", "v1"),
            symlink("mod.py", "lib/v1/mod.py"),
            symlink("lib/v1/up", "../current"),
            symlink("self", "."),
        ]
    )
    tree = store.tree_path(store.put(data).sha256_hex)
    assert os.readlink(tree / "lib/current") == "v1"
    assert (tree / "lib/current/mod.py").read_text() == "V = 1\n"
    assert (tree / "mod.py").is_symlink()
    assert (tree / "mod.py").read_text() == "V = 1\n"
    assert os.readlink(tree / "lib/v1/up") == "../current"
    assert os.readlink(tree / "self") == "."


def test_normalised_names_are_accepted(store: CodeStore) -> None:
    """Redundant `./`, `//` and inner `..` that stay inside the root are normalised away."""
    data = make_zip(
        [
            (dir_info("./"), b""),
            (file_info("./a//b.txt"), b"b"),
            (file_info("x/../c.txt"), b"c"),
        ]
    )
    tree = store.tree_path(store.put(data).sha256_hex)
    assert (tree / "a/b.txt").read_text() == "b"
    assert (tree / "c.txt").read_text() == "c"
    assert not (tree / "x").exists()


# -- zip slip -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../evil", "a/../../evil", "/etc/evil", "..\\evil", "a\\..\\..\\evil", "C:/evil", "c:evil"],
)
def test_escaping_names_are_rejected(store: CodeStore, name: str) -> None:
    """Parent traversal, absolute paths and drive letters are refused, naming the entry."""
    error = rejected(store, make_zip([(file_info("ok.txt"), b"ok"), (file_info(name), b"x")]))
    assert isinstance(error, InvalidParameterValueException)
    assert repr(name) in error.message
    assert error.message.startswith("Could not unzip uploaded file.")


def test_literal_backslash_escape_is_rejected(store: CodeStore) -> None:
    """A name that escapes only when `/` alone separates (`a\\b/../..`) is refused too."""
    error = rejected(store, make_zip([(file_info("a\\b/../../evil"), b"x")]))
    assert isinstance(error, InvalidParameterValueException)


def test_nul_byte_in_name_is_rejected(store: CodeStore) -> None:
    """A NUL byte in a stored name (patched in; zipfile cannot write one) is refused."""
    data = make_zip([(file_info("evilX.txt"), b"x")]).replace(b"evilX.txt", b"evil\x00.txt")
    error = rejected(store, data)
    assert "NUL" in error.message


@pytest.mark.parametrize("target", ["/etc/passwd", "C:/Windows", "\\etc\\passwd"])
def test_symlink_to_absolute_path_is_rejected(store: CodeStore, target: str) -> None:
    """Symlinks with absolute targets are refused."""
    error = rejected(store, make_zip([symlink("passwd", target)]))
    assert isinstance(error, InvalidParameterValueException)
    assert "'passwd'" in error.message


@pytest.mark.parametrize(("name", "target"), [("a", "../../x"), ("sub/a", "../../x")])
def test_symlink_escaping_the_tree_is_rejected(store: CodeStore, name: str, target: str) -> None:
    """Relative symlinks that climb out of the tree are refused."""
    error = rejected(store, make_zip([symlink(name, target)]))
    assert "outside the package" in error.message


def test_symlink_escaping_through_another_symlink_is_rejected(store: CodeStore) -> None:
    """`s -> .` plus `l -> s/..` looks inside lexically but resolves above the tree."""
    error = rejected(store, make_zip([symlink("s", "."), symlink("l", "s/..")]))
    assert "'l'" in error.message
    assert "resolving outside" in error.message


def test_entry_below_a_symlink_is_rejected(store: CodeStore) -> None:
    """Nothing may be written through a symlink, even one pointing inside the tree."""
    data = make_zip([(dir_info("real/"), b""), symlink("link", "real"), (file_info("link/f"), b"")])
    error = rejected(store, data)
    assert "'link/f'" in error.message


def test_entry_below_a_file_is_rejected(store: CodeStore) -> None:
    """A path used both as a file and as a directory is refused."""
    error = rejected(store, make_zip([(file_info("a"), b"1"), (file_info("a/b"), b"2")]))
    assert "not a directory" in error.message


@pytest.mark.parametrize(
    ("file_type", "words"),
    [(stat.S_IFCHR, "device"), (stat.S_IFBLK, "device"), (stat.S_IFIFO, "FIFO")],
)
def test_special_files_are_rejected(store: CodeStore, file_type: int, words: str) -> None:
    """Device and FIFO entries are refused."""
    error = rejected(store, make_zip([(special_info("dev", file_type), b"")]))
    assert words in error.message


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("second", ["a/b.txt", "a/./b.txt", "a//b.txt"])
def test_duplicate_paths_are_rejected(store: CodeStore, second: str) -> None:
    """Two entries normalising to the same path are refused."""
    error = rejected(store, make_zip([(file_info("a/b.txt"), b"1"), (file_info(second), b"2")]))
    assert "duplicates" in error.message


def test_too_many_entries_are_rejected(root: Path) -> None:
    """An archive with more entries than allowed is refused before extraction."""
    store = CodeStore(root, Limits(), max_entries=10)
    error = rejected(store, make_zip([(file_info(f"f{i}"), b"") for i in range(11)]))
    assert "11 entries" in error.message
    store.put(make_zip([(file_info(f"f{i}"), b"") for i in range(10)]))


def test_encrypted_entries_are_rejected(store: CodeStore) -> None:
    """Entries flagged as encrypted are refused."""
    data = make_zip([(file_info("secret.txt"), b"x")])
    at = data.index(b"PK\x01\x02") + 8  # general-purpose flags of the central directory
    data = data[:at] + struct.pack("<H", 0x1) + data[at + 2 :]
    error = rejected(store, data)
    assert "encrypted" in error.message


# -- not a zip, empty, sizes ----------------------------------------------------------------


@pytest.mark.parametrize("data", [b"definitely not a zip", b"PK\x03\x04" + b"\x00" * 40])
def test_not_a_zip_is_rejected(store: CodeStore, data: bytes) -> None:
    """Bytes that are not a zip get Lambda's "Could not unzip" message."""
    error = rejected(store, data)
    assert isinstance(error, InvalidParameterValueException)
    assert error.message == MSG_NOT_A_ZIP


def test_corrupted_member_is_rejected(store: CodeStore) -> None:
    """A member whose compressed bytes are damaged fails its CRC and is refused."""
    data = make_zip([(file_info("a.txt"), b"hello world " * 100)])
    at = data.index(b"PK\x03\x04") + 30 + len("a.txt") + 3
    data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
    error = rejected(store, data)
    assert "'a.txt'" in error.message


def test_empty_bytes_are_rejected(store: CodeStore) -> None:
    """An empty upload gets Lambda's "non-empty zip" message."""
    error = rejected(store, b"")
    assert isinstance(error, InvalidParameterValueException)
    assert error.message == MSG_EMPTY


def test_archive_without_entries_is_rejected(store: CodeStore) -> None:
    """A well-formed zip with no entries is not a package either."""
    error = rejected(store, make_zip([]))
    assert error.message == MSG_EMPTY


def test_zipped_size_over_limit_is_too_large(root: Path) -> None:
    """A decoded zip over the zipped limit is a 413 with Lambda's "Zipped size" message."""
    data = make_zip([(file_info("big.bin"), os.urandom(4096))])
    store = CodeStore(root, Limits(zipped_max_bytes=len(data) - 1))
    error = rejected(store, data)
    assert isinstance(error, RequestEntityTooLargeException)
    assert error.status == 413
    assert error.message == f"Zipped size must be smaller than {len(data) - 1} bytes"
    CodeStore(root, Limits(zipped_max_bytes=len(data))).put(data)


def test_unzipped_size_over_limit_is_rejected(root: Path) -> None:
    """Declared sizes reaching the unzipped limit are refused before anything is written."""
    data = make_zip([(file_info("a"), b"a" * 600), (file_info("b"), b"b" * 400)])
    error = rejected(CodeStore(root, Limits(unzipped_max_bytes=1000)), data)
    assert isinstance(error, InvalidParameterValueException)
    assert error.message == "Unzipped size must be smaller than 1000 bytes"
    assert CodeStore(root, Limits(unzipped_max_bytes=1001)).put(data).unzipped_size == 1000


def test_zip_bomb_lying_about_its_size_is_stopped(root: Path) -> None:
    """A member declaring 1 KB that inflates to 1 MB passes the declared check but not extraction.

    zipfile stops reading at the declared size and the CRC then fails; the store's own
    byte budget stands behind that in case a reader ever returns more than declared.
    """
    honest = make_zip([(file_info("bomb.bin"), b"\0" * 1_000_000)])
    bomb = set_declared_size(honest, 1000)
    assert zipfile.ZipFile(io.BytesIO(bomb)).infolist()[0].file_size == 1000
    store = CodeStore(root, Limits(unzipped_max_bytes=100_000))
    error = rejected(store, bomb)
    assert isinstance(error, InvalidParameterValueException)
    assert "'bomb.bin'" in error.message


def test_member_shorter_than_declared_is_rejected(store: CodeStore) -> None:
    """A member producing fewer bytes than declared (CRC still valid) is refused."""
    data = set_declared_size(make_zip([(file_info("short.txt"), b"x" * 100)]), 300)
    error = rejected(store, data)
    assert "declared size" in error.message


# -- concurrency, removal, garbage collection -----------------------------------------------


def test_concurrent_puts_of_one_package_agree(store: CodeStore) -> None:
    """Threads putting the same bytes all succeed and leave exactly one blob and one tree."""
    data = make_zip([*VALID, *((file_info(f"m/{i}.py"), b"#" * i) for i in range(200))])
    barrier = threading.Barrier(6)
    results: list[object] = []

    def worker() -> None:
        barrier.wait()
        try:
            results.append(store.put(data))
        except BaseException as exc:  # surfaced by the assertion below
            results.append(exc)

    # Daemon threads and a bounded join: a deadlock fails the test instead of hanging the run.
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "put() deadlocked"
    assert len(results) == 6
    assert all(result == results[0] for result in results), results
    sha = hashlib.sha256(data).hexdigest()
    assert [p.name for p in (store.root / "trees").iterdir()] == [sha]
    assert [p.name for p in (store.root / "blobs").iterdir()] == [f"{sha}.zip"]
    assert (store.tree_path(sha) / "m/199.py").read_bytes() == b"#" * 199


def test_remove_deletes_blob_and_tree(store: CodeStore) -> None:
    """remove() takes away both the blob and the tree and leaves nothing behind."""
    info = store.put(make_zip(VALID))
    store.remove(info.sha256_hex)
    assert_clean(store.root)
    store.remove(info.sha256_hex)  # removing again is harmless
    with pytest.raises(ServiceException):
        store.read_zip(info.sha256_hex)


def test_collect_garbage_keeps_only_referenced(store: CodeStore) -> None:
    """Unreferenced packages and stale staging leftovers go; referenced ones stay."""
    keep = store.put(make_zip([(file_info("keep.py"), b"k")]))
    drop = store.put(make_zip([(file_info("drop.py"), b"d")]))
    orphan_tree = store.put(make_zip([(file_info("orphan.py"), b"o")]))
    store.zip_path(orphan_tree.sha256_hex).unlink()
    (store.root / "trees" / ".tmp-crashed").mkdir()
    (store.root / "blobs" / ".tmp-crashed.zip").write_bytes(b"partial")
    (store.root / "blobs" / "README").write_text("not ours to delete")

    assert store.collect_garbage({keep.sha256_hex}) == 2
    assert sorted(p.name for p in (store.root / "trees").iterdir()) == [keep.sha256_hex]
    assert sorted(p.name for p in (store.root / "blobs").iterdir()) == sorted(
        ["README", f"{keep.sha256_hex}.zip"]
    )
    assert store.read_zip(keep.sha256_hex) == store.zip_path(keep.sha256_hex).read_bytes()
    assert drop.sha256_hex not in {p.name for p in (store.root / "trees").iterdir()}
    assert store.collect_garbage({keep.sha256_hex}) == 0


def test_collect_garbage_spares_recent_puts(store: CodeStore) -> None:
    """With min_age_s, a package just put (not yet referenced by its caller) survives."""
    fresh = store.put(make_zip([(file_info("fresh.py"), b"f")]))
    assert store.collect_garbage(set(), min_age_s=60) == 0
    assert store.tree_path(fresh.sha256_hex).is_dir()
    old = time.time() - 120
    os.utime(store.zip_path(fresh.sha256_hex), (old, old))
    assert store.collect_garbage(set(), min_age_s=60) == 1
    assert_clean(store.root)


def test_malformed_digest_is_refused(store: CodeStore) -> None:
    """Path helpers only accept lowercase sha256 hex, so no caller can name ../ paths."""
    for bad in ("../../etc", "A" * 64, "abc"):
        with pytest.raises(ValueError):
            store.tree_path(bad)
        with pytest.raises(ValueError):
            store.remove(bad)
