"""AWS Signature Version 4 verification for Corral's HTTP API.

Verifies the two forms botocore produces for AWS's JSON/REST services:

* header auth: ``Authorization: AWS4-HMAC-SHA256 Credential=AKID/20261122/us-east-1/lambda/
  aws4_request, SignedHeaders=host;x-amz-date, Signature=<hex>`` with ``X-Amz-Date`` (or ``Date``);
* presigned query auth: ``X-Amz-Algorithm``, ``X-Amz-Credential``, ``X-Amz-Date``,
  ``X-Amz-Expires``, ``X-Amz-SignedHeaders`` and ``X-Amz-Signature`` in the query string.

The canonical request mirrors ``botocore.auth.SigV4Auth.canonical_request``:

* canonical URI: the path as sent on the wire with dot segments and empty segments removed, then
  percent-encoded once more with ``quote(path, safe='/~')``: non-S3 services are double-encoded,
  so ``arn%3Aaws`` is signed as ``arn%253Aaws``;
* canonical query: the raw query split on ``&`` and ``=`` and sorted by (key, value) without
  re-encoding (botocore already sends AWS's canonical encoding);
* canonical headers: the ``SignedHeaders`` in their given order, each value trimmed with inner
  whitespace runs collapsed;
* payload hash: the ``X-Amz-Content-Sha256`` header when present (``UNSIGNED-PAYLOAD`` is
  honoured; a hex digest is checked against the body), otherwise ``sha256(body)``.

Only when that form does not match are alternates tried, so they never cost anything on the
success path: the query in AWS-spec normalized encoding (decode, re-encode, sort) for SDKs that
send a non-canonical encoding, and for presigned URLs the S3-style ``UNSIGNED-PAYLOAD`` payload
hash and un-normalized path.

The module is framework-free: the caller maps its HTTP request onto `SignedRequest`. Text taken
from the wire (path, query, header values) must be decoded as latin-1, the ASGI convention, so
that the bytes the client hashed can be restored exactly.

Hot path: the HMAC pads of each derived signing key are cached per (secret, date, region,
service), canonical URIs and timestamps are memoized, so a typical verify costs one SHA-256 of the
canonical request, one HMAC from primed hash states, and some string building.
"""

from __future__ import annotations

import calendar
import email.utils
import functools
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, Protocol
from urllib.parse import quote, unquote, unquote_to_bytes

from corral.errors import (
    IncompleteSignatureException,
    InvalidSignatureException,
    MissingAuthenticationTokenException,
    UnrecognizedClientException,
)

__all__ = [
    "ALGORITHM",
    "UNSIGNED_PAYLOAD",
    "Identity",
    "SignedRequest",
    "Verifier",
]

logger = logging.getLogger(__name__)

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
TERMINATOR = "aws4_request"
MAX_PRESIGN_EXPIRES_S = 604800  # one week, AWS's ceiling for X-Amz-Expires

# AWS's wording; which messages were confirmed against real responses is in the report.
MISSING_AUTH_MESSAGE = "Missing Authentication Token"
INVALID_TOKEN_MESSAGE = "The security token included in the request is invalid."
SIGNATURE_MISMATCH_MESSAGE = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)
HOST_NOT_SIGNED_MESSAGE = (
    "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
)
MULTIPLE_AUTH_MESSAGE = (
    "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
    "Signature query string parameter or the Authorization header should be specified"
)
PRESIGN_PARAMS_MESSAGE = (
    "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
    "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters."
)
CONTENT_SHA256_MISMATCH_MESSAGE = (
    "The provided 'x-amz-content-sha256' header does not match what was computed."
)

_AUTH_PREFIX = ALGORITHM + " "
_FAST_AUTH_PREFIX = ALGORITHM + " Credential="
_PRESIGN_KEYS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)
_SIGNING_KEY_CACHE_MAX = 256


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """An HTTP request as received, in the terms SigV4 signs.

    `raw_path` and `raw_query` are exactly as on the wire (still percent-encoded; the query
    without its ``?``), decoded as latin-1. `headers` is best an ASGI-style dict with lower-case
    keys or a case-insensitive mapping; any other mapping is lower-cased once per request.
    Repeated headers must already be joined with ``,``.
    """

    method: str
    raw_path: str
    raw_query: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Identity:
    """Who signed a verified request, and the scope they signed it for."""

    access_key: str
    region: str
    service: str


class _HashState(Protocol):
    """The part of a hashlib object the HMAC fast path uses."""

    def copy(self) -> _HashState: ...
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...
    def hexdigest(self) -> str: ...


class _Scope(NamedTuple):
    """What the Credential and SignedHeaders parameters of a signature establish."""

    identity: Identity
    date: str  # YYYYMMDD
    credential_scope: str  # date/region/service/aws4_request
    signed_headers: str
    header_names: tuple[str, ...]


class Verifier:
    """Verifies SigV4-signed requests against a secret lookup.

    ``secret_for(access_key_id)`` returns the secret access key, or None for an unknown key.
    ``clock()`` returns the current epoch time: requests dated more than ``max_skew_s`` seconds
    from it are refused, as are presigned URLs older than their ``X-Amz-Expires``.
    """

    __slots__ = ("_clock", "_max_skew_s", "_pads", "_secret_for")

    def __init__(
        self,
        secret_for: Callable[[str], str | None],
        clock: Callable[[], float] = time.time,
        max_skew_s: int = 300,
    ) -> None:
        if max_skew_s < 0:
            raise ValueError("max_skew_s must be >= 0")
        self._secret_for = secret_for
        self._clock = clock
        self._max_skew_s = max_skew_s
        # (secret, credential scope) -> SHA-256 states primed with the inner and outer pads of
        # the derived signing key, so HMAC(key, msg) costs two copies and two updates.
        self._pads: dict[tuple[str, str], tuple[_HashState, _HashState]] = {}

    def verify(self, req: SignedRequest) -> Identity:
        """Return the signer's identity, or raise the AWS error that rejects the request."""
        headers = req.headers
        get: Callable[[str], str | None] = headers.get
        auth_header = get("authorization")
        if auth_header is None and headers:
            # Either absent or the mapping has mixed-case keys: look case-insensitively.
            get = _lowered(headers).get
            auth_header = get("authorization")

        query = req.raw_query
        presigned = auth_header is None
        expires = 0
        if auth_header is not None:
            if query and "X-Amz-" in query and _has_presign_params(query):
                raise IncompleteSignatureException(MULTIPLE_AUTH_MESSAGE)
            # Fast path for botocore's layout; the Credential/SignedHeaders part is memoized.
            head, sep, signature = auth_header.rpartition(", Signature=")
            scope = (
                _botocore_layout_scope(head)
                if sep and len(signature) == 64 and head.startswith(_FAST_AUTH_PREFIX)
                else None
            )
            timestamp = get("x-amz-date")
            if scope is None or timestamp is None or _epoch(timestamp) is None:
                scope, signature, timestamp = _parse_header_auth(auth_header, headers)
        elif query and "X-Amz-" in query and _has_presign_params(query):
            scope, signature, timestamp, expires = _parse_query_auth(query)
        else:
            raise MissingAuthenticationTokenException(MISSING_AUTH_MESSAGE)

        if timestamp[:8] != scope.date:
            raise InvalidSignatureException(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
                f"from HTTP: '{scope.date}' != '{timestamp[:8]}', from '{timestamp}'."
            )
        if get("x-amz-security-token") is not None or (
            presigned and "X-Amz-Security-Token=" in query
        ):
            # Corral issues long-term keys only, so any session token is one it never issued.
            raise UnrecognizedClientException(INVALID_TOKEN_MESSAGE)
        self._check_time(timestamp, expires if presigned else None)

        identity = scope.identity
        secret = self._secret_for(identity.access_key)
        if secret is None:
            raise UnrecognizedClientException(INVALID_TOKEN_MESSAGE)
        pads = self._pads.get((secret, scope.credential_scope))
        if pads is None:
            pads = self._derive_pads(secret, scope)

        declared = get("x-amz-content-sha256")
        payload_hash = declared if declared is not None else hashlib.sha256(req.body).hexdigest()
        lines = []
        for name in scope.header_names:
            value = get(name)
            if value is None:
                value = _lowered(headers).get(name, "")
            if " " in value or not value.isprintable():
                value = " ".join(value.split())  # trim, and collapse runs of whitespace
            lines.append(f"{name}:{value}")
        method = req.method.upper()
        uri = _canonical_uri(req.raw_path)
        canonical_query = _botocore_query(query, presigned) if query else ""
        tail = "\n" + "\n".join(lines) + "\n\n" + scope.signed_headers + "\n"
        canonical = f"{method}\n{uri}\n{canonical_query}{tail}{payload_hash}"
        sts_prefix = f"{ALGORITHM}\n{timestamp}\n{scope.credential_scope}\n"
        comparable = signature.isascii() and len(signature) == 64

        if not (comparable and hmac.compare_digest(_mac(pads, sts_prefix, canonical), signature)):
            for alternate in _alternates(req, presigned, uri, canonical_query, tail, payload_hash):
                if comparable and hmac.compare_digest(_mac(pads, sts_prefix, alternate), signature):
                    break
            else:
                if logger.isEnabledFor(logging.DEBUG):
                    sts = sts_prefix + hashlib.sha256(_wire_bytes(canonical)).hexdigest()
                    logger.debug(
                        "SigV4 mismatch for %s; expected canonical request:\n%s\n"
                        "expected string to sign:\n%s",
                        identity.access_key,
                        canonical,
                        sts,
                    )
                raise InvalidSignatureException(SIGNATURE_MISMATCH_MESSAGE)

        # The signature covers the declared payload hash; make sure it is the body's hash.
        if (
            declared is not None
            and declared != UNSIGNED_PAYLOAD
            and not (
                declared.isascii()
                and hmac.compare_digest(hashlib.sha256(req.body).hexdigest(), declared)
            )
        ):
            raise InvalidSignatureException(CONTENT_SHA256_MISMATCH_MESSAGE)
        return identity

    def _check_time(self, timestamp: str, expires: int | None) -> None:
        signed_at = _epoch(timestamp)
        assert signed_at is not None  # validated while parsing
        now = self._clock()
        skew = self._max_skew_s
        if signed_at > now + skew:
            raise InvalidSignatureException(
                f"Signature not yet current: {timestamp} is still later than "
                f"{_fmt(now + skew)} ({_fmt(now)} + {_span(skew)})"
            )
        window = skew if expires is None else expires
        if signed_at < now - window:
            raise InvalidSignatureException(
                f"Signature expired: {timestamp} is now earlier than "
                f"{_fmt(now - window)} ({_fmt(now)} - {_span(window)})"
            )

    def _derive_pads(self, secret: str, scope: _Scope) -> tuple[_HashState, _HashState]:
        key = ("AWS4" + secret).encode()
        for part in scope.credential_scope.split("/"):
            key = hmac.digest(key, part.encode(), "sha256")
        block = key.ljust(64, b"\0")  # the 32-byte key is shorter than SHA-256's 64-byte block
        pads = (
            hashlib.sha256(bytes(b ^ 0x36 for b in block)),
            hashlib.sha256(bytes(b ^ 0x5C for b in block)),
        )
        if len(self._pads) >= _SIGNING_KEY_CACHE_MAX:
            self._pads.clear()
        self._pads[(secret, scope.credential_scope)] = pads
        return pads


def _mac(pads: tuple[_HashState, _HashState], sts_prefix: str, canonical: str) -> str:
    """Hex HMAC of the string to sign for `canonical`, from the primed pads."""
    sts = sts_prefix + hashlib.sha256(_wire_bytes(canonical)).hexdigest()
    inner = pads[0].copy()
    inner.update(sts.encode())
    outer = pads[1].copy()
    outer.update(inner.digest())
    return outer.hexdigest()


# -- parsing -----------------------------------------------------------------------------------


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


@functools.lru_cache(maxsize=1024)
def _botocore_layout_scope(head: str) -> _Scope | None:
    """The scope of ``<alg> Credential=.., SignedHeaders=..`` (botocore's layout), else None."""
    parts = head[len(_AUTH_PREFIX) :].split(", ")
    if len(parts) != 2 or not parts[1].startswith("SignedHeaders="):
        return None
    credential, signed_headers = parts[0][11:], parts[1][14:]
    if not credential or not signed_headers:
        return None
    return _scope(credential, signed_headers)


def _parse_header_auth(value: str, headers: Mapping[str, str]) -> tuple[_Scope, str, str]:
    """Scope, signature and timestamp of any well-formed header auth, else the AWS error."""
    credential = signed_headers = signature = None
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm == ALGORITHM:
        params: dict[str, str] = {}
        for item in rest.split(","):
            key, sep, val = item.strip().partition("=")
            if sep:
                params[key] = val.strip()
        credential = params.get("Credential")
        signed_headers = params.get("SignedHeaders")
        signature = params.get("Signature")

    lowered = _lowered(headers)
    raw_date = lowered.get("x-amz-date")
    date_header = lowered.get("date") if raw_date is None else None

    missing = []
    if not credential:
        missing.append("Authorization header requires 'Credential' parameter.")
    if not signature:
        missing.append("Authorization header requires 'Signature' parameter.")
    if not signed_headers:
        missing.append("Authorization header requires 'SignedHeaders' parameter.")
    if raw_date is None and date_header is None:
        missing.append(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
        )
    if not credential or not signature or not signed_headers or missing:
        raise IncompleteSignatureException(" ".join(missing) + f" Authorization={value}")

    scope = _scope(credential, signed_headers)
    if raw_date is not None:
        timestamp = raw_date.strip()
        if _epoch(timestamp) is None:
            raise IncompleteSignatureException(_bad_date_message(raw_date))
    else:
        assert date_header is not None
        timestamp = _timestamp_from_http_date(date_header)
    return scope, signature, timestamp


def _has_presign_params(raw_query: str) -> bool:
    for pair in raw_query.split("&"):
        key = pair.partition("=")[0]
        if key == "X-Amz-Algorithm" or key == "X-Amz-Signature":
            return True
    return False


def _parse_query_auth(raw_query: str) -> tuple[_Scope, str, str, int]:
    """Scope, signature, timestamp and expiry of presigned query auth, else the AWS error."""
    found: dict[str, str] = {}
    for pair in raw_query.split("&"):
        key, _, value = pair.partition("=")
        if key in _PRESIGN_KEYS:
            if key in found:
                raise IncompleteSignatureException(PRESIGN_PARAMS_MESSAGE)
            found[key] = unquote(value)
    if any(not found.get(k) for k in _PRESIGN_KEYS):
        raise IncompleteSignatureException(PRESIGN_PARAMS_MESSAGE)
    if found["X-Amz-Algorithm"] != ALGORITHM:
        raise IncompleteSignatureException(f'X-Amz-Algorithm only supports "{ALGORITHM}"')
    raw_expires = found["X-Amz-Expires"]
    if not (raw_expires.isascii() and raw_expires.isdigit()):
        raise IncompleteSignatureException("X-Amz-Expires should be a number")
    expires = int(raw_expires)
    if expires > MAX_PRESIGN_EXPIRES_S:
        raise IncompleteSignatureException(
            f"X-Amz-Expires must be less than a week (in seconds) that is; {MAX_PRESIGN_EXPIRES_S}"
        )
    scope = _scope(found["X-Amz-Credential"], found["X-Amz-SignedHeaders"])
    timestamp = found["X-Amz-Date"]
    if _epoch(timestamp) is None:
        raise IncompleteSignatureException(_bad_date_message(timestamp))
    return scope, found["X-Amz-Signature"], timestamp, expires


@functools.lru_cache(maxsize=1024)
def _scope(credential: str, signed_headers: str) -> _Scope:
    parts = credential.split("/")
    if len(parts) != 5 or not parts[0]:
        raise IncompleteSignatureException(
            "Credential must have exactly 5 slash-delimited elements, "
            f"e.g. keyid/date/region/service/term, got '{credential}'"
        )
    access_key, date, region, service, terminator = parts
    if terminator != TERMINATOR:
        raise InvalidSignatureException(
            f"Credential should be scoped with a valid terminator: '{TERMINATOR}', "
            f"not '{terminator}'. "
        )
    if not region:
        raise InvalidSignatureException("Credential should be scoped to a valid region. ")
    if not service:
        raise InvalidSignatureException("Credential should be scoped to correct service. ")
    names = tuple(signed_headers.split(";"))
    if "host" not in names:
        raise IncompleteSignatureException(HOST_NOT_SIGNED_MESSAGE)
    return _Scope(
        Identity(access_key, region, service),
        date,
        f"{date}/{region}/{service}/{TERMINATOR}",
        signed_headers,
        names,
    )


@functools.lru_cache(maxsize=1024)
def _epoch(timestamp: str) -> int | None:
    """Seconds since the epoch of a ``YYYYMMDDTHHMMSSZ`` timestamp, or None if malformed."""
    t = timestamp
    if (
        len(t) != 16
        or t[8] != "T"
        or t[15] != "Z"
        or not t.isascii()
        or not t[:8].isdigit()
        or not t[9:15].isdigit()
    ):
        return None
    try:
        parsed = datetime(
            int(t[:4]), int(t[4:6]), int(t[6:8]), int(t[9:11]), int(t[11:13]), int(t[13:15])
        )
    except ValueError:
        return None
    return calendar.timegm(parsed.timetuple())


def _timestamp_from_http_date(value: str) -> str:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        raise IncompleteSignatureException(_bad_date_message(value)) from None
    return _fmt(calendar.timegm(parsed.utctimetuple()))


def _bad_date_message(value: str) -> str:
    return (
        f"Date must be in ISO-8601 'basic format'. Got '{value}'. "
        "See http://en.wikipedia.org/wiki/ISO_8601"
    )


def _fmt(epoch: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(int(epoch)))


def _span(seconds: int) -> str:
    return f"{seconds // 60} min." if seconds % 60 == 0 else f"{seconds} sec."


# -- canonical request -------------------------------------------------------------------------


def _alternates(
    req: SignedRequest,
    presigned: bool,
    uri: str,
    query: str,
    tail: str,
    payload_hash: str,
) -> Iterator[str]:
    """Canonical requests other clients may have signed, each distinct one once.

    Tried only after botocore's form failed: the AWS-spec normalized query, and for presigned
    URLs the S3 flavour (un-normalized path, ``UNSIGNED-PAYLOAD``).
    """
    method = req.method.upper()
    queries = [query]
    if req.raw_query:
        normalized = _normalized_query(req.raw_query, presigned)
        if normalized != query:
            queries.append(normalized)
    uris = [uri]
    payloads = [payload_hash]
    if presigned:
        uris.append(req.raw_path or "/")
        payloads.append(UNSIGNED_PAYLOAD)
    seen = {(uri, query, payload_hash)}
    for u in uris:
        for q in queries:
            for p in payloads:
                if (u, q, p) not in seen:
                    seen.add((u, q, p))
                    yield f"{method}\n{u}\n{q}{tail}{p}"


@functools.lru_cache(maxsize=4096)
def _canonical_uri(raw_path: str) -> str:
    """botocore's ``quote(normalize_url_path(path), safe='/~')`` applied to the wire path."""
    path = _remove_dot_segments(raw_path) if raw_path else "/"
    if path.isascii():
        return quote(path, safe="/~")
    return quote(_latin1_or_utf8(path), safe="/~")


def _remove_dot_segments(path: str) -> str:
    # botocore.utils.remove_dot_segments: RFC 3986 section 5.2.4, and empty segments dropped.
    output: list[str] = []
    for segment in path.split("/"):
        if segment and segment != ".":
            if segment == "..":
                if output:
                    output.pop()
            else:
                output.append(segment)
    first = "/" if path[0] == "/" else ""
    last = "/" if path[-1] == "/" and output else ""
    return first + "/".join(output) + last


def _botocore_query(raw_query: str, presigned: bool) -> str:
    """botocore's ``_canonical_query_string_url``: split, sort by (key, value), no re-encoding."""
    if not raw_query:
        return ""
    pairs = [pair.partition("=")[::2] for pair in raw_query.split("&")]
    if presigned:
        pairs = [p for p in pairs if p[0] != "X-Amz-Signature"]
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def _normalized_query(raw_query: str, presigned: bool) -> str:
    """AWS's documented canonical query: keys and values decoded, re-encoded, then sorted."""
    pairs = []
    for pair in raw_query.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        if presigned and key == "X-Amz-Signature":
            continue
        pairs.append((_aws_encode(key), _aws_encode(value)))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def _aws_encode(component: str) -> str:
    return quote(unquote_to_bytes(_latin1_or_utf8(component)), safe="-_.~")


def _latin1_or_utf8(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:  # the caller decoded as UTF-8 after all
        return text.encode("utf-8")


def _wire_bytes(canonical: str) -> bytes:
    # Non-ASCII text comes from latin-1-decoded wire bytes: encoding back to latin-1 restores
    # what the client hashed (the UTF-8 of its text, which is also what it put on the wire).
    if canonical.isascii():
        return canonical.encode("ascii")
    return _latin1_or_utf8(canonical)
