"""Asynchronous invocations accepted and durably queued per second (Event invokes, 202s/s).

wrk (2 threads, 8 connections) replays a SigV4-signed `InvocationType=Event` Invoke for a
Python function while the server's async dispatcher keeps delivering events to the function in
the background (the realistic case: accepting competes with draining). A Lua script counts the
202 responses per wall-clock second and records every accepted request id.

Durability check: Corral writes the event to its SQLite queue (WAL) before answering 202, and a
delivered event is removed only after its invocation ends. The handler sends its request id (the
event id) over UDP to this script; after the load, a read-only snapshot of the queue table is
taken, then (0.5 s later) the ids received so far. Every accepted id must be in the snapshot or
have been received: `unaccounted` must be 0 (a UDP datagram lost on loopback would also count).
Usage: .venv/bin/python bench/async_queue.py [--quick] [--sandbox auto|linux|process]
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl

NAME = "async_queue"
CONNECTIONS = 8
THREADS = 2

SINK = """
import os
import socket

_SOCK = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
_ADDR = ("127.0.0.1", int(os.environ["SINK_PORT"]))


def handler(event, context):
    try:
        _SOCK.sendto(context.aws_request_id.encode(), _ADDR)
    except OSError:
        pass
    return None
"""

LUA = """
wrk.method = "POST"
wrk.body = {body}
{headers}
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args)
  ids = {{}}
  n = 0
  other = 0
  persec = {{}}
end
function response(status, headers, body)
  if status == 202 then
    n = n + 1
    ids[n] = headers["x-amzn-requestid"] or headers["x-amzn-RequestId"] or ""
    local s = os.time()
    persec[s] = (persec[s] or 0) + 1
  else
    other = other + 1
  end
end
function done(summary, latency, requests)
  local f = io.open({out}, "w")
  for _, t in ipairs(threads) do
    for _, id in ipairs(t:get("ids")) do f:write("ID ", id, "\\n") end
    for s, c in pairs(t:get("persec")) do f:write("SEC ", s, " ", c, "\\n") end
    f:write("OTHER ", t:get("other"), "\\n")
  end
  f:write(string.format("SUMMARY %d %d %d %d\\n", summary.requests, summary.duration,
          latency:percentile(50), latency:percentile(99)))
  f:close()
end
"""


class Sink:
    """Collects the event ids the function sends over UDP."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 32 * 1024 * 1024)  # SO_RCVBUFFORCE
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.ids: set[str] = set()
        self.times: list[float] = []
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(256)
            except TimeoutError:
                continue
            except OSError:
                return
            self.ids.add(data.decode(errors="replace"))
            self.times.append(time.monotonic())

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


def lua_str(text: str) -> str:
    import json

    return json.dumps(text)


def main() -> int:
    parser = bl.common_args(__doc__.split("\n")[0])
    parser.set_defaults(memory=128)
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of load (default 10, quick 3)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        bl.log("wrk is not installed: apt-get install -y wrk")
        return 2
    seconds = args.duration or (3 if args.quick else 10)
    out: dict[str, Any] = {}

    with bl.workdir("async") as wd:
        sink = Sink()
        srv = bl.CorralServer(wd, sandbox=args.sandbox, insecure=args.insecure)
        try:
            srv.start()
            sandbox = srv.sandbox_used()
            lam = srv.client()
            name = bl.unique("async")
            srv.create_function(lam, name, bl.make_zip({"app.py": SINK}), memory=args.memory,
                                Environment={"Variables": {"SINK_PORT": str(sink.port)}})
            signer = srv.signer()
            # warm-up: one synchronous invoke (the instance), one short Event burst
            c = bl.RawClient(srv.port)
            status, body, _ = c.send(signer.invoke(name))
            if status != 200:
                raise RuntimeError(f"sync invoke failed: {status} {body[:300]!r}")
            c.close()
            req = signer.invoke(name, b'{"k": 1}', invocation_type="Event")
            headers = "\n".join(f"wrk.headers[{lua_str(k)}] = {lua_str(v)}"
                                for k, v in req.headers.items()
                                if k.lower() != "content-length")
            result_path = wd / "wrk-out.txt"
            lua = wd / "event.lua"
            lua.write_text(LUA.format(body=lua_str(req.body.decode()), headers=headers,
                                      out=lua_str(str(result_path))))
            url = f"http://127.0.0.1:{srv.port}{req.path}"
            subprocess.run(["wrk", "-t1", "-c2", "-d1s", "-s", str(lua), url],
                           capture_output=True, timeout=60, check=True)
            time.sleep(1.0)

            received_before = len(sink.ids)
            bl.log(f"corral {srv.port} ({sandbox}): wrk -t{THREADS} -c{CONNECTIONS} "
                   f"-d{seconds}s Event invokes")
            t_start = time.monotonic()
            proc = subprocess.run(["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s",
                                   "--timeout", "10s", "-s", str(lua), url],
                                  capture_output=True, text=True, timeout=seconds + 120)
            t_end = time.monotonic()
            delivered_during = sum(1 for t in sink.times if t_start <= t <= t_end)
            ids: list[str] = []
            persec: dict[int, int] = {}
            other = 0
            summary_line: list[int] = []
            for line in result_path.read_text().splitlines():
                kind, _, rest = line.partition(" ")
                if kind == "ID":
                    ids.append(rest)
                elif kind == "SEC":
                    sec, cnt = rest.split()
                    persec[int(sec)] = persec.get(int(sec), 0) + int(cnt)
                elif kind == "OTHER":
                    other += int(rest)
                elif kind == "SUMMARY":
                    summary_line = [int(x) for x in rest.split()]
            if not summary_line:
                raise RuntimeError(f"wrk failed: {proc.stdout[-1500:]} {proc.stderr[-1500:]}")
            requests, duration_us, p50_us, p99_us = summary_line
            accepted = len(ids)
            rate = accepted / (duration_us / 1e6)
            secs = sorted(persec)
            full_seconds = [persec[s] for s in secs[1:-1]] or [persec[s] for s in secs]

            # durability: snapshot the queue, then the ids received by then (+0.5 s in flight)
            db = srv.data_dir / "corral.db"
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
            try:
                queued = {row[0] for row in conn.execute("SELECT event_id FROM async_events")}
            finally:
                conn.close()
            time.sleep(0.5)
            received = set(sink.ids)
            accepted_set = set(ids)
            unaccounted = accepted_set - queued - received
            # drain rate after the load, for context (bounded wait)
            t_drain = time.monotonic()
            n0 = len(sink.ids)
            time.sleep(2.0 if args.quick else 4.0)
            drain_rate = (len(sink.ids) - n0) / (time.monotonic() - t_drain)
            out = {
                "requests": requests, "accepted_202": accepted, "other_status": other,
                "duration_s": round(duration_us / 1e6, 3),
                "accepted_per_s": round(rate, 1),
                "accepted_per_s_by_second": [persec[s] for s in secs],
                "accepted_per_s_median_full_seconds": statistics.median(full_seconds)
                if full_seconds else None,
                "latency_p50_ms": round(p50_us / 1000, 3),
                "latency_p99_ms": round(p99_us / 1000, 3),
                "delivered_during_load": delivered_during,
                "delivered_per_s_during_load": round(delivered_during / (t_end - t_start), 1),
                "delivered_per_s_after_load": round(drain_rate, 1),
                "still_queued_at_snapshot": len(queued & accepted_set),
                "received_by_snapshot": len(received & accepted_set),
                "unaccounted": len(unaccounted),
                "unaccounted_sample": sorted(unaccounted)[:5],
                "warmup_received": received_before,
            }
        finally:
            srv.stop()
            sink.close()

    verdicts = [bl.verdict(
        "asynchronous events accepted and durably queued", out.get("accepted_per_s"), 2000.0,
        "ge", "events/s", ">= 2,000 per second",
        note=f"{out.get('accepted_202')} accepted in {out.get('duration_s')} s, "
             f"unaccounted after the durability check: {out.get('unaccounted')}")]
    if out.get("unaccounted"):
        verdicts[0]["verdict"] += f"; {out['unaccounted']} accepted events unaccounted"
    bl.print_table(f"Async Event invokes, wrk -t{THREADS} -c{CONNECTIONS} -d{seconds}s "
                   f"(sandbox: {sandbox})", ["measure", "value"], [
        ["accepted (202) per second, whole run", f"{out['accepted_per_s']:,.0f}"],
        ["accepted per second, median of full seconds",
         out["accepted_per_s_median_full_seconds"]],
        ["per second", " ".join(str(x) for x in out["accepted_per_s_by_second"])],
        ["accepted / other statuses", f"{out['accepted_202']} / {out['other_status']}"],
        ["Event invoke latency p50 / p99 ms",
         f"{out['latency_p50_ms']} / {out['latency_p99_ms']}"],
        ["delivered to the function per second during the load",
         out["delivered_per_s_during_load"]],
        ["delivered per second after the load", out["delivered_per_s_after_load"]],
        ["at snapshot: still queued / delivered",
         f"{out['still_queued_at_snapshot']} / {out['received_by_snapshot']}"],
        ["accepted but unaccounted (must be 0)", out["unaccounted"]]])
    bl.print_verdicts(verdicts)
    bl.write_results(NAME, {
        "config": {"quick": args.quick, "sandbox_requested": args.sandbox, "sandbox": sandbox,
                   "memory_mb": args.memory,
                   "wrk": f"-t{THREADS} -c{CONNECTIONS} -d{seconds}s",
                   "store": "SQLite WAL, synchronous=NORMAL (survives a process crash; the "
                            "last commits may be lost on power loss)"},
        "summary": out, "targets": verdicts})
    return 0 if out.get("accepted_202") else 1


if __name__ == "__main__":
    sys.exit(main())
