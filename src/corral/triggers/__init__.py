"""Triggers: what makes functions run besides a direct Invoke.

Each module with an `install(runtime) -> Feature` is a plug-in listed in `corral.server.FEATURES`:

* `urls` — Lambda function URLs (Create/Get/Update/Delete/ListFunctionUrlConfigs and the HTTP
  front that serves them, payload format 2.0);
* `routes` — API-Gateway-style HTTP routes (payload 1.0 or 2.0 per route);
* `s3notify` — S3 event notifications posted to a webhook (MinIO or any S3 event sender);
* `esm` — event source mappings polling SQS queues and DynamoDB streams.

Shared pieces: `httpmap` (HTTP request → event, function result → HTTP response), `store`
(tables in the server's SQLite database), `aws` (boto3 clients for the endpoints the standard
SDK configuration names), `s3code` (function code fetched from a bucket) and `cli_api` (signed
requests from the CLI to Corral's own JSON APIs).

The user-facing description is docs/triggers.md.
"""
