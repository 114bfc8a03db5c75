"""Tags on functions: TagResource, UntagResource, ListTags (the resource is an ARN)."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.api.common import empty_response, json_response, services, signed_body, signed_json
from corral.control import validation
from corral.control.arns import parse_function_name
from corral.errors import InvalidParameterValueException


def _function_name(request: Request) -> str:
    resource = unquote(request.path_params["arn"])
    if not resource.startswith("arn:"):
        raise InvalidParameterValueException(
            f"1 validation error detected: Value '{resource}' at 'resource' failed to satisfy "
            "constraint: Member must be a function ARN")
    return parse_function_name(resource, field="resource").name


async def tag_resource(request: Request) -> Response:
    svc = services(request)
    params = await signed_json(request)
    name = _function_name(request)
    new = validation.tags(params.get("Tags"))
    merged = {**svc.registry.tags(name), **new}
    validation.tags(merged)
    svc.registry.set_tags(name, merged)
    return empty_response(204)


async def untag_resource(request: Request) -> Response:
    svc = services(request)
    await signed_body(request)
    name = _function_name(request)
    keys = parse_qs(request.scope["query_string"].decode()).get("tagKeys", [])
    tags = svc.registry.tags(name)
    for key in keys:
        tags.pop(key, None)
    svc.registry.set_tags(name, tags)
    return empty_response(204)


async def list_tags(request: Request) -> Response:
    svc = services(request)
    await signed_body(request)
    return json_response({"Tags": svc.registry.tags(_function_name(request))})


routes = [
    Route("/2017-03-31/tags/{arn:path}", tag_resource, methods=["POST"]),
    Route("/2017-03-31/tags/{arn:path}", untag_resource, methods=["DELETE"]),
    Route("/2017-03-31/tags/{arn:path}", list_tags, methods=["GET"]),
]
