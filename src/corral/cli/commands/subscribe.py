"""`corral subscribe s3`: run a function for S3 event notifications posted to a webhook.

    corral subscribe s3 --function F [--bucket B] [--events s3:ObjectCreated:*,...]
                        [--prefix P] [--suffix S]
    corral subscribe ls [--json]
    corral subscribe rm ID

`subscribe s3` prints the webhook URL (on stdout, alone, for scripts) that an S3-compatible
store posts its notifications to, e.g. for MinIO::

    mc admin config set ALIAS notify_webhook:corral endpoint="$(corral subscribe s3 -f F)"
    mc admin service restart ALIAS
    mc event add ALIAS/BUCKET arn:minio:sqs::corral:webhook --event put

See docs/triggers.md. The commands talk to the server's signed `/_corral/subscriptions/s3` API.
"""

from __future__ import annotations

from urllib.parse import quote

import click

from corral.cli.client import connection_options, get_connection
from corral.cli.output import echo_json, note, table
from corral.triggers.cli_api import corral_request

__all__ = ["subscribe"]


@click.group()
def subscribe() -> None:
    """Subscribe functions to event notifications (S3 webhooks)."""


@subscribe.command("s3")
@click.option("--function", "-f", "function", required=True, help="Function name or ARN.")
@click.option("--bucket", default=None, help="Only records of this bucket (default: any).")
@click.option("--events", default="s3:ObjectCreated:*", show_default=True,
              help="Comma-separated event names; '*' may end a name (s3:ObjectRemoved:*).")
@click.option("--prefix", default=None, help="Only object keys starting with this.")
@click.option("--suffix", default=None, help="Only object keys ending with this.")
@click.option("--json", "as_json", is_flag=True, help="Print the subscription as JSON.")
@connection_options
def s3(function: str, bucket: str | None, events: str, prefix: str | None,
       suffix: str | None, as_json: bool, endpoint_url: str | None,
       data_dir: str | None) -> None:
    """Create a subscription and print its webhook URL."""
    conn = get_connection(endpoint_url, data_dir)
    body = {"FunctionName": function,
            "Events": [e.strip() for e in events.split(",") if e.strip()]}
    for key, value in (("Bucket", bucket), ("Prefix", prefix), ("Suffix", suffix)):
        if value:
            body[key] = value
    created = corral_request(conn, "POST", "/_corral/subscriptions/s3", body)
    if as_json:
        echo_json(created)
        return
    click.echo(created["WebhookUrl"])
    note(f"Subscription {created['SubscriptionId']}: {', '.join(created['Events'])}"
         f"{' in ' + bucket if bucket else ''} → {created['FunctionName']} (asynchronous). "
         "Point your store's webhook notification target at the URL above; keep it secret.")


@subscribe.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print the subscriptions as JSON.")
@connection_options
def ls(as_json: bool, endpoint_url: str | None, data_dir: str | None) -> None:
    """List subscriptions."""
    data = corral_request(get_connection(endpoint_url, data_dir), "GET",
                          "/_corral/subscriptions/s3")
    subs = data.get("Subscriptions", [])
    if as_json:
        echo_json(subs)
        return
    if not subs:
        note("No subscriptions. Create one with `corral subscribe s3 --function F`.")
        return
    table(["ID", "FUNCTION", "BUCKET", "EVENTS", "PREFIX", "SUFFIX"],
          ([s["SubscriptionId"], s["FunctionName"], s.get("Bucket", "*"),
            ",".join(s["Events"]), s.get("Prefix", ""), s.get("Suffix", "")] for s in subs))


@subscribe.command("rm")
@click.argument("subscription_id", metavar="ID")
@connection_options
def rm(subscription_id: str, endpoint_url: str | None, data_dir: str | None) -> None:
    """Delete a subscription (its webhook URL stops working)."""
    corral_request(get_connection(endpoint_url, data_dir), "DELETE",
                   f"/_corral/subscriptions/s3/{quote(subscription_id, safe='')}")
    click.echo(f"Deleted subscription {subscription_id}")
