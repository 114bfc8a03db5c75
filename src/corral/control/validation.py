"""Validation of function settings with Lambda's error codes and messages.

Every check runs before anything is stored, so a rejected request leaves nothing behind.
Messages follow the service's "1 validation error detected: ..." style.
"""

from __future__ import annotations

import re
from typing import Any

from corral.config import Limits
from corral.errors import InvalidParameterValueException
from corral.runtimes import RuntimeInfo, handler_is_valid

_ROLE = re.compile(r"^arn:(aws[a-zA-Z-]*)?:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+$")
_ENV_KEY = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]*$")
RESERVED_ENV = frozenset({
    "_HANDLER", "_X_AMZN_TRACE_ID", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME", "AWS_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR",
})
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")


def _constraint(value: object, field: str, constraint: str) -> InvalidParameterValueException:
    return InvalidParameterValueException(
        f"1 validation error detected: Value '{value}' at '{field}' failed to satisfy "
        f"constraint: {constraint}")


def _integer(params: dict[str, Any], key: str, field: str) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _constraint(value, field, "Member must be an integer")
    return value


def _bounded(params: dict[str, Any], key: str, field: str, low: int, high: int) -> int | None:
    """An optional integer parameter within [low, high], with the service's messages."""
    value = _integer(params, key, field)
    if value is None:
        return None
    if value < low:
        raise _constraint(value, field, f"Member must have value greater than or equal to {low}")
    if value > high:
        raise _constraint(value, field, f"Member must have value less than or equal to {high}")
    return value


def memory_size(params: dict[str, Any], limits: Limits) -> int | None:
    value = _bounded(params, "MemorySize", "memorySize", limits.memory_min_mb,
                     limits.memory_max_mb)
    if value is not None and (value - limits.memory_min_mb) % limits.memory_step_mb:
        raise _constraint(value, "memorySize",
                          f"Member must be a multiple of {limits.memory_step_mb} MB")
    return value


def timeout(params: dict[str, Any], limits: Limits) -> int | None:
    return _bounded(params, "Timeout", "timeout", limits.timeout_min_s, limits.timeout_max_s)


def ephemeral_storage(params: dict[str, Any], limits: Limits) -> int | None:
    storage = params.get("EphemeralStorage")
    if storage is None:
        return None
    value = storage.get("Size") if isinstance(storage, dict) else None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _constraint(value, "ephemeralStorage.size", "Member must not be null")
    if not limits.ephemeral_min_mb <= value <= limits.ephemeral_max_mb:
        raise _constraint(value, "ephemeralStorage.size",
                          f"Member must have value between {limits.ephemeral_min_mb} and "
                          f"{limits.ephemeral_max_mb}")
    return value


def runtime(params: dict[str, Any], available: dict[str, RuntimeInfo],
            required: bool) -> RuntimeInfo | None:
    name = params.get("Runtime")
    if name is None:
        if required:
            raise InvalidParameterValueException(
                "Runtime and Handler are mandatory parameters for functions created with Zip "
                "packages.")
        return None
    info = available.get(name) if isinstance(name, str) else None
    if info is None:
        raise InvalidParameterValueException(
            f"Value {name} at 'runtime' failed to satisfy constraint: Member must satisfy enum "
            f"value set: [{', '.join(sorted(available))}] (runtimes available on this host) "
            "or be a valid ARN")
    return info


def handler(params: dict[str, Any], runtime_info: RuntimeInfo, required: bool) -> str | None:
    value = params.get("Handler")
    if value is None:
        if required and runtime_info.kind != "provided":
            raise InvalidParameterValueException(
                "Runtime and Handler are mandatory parameters for functions created with Zip "
                "packages.")
        return None
    if not isinstance(value, str) or not handler_is_valid(runtime_info, value):
        raise _constraint(value, "handler",
                          "Member must satisfy regular expression pattern: [^\\s]+ and name a "
                          "module and a function (module.function)")
    return value


def role(params: dict[str, Any], required: bool) -> str | None:
    value = params.get("Role")
    if value is None:
        if required:
            raise _constraint(None, "role", "Member must not be null")
        return None
    if not isinstance(value, str) or not _ROLE.match(value):
        raise _constraint(value, "role", "Member must satisfy regular expression pattern: "
                          "arn:(aws[a-zA-Z-]*)?:iam::\\d{12}:role/?[a-zA-Z_0-9+=,.@\\-_/]+")
    return value


def environment(params: dict[str, Any], limits: Limits) -> dict[str, str] | None:
    env = params.get("Environment")
    if env is None:
        return None
    variables = env.get("Variables", {}) if isinstance(env, dict) else None
    if not isinstance(variables, dict):
        raise InvalidParameterValueException("Environment.Variables must be a map of strings.")
    variables = variables or {}
    for key, value in variables.items():
        if not isinstance(key, str) or not _ENV_KEY.match(key):
            raise _constraint(key, "environment.variables",
                              "Map keys must satisfy constraint: [Member must satisfy regular "
                              "expression pattern: [a-zA-Z]([a-zA-Z0-9_])+]")
        if not isinstance(value, str):
            raise InvalidParameterValueException(f"Environment variable {key} must be a string.")
    reserved = sorted(k for k in variables if k in RESERVED_ENV)
    if reserved:
        raise InvalidParameterValueException(
            "Lambda was unable to configure your environment variables because the environment "
            "variables you have provided contains reserved keys that are currently not "
            f"supported for modification. Reserved keys used in this request: "
            f"{', '.join(reserved)}")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in variables.items())
    if size > limits.env_vars_max_bytes:
        raise InvalidParameterValueException(
            "Lambda was unable to configure your environment variables because the environment "
            "variables you have provided exceeded the 4KB limit. String measured: "
            f"{size} bytes")
    return dict(variables)


def description(params: dict[str, Any]) -> str | None:
    value = params.get("Description")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 256:
        raise _constraint(value, "description",
                          "Member must have length less than or equal to 256")
    return value


def tags(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidParameterValueException("Tags must be a map of strings.")
    for key, val in value.items():
        if not 1 <= len(key) <= 128 or key.startswith("aws:"):
            raise InvalidParameterValueException(f"Invalid tag key: {key!r}")
        if len(val) > 256:
            raise InvalidParameterValueException(f"Invalid tag value for key {key!r}")
    if len(value) > 50:
        raise InvalidParameterValueException("Too many tags: a function has at most 50.")
    return dict(value)


def logging_config(params: dict[str, Any]) -> dict[str, Any]:
    """`LoggingConfig` → FunctionConfig fields (log_format, levels, log_group)."""
    cfg = params.get("LoggingConfig")
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise InvalidParameterValueException("LoggingConfig must be an object.")
    out: dict[str, Any] = {}
    if "LogFormat" in cfg:
        if cfg["LogFormat"] not in ("JSON", "Text"):
            raise _constraint(cfg["LogFormat"], "loggingConfig.logFormat",
                              "Member must satisfy enum value set: [JSON, Text]")
        out["log_format"] = cfg["LogFormat"]
    for key, field in (("ApplicationLogLevel", "application_log_level"),
                       ("SystemLogLevel", "system_log_level")):
        if key in cfg:
            if cfg[key] not in LOG_LEVELS:
                raise _constraint(cfg[key], f"loggingConfig.{key[0].lower()}{key[1:]}",
                                  f"Member must satisfy enum value set: [{', '.join(LOG_LEVELS)}]")
            out[field] = cfg[key]
    if "LogGroup" in cfg:
        out["log_group"] = cfg["LogGroup"]
    return out


def architectures(params: dict[str, Any]) -> tuple[str, ...] | None:
    value = params.get("Architectures")
    if value is None:
        return None
    if value != ["x86_64"]:
        raise InvalidParameterValueException(
            f"Unsupported architectures {value}: this host runs x86_64 only.")
    return ("x86_64",)


def dead_letter_target(params: dict[str, Any]) -> str | None:
    """`DeadLetterConfig.TargetArn`: a function or SQS queue ARN; "" clears it."""
    config = params.get("DeadLetterConfig")
    if config is None:
        return None
    arn = config.get("TargetArn", "") if isinstance(config, dict) else None
    if not isinstance(arn, str):
        raise InvalidParameterValueException("DeadLetterConfig.TargetArn must be a string.")
    if arn:
        from corral.events.destinations import parse_target

        parse_target(arn, "deadLetterConfig.targetArn")
    return arn


def no_layers(params: dict[str, Any]) -> None:
    """Layers are not implemented: refuse them rather than silently running without them."""
    if params.get("Layers"):
        raise InvalidParameterValueException(
            "Layers are not supported by this Corral server; include the layer's files in the "
            "function package.")
