"""S3 event notifications: a webhook that S3-compatible stores post to, and its subscriptions.

A subscription binds a function to a filter — bucket (optional), event names (`s3:ObjectCreated:*`
by default; `*` only as the last part, as in S3), key prefix and suffix — and gets a webhook URL
`http://<host>:<port>/_corral/s3-events/<id>/<token>`. The URL needs no signature (MinIO's webhook
target and other senders cannot sign) but carries a random 256-bit token, compared in constant
time. A POST of S3 event notification JSON — MinIO's `{"EventName": ..., "Key": ...,
"Records": [...]}` or a bare `{"Records": [...]}` — is answered 200 once every matching record
is queued: each matching record is rewritten to the S3 event format (spec §6.4: `eventSource`
`aws:s3`, `eventName` without the `s3:` prefix, `s3.object.key` URL-encoded as received) and
invoked **asynchronously**, one record per invoke, as `{"Records": [record]}`. Prefix and
suffix are compared with the decoded key. `s3:TestEvent` messages and records that match
nothing are acknowledged and ignored. GET and HEAD on the URL answer 200 (liveness checks).

Subscriptions (SigV4-signed, rest-json errors):

    POST   /_corral/subscriptions/s3          {"FunctionName", "Bucket", "Events", "Prefix",
                                               "Suffix"} → 201 subscription with "WebhookUrl"
    GET    /_corral/subscriptions/s3          {"Subscriptions": [...]}
    GET    /_corral/subscriptions/s3/{id}     one subscription
    DELETE /_corral/subscriptions/s3/{id}     204
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from corral.api.common import empty_response, json_response, signed_body, signed_json
from corral.control.arns import parse_function_name
from corral.errors import InvalidParameterValueException, ResourceNotFoundException
from corral.feature import WithoutBackgroundWork
from corral.model import LATEST, new_request_id
from corral.triggers.store import Tables

if TYPE_CHECKING:
    from corral.server import Runtime

log = logging.getLogger(__name__)

DEFAULT_EVENTS = ("s3:ObjectCreated:*",)
WEBHOOK_PREFIX = "/_corral/s3-events/"
MAX_BODY_BYTES = 6 * 1024 * 1024
_EVENT_NAME = re.compile(r"^s3:[A-Za-z]+(?::(?:[A-Za-z]+|\*))?$|^s3:\*$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_RESPONSE_ELEMENTS = ("x-amz-request-id", "x-amz-id-2")
_OBJECT_FIELDS = ("key", "size", "eTag", "versionId", "sequencer")


def normalize_event_name(name: str) -> str:
    """`ObjectCreated:Put` / `s3:ObjectCreated:Put` → `s3:ObjectCreated:Put`."""
    name = name.strip()
    return name if name.startswith("s3:") else f"s3:{name}"


def validate_events(value: Any) -> tuple[str, ...]:
    if value is None:
        return DEFAULT_EVENTS
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InvalidParameterValueException("Events must be a non-empty list of event names.")
    events = tuple(dict.fromkeys(normalize_event_name(v) for v in value))
    for event in events:
        if not _EVENT_NAME.match(event):
            raise InvalidParameterValueException(
                f"The event is not supported for notifications: {event}")
    return events


def event_matches(pattern: str, event_name: str) -> bool:
    """S3's rule: a pattern ending in `*` matches that event family, otherwise exact."""
    pattern = normalize_event_name(pattern)
    name = normalize_event_name(event_name)
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return name == pattern


@dataclass(frozen=True)
class S3Subscription:
    id: str
    token: str
    function_name: str
    qualifier: str | None
    bucket: str | None
    events: tuple[str, ...]
    prefix: str | None
    suffix: str | None
    created: float

    def matches(self, record: dict[str, Any]) -> bool:
        name = record.get("eventName")
        s3 = record.get("s3")
        if not isinstance(name, str) or not isinstance(s3, dict):
            return False
        bucket = (s3.get("bucket") or {}).get("name")
        key = (s3.get("object") or {}).get("key")
        if not isinstance(bucket, str) or not isinstance(key, str):
            return False
        if self.bucket is not None and bucket != self.bucket:
            return False
        if not any(event_matches(p, name) for p in self.events):
            return False
        decoded = unquote_plus(key)
        if self.prefix and not decoded.startswith(self.prefix):
            return False
        return not (self.suffix and not decoded.endswith(self.suffix))


def _iso_now() -> str:
    moment = datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def to_s3_record(record: dict[str, Any], region: str, configuration_id: str) -> dict[str, Any]:
    """A record from AWS, MinIO or another sender in the S3 event format Lambda delivers."""
    s3 = record.get("s3") or {}
    bucket = s3.get("bucket") or {}
    obj = s3.get("object") or {}
    name = str(record.get("eventName", ""))
    request_parameters = record.get("requestParameters") or {}
    response_elements = record.get("responseElements") or {}
    out_object = {k: obj[k] for k in _OBJECT_FIELDS if obj.get(k) not in (None, "")}
    if "size" in out_object:
        try:
            out_object["size"] = int(out_object["size"])
        except (TypeError, ValueError):
            out_object.pop("size")
    bucket_name = str(bucket.get("name", ""))
    owner = bucket.get("ownerIdentity") or {"principalId": ""}
    return {
        "eventVersion": str(record.get("eventVersion") or "2.1"),
        "eventSource": "aws:s3",
        "awsRegion": record.get("awsRegion") or region,
        "eventTime": record.get("eventTime") or _iso_now(),
        "eventName": name[3:] if name.startswith("s3:") else name,
        "userIdentity": {"principalId": str((record.get("userIdentity") or {})
                                            .get("principalId", ""))},
        "requestParameters": {"sourceIPAddress": str(request_parameters.get("sourceIPAddress",
                                                                              ""))},
        "responseElements": {k: str(response_elements.get(k, "")) for k in _RESPONSE_ELEMENTS},
        "s3": {
            "s3SchemaVersion": str(s3.get("s3SchemaVersion") or "1.0"),
            "configurationId": str(s3.get("configurationId") or configuration_id),
            "bucket": {"name": bucket_name,
                       "ownerIdentity": {"principalId": str(owner.get("principalId", ""))},
                       "arn": str(bucket.get("arn") or f"arn:aws:s3:::{bucket_name}")},
            "object": out_object,
        },
    }


class S3Notifications(WithoutBackgroundWork):
    """Subscriptions (persisted, cached) and the webhook that turns records into invokes."""

    name = "s3-notifications"

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._settings = runtime.settings
        self._registry = runtime.registry
        self._tables = Tables(runtime.db)
        self._subs: dict[str, S3Subscription] = {}
        for (text,) in self._tables.rows("SELECT config FROM trigger_s3_subscriptions"):
            data = json.loads(text)
            data["events"] = tuple(data["events"])
            sub = S3Subscription(**data)
            self._subs[sub.id] = sub
        self.routes: list[BaseRoute] = [
            Route("/_corral/subscriptions/s3", self.create, methods=["POST"]),
            Route("/_corral/subscriptions/s3", self.list_subscriptions, methods=["GET"]),
            Route("/_corral/subscriptions/s3/{id}", self.get, methods=["GET"]),
            Route("/_corral/subscriptions/s3/{id}", self.delete, methods=["DELETE"]),
            Route(WEBHOOK_PREFIX + "{id}/{token}", self.webhook,
                  methods=["POST", "PUT", "GET", "HEAD"]),
        ]


    # -- control plane ---------------------------------------------------------------------------
    def webhook_url(self, request: Request, sub: S3Subscription) -> str:
        base = self._settings.endpoint_url
        if request.headers.get("host"):
            base = f"{request.url.scheme}://{request.headers['host']}"
        return f"{base}{WEBHOOK_PREFIX}{sub.id}/{sub.token}"

    def _wire(self, request: Request, sub: S3Subscription) -> dict[str, Any]:
        data: dict[str, Any] = {
            "SubscriptionId": sub.id, "WebhookUrl": self.webhook_url(request, sub),
            "FunctionName": sub.function_name,
            "FunctionArn": self._registry.arn(sub.function_name, sub.qualifier),
            "Events": list(sub.events),
        }
        for key, value in (("Bucket", sub.bucket), ("Prefix", sub.prefix),
                           ("Suffix", sub.suffix)):
            if value:
                data[key] = value
        data["CreatedDate"] = datetime.fromtimestamp(sub.created, tz=UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        return data

    def _get(self, request: Request) -> S3Subscription:
        sub = self._subs.get(str(request.path_params["id"]))
        if sub is None:
            raise ResourceNotFoundException(
                f"Subscription not found: {request.path_params['id']}")
        return sub

    @staticmethod
    def _optional_text(params: dict[str, Any], key: str) -> str | None:
        value = params.get(key)
        if value in (None, ""):
            return None
        if not isinstance(value, str) or len(value) > 1024:
            raise InvalidParameterValueException(f"{key} must be a string of at most 1024 "
                                                 "characters.")
        return value

    async def create(self, request: Request) -> Response:
        params = await signed_json(request)
        function = params.get("FunctionName")
        if not isinstance(function, str):
            raise InvalidParameterValueException("FunctionName is required.")
        ref = parse_function_name(function)
        qualifier = None if ref.qualifier in (None, LATEST) else ref.qualifier
        self._registry.get(ref.name, qualifier)
        bucket = self._optional_text(params, "Bucket")
        if bucket is not None and not _BUCKET.match(bucket):
            raise InvalidParameterValueException(f"Invalid bucket name: {bucket}")
        sub = S3Subscription(
            id=secrets.token_hex(8), token=secrets.token_urlsafe(32), function_name=ref.name,
            qualifier=qualifier, bucket=bucket, events=validate_events(params.get("Events")),
            prefix=self._optional_text(params, "Prefix"),
            suffix=self._optional_text(params, "Suffix"), created=time.time())
        self._tables.execute(
            "INSERT INTO trigger_s3_subscriptions (id, token, config, created) "
            "VALUES (?, ?, ?, ?)", (sub.id, sub.token, json.dumps(asdict(sub)), sub.created))
        self._subs[sub.id] = sub
        return json_response(self._wire(request, sub), status=201)

    async def list_subscriptions(self, request: Request) -> Response:
        await signed_body(request)
        subs = sorted(self._subs.values(), key=lambda s: s.created)
        return json_response({"Subscriptions": [self._wire(request, s) for s in subs]})

    async def get(self, request: Request) -> Response:
        await signed_body(request)
        return json_response(self._wire(request, self._get(request)))

    async def delete(self, request: Request) -> Response:
        await signed_body(request)
        sub = self._get(request)
        self._tables.execute("DELETE FROM trigger_s3_subscriptions WHERE id = ?", (sub.id,))
        self._subs.pop(sub.id, None)
        return empty_response(204)

    # -- the webhook -----------------------------------------------------------------------------
    async def webhook(self, request: Request) -> Response:
        sub = self._subs.get(str(request.path_params["id"]))
        token = str(request.path_params["token"])
        if sub is None or not hmac.compare_digest(sub.token.encode(), token.encode()):
            return JSONResponse({"message": "Not Found"}, status_code=404)
        if request.method in ("GET", "HEAD"):
            return JSONResponse({"status": "ok"})
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            return JSONResponse({"message": "Request Entity Too Large"}, status_code=413)
        body = await request.body()
        try:
            data = json.loads(body) if body.strip() else None
        except ValueError:
            return JSONResponse({"message": "The body is not valid JSON."}, status_code=400)
        if not isinstance(data, dict):
            return JSONResponse({"message": "Expected an S3 event notification object."},
                                status_code=400)
        if data.get("Event") == "s3:TestEvent":
            return JSONResponse({"Received": 0, "Invoked": 0})
        records = data.get("Records")
        if not isinstance(records, list):
            return JSONResponse({"message": "Expected a Records list."}, status_code=400)
        invoked = self.deliver(sub, records)
        return JSONResponse({"Received": len(records), "Invoked": invoked})

    def deliver(self, sub: S3Subscription, records: list[Any]) -> int:
        """Queue one asynchronous invoke per matching record; returns how many."""
        if not self._registry.exists(sub.function_name):
            log.warning("S3 subscription %s: function %s does not exist; records dropped",
                        sub.id, sub.function_name)
            return 0
        limit = self._settings.limits.async_payload_max_bytes
        count = 0
        for record in records:
            if not isinstance(record, dict) or not sub.matches(record):
                continue
            payload = json.dumps({"Records": [to_s3_record(
                record, self._settings.region, sub.id)]}).encode()
            if len(payload) > limit:
                log.warning("S3 subscription %s: record over %d bytes dropped", sub.id, limit)
                continue
            self._runtime.async_invoker.submit(new_request_id(), sub.function_name,
                                               sub.qualifier or LATEST, payload)
            count += 1
        return count


def install(runtime: Runtime) -> S3Notifications:
    return S3Notifications(runtime)
