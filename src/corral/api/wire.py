"""Rendering of Corral's model to Lambda's JSON shapes (as botocore's model has them)."""

from __future__ import annotations

from typing import Any

from corral.model import LATEST, FunctionConfig


def function_configuration(config: FunctionConfig, arn: str) -> dict[str, Any]:
    """`FunctionConfiguration`; `arn` is unqualified for $LATEST, qualified for versions."""
    out: dict[str, Any] = {
        "FunctionName": config.name,
        "FunctionArn": arn,
        "Runtime": config.runtime,
        "Role": config.role,
        "Handler": config.handler,
        "CodeSize": config.code.size,
        "Description": config.description,
        "Timeout": config.timeout_s,
        "MemorySize": config.memory_mb,
        "LastModified": config.last_modified,
        "CodeSha256": config.code.sha256_b64,
        "Version": config.version,
        "TracingConfig": {"Mode": config.tracing_mode},
        "RevisionId": config.revision_id,
        "State": config.state,
        "LastUpdateStatus": config.last_update_status,
        "PackageType": "Zip",
        "Architectures": list(config.architectures),
        "EphemeralStorage": {"Size": config.ephemeral_mb},
        "SnapStart": {"ApplyOn": "None", "OptimizationStatus": "Off"},
        "LoggingConfig": _logging(config),
        "RuntimeVersionConfig": {
            "RuntimeVersionArn": f"arn:aws:lambda:::runtime:corral-{config.runtime}"},
    }
    if config.environment:
        out["Environment"] = {"Variables": dict(config.environment)}
    if config.layers:
        out["Layers"] = [{"Arn": arn_, "CodeSize": 0} for arn_ in config.layers]
    if config.dead_letter_target:
        out["DeadLetterConfig"] = {"TargetArn": config.dead_letter_target}
    if config.version != LATEST:
        out["MasterArn"] = arn.rsplit(":", 1)[0]
    return out


def _logging(config: FunctionConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"LogFormat": config.log_format, "LogGroup": config.log_group_name}
    if config.log_format == "JSON":
        out["ApplicationLogLevel"] = config.application_log_level or "INFO"
        out["SystemLogLevel"] = config.system_log_level or "INFO"
    return out
