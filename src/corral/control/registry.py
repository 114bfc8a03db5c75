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
from corral.control.aliases import Alias, SqliteAliasRepo, check_alias_name, parse_weights
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
                 runtimes: dict[str, RuntimeInfo], aliases: SqliteAliasRepo) -> None:
        self._settings = settings
        self._repo = repo
        self._alias_repo = aliases
        self.code = code
        self.runtimes = runtimes
        self._latest: dict[str, FunctionConfig] = {c.name: c for c in repo.list_latest()}
        self._tags: dict[str, dict[str, str]] = {n: repo.get_tags(n) for n in self._latest}
        self._versions: dict[str, dict[str, FunctionConfig]] = {
            n: {c.version: c for c in repo.list_versions(n) if c.version != LATEST}
            for n in self._latest}
        self._aliases: dict[str, dict[str, Alias]] = {n: {} for n in self._latest}
        for alias in aliases.all():
            self._aliases.setdefault(alias.function_name, {})[alias.name] = alias
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
        """The configuration a qualifier names: $LATEST, a version, or an alias's version."""
        config = self._latest.get(name)
        if config is not None:
            if qualifier in (None, LATEST):
                return config
            assert qualifier is not None
            alias = self._aliases[name].get(qualifier)
            version = alias.version if alias else qualifier
            found = config if version == LATEST else self._versions[name].get(version)
            if found is not None:
                return found
        raise ResourceNotFoundException(f"Function not found: {self.arn(name, qualifier)}")

    def resolve(self, name: str, qualifier: str | None) -> FunctionConfig:
        """The configuration to run for an invoke: aliases route by their weights."""
        if qualifier not in (None, LATEST) and name in self._aliases:
            alias = self._aliases[name].get(qualifier or "")
            if alias is not None and alias.weights:
                return self.get(name, alias.pick_version())
        return self.get(name, qualifier)

    def exists(self, name: str) -> bool:
        return name in self._latest

    def all_functions(self) -> list[FunctionConfig]:
        return sorted(self._latest.values(), key=lambda c: c.name)

    def tags(self, name: str) -> dict[str, str]:
        self.get(name)
        return dict(self._tags.get(name, {}))

    def cached_tags(self, name: str) -> dict[str, str]:
        """Tags without existence checks (the scheduler's view; empty for unknown names)."""
        return self._tags.get(name, {})

    def total_code_size(self) -> int:
        return sum(c.code.size for c in self._latest.values())

    def runtime_of(self, config: FunctionConfig) -> RuntimeInfo:
        return self.runtimes[config.runtime]

    # writes ------------------------------------------------------------------------------------
    def _store_code(self, params: dict[str, Any], fetched: bytes | None = None) -> CodeInfo:
        """Store the package given inline (`ZipFile`) or already fetched from a bucket."""
        if fetched is not None:
            return self.code.put(fetched)
        if "ZipFile" not in params:
            if "S3Bucket" in params or "S3Key" in params:
                raise InvalidParameterValueException(
                    "S3Bucket and S3Key must be given together.")
            if "ImageUri" in params:
                raise InvalidParameterValueException(
                    "Container images are not supported; use a Zip package.")
            raise InvalidParameterValueException("Please provide a source for function code.")
        return self.code.put(decode_zip(params["ZipFile"]))

    def create(self, params: dict[str, Any], name: str,
               fetched: bytes | None = None) -> FunctionConfig:
        limits = self._settings.limits
        if params.get("PackageType", "Zip") != "Zip":
            raise InvalidParameterValueException(
                "Container images are not supported; use PackageType Zip.")
        check.no_layers(params)
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
            "dead_letter_target": check.dead_letter_target(params) or None,
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
        code = self._store_code(code_params, fetched)
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
        self._versions[name] = {}
        self._aliases[name] = {}
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

    def update_code(self, name: str, params: dict[str, Any],
                    fetched: bytes | None = None) -> FunctionConfig:
        current = self.get(name)
        self._check_revision(current, params)
        check.architectures(params)
        code = self._store_code(params, fetched)
        if params.get("DryRun"):
            self._collect_code(code.sha256_hex)
            return current.evolve(code=code)
        return self._replace(current, current.evolve(code=code))

    def update_configuration(self, name: str, params: dict[str, Any]) -> FunctionConfig:
        limits = self._settings.limits
        current = self.get(name)
        self._check_revision(current, params)
        check.no_layers(params)
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
        dead_letter = check.dead_letter_target(params)
        if dead_letter is not None:
            changes["dead_letter_target"] = dead_letter or None
        return self._replace(current, current.evolve(**changes))

    def delete(self, name: str, qualifier: str | None = None) -> None:
        self.get(name)
        if qualifier == LATEST:
            raise InvalidParameterValueException("$LATEST version cannot be deleted without "
                                                 "deleting the function.")
        if qualifier is not None:
            self._delete_version(name, qualifier)
            return
        self._repo.delete(name)
        for table in (self._latest, self._tags, self._versions, self._aliases):
            table.pop(name, None)
        self._changed(name)

    # versions ----------------------------------------------------------------------------------
    def publish_version(self, name: str, params: dict[str, Any]) -> FunctionConfig:
        current = self.get(name)
        self._check_revision(current, params)
        wanted_sha = params.get("CodeSha256")
        if wanted_sha is not None and wanted_sha != current.code.sha256_b64:
            raise InvalidParameterValueException(
                f"CodeSha256 ({wanted_sha}) is different from current CodeSha256 in $LATEST "
                f"({current.code.sha256_b64}). Please try again with the CodeSha256 in $LATEST.")
        versions = self._versions.setdefault(name, {})
        if versions:
            newest = versions[max(versions, key=int)]
            if _same_definition(newest, current):
                return newest
        number = str(max((int(v) for v in versions), default=0) + 1)
        description = params.get("Description")
        published = current.evolve(
            version=number, revision_id=str(uuid.uuid4()), last_modified=lambda_timestamp(),
            description=description if isinstance(description, str) else current.description)
        self._repo.put(published, None, create=False)
        versions[number] = published
        return published

    def list_versions(self, name: str) -> list[FunctionConfig]:
        latest = self.get(name)
        versions = self._versions.get(name, {})
        return [latest, *(versions[v] for v in sorted(versions, key=int))]

    def _delete_version(self, name: str, version: str) -> None:
        if version not in self._versions.get(name, {}):
            raise ResourceNotFoundException(f"Function not found: {self.arn(name, version)}")
        users = [a.name for a in self._aliases.get(name, {}).values()
                 if a.version == version or version in a.weights]
        if users:
            raise ResourceConflictException(
                f"Unable to delete version because the following aliases reference it: "
                f"{users}")
        self._repo.delete_version(name, version)
        del self._versions[name][version]
        self._changed(name)

    # aliases -----------------------------------------------------------------------------------
    def _check_version(self, name: str, version: Any) -> str:
        if not isinstance(version, str) or (
                version != LATEST and version not in self._versions.get(name, {})):
            raise ResourceNotFoundException(f"Function not found: {self.arn(name, str(version))}")
        return version

    def get_alias(self, name: str, alias: str) -> Alias:
        self.get(name)
        found = self._aliases.get(name, {}).get(alias)
        if found is None:
            raise ResourceNotFoundException(f"Cannot find alias arn: {self.arn(name, alias)}")
        return found

    def list_aliases(self, name: str, version: str | None = None) -> list[Alias]:
        self.get(name)
        return sorted((a for a in self._aliases.get(name, {}).values()
                       if version is None or a.version == version), key=lambda a: a.name)

    def create_alias(self, name: str, params: dict[str, Any]) -> Alias:
        self.get(name)
        alias_name = check_alias_name(params.get("Name"))
        if alias_name in self._aliases.get(name, {}):
            raise ResourceConflictException(f"Alias already exists: {self.arn(name, alias_name)}")
        version = self._check_version(name, params.get("FunctionVersion"))
        weights = parse_weights(params) or {}
        for extra in weights:
            self._check_version(name, extra)
        description = params.get("Description")
        alias = Alias(name, alias_name, version,
                      description if isinstance(description, str) else "", weights)
        self._alias_repo.put(alias)
        self._aliases.setdefault(name, {})[alias_name] = alias
        return alias

    def update_alias(self, name: str, alias_name: str, params: dict[str, Any]) -> Alias:
        current = self.get_alias(name, alias_name)
        wanted = params.get("RevisionId")
        if wanted is not None and wanted != current.revision_id:
            raise PreconditionFailedException(
                "The Revision Id provided does not match the latest Revision Id. Call the "
                "GetFunction/GetAlias API to retrieve the latest Revision Id")
        version = current.version
        if params.get("FunctionVersion") is not None:
            version = self._check_version(name, params["FunctionVersion"])
        weights = parse_weights(params)
        for extra in weights or {}:
            self._check_version(name, extra)
        description = params.get("Description")
        alias = Alias(name, alias_name, version,
                      description if isinstance(description, str) else current.description,
                      current.weights if weights is None else weights)
        self._alias_repo.put(alias)
        self._aliases[name][alias_name] = alias
        self._changed(name)
        return alias

    def delete_alias(self, name: str, alias_name: str) -> None:
        self.get(name)
        self._alias_repo.delete(name, alias_name)
        self._aliases.get(name, {}).pop(alias_name, None)

    def set_tags(self, name: str, tags: dict[str, str]) -> None:
        self.get(name)
        self._repo.set_tags(name, tags)
        old = self._tags.get(name, {})
        self._tags[name] = dict(tags)
        if {k: v for k, v in old.items() if k.startswith("corral:")} != \
                {k: v for k, v in tags.items() if k.startswith("corral:")}:
            self._changed(name)  # sandbox options changed: start fresh instances

    def _collect_code(self, sha256_hex: str) -> None:
        """Remove a package nothing refers to. Packages replaced while instances may still run
        them are left for `collect_garbage` at the next start."""
        if sha256_hex not in self._repo.referenced_code():
            self.code.remove(sha256_hex)

    def collect_garbage(self) -> int:
        """Remove packages no version refers to (run at start, when nothing runs them)."""
        return self.code.collect_garbage(self._repo.referenced_code())


_VOLATILE = ("version", "revision_id", "last_modified", "description", "state",
             "last_update_status")


def _same_definition(a: FunctionConfig, b: FunctionConfig) -> bool:
    """Whether publishing `b` would repeat version `a` (Lambda then returns `a`)."""
    left, right = a.to_json(), b.to_json()
    return all(left[k] == right[k] for k in left if k not in _VOLATILE)
