"""SigV4 authentication of API requests (the verifier itself is `iam.sigv4`)."""

from __future__ import annotations

from starlette.requests import Request

from corral.iam.sigv4 import Identity, SignedRequest, Verifier


async def authenticate(request: Request, verifier: Verifier) -> tuple[Identity, bytes]:
    """Verify the request's signature; returns the signer and the (already read) body."""
    body = await request.body()
    scope = request.scope
    raw_path = scope.get("raw_path") or scope["path"].encode()
    headers: dict[str, str] = {}
    for key, value in scope["headers"]:
        name = key.decode("latin-1")
        text = value.decode("latin-1")
        headers[name] = f"{headers[name]},{text}" if name in headers else text
    signed = SignedRequest(method=request.method, raw_path=raw_path.decode("latin-1"),
                           raw_query=scope["query_string"].decode("latin-1"), headers=headers,
                           body=body)
    return verifier.verify(signed), body
