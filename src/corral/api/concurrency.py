"""Reserved concurrency (Put/Get/DeleteFunctionConcurrency) and provisioned concurrency
(Put/Get/Delete/ListProvisionedConcurrencyConfigs)."""

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
from corral.control.provisioned import ProvisionedConfig
from corral.errors import (
    InvalidParameterValueException,
    ProvisionedConcurrencyConfigNotFoundException,
)
from corral.services import Services


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


# provisioned concurrency ---------------------------------------------------------------------
def _provisioned_json(svc: Services, config: ProvisionedConfig,
                      with_arn: bool = False) -> dict[str, Any]:
    version = svc.registry.get(config.function_name, config.qualifier)
    _, allocated = svc.scheduler.provisioned_status(version)
    out: dict[str, Any] = {
        "RequestedProvisionedConcurrentExecutions": config.requested,
        "AvailableProvisionedConcurrentExecutions": allocated,
        "AllocatedProvisionedConcurrentExecutions": allocated,
        "Status": "READY" if allocated >= config.requested else "IN_PROGRESS",
        "LastModified": config.last_modified,
    }
    if with_arn:
        out = {"FunctionArn": svc.registry.arn(config.function_name, config.qualifier), **out}
    return out


def _qualifier(request: Request) -> str:
    qualifier = request.query_params.get("Qualifier")
    if not qualifier:
        raise InvalidParameterValueException(
            "1 validation error detected: Value null at 'qualifier' failed to satisfy "
            "constraint: Member must not be null")
    return qualifier


async def put_provisioned(request: Request) -> Response:
    svc = services(request)
    params = await signed_json(request)
    name = function_ref(request).name
    qualifier = _qualifier(request)
    version = svc.registry.get(name, qualifier)
    config = svc.provisioned.put(name, qualifier, params)
    svc.scheduler.provision(version, config.requested)
    return json_response(_provisioned_json(svc, config), status=202)


async def get_provisioned(request: Request) -> Response:
    svc = services(request)
    await signed_body(request)
    if request.query_params.get("List") == "ALL":
        return await _list_provisioned(request)
    name = function_ref(request).name
    qualifier = _qualifier(request)
    svc.registry.get(name, qualifier)
    config = svc.provisioned.get(name, qualifier)
    if config is None:
        raise ProvisionedConcurrencyConfigNotFoundException(
            f"No Provisioned Concurrency Config found for this function: "
            f"{svc.registry.arn(name, qualifier)}")
    return json_response(_provisioned_json(svc, config))


async def _list_provisioned(request: Request) -> Response:
    svc = services(request)
    name = function_ref(request).name
    svc.registry.get(name)
    configs = svc.provisioned.list(name)
    return json_response({"ProvisionedConcurrencyConfigs": [
        _provisioned_json(svc, c, with_arn=True) for c in configs]})


async def delete_provisioned(request: Request) -> Response:
    svc = services(request)
    await signed_body(request)
    name = function_ref(request).name
    qualifier = _qualifier(request)
    version = svc.registry.get(name, qualifier)
    if svc.provisioned.delete(name, qualifier):
        svc.scheduler.provision(version, 0)
    return empty_response(204)


routes += [
    Route("/2019-09-30/functions/{name}/provisioned-concurrency", put_provisioned,
          methods=["PUT"]),
    Route("/2019-09-30/functions/{name}/provisioned-concurrency", get_provisioned,
          methods=["GET"]),
    Route("/2019-09-30/functions/{name}/provisioned-concurrency", delete_provisioned,
          methods=["DELETE"]),
]
