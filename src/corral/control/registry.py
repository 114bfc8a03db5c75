"""The function registry: validated changes to functions, persisted, cached in memory.

Reads on the invoke path come from the in-memory cache (no database read per invoke); every
change goes to the store first and to the cache after it committed. Code packages are validated
and stored (content-addressed) before any row is written, so a rejected request leaves nothing
behind. Packages that lose their last reference stay on disk until the next start, since a
running instance may still have them mounted.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable
from typing import Any

from corral.config import Settings
from corral.control import validation as check
from corral.control.arns import function_arn
from corral.errors import (
    InvalidParameterValueException,
    PreconditionFailedException,
    ResourceConflictException,
    ResourceNotFoundException,
)
from corral.model import LATEST, CodeInfo, FunctionConfig, lambda_timestamp
from corral.runtimes import RuntimeInfo
from corral.store.codepkg import CodeStore
from corral.store.sqlite import SqliteFunctionRepo

ChangeListener = Callable[[str], None]


def decode_zip(value: Any) -> bytes:
    """`ZipFile` arrives base64-encoded inside the JSON body."""
    if not isinstance(value, str):
        raise InvalidParameterValueException("ZipFile must be a base64-encoded string.")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidParameterValueException(
            "Could not unzip uploaded file. Please check your file, then try to upload again."
        ) from exc


class Registry:
    def __init__(self, settings: Settings, repo: SqliteFunctionRepo, code: CodeStore,
                 runtimes: dict[str, RuntimeInfo]) -> None:
        self._settings = settings
        self._repo = repo
        self.code = code
        self.runtimes = runtimes
        self._latest: dict[str, FunctionConfig] = {c.name: c for c in repo.list_latest()}
        self._tags: dict[str, dict[str, str]] = {n: repo.get_tags(n) for n in self._latest}
        self._listeners: list[ChangeListener] = []

    def on_change(self, listener: ChangeListener) -> None:
        """Call `listener(name)` after a function's code or configuration changed or went."""
        self._listeners.append(listener)

    def _changed(self, name: str) -> None:
        for listener in self._listeners:
            listener(name)

    def arn(self, name: str, qualifier: str | None = None) -> str:
        return function_arn(self._settings.region, self._settings.account_id, name, qualifier)

    # reads -------------------------------------------------------------------------------------
    def get(self, name: str, qualifier: str | None = None) -> FunctionConfig:
        config = self._latest.get(name)
        if config is None or qualifier not in (None, LATEST):
            if config is not None and qualifier is not None:
                stored = self._repo.get(name, qualifier)
                if stored is not None:
                    return stored
            raise ResourceNotFoundException(f"Function not found: {self.arn(name, qualifier)}")
        return config

    def exists(self, name: str) -> bool:
        return name in self._latest

    def list(self) -> list[FunctionConfig]:
        return sorted(self._latest.values(), key=lambda c: c.name)

    def tags(self, name: str) -> dict[str, str]:
        self.get(name)
        return dict(self._tags.get(name, {}))

    def total_code_size(self) -> int:
        return sum(c.code.size for c in self._latest.values())

    def runtime_of(self, config: FunctionConfig) -> RuntimeInfo:
        return self.runtimes[config.runtime]

    # writes ------------------------------------------------------------------------------------
    def _store_code(self, params: dict[str, Any]) -> CodeInfo:
        if "ZipFile" not in params:
            if "S3Bucket" in params or "S3Key" in params:
                raise InvalidParameterValueException(
                    "Fetching code from a bucket (S3Bucket/S3Key) is not available yet; "
                    "upload the package as ZipFile.")
            if "ImageUri" in params:
                raise InvalidParameterValueException(
                    "Container images are not supported; use a Zip package.")
            raise InvalidParameterValueException("Please provide a source for function code.")
        return self.code.put(decode_zip(params["ZipFile"]))

    def create(self, params: dict[str, Any], name: str) -> FunctionConfig:
        limits = self._settings.limits
        if params.get("PackageType", "Zip") != "Zip":
            raise InvalidParameterValueException(
                "Container images are not supported; use PackageType Zip.")
        runtime = check.runtime(params, self.runtimes, required=True)
        assert runtime is not None
        handler = check.handler(params, runtime, required=True) or ""
        role = check.role(params, required=True)
        fields: dict[str, Any] = {
            "memory_mb": check.memory_size(params, limits) or 128,
            "timeout_s": check.timeout(params, limits) or 3,
            "ephemeral_mb": check.ephemeral_storage(params, limits) or 512,
            "environment": check.environment(params, limits) or {},
            "description": check.description(params) or "",
            **check.logging_config(params),
        }
        arch = check.architectures(params)
        if arch:
            fields["architectures"] = arch
        tags = check.tags(params.get("Tags"))
        code_params = params.get("Code")
        if not isinstance(code_params, dict):
            raise InvalidParameterValueException("Please provide a source for function code.")
        if name in self._latest:
            raise ResourceConflictException(f"Function already exist: {name}")
        code = self._store_code(code_params)
        config = FunctionConfig(name=name, runtime=runtime.name, handler=handler,
                                role=role or "", code=code, **fields)
        try:
            self._repo.put(config, tags, create=True)
        except Exception as exc:
            self._collect_code(code.sha256_hex)
            if "UNIQUE" in str(exc):
                raise ResourceConflictException(f"Function already exist: {name}") from exc
            raise
        self._latest[name] = config
        self._tags[name] = tags
        return config

    def _check_revision(self, current: FunctionConfig, params: dict[str, Any]) -> None:
        wanted = params.get("RevisionId")
        if wanted is not None and wanted != current.revision_id:
            raise PreconditionFailedException(
                "The Revision Id provided does not match the latest Revision Id. Call the "
                "GetFunction/GetAlias API to retrieve the latest Revision Id")

    def _replace(self, old: FunctionConfig, new: FunctionConfig) -> FunctionConfig:
        new = new.evolve(revision_id=str(uuid.uuid4()), last_modified=lambda_timestamp())
        self._repo.put(new, None, create=False)
        self._latest[new.name] = new
        self._changed(new.name)
        return new

    def update_code(self, name: str, params: dict[str, Any]) -> FunctionConfig:
        current = self.get(name)
        self._check_revision(current, params)
        check.architectures(params)
        code = self._store_code(params)
        if params.get("DryRun"):
            self._collect_code(code.sha256_hex)
            return current.evolve(code=code)
        return self._replace(current, current.evolve(code=code))

    def update_configuration(self, name: str, params: dict[str, Any]) -> FunctionConfig:
        limits = self._settings.limits
        current = self.get(name)
        self._check_revision(current, params)
        runtime = check.runtime(params, self.runtimes, required=False) or \
            self.runtimes.get(current.runtime)
        if runtime is None:
            raise InvalidParameterValueException(
                f"The runtime {current.runtime} is not available on this host.")
        changes: dict[str, Any] = {"runtime": runtime.name}
        handler = check.handler(params, runtime, required=False)
        if handler is not None:
            changes["handler"] = handler
        for key, value in (("role", check.role(params, required=False)),
                           ("memory_mb", check.memory_size(params, limits)),
                           ("timeout_s", check.timeout(params, limits)),
                           ("ephemeral_mb", check.ephemeral_storage(params, limits)),
                           ("environment", check.environment(params, limits)),
                           ("description", check.description(params))):
            if value is not None:
                changes[key] = value
        changes.update(check.logging_config(params))
        return self._replace(current, current.evolve(**changes))

    def delete(self, name: str, qualifier: str | None = None) -> None:
        self.get(name)
        if qualifier not in (None, LATEST):
            raise InvalidParameterValueException(
                "Deleting a published version is not supported yet.")
        if qualifier == LATEST:
            raise InvalidParameterValueException("$LATEST version cannot be deleted without "
                                                 "deleting the function.")
        self._repo.delete(name)
        self._latest.pop(name, None)
        self._tags.pop(name, None)
        self._changed(name)

    def set_tags(self, name: str, tags: dict[str, str]) -> None:
        self.get(name)
        self._repo.set_tags(name, tags)
        self._tags[name] = dict(tags)

    def _collect_code(self, sha256_hex: str) -> None:
        """Remove a package nothing refers to. Packages replaced while instances may still run
        them are left for `collect_garbage` at the next start."""
        if sha256_hex not in self._repo.referenced_code():
            self.code.remove(sha256_hex)

    def collect_garbage(self) -> int:
        return self.code.collect_garbage(self._repo.referenced_code())
