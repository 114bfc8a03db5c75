"""boto3 clients for the AWS-compatible services triggers read from, and a thread runner.

Endpoints come from the standard SDK configuration in the *server's* environment: the
service-specific variable (`AWS_ENDPOINT_URL_SQS`, `AWS_ENDPOINT_URL_S3`,
`AWS_ENDPOINT_URL_DYNAMODB_STREAMS` — `AWS_ENDPOINT_URL_DYNAMODBSTREAMS` is accepted too), then
`AWS_ENDPOINT_URL`; with neither, boto3's own resolution applies (real AWS). Credentials come
from boto3's default chain in the server's environment (`AWS_ACCESS_KEY_ID`, profiles, ...).

Blocking boto3 calls run on daemon threads (`in_thread`): a long poll in flight never delays the
server's shutdown, and a cancelled caller simply stops waiting for it.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

_SERVICE_ENV: dict[str, tuple[str, ...]] = {
    "s3": ("AWS_ENDPOINT_URL_S3",),
    "sqs": ("AWS_ENDPOINT_URL_SQS",),
    "dynamodb": ("AWS_ENDPOINT_URL_DYNAMODB",),
    "dynamodbstreams": ("AWS_ENDPOINT_URL_DYNAMODB_STREAMS", "AWS_ENDPOINT_URL_DYNAMODBSTREAMS"),
}


def endpoint_for(service: str, env: Mapping[str, str] | None = None) -> str | None:
    """The endpoint URL the standard SDK variables name for `service`, or None."""
    env = os.environ if env is None else env
    for name in (*_SERVICE_ENV.get(service, ()), "AWS_ENDPOINT_URL"):
        value = env.get(name, "").strip()
        if value:
            return value.rstrip("/")
    return None


def make_client(service: str, region: str, *, read_timeout: float = 30.0,
                env: Mapping[str, str] | None = None) -> Any:
    """A boto3 client for `service` in `region` on the configured endpoint (blocking)."""
    import boto3
    from botocore.config import Config

    endpoint = endpoint_for(service, env)
    options: dict[str, Any] = {"connect_timeout": 5, "read_timeout": read_timeout,
                               "retries": {"mode": "standard", "max_attempts": 3}}
    if service == "s3" and endpoint:
        options["s3"] = {"addressing_style": "path"}
    credentials: dict[str, Any] = {}
    if env is not None and env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        # An explicit environment brings its own credentials (otherwise boto3's chain).
        credentials = {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
                       "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
                       "aws_session_token": env.get("AWS_SESSION_TOKEN") or None}
    session: Any = boto3.session.Session()
    return session.client(service, region_name=region, endpoint_url=endpoint,
                          config=Config(**options), **credentials)


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking call on a daemon thread and await its result."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(value: Any, failed: bool) -> None:
        if future.done():
            return
        if failed:
            future.set_exception(value)
        else:
            future.set_result(value)

    def run() -> None:
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the awaiting task
            outcome: tuple[Any, bool] = (exc, True)
        else:
            outcome = (result, False)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:
            pass  # the loop is gone: nobody is waiting any more

    threading.Thread(target=run, daemon=True, name=f"corral-aws-{getattr(fn, '__name__', 'call')}"
                     ).start()
    return await future
