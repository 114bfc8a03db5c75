"""SigV4 verification checked against botocore's own signers as the oracle.

Requests are signed by `botocore.auth.SigV4Auth`/`SigV4QueryAuth` (and by a real boto3 Lambda
client, captured before it reaches the network), converted to what a server receives, and handed
to `corral.iam.sigv4.Verifier`.
"""

from __future__ import annotations

import calendar
import hashlib
import re
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import S3SigV4QueryAuth, SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSPreparedRequest, AWSRequest, AWSResponse
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials

from corral.errors import (
    IncompleteSignatureException,
    InvalidSignatureException,
    LambdaApiError,
    MissingAuthenticationTokenException,
    UnrecognizedClientException,
)
from corral.iam.sigv4 import (
    CONTENT_SHA256_MISMATCH_MESSAGE,
    HOST_NOT_SIGNED_MESSAGE,
    INVALID_TOKEN_MESSAGE,
    MISSING_AUTH_MESSAGE,
    MULTIPLE_AUTH_MESSAGE,
    SIGNATURE_MISMATCH_MESSAGE,
    Identity,
    SignedRequest,
    Verifier,
)

AKID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
ENDPOINT = "http://127.0.0.1:9000"
ARN = "arn:aws:lambda:us-east-1:000000000000:function:f"
ARN_PATH = "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Af"
INVOKE_URL = f"{ENDPOINT}{ARN_PATH}/invocations"
BINARY_BODY = bytes(range(256)) * 3

HeaderStyle = Callable[[Mapping[str, str]], Mapping[str, str]]


def asgi_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """Lower-case keys, as a dict built from ASGI scope headers has."""
    return {k.lower(): v for k, v in headers.items()}


def as_sent(headers: Mapping[str, str]) -> Mapping[str, str]:
    """Mixed-case keys exactly as botocore wrote them."""
    return dict(headers)


@pytest.fixture(params=[asgi_headers, as_sent], ids=["asgi-lowercase", "mixed-case"])
def header_style(request: pytest.FixtureRequest) -> HeaderStyle:
    """Both header mapping shapes a caller may pass."""
    style: HeaderStyle = request.param
    return style


def sign(
    method: str,
    url: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    secret: str = SECRET,
    akid: str = AKID,
) -> AWSRequest:
    """Sign a request the way botocore signs Lambda calls."""
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    SigV4Auth(Credentials(akid, secret), "lambda", "us-east-1").add_auth(request)
    return request


def received(
    request: AWSRequest | AWSPreparedRequest,
    style: HeaderStyle = asgi_headers,
    **overrides: Any,
) -> SignedRequest:
    """What the server sees for a botocore request: wire path/query, Host added by the client."""
    parts = urlsplit(_url(request))
    headers = {
        k: v.decode("latin-1") if isinstance(v, bytes) else v for k, v in request.headers.items()
    }
    headers.setdefault("Host", str(parts.netloc))
    body = request.body or b""
    if isinstance(body, str):
        body = body.encode()
    fields: dict[str, Any] = {
        "method": request.method,
        "raw_path": parts.path,
        "raw_query": parts.query,
        "headers": style(headers),
        "body": body,
    }
    fields.update(overrides)
    return SignedRequest(**fields)


def _url(request: AWSRequest | AWSPreparedRequest) -> str:
    """The request URL (botocore's stubs allow bytes; it is always text here)."""
    url = request.url
    assert isinstance(url, str)
    return url


def signed_at(request: AWSRequest | SignedRequest) -> int:
    """The epoch second a botocore request was signed at."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    stamp = headers["x-amz-date"]
    stamp = stamp.decode() if isinstance(stamp, bytes) else stamp
    return calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))


def fmt(epoch: int) -> str:
    """Epoch seconds as SigV4's basic ISO-8601 timestamp."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch))


def verifier(
    keys: Mapping[str, str] | None = None, at: float | None = None, max_skew_s: int = 300
) -> Verifier:
    """A verifier over `keys` whose clock is fixed at `at` (or real time)."""
    lookup = dict(keys if keys is not None else {AKID: SECRET})
    clock: Callable[[], float] = time.time if at is None else (lambda: at)
    return Verifier(lookup.get, clock=clock, max_skew_s=max_skew_s)


def expect(exc_type: type[LambdaApiError], message: str | None = None) -> Any:
    """pytest.raises for a Corral wire error with an exact message."""
    return pytest.raises(exc_type, match=None if message is None else f"^{re.escape(message)}$")


# -- accepted requests ---------------------------------------------------------------------------


def test_invoke_with_percent_encoded_arn_and_binary_body(header_style: HeaderStyle) -> None:
    """A POST to an ARN path (double-encoded in the canonical URI) with a binary body verifies."""
    request = sign("POST", INVOKE_URL + "?Qualifier=v1", BINARY_BODY)
    identity = verifier().verify(received(request, header_style))
    assert identity == Identity(AKID, "us-east-1", "lambda")


def test_empty_body_post_and_get(header_style: HeaderStyle) -> None:
    """Requests with no body hash the empty string and verify."""
    for method in ("POST", "GET", "DELETE"):
        request = sign(method, f"{ENDPOINT}/2015-03-31/functions/f/invocations")
        assert verifier().verify(received(request, header_style)).access_key == AKID


def test_query_with_repeated_keys_and_special_characters(header_style: HeaderStyle) -> None:
    """Repeated keys sort by value; percent-encoded UTF-8, '/', '=', '&' and spaces verify."""
    query = "tagKeys=b&tagKeys=a&tagKeys=a%20b&tagKeys=%C3%BC%2F%3D%26&Marker=x~y.z-_"
    request = sign("DELETE", f"{ENDPOINT}/2017-03-31/tags/{ARN_PATH.rsplit('/', 1)[1]}?{query}")
    assert verifier().verify(received(request, header_style)).access_key == AKID


def test_empty_query_values_and_bare_keys() -> None:
    """Keys without values sign as 'key=' exactly as botocore canonicalizes them."""
    request = sign("GET", f"{ENDPOINT}/2015-03-31/functions/?FunctionVersion=&Marker")
    assert verifier().verify(received(request)).access_key == AKID


def test_dot_segments_and_double_slashes_are_normalized() -> None:
    """botocore signs a path with '.', '..' and '//' normalized away; so does the verifier."""
    request = sign("GET", f"{ENDPOINT}/2015-03-31//functions/./x/../f/configuration/")
    assert verifier().verify(received(request)).access_key == AKID


def test_content_sha256_header_is_used_as_payload_hash(header_style: HeaderStyle) -> None:
    """A signed X-Amz-Content-Sha256 matching the body replaces hashing in the canonical request."""
    digest = hashlib.sha256(BINARY_BODY).hexdigest()
    request = sign("POST", INVOKE_URL, BINARY_BODY, {"X-Amz-Content-SHA256": digest})
    assert verifier().verify(received(request, header_style)).access_key == AKID


def test_unsigned_payload_is_honoured() -> None:
    """With X-Amz-Content-Sha256: UNSIGNED-PAYLOAD the body is not part of the signature."""
    request = sign("POST", INVOKE_URL, b"signed", {"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    assert verifier().verify(received(request, body=b"anything")).access_key == AKID


def test_header_values_are_trimmed_and_whitespace_collapsed() -> None:
    """Values sent with padding and inner runs of spaces/tabs verify as botocore trims them."""
    messy = "  a   b \t c  "
    request = sign("POST", INVOKE_URL, b"{}", {"X-Amz-Client-Context": messy})
    seen = received(request)
    assert seen.headers["x-amz-client-context"] == messy
    assert verifier().verify(seen).access_key == AKID


def test_date_header_instead_of_x_amz_date() -> None:
    """botocore signs with an RFC 1123 Date header when one is present; that verifies too."""
    request = sign("GET", f"{ENDPOINT}/2015-03-31/functions/", headers={"Date": "x"})
    seen = received(request)
    assert "x-amz-date" not in seen.headers
    assert verifier().verify(seen).access_key == AKID


def test_unicode_path_and_query_from_latin1_decoded_wire() -> None:
    """Raw UTF-8 on the wire, latin-1-decoded as ASGI does, matches botocore's signature."""
    request = sign("GET", f"{ENDPOINT}/2015-03-31/functions/caf\u00e9/configuration?q=\u00fc")
    seen = received(request)
    wire = SignedRequest(
        seen.method,
        seen.raw_path.encode("utf-8").decode("latin-1"),
        seen.raw_query.encode("utf-8").decode("latin-1"),
        seen.headers,
        seen.body,
    )
    assert verifier().verify(wire).access_key == AKID


def test_other_services_and_regions_are_reported() -> None:
    """The identity carries the signed region and service so the caller can check them."""
    request = AWSRequest(method="POST", url=f"{ENDPOINT}/", data=b"{}")
    SigV4Auth(Credentials(AKID, SECRET), "logs", "eu-west-1").add_auth(request)
    assert verifier().verify(received(request)) == Identity(AKID, "eu-west-1", "logs")


def test_signing_key_cache_follows_the_secret() -> None:
    """After a key's secret changes, requests signed with the old secret no longer verify."""
    keys = {AKID: SECRET}
    v = Verifier(keys.get)
    v.verify(received(sign("GET", INVOKE_URL)))
    keys[AKID] = "rotated-secret"
    with expect(InvalidSignatureException, SIGNATURE_MISMATCH_MESSAGE):
        v.verify(received(sign("GET", INVOKE_URL)))
    assert v.verify(received(sign("GET", INVOKE_URL, secret="rotated-secret"))).access_key == AKID


def test_skew_within_five_minutes_is_accepted() -> None:
    """Requests dated up to the allowed skew either side of the server clock verify."""
    request = received(sign("GET", INVOKE_URL))
    t = signed_at(request)
    for now in (t - 300, t + 300):
        assert verifier(at=now).verify(request).access_key == AKID


# -- presigned URLs ------------------------------------------------------------------------------


def presign(url: str, expires: int = 60, signer: type[SigV4QueryAuth] = SigV4QueryAuth) -> Any:
    """A presigned GET built by botocore's query signer."""
    request = AWSRequest(method="GET", url=url)
    service = "s3" if signer is S3SigV4QueryAuth else "lambda"
    signer(Credentials(AKID, SECRET), service, "us-east-1", expires=expires).add_auth(request)
    return request


def presign_time(request: AWSRequest) -> int:
    """The X-Amz-Date of a presigned URL as epoch seconds."""
    query = dict(p.split("=", 1) for p in urlsplit(_url(request)).query.split("&"))
    return calendar.timegm(time.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))


def test_presigned_url_verifies(header_style: HeaderStyle) -> None:
    """A SigV4QueryAuth URL with extra query parameters verifies without an Authorization header."""
    request = presign(f"{ENDPOINT}/2015-03-31/functions/{ARN}/configuration?Qualifier=v%201")
    assert verifier().verify(received(request, header_style)).access_key == AKID


def test_s3_style_presigned_url_verifies() -> None:
    """An S3SigV4QueryAuth URL (raw path, UNSIGNED-PAYLOAD) verifies via the alternate forms."""
    request = presign(f"{ENDPOINT}/bucket/some%20key/a%3Ab", signer=S3SigV4QueryAuth)
    assert verifier().verify(received(request)) == Identity(AKID, "us-east-1", "s3")


def test_presigned_url_expires() -> None:
    """A presigned URL is refused once X-Amz-Expires seconds have passed since X-Amz-Date."""
    request = presign(INVOKE_URL, expires=60)
    t = presign_time(request)
    assert verifier(at=t + 60).verify(received(request)).access_key == AKID
    message = (
        f"Signature expired: {fmt(t)} is now earlier than {fmt(t + 1)} ({fmt(t + 61)} - 1 min.)"
    )
    with expect(InvalidSignatureException, message):
        verifier(at=t + 61).verify(received(request))


def test_presigned_url_with_tampered_query_is_refused() -> None:
    """Changing an operation parameter of a presigned URL breaks its signature."""
    request = presign(INVOKE_URL + "?Qualifier=v1")
    seen = received(request)
    tampered = seen.raw_query.replace("Qualifier=v1", "Qualifier=v2")
    with expect(InvalidSignatureException, SIGNATURE_MISMATCH_MESSAGE):
        verifier().verify(received(request, raw_query=tampered))


def test_presigned_url_missing_parameter() -> None:
    """A presigned URL without X-Amz-Expires is incomplete."""
    request = presign(INVOKE_URL)
    query = "&".join(
        p for p in urlsplit(request.url).query.split("&") if not p.startswith("X-Amz-Expires=")
    )
    with pytest.raises(IncompleteSignatureException, match="requires the X-Amz-Algorithm"):
        verifier().verify(received(request, raw_query=query))


def test_presigned_and_header_auth_together_are_refused() -> None:
    """A request may not carry both an Authorization header and a presigned query."""
    request = presign(INVOKE_URL)
    seen = received(request)
    headers = {**seen.headers, "authorization": "AWS4-HMAC-SHA256 Credential=x"}
    with expect(IncompleteSignatureException, MULTIPLE_AUTH_MESSAGE):
        verifier().verify(received(request, headers=headers))


# -- refused requests ----------------------------------------------------------------------------


def test_tampered_body_is_refused() -> None:
    """A body differing from the signed one fails the signature."""
    request = sign("POST", INVOKE_URL, b'{"amount": 1}')
    with expect(InvalidSignatureException, SIGNATURE_MISMATCH_MESSAGE):
        verifier().verify(received(request, body=b'{"amount": 9}'))


def test_body_not_matching_declared_content_sha256_is_refused() -> None:
    """A signed X-Amz-Content-Sha256 must be the hash of the body actually received."""
    digest = hashlib.sha256(b"original").hexdigest()
    request = sign("POST", INVOKE_URL, b"original", {"X-Amz-Content-SHA256": digest})
    with expect(InvalidSignatureException, CONTENT_SHA256_MISMATCH_MESSAGE):
        verifier().verify(received(request, body=b"swapped"))


def test_tampered_signed_header_is_refused() -> None:
    """Changing any signed header (here the invocation type) fails the signature."""
    request = sign("POST", INVOKE_URL, b"{}", {"X-Amz-Invocation-Type": "RequestResponse"})
    seen = received(request)
    headers = {**seen.headers, "x-amz-invocation-type": "Event"}
    with expect(InvalidSignatureException, SIGNATURE_MISMATCH_MESSAGE):
        verifier().verify(received(request, headers=headers))


def test_tampered_host_path_query_or_method_is_refused() -> None:
    """Host, path, query and method are all covered by the signature."""
    request = sign("GET", INVOKE_URL + "?Qualifier=v1")
    seen = received(request)
    variants: list[dict[str, Any]] = [
        {"headers": {**seen.headers, "host": "evil.example:9000"}},
        {"raw_path": seen.raw_path.replace("function%3Af", "function%3Ag")},
        {"raw_query": "Qualifier=v2"},
        {"method": "DELETE"},
    ]
    for change in variants:
        with expect(InvalidSignatureException, SIGNATURE_MISMATCH_MESSAGE):
            verifier().verify(received(request, **change))


def test_wrong_secret_is_refused() -> None:
    """A request signed with a different secret for a known key fails the signature."""
    request = sign("POST", INVOKE_URL, b"{}", secret="not-the-secret")
    with expect(InvalidSignatureException, SIGNATURE_MISMATCH_MESSAGE):
        verifier().verify(received(request))


def test_unknown_access_key_is_unrecognized() -> None:
    """An access key the store does not know is UnrecognizedClientException (403)."""
    request = sign("POST", INVOKE_URL, b"{}", akid="AKIAUNKNOWNUNKNOWN00")
    with expect(UnrecognizedClientException, INVALID_TOKEN_MESSAGE) as caught:
        verifier().verify(received(request))
    assert caught.value.status == 403


def test_session_token_is_unrecognized() -> None:
    """Corral issues no session tokens, so a request carrying one is refused."""
    request = AWSRequest(method="GET", url=INVOKE_URL)
    SigV4Auth(Credentials(AKID, SECRET, "some-token"), "lambda", "us-east-1").add_auth(request)
    with expect(UnrecognizedClientException, INVALID_TOKEN_MESSAGE):
        verifier().verify(received(request))


def test_signature_expired_six_minutes_late() -> None:
    """Six minutes after signing the request is refused with AWS's 'Signature expired' text."""
    request = received(sign("GET", INVOKE_URL))
    t = signed_at(request)
    message = (
        f"Signature expired: {fmt(t)} is now earlier than {fmt(t + 60)} ({fmt(t + 360)} - 5 min.)"
    )
    with expect(InvalidSignatureException, message) as caught:
        verifier(at=t + 360).verify(request)
    assert caught.value.status == 403


def test_signature_not_yet_current_six_minutes_early() -> None:
    """Six minutes before the signing time the request is refused as not yet current."""
    request = received(sign("GET", INVOKE_URL))
    t = signed_at(request)
    message = (
        f"Signature not yet current: {fmt(t)} is still later than {fmt(t - 60)} "
        f"({fmt(t - 360)} + 5 min.)"
    )
    with expect(InvalidSignatureException, message):
        verifier(at=t - 360).verify(request)


def test_missing_authentication() -> None:
    """A request with neither an Authorization header nor a presigned query is refused."""
    request = AWSRequest(method="GET", url=INVOKE_URL + "?Qualifier=v1")
    with expect(MissingAuthenticationTokenException, MISSING_AUTH_MESSAGE):
        verifier().verify(received(request))


def with_auth(value: str, **headers: str) -> SignedRequest:
    """A fresh signed GET whose Authorization header is replaced by `value`."""
    seen = received(sign("GET", INVOKE_URL))
    return received(
        sign("GET", INVOKE_URL), headers={**seen.headers, **headers, "authorization": value}
    )


def test_non_sigv4_authorization_is_incomplete() -> None:
    """A bearer token gets AWS's list of every missing SigV4 component."""
    message = (
        "Authorization header requires 'Credential' parameter. "
        "Authorization header requires 'Signature' parameter. "
        "Authorization header requires 'SignedHeaders' parameter. "
        "Authorization=Bearer abc"
    )
    with expect(IncompleteSignatureException, message):
        verifier().verify(with_auth("Bearer abc"))


def test_authorization_missing_signature_is_incomplete() -> None:
    """Dropping the Signature parameter is reported as incomplete, echoing the header."""
    value = f"AWS4-HMAC-SHA256 Credential={AKID}/20261122/us-east-1/lambda/aws4_request, "
    value += "SignedHeaders=host;x-amz-date"
    message = f"Authorization header requires 'Signature' parameter. Authorization={value}"
    with expect(IncompleteSignatureException, message):
        verifier().verify(with_auth(value))


def test_malformed_credential_scope() -> None:
    """A credential with the wrong number of elements, or terminator, is refused."""
    sig = "0" * 64
    four = f"AWS4-HMAC-SHA256 Credential={AKID}/us-east-1/lambda/aws4_request, "
    four += f"SignedHeaders=host;x-amz-date, Signature={sig}"
    with pytest.raises(IncompleteSignatureException, match="exactly 5 slash-delimited"):
        verifier().verify(with_auth(four))

    seen = with_auth("x")
    date = seen.headers["x-amz-date"][:8]
    term = f"AWS4-HMAC-SHA256 Credential={AKID}/{date}/us-east-1/lambda/aws4_reqest, "
    term += f"SignedHeaders=host;x-amz-date, Signature={sig}"
    with pytest.raises(InvalidSignatureException, match="valid terminator"):
        verifier().verify(with_auth(term))


def test_scope_date_must_match_request_date() -> None:
    """The credential scope date must be the date part of X-Amz-Date."""
    value = f"AWS4-HMAC-SHA256 Credential={AKID}/19991231/us-east-1/lambda/aws4_request, "
    value += f"SignedHeaders=host;x-amz-date, Signature={'0' * 64}"
    with pytest.raises(InvalidSignatureException, match=r"^Date in Credential scope"):
        verifier().verify(with_auth(value))


def test_host_must_be_signed() -> None:
    """SignedHeaders without host is refused with AWS's message."""
    seen = with_auth("x")
    date = seen.headers["x-amz-date"][:8]
    value = f"AWS4-HMAC-SHA256 Credential={AKID}/{date}/us-east-1/lambda/aws4_request, "
    value += f"SignedHeaders=x-amz-date, Signature={'0' * 64}"
    with expect(IncompleteSignatureException, HOST_NOT_SIGNED_MESSAGE):
        verifier().verify(with_auth(value))


def test_malformed_x_amz_date() -> None:
    """An X-Amz-Date that is not basic ISO-8601 is refused as incomplete."""
    seen = received(sign("GET", INVOKE_URL))
    headers = {**seen.headers, "x-amz-date": "2026-11-22T10:00:00Z"}
    with pytest.raises(IncompleteSignatureException, match=r"^Date must be in ISO-8601"):
        verifier().verify(received(sign("GET", INVOKE_URL), headers=headers))


def test_garbage_signature_is_a_mismatch_not_a_crash() -> None:
    """Non-hex, non-ASCII or short signatures are plain mismatches."""
    seen = received(sign("GET", INVOKE_URL))
    good = seen.headers["authorization"]
    for bad in ("\u00e9" * 64, "zz", "0" * 65):
        value = good.rsplit("Signature=", 1)[0] + "Signature=" + bad
        with expect(InvalidSignatureException, SIGNATURE_MISMATCH_MESSAGE):
            verifier().verify(
                received(
                    sign("GET", INVOKE_URL),
                    headers={
                        **seen.headers,
                        "authorization": value,
                    },
                )
            )


def test_authorization_with_unusual_spacing_still_verifies() -> None:
    """Parameters separated by ',' without spaces, in another order, are parsed too."""
    seen = received(sign("GET", INVOKE_URL))
    alg, rest = seen.headers["authorization"].split(" ", 1)
    params = dict(p.split("=", 1) for p in rest.split(", "))
    value = f"{alg} Signature={params['Signature']},Credential={params['Credential']},"
    value += f"SignedHeaders={params['SignedHeaders']}"
    assert (
        verifier()
        .verify(
            received(
                sign("GET", INVOKE_URL),
                headers={
                    **seen.headers,
                    "authorization": value,
                },
            )
        )
        .access_key
        == AKID
    )


# -- a real boto3 client --------------------------------------------------------------------------


def test_requests_from_a_real_boto3_lambda_client() -> None:
    """Invoke, UntagResource and ListFunctions as sent by boto3 all verify."""
    captured: list[AWSPreparedRequest] = []

    def capture(request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        captured.append(request)
        return AWSResponse(request.url, 200, HTTPHeaders(), _EmptyRaw())

    client = boto3.client(
        "lambda",
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id=AKID,
        aws_secret_access_key=SECRET,
    )
    # Returning a response from before-send short-circuits the HTTP call (botocore's stubs
    # type handlers as returning None).
    client.meta.events.register("before-send", capture)  # type: ignore[arg-type]
    client.invoke(FunctionName=ARN, Payload=BINARY_BODY, Qualifier="live")
    client.untag_resource(Resource=ARN, TagKeys=["b", "a", "a b", "\u00fc/=&"])
    client.list_functions(MaxItems=5, Marker="m/+=")

    assert len(captured) == 3
    v = verifier()
    for request in captured:
        assert v.verify(received(request)) == Identity(AKID, "us-east-1", "lambda")
    with expect(InvalidSignatureException, SIGNATURE_MISMATCH_MESSAGE):
        v.verify(received(captured[0], body=BINARY_BODY[::-1]))


class _EmptyRaw:
    """The raw-stream stand-in AWSResponse reads an empty JSON body from."""

    def stream(self, *_: Any, **__: Any) -> Any:
        """Yield an empty JSON object."""
        yield b"{}"
