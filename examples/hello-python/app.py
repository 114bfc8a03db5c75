"""The quick-start example: greets whoever the event names."""

import os

INVOCATIONS = 0


def handler(event, context):
    global INVOCATIONS
    INVOCATIONS += 1
    name = (event or {}).get("name", "world")
    print(f"greeting {name}")
    return {
        "message": f"Hello, {name}!",
        "invocations_on_this_instance": INVOCATIONS,
        "request_id": context.aws_request_id,
        "memory_mb": context.memory_limit_in_mb,
        "python": os.sys.version.split()[0],
    }
