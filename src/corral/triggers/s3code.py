"""Function code from a bucket: `Code.S3Bucket`/`S3Key`/`S3ObjectVersion` → zip bytes.

The object is read with boto3 from the S3 endpoint the standard SDK configuration names in the
server's environment (`AWS_ENDPOINT_URL_S3`, then `AWS_ENDPOINT_URL`; path-style addressing on
a custom endpoint), with the server's credentials. Failures are reported as Lambda does:
`InvalidParameterValueException` "Error occurred while GetObject. S3 Error Code: NoSuchKey. S3
Error Message: The specified key does not exist."

`fetch_zip` blocks (network I/O); call it off the event loop (`fetch_zip_async`, or
`asyncio.to_thread`). The registry's `_store_code` wiring is described in docs/triggers.md.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

from corral.errors import InvalidParameterValueException
from corral.triggers.aws import make_client

# S3-hosted packages may be larger than the 50 MB direct upload; Lambda's ceiling is the
# unzipped 250 MB, so no zip beyond that can be valid.
DEFAULT_MAX_BYTES = 250 * 1024 * 1024

_MESSAGES = {
    "NoSuchKey": "The specified key does not exist.",
    "NoSuchBucket": "The specified bucket does not exist",
    "NoSuchVersion": "The specified version does not exist.",
    "AccessDenied": "Access Denied",
}


def _region(env: Mapping[str, str]) -> str:
    return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"


def _get_object_error(code: str, message: str) -> InvalidParameterValueException:
    return InvalidParameterValueException(
        f"Error occurred while GetObject. S3 Error Code: {code}. S3 Error Message: {message}")


def code_location(params: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """Validate `S3Bucket`, `S3Key` and optional `S3ObjectVersion` of a Code/UpdateCode body."""
    bucket, key, version = params.get("S3Bucket"), params.get("S3Key"), \
        params.get("S3ObjectVersion")
    if not isinstance(bucket, str) or not bucket:
        raise InvalidParameterValueException("S3Bucket is required when S3Key is given.")
    if not isinstance(key, str) or not key:
        raise InvalidParameterValueException("S3Key is required when S3Bucket is given.")
    if version is not None and not isinstance(version, str):
        raise InvalidParameterValueException("S3ObjectVersion must be a string.")
    return bucket, key, version or None


def fetch_zip(bucket: str, key: str, version: str | None = None, *,
              max_bytes: int = DEFAULT_MAX_BYTES, env: Mapping[str, str] | None = None,
              client: Any = None) -> bytes:
    """Read the object's bytes; `InvalidParameterValueException` on any S3 failure."""
    from botocore.exceptions import BotoCoreError, ClientError

    env = os.environ if env is None else env
    s3 = client or make_client("s3", _region(env), read_timeout=120, env=env)
    args: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if version:
        args["VersionId"] = version
    try:
        response = s3.get_object(**args)
        length = response.get("ContentLength")
        if isinstance(length, int) and length > max_bytes:
            response["Body"].close()
            raise InvalidParameterValueException(
                f"Unzipped size must be smaller than {max_bytes} bytes")
        data: bytes = response["Body"].read(max_bytes + 1)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "UnknownError")
        if code == "404":
            code = "NoSuchKey"
        elif code == "403":
            code = "AccessDenied"
        message = _MESSAGES.get(code) or str(error.get("Message") or code)
        raise _get_object_error(code, message) from exc
    except BotoCoreError as exc:
        raise _get_object_error("ServiceUnavailable", f"Could not reach S3: {exc}") from exc
    if len(data) > max_bytes:
        raise InvalidParameterValueException(
            f"Unzipped size must be smaller than {max_bytes} bytes")
    return data


async def fetch_zip_async(bucket: str, key: str, version: str | None = None, *,
                          max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """`fetch_zip` on a worker thread, for callers on the event loop."""
    return await asyncio.to_thread(fetch_zip, bucket, key, version, max_bytes=max_bytes)
