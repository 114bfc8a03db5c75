"""Memory: PSS of an idle warm Python instance, and server RSS with 1,000 functions registered.

Part 1 (instance): a trivial Python function is invoked a few times, left idle, and the instance's
processes are found by `AWS_LAMBDA_FUNCTION_NAME` in /proc/<pid>/environ; their Pss (and
Private_Clean + Private_Dirty, the memory no other process shares) are summed from
/proc/<pid>/smaps_rollup. When the sandbox leaves a per-instance nsinit process as the runtime's
parent (one child: the runtime), it is part of the instance and added to the "instance total"
(a shared parent, e.g. a zygote, is not). The server's pool of pre-started launchers/zygotes
(shared by all future instances) is reported apart.
Measured with one instance, then with 5 warm instances of the same function (PSS divides shared
pages among them), then for instances forked from a per-version template (one invoke, wait for
the template, five concurrent holds; the template itself is reported apart). The idle
serverless-offline Python process for the same handler is measured for context.

Part 2 (server): a fresh server, 1,000 functions created through boto3 from one small shared zip,
then the server process's VmRSS (and VmHWM); then the server is restarted on the same data dir
and measured again with the 1,000 functions loaded from the store, none running.
Usage: .venv/bin/python bench/memory.py [--quick] [--sandbox auto|linux|process]
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl

NAME = "memory"

PY_HOLD = """
import time


def handler(event, context):
    hold = event.get("hold")
    if hold:
        time.sleep(float(hold))
    return {"ok": True}
"""


def template_pids(name: str) -> list[int]:
    """The function's per-version templates (their environment says so)."""
    return [pid for pid in bl.pids_with_env("AWS_LAMBDA_FUNCTION_NAME", name)
            if bl.proc_environ(pid).get("CORRAL_TEMPLATE") == "1"]


def instance_memory(name: str) -> list[dict[str, Any]]:
    """Per instance: its runtime process(es) and the init process above them (templates
    are not instances)."""
    templates = set(template_pids(name))
    runtime_pids = [pid for pid in bl.pids_with_env("AWS_LAMBDA_FUNCTION_NAME", name)
                    if pid not in templates]
    out = []
    for pid in runtime_pids:
        roll = bl.smaps_rollup(pid)
        entry: dict[str, Any] = {
            "pid": pid, "cmd": bl.cmdline(pid)[:120],
            "runtime_pss_kb": roll.get("Pss", 0),
            "runtime_uss_kb": roll.get("Private_Clean", 0) + roll.get("Private_Dirty", 0),
            "runtime_rss_kb": roll.get("Rss", 0),
            "runtime_pss_anon_kb": roll.get("Pss_Anon", 0)}
        parent = ppid(pid)
        # a per-instance init/launcher left as the runtime's parent counts as the instance's;
        # a shared one (a zygote with several children) does not
        if parent and "nsinit" in bl.cmdline(parent) and children(parent) == [pid]:
            proll = bl.smaps_rollup(parent)
            entry["init_pid"] = parent
            entry["init_pss_kb"] = proll.get("Pss", 0)
            entry["init_uss_kb"] = proll.get("Private_Clean", 0) + proll.get("Private_Dirty", 0)
        else:
            entry["init_pss_kb"] = entry["init_uss_kb"] = 0
        entry["forked_from_template"] = parent in templates
        entry["total_pss_kb"] = entry["runtime_pss_kb"] + entry["init_pss_kb"]
        entry["total_uss_kb"] = entry["runtime_uss_kb"] + entry["init_uss_kb"]
        out.append(entry)
    return out


def hold_concurrently(srv: bl.CorralServer, hold: bl.SignedRequest, n: int = 5) -> None:
    """Send `hold` n times at once (n instances busy together), then let them go idle."""
    clients = [bl.RawClient(srv.port) for _ in range(n)]
    with cf.ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda c: c.send(hold), clients))
    for c in clients:
        c.close()
    time.sleep(1.5)


def children(pid: int) -> list[int]:
    return [p for p, _ in bl.iter_procs() if ppid(p) == pid]


def ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def mb(kb: float | None) -> float | None:
    return None if kb is None else round(kb / 1024, 2)


def mean_of(entries: list[dict[str, Any]], key: str) -> float | None:
    vals = [e[key] for e in entries]
    return statistics.fmean(vals) if vals else None


def main() -> int:
    parser = bl.common_args(__doc__.split("\n")[0])
    parser.set_defaults(memory=128)
    parser.add_argument("--functions", type=int, default=1000)
    args = parser.parse_args()
    n_functions = args.functions
    result: dict[str, Any] = {}

    with bl.workdir("mem") as wd:
        srv = bl.CorralServer(wd / "a", sandbox=args.sandbox, insecure=args.insecure)
        (wd / "a").mkdir()
        peer = bl.Peer({"py": bl.PeerFunction("app.handler", "python3.11")},
                       {"app.py": PY_HOLD})
        try:
            # ---- part 1: idle warm instance --------------------------------------------------
            peer_start = bl.Background(peer.start)
            srv.start()
            sandbox = srv.sandbox_used()
            lam = srv.client()
            signer = srv.signer()
            zip_bytes = bl.make_zip({"app.py": PY_HOLD})
            name = bl.unique("mem")
            srv.create_function(lam, name, zip_bytes, memory=args.memory)
            client = bl.RawClient(srv.port)
            for _ in range(5):
                client.send(signer.invoke(name))
            time.sleep(1.5)
            one = instance_memory(name)
            bl.log(f"one idle instance: {json.dumps(one)}")
            # five warm instances: five concurrent holds force five instances
            name5 = bl.unique("mem5")
            srv.create_function(lam, name5, zip_bytes, memory=args.memory)
            hold_concurrently(srv, signer.invoke(name5, json.dumps({"hold": 1.0}).encode()))
            five = instance_memory(name5)
            # instances forked from a per-version template: one invoke, wait for the
            # template, then five concurrent holds (one reuses the first instance)
            name_t = bl.unique("memt")
            srv.create_function(lam, name_t, zip_bytes, memory=args.memory,
                                Tags={"corral:template": "on"})  # its init is cheap
            templates_before = srv.health()["instances"].get("templates", 0)
            client.send(signer.invoke(name_t))
            for _ in range(300):
                if srv.health()["instances"].get("templates", 0) > templates_before:
                    break
                time.sleep(0.05)
            hold_concurrently(srv, signer.invoke(name_t, json.dumps({"hold": 1.0}).encode()))
            forked = [e for e in instance_memory(name_t) if e["forked_from_template"]]
            template_pss = [bl.smaps_rollup(p).get("Pss", 0) for p in template_pids(name_t)]
            client.close()

            peer_start.join(raise_error=False)
            peer_mem: dict[str, Any] = {}
            if peer_start.error is None and peer.lambda_port:
                pc = bl.RawClient(peer.lambda_port)
                for _ in range(5):
                    pc.send(peer.request("py"))
                pc.close()
                time.sleep(1.0)
                pids = peer.python_pids()
                if pids:
                    rolls = [bl.smaps_rollup(p) for p in pids]
                    peer_mem = {"processes": len(pids),
                                "pss_kb": statistics.fmean(r.get("Pss", 0) for r in rolls),
                                "uss_kb": statistics.fmean(r.get("Private_Clean", 0)
                                                           + r.get("Private_Dirty", 0)
                                                           for r in rolls)}
            per_instance = {e.get("init_pid") for e in one + five}
            launchers = [bl.smaps_rollup(p).get("Pss", 0) for p in bl.descendants(srv.pid)
                         if "nsinit" in bl.cmdline(p) and p not in per_instance]
            result["instance"] = {"one": one, "five": five, "forked": forked,
                                  "template_pss_kb": template_pss,
                                  "peer_python_process": peer_mem,
                                  "launcher_pool": {"processes": len(launchers),
                                                    "pss_kb_total": sum(launchers)}}
        finally:
            peer.stop()
            srv.stop()

        # ---- part 2: server RSS with N functions ---------------------------------------------
        (wd / "b").mkdir()
        srv = bl.CorralServer(wd / "b", sandbox=args.sandbox, insecure=args.insecure)
        try:
            srv.start()
            lam = srv.client()
            lam.list_functions()
            time.sleep(1.0)
            base = {"rss_kb": bl.status_kb(srv.pid, "VmRSS"),
                    "hwm_kb": bl.status_kb(srv.pid, "VmHWM")}
            zip_bytes = bl.make_zip({"app.py": bl.PY_TRIVIAL})
            local = threading.local()
            t0 = time.perf_counter()

            def create(i: int) -> None:
                if not hasattr(local, "lam"):
                    local.lam = srv.client()
                local.lam.create_function(
                    FunctionName=f"fn-{i:05d}", Runtime="python3.11", Role=bl.ROLE,
                    Handler="app.handler", Code={"ZipFile": zip_bytes})

            with cf.ThreadPoolExecutor(4) as pool:
                list(pool.map(create, range(n_functions)))
            create_s = time.perf_counter() - t0
            bl.log(f"created {n_functions} functions in {create_s:.1f} s")
            count = srv.health().get("functions")
            time.sleep(1.0)
            loaded = {"rss_kb": bl.status_kb(srv.pid, "VmRSS"),
                      "hwm_kb": bl.status_kb(srv.pid, "VmHWM"),
                      "functions": count,
                      "helpers": [{"pid": p, "cmd": bl.cmdline(p)[:100],
                                   "rss_kb": bl.status_kb(p, "VmRSS")}
                                  for p in bl.descendants(srv.pid)]}
            srv.stop()
            srv = bl.CorralServer(wd / "b", sandbox=args.sandbox, insecure=args.insecure)
            srv.start()
            count_after = srv.health().get("functions")
            time.sleep(1.0)
            restarted = {"rss_kb": bl.status_kb(srv.pid, "VmRSS"),
                         "hwm_kb": bl.status_kb(srv.pid, "VmHWM"), "functions": count_after}
            result["server"] = {"baseline": base, "after_creates": loaded,
                                "after_restart": restarted, "create_seconds": round(create_s, 2),
                                "functions": n_functions}
        finally:
            srv.stop()

    inst = result["instance"]
    one_pss = mean_of(inst["one"], "runtime_pss_kb")
    one_total = mean_of(inst["one"], "total_pss_kb")
    five_pss = mean_of(inst["five"], "runtime_pss_kb")
    five_total = mean_of(inst["five"], "total_pss_kb")
    summary = {
        "instance_runtime_pss_mb_one": mb(one_pss),
        "instance_total_pss_mb_one": mb(one_total),
        "instance_runtime_uss_mb_one": mb(mean_of(inst["one"], "runtime_uss_kb")),
        "instance_total_uss_mb_one": mb(mean_of(inst["one"], "total_uss_kb")),
        "instance_runtime_pss_mb_of_five": mb(five_pss),
        "instance_total_pss_mb_of_five": mb(five_total),
        "instance_total_uss_mb_of_five": mb(mean_of(inst["five"], "total_uss_kb")),
        "instances_found_of_five": len(inst["five"]),
        "forked_instance_pss_mb": mb(mean_of(inst["forked"], "total_pss_kb")),
        "forked_instance_uss_mb": mb(mean_of(inst["forked"], "total_uss_kb")),
        "forked_instances_found": len(inst["forked"]),
        "template_pss_mb": mb(sum(inst["template_pss_kb"]) if inst["template_pss_kb"]
                              else None),
        "peer_python_pss_mb": mb(inst["peer_python_process"].get("pss_kb")),
        "launcher_pool_processes": inst["launcher_pool"]["processes"],
        "launcher_pool_pss_mb": mb(inst["launcher_pool"]["pss_kb_total"]),
        "peer_python_uss_mb": mb(inst["peer_python_process"].get("uss_kb")),
        "server_rss_mb_baseline": mb(result["server"]["baseline"]["rss_kb"]),
        "server_rss_mb_after_creates": mb(result["server"]["after_creates"]["rss_kb"]),
        "server_hwm_mb_after_creates": mb(result["server"]["after_creates"]["hwm_kb"]),
        "server_rss_mb_after_restart": mb(result["server"]["after_restart"]["rss_kb"]),
        "functions_registered": result["server"]["after_creates"]["functions"],
    }
    worst_rss = max(x for x in (summary["server_rss_mb_after_creates"],
                                summary["server_rss_mb_after_restart"]) if x is not None)
    verdicts = [
        bl.verdict("idle warm Python instance, memory unique to it (PSS, whole instance)",
                   summary["instance_total_pss_mb_one"], 5.0, "le", "MB", "<= 5 MB",
                   note=f"runtime process alone {summary['instance_runtime_pss_mb_one']} MB; "
                        f"per instance with 5 warm: {summary['instance_total_pss_mb_of_five']} MB"
                        f"; USS {summary['instance_total_uss_mb_one']} MB; an instance forked "
                        f"from a template: {summary['forked_instance_pss_mb']} MB"),
        bl.verdict(f"server memory with {n_functions} functions registered, none running "
                   "(VmRSS, worse of after-creates and after-restart)",
                   worst_rss, 150.0, "le", "MB", "<= 150 MB RSS"),
    ]
    bl.print_table(f"Idle warm Python instance memory, MB (sandbox: {sandbox}, MemorySize "
                   f"{args.memory} MB)",
                   ["measure", "runtime process", "with init process", "USS (total)"],
                   [["one instance", summary["instance_runtime_pss_mb_one"],
                     summary["instance_total_pss_mb_one"], summary["instance_total_uss_mb_one"]],
                    ["per instance, 5 warm", summary["instance_runtime_pss_mb_of_five"],
                     summary["instance_total_pss_mb_of_five"],
                     summary["instance_total_uss_mb_of_five"]],
                    [f"per instance forked from a template "
                     f"({summary['forked_instances_found']} of them)",
                     summary["forked_instance_pss_mb"], summary["forked_instance_pss_mb"],
                     summary["forked_instance_uss_mb"]],
                    ["the version's template (not per instance)", "-",
                     summary["template_pss_mb"], "-"],
                    ["serverless-offline python process", summary["peer_python_pss_mb"], "-",
                     summary["peer_python_uss_mb"]],
                    [f"server's launcher pool ({summary['launcher_pool_processes']} processes, "
                     "not per instance)", "-", summary["launcher_pool_pss_mb"], "-"]])
    bl.print_table(f"Server memory, {n_functions} functions registered, MB",
                   ["state", "VmRSS", "functions"],
                   [["fresh server", summary["server_rss_mb_baseline"], 0],
                    ["after creating them", summary["server_rss_mb_after_creates"],
                     summary["functions_registered"]],
                    ["after a restart (loaded from the store)",
                     summary["server_rss_mb_after_restart"],
                     result["server"]["after_restart"]["functions"]]])
    bl.print_verdicts(verdicts)
    bl.write_results(NAME, {
        "config": {"quick": args.quick, "sandbox_requested": args.sandbox, "sandbox": sandbox,
                   "memory_mb": args.memory, "functions": n_functions,
                   "peer": bl.peer_version()},
        "summary": summary, "detail": result, "targets": verdicts})
    return 0


if __name__ == "__main__":
    sys.exit(main())
