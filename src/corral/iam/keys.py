"""The access-key store: Corral's long-term AWS-style credentials.

Keys live in one JSON file in the data dir, mode 0600::

    {"AKIA...": {"secret": "...", "created": "2026-11-22T11:00:00Z", "user": "root"}}

Every write re-reads the file under an exclusive lock (``<file>.lock``), so several processes
sharing a data dir do not lose each other's changes, and replaces it atomically (temporary file,
fsync, rename, fsync of the directory). `KeyStore.secret_for` is the signature verifier's hot path:
a dict lookup, plus at most once per ``refresh_interval_s`` a ``stat`` that reloads the file if
another process changed it, so a key removed elsewhere stops working within that interval.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import re
import secrets
import stat
import string
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from corral.errors import (
    ConfigError,
    InvalidParameterValueException,
    ResourceConflictException,
    ResourceNotFoundException,
)

__all__ = ["ROOT_USER", "AccessKey", "KeyStore"]

logger = logging.getLogger(__name__)

ROOT_USER = "root"
FILE_MODE = 0o600

_AKID_ALPHABET = string.ascii_uppercase + string.digits
_AKID_RE = re.compile(r"[A-Za-z0-9_]{16,128}")  # IAM's AccessKeyId: [\w]+, 16 to 128 chars
_SECRET_RE = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no whitespace
_USER_RE = re.compile(r"[\w+=,.@-]{1,64}")  # IAM's user name pattern


@dataclass(frozen=True, slots=True)
class AccessKey:
    """One access key: its id, its secret, when it was created and for which user."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    created: str  # ISO 8601, UTC, e.g. 2026-11-22T11:00:00Z
    user: str


class KeyStore:
    """Access keys persisted in a JSON file; see the module docstring for the guarantees."""

    def __init__(self, path: Path, *, refresh_interval_s: float = 1.0) -> None:
        self._path = Path(path)
        self._lock_path = self._path.with_name(self._path.name + ".lock")
        self._refresh_interval_s = refresh_interval_s
        self._mutex = threading.Lock()
        # Replaced wholesale, never mutated, so readers need no lock.
        self._keys: dict[str, AccessKey] = {}
        self._signature: tuple[int, int, int] | None = None
        self._next_check = 0.0
        with self._mutex:
            self._reload()

    @property
    def path(self) -> Path:
        """The JSON file the keys live in."""
        return self._path

    # -- reads ---------------------------------------------------------------------------------

    def secret_for(self, access_key_id: str) -> str | None:
        """The secret for `access_key_id`, or None if there is no such key."""
        if time.monotonic() >= self._next_check:
            self._refresh()
        key = self._keys.get(access_key_id)
        return key.secret_access_key if key is not None else None

    def get(self, access_key_id: str) -> AccessKey | None:
        """The key with this id, or None."""
        self._refresh()
        return self._keys.get(access_key_id)

    def list_keys(self, user: str | None = None) -> list[AccessKey]:
        """All keys (or `user`'s), oldest first."""
        self._refresh()
        keys = [k for k in self._keys.values() if user is None or k.user == user]
        return sorted(keys, key=lambda k: (k.created, k.access_key_id))

    # -- writes --------------------------------------------------------------------------------

    def load_or_create_root(self) -> AccessKey:
        """The root user's oldest key, creating the first one (and the file) if there is none."""
        existing = self.list_keys(ROOT_USER)  # no lock or write needed when it exists
        if existing:
            return existing[0]
        with self._writing() as keys:
            roots = sorted(
                (k for k in keys.values() if k.user == ROOT_USER),
                key=lambda k: (k.created, k.access_key_id),
            )
            if roots:  # another process created it meanwhile
                return roots[0]
            key = self._new_key(keys, ROOT_USER, None, None)
            keys[key.access_key_id] = key
            logger.info("created root access key %s in %s", key.access_key_id, self._path)
            return key

    def add(
        self,
        user: str,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> AccessKey:
        """Create a key for `user`; the id and secret are generated unless given (imports)."""
        if not _USER_RE.fullmatch(user):
            raise InvalidParameterValueException(
                f"Invalid user name {user!r}: 1 to 64 characters of letters, digits and +=,.@_-"
            )
        if access_key_id is not None and not _AKID_RE.fullmatch(access_key_id):
            raise InvalidParameterValueException(
                f"Invalid access key id {access_key_id!r}: 16 to 128 letters, digits or _"
            )
        if secret_access_key is not None and not _SECRET_RE.fullmatch(secret_access_key):
            raise InvalidParameterValueException(
                "Invalid secret access key: 1 to 128 printable ASCII characters, no whitespace"
            )
        with self._writing() as keys:
            if access_key_id is not None and access_key_id in keys:
                raise ResourceConflictException(f"Access key {access_key_id} already exists.")
            key = self._new_key(keys, user, access_key_id, secret_access_key)
            keys[key.access_key_id] = key
            return key

    def remove(self, access_key_id: str) -> AccessKey:
        """Delete a key and return it; it stops verifying at once in this process."""
        with self._writing() as keys:
            key = keys.pop(access_key_id, None)
            if key is None:
                raise ResourceNotFoundException(
                    f"The Access Key with id {access_key_id} cannot be found."
                )
            return key

    # -- internals -----------------------------------------------------------------------------

    @staticmethod
    def _new_key(
        keys: dict[str, AccessKey],
        user: str,
        access_key_id: str | None,
        secret_access_key: str | None,
    ) -> AccessKey:
        while access_key_id is None or access_key_id in keys:
            access_key_id = "AKIA" + "".join(secrets.choice(_AKID_ALPHABET) for _ in range(16))
        if secret_access_key is None:
            secret_access_key = base64.b64encode(secrets.token_bytes(30)).decode("ascii")
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return AccessKey(access_key_id, secret_access_key, created, user)

    @contextmanager
    def _writing(self) -> Iterator[dict[str, AccessKey]]:
        """Yield the current keys for editing; persist them if the block completes."""
        with self._mutex:
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._reload()
                keys = dict(self._keys)
                yield keys
                if keys != self._keys:
                    self._write(keys)
                    self._keys = keys
                    self._signature = _file_signature(self._path)
            finally:
                os.close(fd)  # releases the flock

    def _refresh(self) -> None:
        """Reload if the file changed since it was read; never raises (hot path)."""
        self._next_check = time.monotonic() + self._refresh_interval_s
        if _file_signature(self._path) == self._signature:
            return
        with self._mutex:
            try:
                self._reload()
            except (ConfigError, OSError) as exc:
                logger.error("keeping the access keys loaded before: %s", exc)

    def _reload(self) -> None:
        """Read the file into memory (an absent file is an empty store). Caller holds _mutex."""
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._keys, self._signature = {}, None
            return
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            raw = f.read()
        if stat.S_IMODE(st.st_mode) & 0o077:
            logger.warning(
                "access key file %s had mode %o; restricting it to %o",
                self._path,
                stat.S_IMODE(st.st_mode),
                FILE_MODE,
            )
            try:
                os.chmod(self._path, FILE_MODE)
            except OSError as exc:
                logger.warning("could not restrict %s: %s", self._path, exc)
        self._keys = _parse(raw, self._path)
        self._signature = (st.st_ino, st.st_size, st.st_mtime_ns)

    def _write(self, keys: dict[str, AccessKey]) -> None:
        data = {
            k.access_key_id: {"secret": k.secret_access_key, "created": k.created, "user": k.user}
            for k in sorted(keys.values(), key=lambda k: (k.created, k.access_key_id))
        }
        payload = (json.dumps(data, indent=2) + "\n").encode("utf-8")
        directory = self._path.parent
        tmp = directory / f".{self._path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _parse(raw: bytes, path: Path) -> dict[str, AccessKey]:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"access key file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"access key file {path} must hold a JSON object")
    keys: dict[str, AccessKey] = {}
    for akid, entry in data.items():
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("secret"), str)
            and isinstance(entry.get("created"), str)
            and isinstance(entry.get("user"), str)
            and entry["secret"]
        ):
            raise ConfigError(
                f"access key file {path}: entry {akid!r} needs string 'secret', 'created', 'user'"
            )
        keys[akid] = AccessKey(akid, entry["secret"], entry["created"], entry["user"])
    return keys
