"""Warm throughput through the Invoke API, `wrk -c8 -t2`, Corral vs serverless-offline.

wrk replays one request from a Lua script: for Corral a SigV4-signed Invoke (signed with botocore
just before the run; Corral accepts replays within the 5-minute skew window), for
serverless-offline the same request unsigned on its lambda port. Runs alternate Corral/peer
(order flipped every round) after an untimed warm-up that lets both sides start their 8
instances/processes. Python handler, then a Node.js handler. Also samples the CPU time the
server/front process and the function processes used during each run (a cheap profile).
Usage: .venv/bin/python bench/throughput.py [--quick] [--sandbox auto|linux|process]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl

NAME = "throughput"
CONNECTIONS = 8
THREADS = 2
TICKS = os.sysconf("SC_CLK_TCK")

LUA_TEMPLATE = """
wrk.method = "POST"
wrk.body = {body}
{headers}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {{\\"requests\\":%d,\\"duration_us\\":%d,\\"connect\\":%d,\\"read\\":%d," ..
    "\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d,\\"p50_us\\":%d,\\"p90_us\\":%d," ..
    "\\"p99_us\\":%d,\\"mean_us\\":%f}}\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


def lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string for ASCII text


def write_lua(path: Path, req: bl.SignedRequest) -> Path:
    headers = "\n".join(f"wrk.headers[{lua_string(k)}] = {lua_string(v)}"
                        for k, v in req.headers.items() if k.lower() != "content-length")
    path.write_text(LUA_TEMPLATE.format(body=lua_string(req.body.decode()), headers=headers))
    return path


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / TICKS


def run_wrk(port: int, path: str, lua: Path, seconds: float,
            cpu_groups: dict[str, Any] | None = None) -> dict[str, Any]:
    groups = {k: fn() for k, fn in (cpu_groups or {}).items()}
    before = {k: cpu_seconds(pids) for k, pids in groups.items()}
    out = subprocess.run(
        ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s",
         "-s", str(lua), f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")
    data: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
    secs = data["duration_us"] / 1e6
    errors = data["connect"] + data["read"] + data["write"] + data["status"] + data["timeout"]
    data["ok"] = data["requests"] - data["status"]
    data["rps"] = round(data["ok"] / secs, 1)
    data["errors"] = errors
    if cpu_groups:
        after = {k: cpu_seconds(pids) for k, pids in groups.items()}
        data["cpu_share"] = {k: round((after[k] - before[k]) / secs, 3) for k in groups}
    return data


def main() -> int:
    parser = bl.common_args(__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds per wrk run (default 10, quick 2)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        bl.log("wrk is not installed: apt-get install -y wrk")
        return 2
    seconds = args.duration or (2 if args.quick else 10)
    warm_s = 1 if args.quick else 2
    rounds = {"python": 1 if args.quick else 3, "node": 1 if args.quick else 2}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        rt: {"corral": [], "peer": []} for rt in rounds}
    instances: dict[str, Any] = {}

    with bl.workdir("tput") as wd:
        srv = bl.CorralServer(wd, sandbox=args.sandbox, insecure=args.insecure)
        peer = bl.Peer({"py": bl.PeerFunction("app.handler", "python3.11"),
                        "nd": bl.PeerFunction("napp.handler", "nodejs20.x")},
                       {"app.py": bl.PY_TRIVIAL, "napp.js": bl.NODE_TRIVIAL})
        try:
            peer_start = bl.Background(peer.start)
            srv.start()
            sandbox = srv.sandbox_used()
            lam = srv.client()
            names = {"python": bl.unique("tput-py"), "node": bl.unique("tput-node")}
            srv.create_function(lam, names["python"], bl.make_zip({"app.py": bl.PY_TRIVIAL}),
                                memory=args.memory)
            srv.create_function(lam, names["node"], bl.make_zip({"index.js": bl.NODE_TRIVIAL}),
                                runtime="nodejs20.x", handler="index.handler",
                                memory=args.memory)
            signer = srv.signer()
            peer_start.join()
            assert peer.proc is not None
            bl.log(f"corral {srv.port} ({sandbox}), serverless-offline {peer.lambda_port}")
            server_pid, peer_pid = srv.pid, peer.proc.pid
            cpu = {
                "corral": {"front": lambda: [server_pid],
                           "functions": lambda: bl.descendants(server_pid)},
                "peer": {"front": lambda: [p for p in [peer_pid, *bl.descendants(peer_pid)]
                                           if "invoke.py" not in bl.cmdline(p)],
                         "functions": lambda: [p for p in bl.descendants(peer_pid)
                                               if "invoke.py" in bl.cmdline(p)]}}
            peer_fn = {"python": "py", "node": "nd"}
            for rt in rounds:
                def target(side: str, rt: str = rt) -> tuple[int, str, Path]:
                    if side == "corral":
                        req = signer.invoke(names[rt])  # fresh signature for every run
                        return srv.port, req.path, write_lua(wd / f"corral-{rt}.lua", req)
                    req = peer.request(peer_fn[rt])
                    return peer.lambda_port, req.path, write_lua(wd / f"peer-{rt}.lua", req)

                for side in ("corral", "peer"):
                    run_wrk(*target(side), warm_s)  # warm-up: start the 8 instances
                bl.log(f"{rt}: {rounds[rt]} round(s) of wrk -t{THREADS} -c{CONNECTIONS} "
                       f"-d{seconds}s per side")
                for r in range(rounds[rt]):
                    for side in (("corral", "peer") if r % 2 == 0 else ("peer", "corral")):
                        res = run_wrk(*target(side), seconds, cpu[side])
                        runs[rt][side].append(res)
                        bl.log(f"  {rt} {side}: {res['rps']:,.0f} req/s "
                               f"(errors {res['errors']}, cpu {res.get('cpu_share')})")
                instances[rt] = srv.health().get("instances")
        finally:
            peer.stop()
            srv.stop()

    summary: dict[str, Any] = {}
    for rt, sides in runs.items():
        entry: dict[str, Any] = {}
        for side, results in sides.items():
            rps = [r["rps"] for r in results]
            entry[side] = {
                "rps_median": round(statistics.median(rps), 1) if rps else None,
                "rps_runs": rps,
                "latency_p50_ms": round(statistics.median(r["p50_us"] for r in results) / 1000,
                                        3) if results else None,
                "latency_p99_ms": round(statistics.median(r["p99_us"] for r in results) / 1000,
                                        3) if results else None,
                "errors": sum(r["errors"] for r in results),
                "cpu_share": results[-1].get("cpu_share") if results else None,
                "cpu_ms_per_request": {
                    k: round(statistics.median(r["cpu_share"][k] * 1000 / r["rps"]
                                               for r in results if r["rps"]), 3)
                    for k in ("front", "functions")} if results else None}
        paired = [bl.ratio(c["rps"], p["rps"]) for c, p in zip(sides["corral"], sides["peer"],
                                                                strict=False)]
        entry["ratio"] = bl.ratio(entry["corral"]["rps_median"], entry["peer"]["rps_median"])
        entry["ratio_paired_runs"] = paired
        summary[rt] = entry
    verdicts = [
        bl.verdict("warm throughput, Python handler, Invoke API, wrk -c8 / serverless-offline",
                   summary["python"]["ratio"], 1.5, "ge", "x",
                   ">= 1.5x serverless-offline (first milestone >= 1.0x)",
                   note=f"Corral {summary['python']['corral']['rps_median']} req/s, "
                        f"serverless-offline {summary['python']['peer']['rps_median']} req/s"),
        bl.verdict("warm throughput, Python handler: first milestone", summary["python"]["ratio"],
                   1.0, "ge", "x", ">= 1.0x serverless-offline"),
    ]
    rows = []
    for rt, entry in summary.items():
        c, p = entry["corral"], entry["peer"]
        rows.append([f"{rt} handler", f"{c['rps_median']:,.0f}" if c["rps_median"] else "-",
                     f"{p['rps_median']:,.0f}" if p["rps_median"] else "-", entry["ratio"],
                     bl.ms(c["latency_p50_ms"]), bl.ms(p["latency_p50_ms"]),
                     bl.ms(c["latency_p99_ms"]), bl.ms(p["latency_p99_ms"]),
                     f"{c['errors']}/{p['errors']}"])
    bl.print_table(f"Throughput, wrk -t{THREADS} -c{CONNECTIONS} -d{seconds}s, req/s "
                   f"(sandbox: {sandbox})",
                   ["handler", "Corral req/s", "serverless-offline req/s", "ratio",
                    "Corral p50 ms", "peer p50 ms", "Corral p99 ms", "peer p99 ms",
                    "errors C/P"], rows)
    bl.print_table("CPU: cores busy in the last run; CPU ms per request (median of runs)",
                   ["handler", "side", "front (server / node)", "function processes",
                    "front ms/req", "functions ms/req"],
                   [[rt, side, (summary[rt][side]["cpu_share"] or {}).get("front"),
                     (summary[rt][side]["cpu_share"] or {}).get("functions"),
                     (summary[rt][side]["cpu_ms_per_request"] or {}).get("front"),
                     (summary[rt][side]["cpu_ms_per_request"] or {}).get("functions")]
                    for rt in summary for side in ("corral", "peer")])
    bl.print_verdicts(verdicts)
    bl.write_results(NAME, {
        "config": {"quick": args.quick, "sandbox_requested": args.sandbox, "sandbox": sandbox,
                   "memory_mb": args.memory, "wrk": f"-t{THREADS} -c{CONNECTIONS} -d{seconds}s",
                   "rounds": rounds, "peer": bl.peer_version(),
                   "request": "one signed Invoke replayed (Corral); unsigned (peer)",
                   "instances_after": instances},
        "summary": summary, "runs": runs, "targets": verdicts})
    return 0


if __name__ == "__main__":
    sys.exit(main())
