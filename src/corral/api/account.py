"""GetAccountSettings: the account's limits and usage."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.api.common import json_response, services, signed_body


async def get_account_settings(request: Request) -> Response:
    svc = services(request)
    await signed_body(request)
    limits = svc.settings.limits
    reserved = sum(svc.reserved.reserved.values())
    return json_response({
        "AccountLimit": {
            "TotalCodeSize": limits.total_code_size_bytes,
            "CodeSizeUnzipped": limits.unzipped_max_bytes,
            "CodeSizeZipped": limits.zipped_max_bytes,
            "ConcurrentExecutions": limits.account_concurrency,
            "UnreservedConcurrentExecutions": limits.account_concurrency - reserved,
        },
        "AccountUsage": {
            "TotalCodeSize": svc.registry.total_code_size(),
            "FunctionCount": len(svc.registry.all_functions()),
        },
    })


routes = [Route("/2016-08-19/account-settings", get_account_settings, methods=["GET"]),
          Route("/2016-08-19/account-settings/", get_account_settings, methods=["GET"])]
