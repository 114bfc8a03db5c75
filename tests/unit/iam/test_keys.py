"""The access-key store: root key bootstrap, persistence, atomic writes and cross-process views."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import stat
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from corral.errors import (
    ConfigError,
    InvalidParameterValueException,
    ResourceConflictException,
    ResourceNotFoundException,
)
from corral.iam.keys import ROOT_USER, AccessKey, KeyStore
from corral.iam.sigv4 import SignedRequest, Verifier


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """Where the store keeps its keys, inside a not-yet-existing data dir."""
    return tmp_path / "data" / "access-keys.json"


def test_root_key_is_created_on_first_start(key_file: Path) -> None:
    """The first load creates an AWS-shaped root key in a 0600 file."""
    store = KeyStore(key_file)
    assert not key_file.exists()
    root = store.load_or_create_root()
    assert re.fullmatch(r"AKIA[A-Z0-9]{16}", root.access_key_id)
    assert re.fullmatch(r"[A-Za-z0-9+/]{40}", root.secret_access_key)
    assert root.user == ROOT_USER
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", root.created)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    on_disk = json.loads(key_file.read_text())
    assert on_disk == {
        root.access_key_id: {
            "secret": root.secret_access_key,
            "created": root.created,
            "user": "root",
        }
    }


def test_root_key_is_reused_after_restart(key_file: Path) -> None:
    """Later loads, in this store or a fresh one, return the same root key."""
    first = KeyStore(key_file).load_or_create_root()
    store = KeyStore(key_file)
    assert store.load_or_create_root() == first
    assert store.load_or_create_root() == first
    assert len(store.list_keys()) == 1


def test_secret_is_not_in_repr(key_file: Path) -> None:
    """Printing or logging an AccessKey does not leak its secret."""
    root = KeyStore(key_file).load_or_create_root()
    assert root.secret_access_key not in repr(root)


def test_secret_for_known_and_unknown_keys(key_file: Path) -> None:
    """secret_for returns a known key's secret and None for anything else."""
    store = KeyStore(key_file)
    root = store.load_or_create_root()
    assert store.secret_for(root.access_key_id) == root.secret_access_key
    assert store.secret_for("AKIAAAAAAAAAAAAAAAAA") is None
    assert store.secret_for("") is None


def test_add_generates_distinct_keys_for_users(key_file: Path) -> None:
    """add() creates new keys that persist and can be listed per user."""
    store = KeyStore(key_file)
    alice1 = store.add("alice")
    alice2 = store.add("alice")
    bob = store.add("bob")
    assert len({alice1.access_key_id, alice2.access_key_id, bob.access_key_id}) == 3
    reopened = KeyStore(key_file)
    assert {k.access_key_id for k in reopened.list_keys("alice")} == {
        alice1.access_key_id,
        alice2.access_key_id,
    }
    assert reopened.get(bob.access_key_id) == bob


def test_add_imports_a_given_key(key_file: Path) -> None:
    """A key id and secret can be supplied, e.g. to keep existing client configuration working."""
    store = KeyStore(key_file)
    key = store.add("ci", "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    assert key == AccessKey("AKIAIOSFODNN7EXAMPLE", key.secret_access_key, key.created, "ci")
    assert KeyStore(key_file).secret_for("AKIAIOSFODNN7EXAMPLE") == (
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    )


def test_add_refuses_duplicates_and_invalid_input(key_file: Path) -> None:
    """Duplicate ids conflict; malformed ids, secrets and user names are invalid."""
    store = KeyStore(key_file)
    store.add("ci", "AKIAIOSFODNN7EXAMPLE")
    with pytest.raises(ResourceConflictException):
        store.add("ci", "AKIAIOSFODNN7EXAMPLE")
    for akid in ("short", "AKIA/SLASHES/IN/KEY1", "A" * 129):
        with pytest.raises(InvalidParameterValueException):
            store.add("ci", akid)
    with pytest.raises(InvalidParameterValueException):
        store.add("ci", secret_access_key="has space")
    with pytest.raises(InvalidParameterValueException):
        store.add("no spaces allowed")
    assert len(store.list_keys()) == 1


def test_remove_revokes_and_persists(key_file: Path) -> None:
    """A removed key stops resolving at once and is gone after a restart."""
    store = KeyStore(key_file)
    key = store.add("alice")
    assert store.remove(key.access_key_id) == key
    assert store.secret_for(key.access_key_id) is None
    assert KeyStore(key_file).get(key.access_key_id) is None
    with pytest.raises(ResourceNotFoundException):
        store.remove(key.access_key_id)


def test_writes_leave_no_temporary_files(key_file: Path) -> None:
    """Atomic replacement leaves only the key file and its lock file in the data dir."""
    store = KeyStore(key_file)
    store.load_or_create_root()
    store.add("a")
    store.remove(store.add("b").access_key_id)
    names = sorted(p.name for p in key_file.parent.iterdir())
    assert names == ["access-keys.json", "access-keys.json.lock"]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_loose_permissions_are_tightened(key_file: Path) -> None:
    """A key file readable by others is restricted to 0600 when loaded."""
    KeyStore(key_file).load_or_create_root()
    os.chmod(key_file, 0o644)
    KeyStore(key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_corrupt_file_is_a_config_error_and_is_not_overwritten(key_file: Path) -> None:
    """An unreadable key file stops startup instead of being replaced by a new root key."""
    key_file.parent.mkdir(parents=True)
    key_file.write_text('{"AKIAX": {"secret": 1}}')
    with pytest.raises(ConfigError):
        KeyStore(key_file)
    key_file.write_text("not json")
    with pytest.raises(ConfigError):
        KeyStore(key_file)
    assert key_file.read_text() == "not json"


def test_changes_by_another_store_become_visible(key_file: Path) -> None:
    """Another process's additions and removals reach secret_for after the refresh interval."""
    reader = KeyStore(key_file, refresh_interval_s=0)
    writer = KeyStore(key_file)
    key = writer.add("alice")
    assert reader.secret_for(key.access_key_id) == key.secret_access_key
    writer.remove(key.access_key_id)
    assert reader.secret_for(key.access_key_id) is None


def test_secret_for_rechecks_the_file_only_after_the_interval(key_file: Path) -> None:
    """Within the refresh interval secret_for answers from memory without reading the file."""
    reader = KeyStore(key_file, refresh_interval_s=3600)
    reader.secret_for("warm-up")
    key = KeyStore(key_file).add("alice")
    assert reader.secret_for(key.access_key_id) is None
    assert reader.get(key.access_key_id) == key  # explicit reads always refresh


def _add_keys(path: str, user: str, count: int) -> None:
    store = KeyStore(Path(path))
    for _ in range(count):
        store.add(user)


def test_concurrent_writers_in_separate_processes_lose_nothing(key_file: Path) -> None:
    """Writers in several processes serialize on the lock and every key survives."""
    KeyStore(key_file).load_or_create_root()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_keys, args=(str(key_file), f"u{i}", 10)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    keys = KeyStore(key_file).list_keys()
    assert len(keys) == 41
    assert sum(k.user == ROOT_USER for k in keys) == 1


def test_root_key_signs_requests_the_verifier_accepts(key_file: Path) -> None:
    """A botocore request signed with the bootstrapped root key verifies via secret_for."""
    store = KeyStore(key_file)
    root = store.load_or_create_root()
    request = AWSRequest(
        method="POST", url="http://localhost:9000/2015-03-31/functions/f/invocations", data=b"{}"
    )
    creds = Credentials(root.access_key_id, root.secret_access_key)
    SigV4Auth(creds, "lambda", "us-east-1").add_auth(request)
    headers = {k.lower(): v for k, v in request.headers.items()}
    headers["host"] = "localhost:9000"
    signed = SignedRequest("POST", "/2015-03-31/functions/f/invocations", "", headers, b"{}")
    assert Verifier(store.secret_for).verify(signed).access_key == root.access_key_id
