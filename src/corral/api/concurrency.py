"""Put/Get/DeleteFunctionConcurrency (reserved concurrency)."""

from __future__ import annotations

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


async def put_concurrency(request: Request) -> Response:
    svc = services(request)
    params = await signed_json(request)
    name = function_ref(request).name
    svc.registry.get(name)
    value = svc.reserved.put(name, params)
    svc.scheduler.set_reserved(name, value)
    return json_response({"ReservedConcurrentExecutions": value})


async def get_concurrency(request: Request) -> Response:
    svc = services(request)
    await signed_body(request)
    name = function_ref(request).name
    svc.registry.get(name)
    value = svc.reserved.reserved.get(name)
    return json_response({} if value is None else {"ReservedConcurrentExecutions": value})


async def delete_concurrency(request: Request) -> Response:
    svc = services(request)
    await signed_body(request)
    name = function_ref(request).name
    svc.registry.get(name)
    svc.reserved.delete(name)
    svc.scheduler.set_reserved(name, None)
    return empty_response(204)


routes = [
    Route("/2017-10-31/functions/{name}/concurrency", put_concurrency, methods=["PUT"]),
    Route("/2019-09-30/functions/{name}/concurrency", get_concurrency, methods=["GET"]),
    Route("/2017-10-31/functions/{name}/concurrency", delete_concurrency, methods=["DELETE"]),
]
