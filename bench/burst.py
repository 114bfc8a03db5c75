"""100 concurrent first invocations of one fresh function: total wall time, all answered, instances.

100 threads, each with its own pre-opened keep-alive connection and a request signed beforehand,
are released together by a barrier against a function that has no instance yet. Measured: wall
time from the first send to the last complete response, how many got a 200 with the handler's
result, how many were cold (REPORT `Init Duration` via `LogType=Tail`), how many instances the
server has afterwards (/_corral/health) and how many log streams the function got (one per
instance). serverless-offline gets the same burst on a fresh function of its own, for context.
Usage: .venv/bin/python bench/burst.py [--quick] [--sandbox auto|linux|process] [--memory 128]
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl

NAME = "burst"


def burst(port: int, reqs: list[bl.SignedRequest]) -> dict[str, Any]:
    n = len(reqs)
    clients = [bl.RawClient(port, timeout=120) for _ in range(n)]
    barrier = threading.Barrier(n)
    starts = [0.0] * n
    ends = [0.0] * n
    statuses: list[int | None] = [None] * n
    good = [False] * n
    inits: list[float | None] = [None] * n
    errors: list[str] = []

    def worker(i: int) -> None:
        barrier.wait()
        starts[i] = time.perf_counter()
        try:
            status, body, headers = clients[i].send(reqs[i])
            statuses[i] = status
            inits[i] = bl.init_duration_ms(headers)
            # a 200 can carry a function or platform error (X-Amz-Function-Error)
            good[i] = (status == 200 and "x-amz-function-error" not in headers
                       and b'"ok"' in body)
            if not good[i]:
                errors.append(f"{status} {headers.get('x-amz-function-error', '')} "
                              f"{body[:200]!r}")
        except Exception as exc:  # recorded, not raised: the count of answers is the result
            errors.append(repr(exc))
        ends[i] = time.perf_counter()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    for c in clients:
        c.close()
    done = [i for i in range(n) if ends[i]]
    t0 = min(starts[i] for i in done) if done else 0.0
    latencies = [(ends[i] - starts[i]) * 1000 for i in done]
    return {
        "requests": n,
        "answered_200": sum(1 for s in statuses if s == 200),
        "answered_ok": sum(good),
        "failed": n - sum(good),
        "statuses": {str(s): statuses.count(s) for s in set(statuses)},
        "wall_s": round(max(ends[i] for i in done) - t0, 4) if done else None,
        "latency_ms": bl.summary(latencies),
        "cold": sum(1 for x in inits if x is not None),
        "init_duration_ms": bl.summary([x for x in inits if x is not None]),
        "errors": sorted(set(errors))[:10],
    }


def main() -> int:
    parser = bl.common_args(__doc__.split("\n")[0])
    parser.set_defaults(memory=128)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=None,
                        help="bursts per side (default 3, quick 1)")
    parser.add_argument("--no-settle", action="store_true",
                        help="do not wait for the previous burst's instances to be torn down "
                             "before the next burst (reproduces launcher failures under "
                             "teardown)")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    n = args.concurrency
    results: dict[str, list[dict[str, Any]]] = {"corral": [], "peer": []}

    with bl.workdir("burst") as wd:
        srv = bl.CorralServer(wd, sandbox=args.sandbox, insecure=args.insecure)
        peer = bl.Peer({f"b{i}": bl.PeerFunction("app.handler", "python3.11")
                        for i in range(repeats)}, {"app.py": bl.PY_TRIVIAL})
        try:
            peer_start = bl.Background(peer.start)
            srv.start()
            sandbox = srv.sandbox_used()
            lam = srv.client()
            logs = srv.client("logs")
            signer = srv.signer()
            zip_bytes = bl.make_zip({"app.py": bl.PY_TRIVIAL})
            peer_start.join()
            bl.log(f"corral {srv.port} ({sandbox}), serverless-offline {peer.lambda_port}")
            for r in range(repeats):
                for side in (("corral", "peer") if r % 2 == 0 else ("peer", "corral")):
                    if side == "corral":
                        name = bl.unique("burst")
                        srv.create_function(lam, name, zip_bytes, memory=args.memory)
                        req = signer.invoke(name, tail=True)
                        cpu0 = bl.tree_cpu_seconds(srv.pid)
                        res = burst(srv.port, [req] * n)
                        # CPU of the server, its launchers and the instances, per request
                        res["cpu_ms_per_request"] = round(
                            (bl.tree_cpu_seconds(srv.pid) - cpu0) * 1000 / n, 2)
                        res["instances_after"] = srv.health().get("instances")
                        streams: set[str] = set()
                        for _ in range(20):  # log delivery may lag the responses a little
                            streams = set()
                            token = None
                            while True:
                                kw: dict[str, Any] = {"nextToken": token} if token else {}
                                page = logs.describe_log_streams(
                                    logGroupName=f"/aws/lambda/{name}", **kw)
                                streams |= {s["logStreamName"] for s in page["logStreams"]}
                                token = page.get("nextToken")
                                if not token:
                                    break
                            if len(streams) >= res["cold"]:
                                break
                            time.sleep(0.25)
                        res["log_streams"] = len(streams)
                        lam.delete_function(FunctionName=name)
                        # let the retired instances go before the next burst (bounded)
                        last = r == repeats - 1
                        deadline = time.monotonic() + (0 if args.no_settle or last else 60)
                        while time.monotonic() < deadline:
                            inst = srv.health().get("instances", {})
                            if not inst.get("idle") and not inst.get("busy"):
                                break
                            time.sleep(0.25)
                    else:
                        before = set(peer.python_pids())
                        assert peer.proc is not None
                        cpu0 = bl.tree_cpu_seconds(peer.proc.pid)
                        res = burst(peer.lambda_port, [peer.request(f"b{r}")] * n)
                        res["cpu_ms_per_request"] = round(
                            (bl.tree_cpu_seconds(peer.proc.pid) - cpu0) * 1000 / n, 2)
                        res["instances_after"] = len(set(peer.python_pids()) - before)
                    results[side].append(res)
                    bl.log(f"  {side}: wall {res['wall_s']} s, CPU/request "
                           f"{res['cpu_ms_per_request']} ms, {res['answered_ok']}/{n} "
                           f"answered with the handler's result, instances "
                           f"{res['instances_after']}, errors {res['errors'][:2]}")
                    time.sleep(1.0)
        finally:
            peer.stop()
            srv.stop()

    def med(side: str, key: str) -> float | None:
        vals = [r[key] for r in results[side] if r.get(key) is not None]
        return round(statistics.median(vals), 4) if vals else None

    all_answered = all(r["answered_ok"] == n for r in results["corral"])
    wall = med("corral", "wall_s")
    verdicts = [bl.verdict(
        f"{n} concurrent first invocations of one function: total wall time",
        wall if all_answered else None, 1.0, "le", "s", "all answered, <= 1 s total",
        note=("all answered" if all_answered else "NOT all answered: failed per run "
              + str([r["failed"] for r in results["corral"]]) + ", e.g. "
              + "; ".join({e for r in results["corral"] for e in r["errors"][:1]}))[:400])]
    if not all_answered:
        verdicts[0]["measured"] = wall
        verdicts[0]["verdict"] = (
            f"missed: {sum(r['failed'] for r in results['corral'])} of "
            f"{n * len(results['corral'])} failed; wall {wall} s "
            f"({'within' if wall is not None and wall <= 1.0 else 'over'} 1 s)")
    rows = []
    for side in ("corral", "peer"):
        for run in results[side]:
            rows.append([side, run["wall_s"], f"{run['answered_ok']}/{n}",
                         bl.ms(run["latency_ms"].get("median")),
                         bl.ms(run["latency_ms"].get("max")),
                         run["cold"] if side == "corral" else "-",
                         run["instances_after"] if side == "peer" else
                         f"{run['instances_after']} / {run.get('log_streams')} streams"])
    bl.print_table(f"Burst: {n} concurrent first invocations (sandbox: {sandbox}, "
                   f"MemorySize {args.memory} MB)",
                   ["side", "wall s", "answered", "latency p50 ms", "max ms", "cold (Init)",
                    "instances"], rows)
    bl.print_verdicts(verdicts)
    bl.write_results(NAME, {
        "config": {"quick": args.quick, "sandbox_requested": args.sandbox, "sandbox": sandbox,
                   "memory_mb": args.memory, "concurrency": n, "repeats": repeats,
                   "settle_between_bursts": not args.no_settle,
                   "peer": bl.peer_version()},
        "summary": {"corral_wall_s_median": wall, "peer_wall_s_median": med("peer", "wall_s"),
                    "ratio": bl.ratio(wall, med("peer", "wall_s")),
                    "corral_all_answered": all_answered,
                    "peer_all_answered": all(r["answered_ok"] == n for r in results["peer"]),
                    "corral_failed_per_run": [r["failed"] for r in results["corral"]]},
        "runs": results, "targets": verdicts})
    return 0


if __name__ == "__main__":
    sys.exit(main())
