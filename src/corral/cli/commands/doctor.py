"""`corral doctor`: what this host offers (runtimes, isolation, cgroups) and the server's state.

It always exits 0: findings that need attention are listed as warnings.
"""

from __future__ import annotations

from typing import Any

import click
from rich.text import Text

from corral.cli.client import (
    connection_options,
    describe_error,
    health,
    resolve_connection,
    resolve_endpoint,
    unreachable,
)
from corral.cli.output import console, echo_json, table

__all__ = ["collect", "doctor"]


def _runtimes(warnings: list[str]) -> list[dict[str, str]]:
    from corral.runtimes import discover

    found = discover()
    rows = [{"name": info.name, "kind": info.kind,
             "interpreter": info.executable or "(the package's executable bootstrap)",
             "version": info.version or "-"} for info in found.values()]
    if not any(info.kind == "python" for info in found.values()):
        warnings.append("no Python 3.11+ interpreter found: no python3.x runtime")
    if not any(info.kind == "node" for info in found.values()):
        warnings.append("no `node` on PATH: no nodejs runtime")
    return rows


def _isolation(warnings: list[str]) -> dict[str, Any]:
    try:
        from corral.sandbox.select import probe
    except ImportError:
        warnings.append("sandbox probe unavailable")
        return {"available": False, "error": "sandbox probe unavailable", "lines": [
            "sandbox probe unavailable"]}
    try:
        report = probe()
    except Exception as exc:  # a probe bug must not hide the rest of the report
        warnings.append(f"sandbox probe failed: {exc}")
        return {"available": False, "error": f"sandbox probe failed: {exc}",
                "lines": [f"sandbox probe failed: {exc}"]}
    if not report.secure:
        warnings.append("this host cannot isolate functions: `corral server` needs "
                        "--insecure to run them as plain processes")
    return {"available": True, "implementation": report.implementation,
            "secure": report.secure, "enforced": list(report.enforced),
            "notEnforced": list(report.not_enforced), "lines": report.lines()}


def _cgroup() -> str:
    try:
        from corral.sandbox.cgroups import detect_layout

        return detect_layout().describe()
    except ImportError:
        return "unknown (cgroup detection unavailable)"
    except (OSError, ValueError) as exc:
        return f"unknown ({exc})"


def _server(endpoint_url: str | None, data_dir: str | None,
            warnings: list[str]) -> dict[str, Any]:
    endpoint = resolve_endpoint(endpoint_url, data_dir)
    out: dict[str, Any] = {"endpoint": endpoint, "reachable": False, "health": None,
                           "credentials": None}
    try:
        out["health"] = health(endpoint)
        out["reachable"] = True
    except (OSError, ValueError) as exc:
        out["error"] = f"{unreachable(endpoint)} ({getattr(exc, 'reason', exc)})"
        warnings.append(unreachable(endpoint))
        return out
    try:
        connection = resolve_connection(endpoint_url, data_dir)
        connection.lambda_client(read_timeout=10).get_account_settings()
        out["credentials"] = {"ok": True, "source": connection.source,
                              "accessKeyId": connection.access_key_id}
    except Exception as exc:
        message = describe_error(exc, endpoint)
        if message is None:
            raise
        out["credentials"] = {"ok": False, "error": message}
        warnings.append(f"credentials: {message}")
    return out


def collect(endpoint_url: str | None = None, data_dir: str | None = None) -> dict[str, Any]:
    """Everything `corral doctor` reports, as a JSON-able dict."""
    warnings: list[str] = []
    return {
        "runtimes": _runtimes(warnings),
        "isolation": _isolation(warnings),
        "cgroup": _cgroup(),
        "server": _server(endpoint_url, data_dir, warnings),
        "warnings": warnings,
    }


def _print(report: dict[str, Any]) -> None:
    out = console()
    out.print(Text("Runtimes", style="bold underline"))
    table(["NAME", "KIND", "INTERPRETER", "VERSION"],
          ([r["name"], r["kind"], r["interpreter"], r["version"]] for r in report["runtimes"]))
    out.print()
    out.print(Text("Isolation", style="bold underline"))
    for line in report["isolation"]["lines"]:
        out.print(Text(line))
    out.print(Text(f"cgroups: {report['cgroup']}"))
    out.print()
    out.print(Text("Server", style="bold underline"))
    server = report["server"]
    if server["reachable"]:
        data = server["health"] or {}
        instances = data.get("instances") or {}
        details = [f"status {data.get('status', '?')}"]
        if "functions" in data:
            count = data["functions"]
            details.append(f"{count} function{'' if count == 1 else 's'}")
        if instances:
            details.append(f"instances: {instances.get('idle', 0)} idle, "
                           f"{instances.get('busy', 0)} busy")
        out.print(Text(f"{server['endpoint']}: reachable ({', '.join(details)})"))
        creds = server["credentials"] or {}
        if creds.get("ok"):
            out.print(Text(f"credentials: ok ({creds['accessKeyId']}, {creds['source']})"))
        else:
            out.print(Text(f"credentials: {creds.get('error', 'unknown')}", style="red"))
    else:
        out.print(Text(server.get("error") or unreachable(server["endpoint"]), style="red"))
    if report["warnings"]:
        out.print()
        out.print(Text("Warnings", style="bold yellow underline"))
        for warning in report["warnings"]:
            out.print(Text(f"- {warning}", style="yellow"))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@connection_options
def doctor(as_json: bool, endpoint_url: str | None, data_dir: str | None) -> None:
    """Check this host (runtimes, isolation, cgroups) and the server."""
    report = collect(endpoint_url, data_dir)
    if as_json:
        echo_json(report)
    else:
        _print(report)
