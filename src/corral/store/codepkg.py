"""The code-package store: validates uploaded zips and keeps them content-addressed.

Layout under `root` (the data dir's `code/`):

    blobs/<sha256hex>.zip     the uploaded bytes, exactly as received (GetFunction serves them)
    trees/<sha256hex>/        the extracted package; never modified once it exists
    blobs/.tmp-*, trees/.tmp-*  staging; renamed into place only when complete

`put()` validates the archive entirely from its central directory *before* writing anything,
then extracts into a private staging directory and renames it into place, so a tree or blob
under its final name is always complete. Any failure removes the staging files.

Validation, with the error Lambda returns (sources: error text reported verbatim in public
issue trackers, and LocalStack's AWS-parity snapshots):

* empty upload, or a zip with no entries: `InvalidParameterValueException`
  "Uploaded file must be a non-empty zip"
* decoded zip larger than `limits.zipped_max_bytes`: `RequestEntityTooLargeException`
  "Zipped size must be smaller than 52428800 bytes". Since late 2023 Lambda checks the decoded
  `ZipFile` size before the raw request size ("Request must be smaller than ... bytes for the
  CreateFunction operation", which the API layer owns).
* not a zip / undecodable / CRC mismatch: `InvalidParameterValueException`
  "Could not unzip uploaded file. Please check your file, then try to upload again."
* sum of the entries' sizes >= `limits.unzipped_max_bytes`: `InvalidParameterValueException`
  "Unzipped size must be smaller than 262144000 bytes"
* unsafe entries (Corral's own rule; Lambda has no published message): the "Could not unzip"
  text with the offending entry named in the middle.

Unsafe entries: absolute paths, drive letters, `..` escaping the root after normalisation
(checked both with `/` alone and with `\\` also treated as a separator), NUL bytes, names too
long for the filesystem, devices/FIFOs/sockets, encrypted entries, two entries normalising to
the same path, an entry below a file or symlink, symlinks whose target is absolute or resolves
outside the tree (checked lexically first, then with `realpath` on the staged tree), and more
than `max_entries` entries. The unzipped size is checked from the declared sizes first and
again while streaming, and each entry must produce exactly its declared size.

Extracted files get mode 0o755 when any execute bit is set in the entry's Unix mode (the high
16 bits of `external_attr`) and 0o644 otherwise; directories get 0o755; setuid/setgid/sticky
bits are dropped. Symlinks inside the tree are recreated as symlinks. Entry names are kept
literally (a Windows-made `dir\\file` stays one file name, as on Lambda).

Concurrency: safe for threads of one process. Staging happens outside the store lock; the
final rename, blob commit, `remove()` and `collect_garbage()` run under it. Across processes
the renames stay atomic, but `collect_garbage()` may remove another process's staging files.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import io
import os
import posixpath
import re
import shutil
import stat
import struct
import tempfile
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from corral.config import Limits
from corral.errors import (
    InvalidParameterValueException,
    LambdaApiError,
    RequestEntityTooLargeException,
    ServiceException,
)
from corral.model import CodeInfo

MAX_ENTRIES = 100_000
NAME_MAX = 255  # bytes in one path component
PATH_MAX = 4095  # bytes in a relative path or symlink target

MSG_NOT_A_ZIP = "Could not unzip uploaded file. Please check your file, then try to upload again."
MSG_EMPTY = "Uploaded file must be a non-empty zip"

_CHUNK = 1 << 16
_TMP_PREFIX = ".tmp-"
_HEX_RE = re.compile(r"[0-9a-f]{64}")
_DRIVE_RE = re.compile(r"[A-Za-z]:")
_EOCD_SIG = b"PK\x05\x06"
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"
_ZIP64_EOCD_SIG = b"PK\x06\x06"
_EOCD_MAX_SEARCH = 22 + 0xFFFF  # fixed record plus the longest archive comment


class _Kind(Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


@dataclass(frozen=True)
class _Entry:
    """One validated archive member and where it goes in the tree."""

    info: zipfile.ZipInfo
    raw: str  # the name as stored in the archive, for messages
    path: str  # normalised, relative, "/"-separated; never empty
    kind: _Kind
    mode: int
    target: str | None = None  # symlinks only


@dataclass(frozen=True)
class _Plan:
    entries: tuple[_Entry, ...]
    unzipped_size: int


def _unzip_error(raw: str | None = None, reason: str = "") -> LambdaApiError:
    """Lambda's "Could not unzip" error, naming the offending entry when there is one."""
    if raw is None:
        return InvalidParameterValueException(MSG_NOT_A_ZIP)
    return InvalidParameterValueException(
        f"Could not unzip uploaded file. The entry {raw!r} {reason}. "
        "Please check your file, then try to upload again."
    )


def _unzipped_too_large(limit: int) -> LambdaApiError:
    return InvalidParameterValueException(f"Unzipped size must be smaller than {limit} bytes")


def _escapes(path: str) -> bool:
    """True if a relative "/"-separated path leaves its root once normalised."""
    norm = posixpath.normpath(path)
    return norm == ".." or norm.startswith("../")


def _normalise_name(raw: str) -> str:
    """The entry's relative path inside the tree ("" for the root itself), or raise."""
    if not raw:
        raise _unzip_error(raw, "has an empty name")
    if "\x00" in raw:
        raise _unzip_error(raw, "contains a NUL byte")
    unified = raw.replace("\\", "/")
    if unified.startswith("/"):
        raise _unzip_error(raw, "is an absolute path")
    if _DRIVE_RE.match(unified):
        raise _unzip_error(raw, "starts with a drive letter")
    if _escapes(unified) or _escapes(raw):
        raise _unzip_error(raw, "points outside the package ('..' components)")
    norm = posixpath.normpath(raw)
    if norm == ".":
        return ""
    encoded = os.fsencode(norm)
    if len(encoded) > PATH_MAX or any(len(part) > NAME_MAX for part in encoded.split(b"/")):
        raise _unzip_error(raw, "has a name too long for the filesystem")
    return norm


def _check_symlink_target(raw: str, path: str, target: str) -> None:
    """Reject symlink targets that are absolute or leave the tree lexically."""
    if not target:
        raise _unzip_error(raw, "is a symlink with an empty target")
    if "\x00" in target:
        raise _unzip_error(raw, "is a symlink whose target contains a NUL byte")
    unified = target.replace("\\", "/")
    if unified.startswith("/") or _DRIVE_RE.match(unified):
        raise _unzip_error(raw, f"is a symlink to an absolute path ({target!r})")
    base = posixpath.dirname(path)
    if _escapes(posixpath.join(base, unified)) or _escapes(posixpath.join(base, target)):
        raise _unzip_error(raw, f"is a symlink pointing outside the package ({target!r})")


def _classify(info: zipfile.ZipInfo, raw: str) -> tuple[_Kind, int]:
    """The entry's kind and the mode its extracted form gets."""
    unix_mode = info.external_attr >> 16
    fmt = stat.S_IFMT(unix_mode)
    if fmt == stat.S_IFLNK:
        if raw.endswith("/"):
            raise _unzip_error(raw, "is a symlink with a directory name")
        return _Kind.SYMLINK, 0o777
    if fmt == stat.S_IFDIR or raw.endswith("/"):
        return _Kind.DIR, 0o755
    if fmt in (0, stat.S_IFREG):
        return _Kind.FILE, 0o755 if unix_mode & 0o111 else 0o644
    if fmt in (stat.S_IFCHR, stat.S_IFBLK):
        raise _unzip_error(raw, "is a device file")
    if fmt == stat.S_IFIFO:
        raise _unzip_error(raw, "is a FIFO")
    if fmt == stat.S_IFSOCK:
        raise _unzip_error(raw, "is a socket")
    raise _unzip_error(raw, f"has an unknown file type ({fmt:#o})")


def _read_symlink_target(zf: zipfile.ZipFile, info: zipfile.ZipInfo, raw: str) -> str:
    if not 0 < info.file_size <= PATH_MAX:
        raise _unzip_error(raw, "is a symlink with an invalid target length")
    try:
        with zf.open(info) as src:
            data = src.read(PATH_MAX + 1)
    except Exception as exc:  # any decoder failure means a corrupt archive
        raise _unzip_error(raw, "could not be decompressed") from exc
    if len(data) != info.file_size:
        raise _unzip_error(raw, "does not match its declared size")
    return data.decode("utf-8", "surrogateescape")


def _declared_entry_count(data: bytes) -> int | None:
    """The entry count from the end-of-central-directory record, read without parsing it all.

    Lets an archive claiming millions of entries be refused before `zipfile` builds millions
    of `ZipInfo` objects. Returns None when the record cannot be found (zipfile decides then).
    """
    idx = data.rfind(_EOCD_SIG, max(0, len(data) - _EOCD_MAX_SEARCH))
    if idx < 0 or idx + 22 > len(data):
        return None
    (total,) = struct.unpack_from("<H", data, idx + 10)
    if total != 0xFFFF:
        return int(total)
    locator = idx - 20
    if locator < 0 or data[locator : locator + 4] != _ZIP64_LOCATOR_SIG:
        return int(total)
    (offset,) = struct.unpack_from("<Q", data, locator + 8)
    if offset + 56 > len(data) or data[offset : offset + 4] != _ZIP64_EOCD_SIG:
        return None
    (total64,) = struct.unpack_from("<Q", data, offset + 32)
    return int(total64)


def _plan(zf: zipfile.ZipFile, limits: Limits, max_entries: int) -> _Plan:
    """Validate every entry from the central directory; nothing is written."""
    infos = zf.infolist()
    if not infos:
        raise InvalidParameterValueException(MSG_EMPTY)
    if len(infos) > max_entries:
        raise _too_many_entries(len(infos), max_entries)
    entries: list[_Entry] = []
    by_path: dict[str, _Entry] = {}
    declared = 0
    for info in infos:
        raw = info.orig_filename
        path = _normalise_name(raw)
        if info.flag_bits & 0x1:
            raise _unzip_error(raw, "is encrypted")
        kind, mode = _classify(info, raw)
        if not path:
            if kind is _Kind.DIR:
                continue  # "./" names the root itself
            raise _unzip_error(raw, "does not name a file")
        if path in by_path:
            raise _unzip_error(raw, f"duplicates the entry {by_path[path].raw!r}")
        target = None
        if kind is _Kind.SYMLINK:
            target = _read_symlink_target(zf, info, raw)
            _check_symlink_target(raw, path, target)
        if kind is not _Kind.DIR:
            declared += info.file_size
        entry = _Entry(info=info, raw=raw, path=path, kind=kind, mode=mode, target=target)
        by_path[path] = entry
        entries.append(entry)
    if declared >= limits.unzipped_max_bytes:
        raise _unzipped_too_large(limits.unzipped_max_bytes)
    for entry in entries:
        parent = posixpath.dirname(entry.path)
        while parent:
            holder = by_path.get(parent)
            if holder is not None and holder.kind is not _Kind.DIR:
                raise _unzip_error(
                    entry.raw, f"lies below {holder.raw!r}, which is not a directory"
                )
            parent = posixpath.dirname(parent)
    return _Plan(entries=tuple(entries), unzipped_size=declared)


def _too_many_entries(count: int, max_entries: int) -> LambdaApiError:
    return InvalidParameterValueException(
        f"Could not unzip uploaded file. The archive has {count} entries; at most "
        f"{max_entries} are allowed. Please check your file, then try to upload again."
    )


def _zip_mtime(info: zipfile.ZipInfo) -> float | None:
    """The entry's timestamp, read as UTC (zip stores no zone); None when invalid."""
    try:
        return float(calendar.timegm((*info.date_time, 0, 0, 0)))
    except (ValueError, OverflowError):
        return None


class _Budget:
    """Counts bytes actually decompressed, failing once they reach the unzipped limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def consume(self, n: int) -> None:
        self.used += n
        if self.used >= self.limit:
            raise _unzipped_too_large(self.limit)


class CodeStore:
    """Content-addressed storage of validated code packages (see the module docstring)."""

    def __init__(self, root: Path, limits: Limits, *, max_entries: int = MAX_ENTRIES) -> None:
        self.root = Path(root)
        self.limits = limits
        self.max_entries = max_entries
        self._blobs = self.root / "blobs"
        self._trees = self.root / "trees"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._trees.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()  # staging helpers re-enter it under _store
        self._inflight: set[str] = set()  # staging names (basenames) owned by running puts

    # -- paths ------------------------------------------------------------------------------

    @staticmethod
    def _check_hex(sha256_hex: str) -> str:
        if not _HEX_RE.fullmatch(sha256_hex):
            raise ValueError(f"not a lowercase sha256 hex digest: {sha256_hex!r}")
        return sha256_hex

    def zip_path(self, sha256_hex: str) -> Path:
        """Where the package's original zip bytes are kept."""
        return self._blobs / f"{self._check_hex(sha256_hex)}.zip"

    def tree_path(self, sha256_hex: str) -> Path:
        """The extracted package; treat as read-only (it is shared by every user of the hash)."""
        return self._trees / self._check_hex(sha256_hex)

    # -- reading ----------------------------------------------------------------------------

    def read_zip(self, sha256_hex: str) -> bytes:
        """The stored zip bytes; a missing blob is a store inconsistency (ServiceException)."""
        try:
            return self.zip_path(sha256_hex).read_bytes()
        except FileNotFoundError as exc:
            raise ServiceException(f"Code package {sha256_hex} is missing from the store") from exc

    # -- writing ----------------------------------------------------------------------------

    def put(self, zip_bytes: bytes) -> CodeInfo:
        """Validate, store and extract a package; idempotent for identical bytes."""
        size = len(zip_bytes)
        if size == 0:
            raise InvalidParameterValueException(MSG_EMPTY)
        if size > self.limits.zipped_max_bytes:
            raise RequestEntityTooLargeException(
                f"Zipped size must be smaller than {self.limits.zipped_max_bytes} bytes"
            )
        count = _declared_entry_count(zip_bytes)
        if count is not None and count > self.max_entries:
            raise _too_many_entries(count, self.max_entries)
        digest = hashlib.sha256(zip_bytes).digest()
        sha_hex = digest.hex()
        try:
            zf = zipfile.ZipFile(io.BytesIO(zip_bytes))
        except Exception as exc:  # BadZipFile, and whatever a malformed directory provokes
            raise _unzip_error() from exc
        with zf:
            plan = _plan(zf, self.limits, self.max_entries)
            self._store(zf, plan, sha_hex, zip_bytes)
        return CodeInfo(
            sha256_hex=sha_hex,
            sha256_b64=base64.b64encode(digest).decode("ascii"),
            size=size,
            unzipped_size=plan.unzipped_size,
        )

    def _store(self, zf: zipfile.ZipFile, plan: _Plan, sha_hex: str, zip_bytes: bytes) -> None:
        tree = self.tree_path(sha_hex)
        blob = self.zip_path(sha_hex)
        staged_tree: Path | None = None
        staged_blob: Path | None = None
        try:
            if not tree.is_dir():
                staged_tree = self._stage_tree(zf, plan)
            if not blob.is_file():
                staged_blob = self._stage_blob(zip_bytes)
            with self._lock:
                if not tree.is_dir():
                    if staged_tree is None:  # removed since we looked: extract after all
                        staged_tree = self._stage_tree(zf, plan)
                    staged_tree = self._commit_tree(staged_tree, tree)
                if not blob.is_file():
                    if staged_blob is None:
                        staged_blob = self._stage_blob(zip_bytes)
                    os.replace(staged_blob, blob)
                    self._inflight.discard(staged_blob.name)
                    staged_blob = None
                else:
                    os.utime(blob)  # marks the package as recently put (see collect_garbage)
        except OSError as exc:
            raise ServiceException(f"Could not store the code package: {exc}") from exc
        finally:
            for leftover in (staged_tree, staged_blob):
                if leftover is not None:
                    self._discard(leftover)

    def _new_staging(self, parent: Path, *, directory: bool) -> Path:
        with self._lock:
            if directory:
                name = tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=parent)
            else:
                fd, name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".zip", dir=parent)
                os.close(fd)
            self._inflight.add(os.path.basename(name))
        return Path(name)

    def _discard(self, staged: Path) -> None:
        """Remove a staging file or directory and forget it."""
        if staged.is_dir() and not staged.is_symlink():
            shutil.rmtree(staged, ignore_errors=True)
        else:
            staged.unlink(missing_ok=True)
        with self._lock:
            self._inflight.discard(staged.name)

    def _stage_blob(self, zip_bytes: bytes) -> Path:
        staged = self._new_staging(self._blobs, directory=False)
        try:
            with open(staged, "wb") as out:
                out.write(zip_bytes)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(staged, 0o644)
        except BaseException:
            self._discard(staged)
            raise
        return staged

    def _commit_tree(self, staged: Path, tree: Path) -> Path | None:
        """Rename the staged tree into place; None once it is consumed or no longer needed."""
        try:
            os.rename(staged, tree)
        except OSError:
            if not tree.is_dir():
                raise
            return staged  # another process won the race: identical content, drop ours
        with self._lock:
            self._inflight.discard(staged.name)
        return None

    def _stage_tree(self, zf: zipfile.ZipFile, plan: _Plan) -> Path:
        staged = self._new_staging(self._trees, directory=True)
        try:
            self._extract(zf, plan, str(staged))
            os.chmod(staged, 0o755)
        except BaseException:
            self._discard(staged)
            raise
        return staged

    def _extract(self, zf: zipfile.ZipFile, plan: _Plan, root: str) -> None:
        """Write the planned entries below `root` (a fresh private directory)."""
        made: set[str] = set()
        budget = _Budget(self.limits.unzipped_max_bytes)
        order = {_Kind.DIR: 0, _Kind.FILE: 1, _Kind.SYMLINK: 2}
        # Directories first, symlinks last: nothing is ever written through a link.
        for entry in sorted(plan.entries, key=lambda e: order[e.kind]):
            if entry.kind is _Kind.DIR:
                _make_dirs(root, entry.path, made)
            elif entry.kind is _Kind.FILE:
                _make_dirs(root, posixpath.dirname(entry.path), made)
                _write_file(zf, entry, os.path.join(root, entry.path), budget)
            else:
                assert entry.target is not None
                _make_dirs(root, posixpath.dirname(entry.path), made)
                os.symlink(entry.target, os.path.join(root, entry.path))
        real_root = os.path.realpath(root)
        for entry in plan.entries:
            if entry.kind is _Kind.SYMLINK:
                resolved = os.path.realpath(os.path.join(root, entry.path))
                if resolved != real_root and not resolved.startswith(real_root + os.sep):
                    raise _unzip_error(
                        entry.raw, f"is a symlink resolving outside the package ({entry.target!r})"
                    )

    # -- removal ----------------------------------------------------------------------------

    def remove(self, sha256_hex: str) -> None:
        """Delete a package's blob and tree; the caller has checked nothing references it."""
        with self._lock:
            self._remove_locked(sha256_hex)

    def _remove_locked(self, sha256_hex: str) -> bool:
        removed = False
        blob = self.zip_path(sha256_hex)
        tree = self.tree_path(sha256_hex)
        if blob.exists():
            blob.unlink(missing_ok=True)
            removed = True
        if tree.is_dir():
            # Rename first so the canonical name never shows a half-deleted tree.
            doomed = self._trees / f"{_TMP_PREFIX}del-{uuid.uuid4().hex}"
            os.rename(tree, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            removed = True
        return removed

    def collect_garbage(self, referenced: set[str], *, min_age_s: float = 0.0) -> int:
        """Remove every package not in `referenced` and stale staging files.

        Returns how many packages were removed. Packages put less than `min_age_s` seconds
        ago are kept, so a package stored but not yet recorded by its caller survives a
        concurrent collection.
        """
        removed = 0
        now = time.time()
        with self._lock:
            candidates: set[str] = set()
            for child in self._blobs.iterdir():
                if child.suffix == ".zip" and _HEX_RE.fullmatch(child.stem):
                    candidates.add(child.stem)
            for child in self._trees.iterdir():
                if _HEX_RE.fullmatch(child.name):
                    candidates.add(child.name)
            for sha_hex in sorted(candidates - referenced):
                if min_age_s > 0 and now - self._last_put(sha_hex) < min_age_s:
                    continue
                if self._remove_locked(sha_hex):
                    removed += 1
            for parent in (self._blobs, self._trees):
                for child in parent.iterdir():
                    if child.name.startswith(_TMP_PREFIX) and child.name not in self._inflight:
                        if child.is_dir() and not child.is_symlink():
                            shutil.rmtree(child, ignore_errors=True)
                        else:
                            child.unlink(missing_ok=True)
        return removed

    def _last_put(self, sha_hex: str) -> float:
        for path in (self.zip_path(sha_hex), self.tree_path(sha_hex)):
            try:
                return path.stat().st_mtime
            except FileNotFoundError:
                continue
        return 0.0


def _make_dirs(root: str, rel: str, made: set[str]) -> None:
    """Create `rel` and its missing parents below `root`, each 0o755."""
    if not rel:
        return
    prefix = ""
    for part in rel.split("/"):
        prefix = f"{prefix}/{part}" if prefix else part
        if prefix in made:
            continue
        full = os.path.join(root, prefix)
        try:
            os.mkdir(full, 0o755)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(full).st_mode):
                raise
        os.chmod(full, 0o755)  # undo the umask
        made.add(prefix)


def _write_file(zf: zipfile.ZipFile, entry: _Entry, dest: str, budget: _Budget) -> None:
    """Stream one member to `dest`, enforcing its declared size and the unzipped limit."""
    declared = entry.info.file_size
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        try:
            src = zf.open(entry.info)
        except Exception as exc:  # unsupported method, bad local header, ...
            raise _unzip_error(entry.raw, "could not be decompressed") from exc
        written = 0
        with src:
            while True:
                try:
                    chunk = src.read(_CHUNK)
                except Exception as exc:  # zlib/bz2/lzma errors, CRC mismatch, truncation
                    raise _unzip_error(entry.raw, "could not be decompressed") from exc
                if not chunk:
                    break
                written += len(chunk)
                if written > declared:
                    raise _unzip_error(entry.raw, "is larger than its declared size")
                budget.consume(len(chunk))
                out.write(chunk)
        if written != declared:
            raise _unzip_error(entry.raw, "does not match its declared size")
        out.flush()
        os.fchmod(out.fileno(), entry.mode)
        mtime = _zip_mtime(entry.info)
        if mtime is not None:
            os.utime(out.fileno(), (mtime, mtime))
