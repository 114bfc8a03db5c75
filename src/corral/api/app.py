"""The HTTP front: one Starlette application serving every API on one endpoint."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from corral import __version__
from corral.api import account, concurrency, functions, invoke, jsonrpc, tags, versions
from corral.api.errors import handle_lambda_error, handle_unexpected
from corral.errors import LambdaApiError
from corral.services import Services


async def health(request: Request) -> Response:
    svc: Services = request.app.state.services
    stats = svc.scheduler.stats()
    return JSONResponse({"status": "ok", "version": __version__,
                         "sandbox": svc.extras.get("sandbox", "unknown"),
                         "functions": len(svc.registry.all_functions()),
                         "runtimes": sorted(svc.registry.runtimes),
                         "instances": {"idle": stats.idle, "busy": stats.busy,
                                       "templates": stats.templates}})


def build_app(services: Services, extra_routes: list[BaseRoute] | None = None) -> Starlette:
    """Every API as one Starlette application (wrap it in `invoke.InvokeFastPath` to serve)."""
    routes: list[BaseRoute] = [
        *(extra_routes or []),
        *invoke.routes,
        *functions.routes,
        *versions.routes,
        *concurrency.routes,
        *tags.routes,
        *account.routes,
        *jsonrpc.routes,
        Route("/_corral/health", health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={
        LambdaApiError: handle_lambda_error,
        Exception: handle_unexpected,
    })
    app.state.services = services
    return app
