"""Versions and aliases: PublishVersion, ListVersionsByFunction, and the alias resource."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.api.common import (
    empty_response,
    function_ref,
    json_response,
    services,
    signed_body,
    signed_json,
)
from corral.api.wire import function_configuration
from corral.errors import InvalidParameterValueException
from corral.model import FunctionConfig
from corral.services import Services

_PAGE_MAX = 50


def _version_json(svc: Services, config: FunctionConfig) -> dict[str, Any]:
    return function_configuration(config, svc.registry.arn(config.name, config.version))


def _page(request: Request, items: list[Any], key: str) -> tuple[list[Any], str | None]:
    """Marker/MaxItems paging over items already in order; the marker is an item's key."""
    marker = request.query_params.get("Marker")
    max_items = request.query_params.get("MaxItems", str(_PAGE_MAX))
    if not max_items.isdigit() or not 1 <= int(max_items) <= 10000:
        raise InvalidParameterValueException(
            f"1 validation error detected: Value '{max_items}' at 'maxItems' failed to satisfy "
            "constraint: Member must have value between 1 and 10000")
    limit = min(int(max_items), _PAGE_MAX)
    if marker:
        keys = [getattr(item, key) for item in items]
        items = items[keys.index(marker) + 1:] if marker in keys else []
    page = items[:limit]
    return page, getattr(page[-1], key) if len(items) > limit else None


async def publish_version(request: Request) -> Response:
    svc = services(request)
    params = await signed_json(request)
    config = svc.registry.publish_version(function_ref(request).name, params)
    return json_response(_version_json(svc, config), status=201)


async def list_versions(request: Request) -> Response:
    svc = services(request)
    await signed_body(request)
    versions = svc.registry.list_versions(function_ref(request).name)
    page, marker = _page(request, versions, "version")
    body: dict[str, Any] = {"Versions": [_version_json(svc, v) for v in page]}
    if marker:
        body["NextMarker"] = marker
    return json_response(body)


async def create_alias(request: Request) -> Response:
    svc = services(request)
    params = await signed_json(request)
    name = function_ref(request).name
    alias = svc.registry.create_alias(name, params)
    return json_response(alias.wire(svc.registry.arn(name, alias.name)), status=201)


async def get_alias(request: Request) -> Response:
    svc = services(request)
    await signed_body(request)
    name = function_ref(request).name
    alias = svc.registry.get_alias(name, request.path_params["alias"])
    return json_response(alias.wire(svc.registry.arn(name, alias.name)))


async def update_alias(request: Request) -> Response:
    svc = services(request)
    params = await signed_json(request)
    name = function_ref(request).name
    alias = svc.registry.update_alias(name, request.path_params["alias"], params)
    return json_response(alias.wire(svc.registry.arn(name, alias.name)))


async def delete_alias(request: Request) -> Response:
    svc = services(request)
    await signed_body(request)
    svc.registry.delete_alias(function_ref(request).name, request.path_params["alias"])
    return empty_response(204)


async def list_aliases(request: Request) -> Response:
    svc = services(request)
    await signed_body(request)
    name = function_ref(request).name
    version = request.query_params.get("FunctionVersion")
    aliases = svc.registry.list_aliases(name, version if version != "" else None)
    page, marker = _page(request, aliases, "name")
    body: dict[str, Any] = {"Aliases": [a.wire(svc.registry.arn(name, a.name)) for a in page]}
    if marker:
        body["NextMarker"] = marker
    return json_response(body)


routes = [
    Route("/2015-03-31/functions/{name}/versions", publish_version, methods=["POST"]),
    Route("/2015-03-31/functions/{name}/versions", list_versions, methods=["GET"]),
    Route("/2015-03-31/functions/{name}/aliases", create_alias, methods=["POST"]),
    Route("/2015-03-31/functions/{name}/aliases", list_aliases, methods=["GET"]),
    Route("/2015-03-31/functions/{name}/aliases/{alias}", get_alias, methods=["GET"]),
    Route("/2015-03-31/functions/{name}/aliases/{alias}", update_alias, methods=["PUT"]),
    Route("/2015-03-31/functions/{name}/aliases/{alias}", delete_alias, methods=["DELETE"]),
]

__all__ = ["routes"]
