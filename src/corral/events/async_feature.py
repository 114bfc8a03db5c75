"""The asynchronous-invocation feature: event invoke configuration routes and destinations.

`install(runtime)` creates the `event_invoke_configs` table, serves the five
FunctionEventInvokeConfig operations, and plugs three things into the dispatcher
(`runtime.async_invoker`): the per-event policy (retries, maximum age, destinations, the
function's dead-letter target), the router that turns a final outcome into destination
deliveries, and the SQS sender for queue destinations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.events.destinations import SQS_KIND, SqsSender, follow_ups
from corral.events.invoke_config import EventInvokeConfigApi, InvokeConfigStore
from corral.feature import Feature, SimpleFeature
from corral.invoke.async_queue import FinalOutcome, FollowUp

if TYPE_CHECKING:
    from corral.server import Runtime


def install(runtime: Runtime) -> Feature:
    settings = runtime.settings
    api = EventInvokeConfigApi(InvokeConfigStore(runtime.db), runtime.registry,
                               settings.async_invoke)
    registry = runtime.registry

    def arn_of(name: str, qualifier: str) -> str:
        return registry.arn(name, qualifier or "$LATEST")

    def route(outcome: FinalOutcome) -> list[FollowUp]:
        return follow_ups(outcome, arn_of)

    invoker = runtime.async_invoker
    invoker.policy_for = api.policy_for
    invoker.router = route
    invoker.senders[SQS_KIND] = SqsSender(settings.region)
    runtime.services.extras["event_invoke_configs"] = api
    return SimpleFeature("async-invoke", api.routes())
