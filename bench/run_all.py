"""Run every benchmark, then regenerate docs/performance.md (tables, verdicts, plots).

    .venv/bin/python bench/run_all.py [--quick] [--sandbox auto|linux|process] [--insecure]
                                      [--only cold_start,throughput] [--docs-only]

Each benchmark runs as its own process (a failure is reported and the others still run) and
writes bench/results/<name>.json; the document is built from those files, so `--docs-only`
re-renders it without measuring. Plots need matplotlib (`pip install matplotlib`, the `bench`
extra); without it the document is written without images. Text between the
`<!-- notes:begin -->` and `<!-- notes:end -->` markers of docs/performance.md (the analysis of
misses, written by hand) is kept across regenerations.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl

BENCHMARKS = ["cold_start", "warm_latency", "throughput", "burst", "memory", "async_queue"]
DOC = bl.ROOT / "docs" / "performance.md"
IMG = bl.ROOT / "docs" / "img"
SPEC_LINK = "../../shared/spec/performance.md"
NOTES_BEGIN = "<!-- notes:begin -->"
NOTES_END = "<!-- notes:end -->"
TITLES = {
    "cold_start": "Cold start",
    "warm_latency": "Warm invoke latency, concurrency 1",
    "throughput": "Warm throughput, wrk -c8",
    "burst": "100 concurrent first invocations",
    "memory": "Memory: idle instance and server",
    "async_queue": "Asynchronous events accepted",
}


def run(names: list[str], quick: bool, sandbox: str, insecure: bool,
        out_dir: Path) -> dict[str, Any]:
    """Run the benchmarks; each also writes its JSON into out_dir (this run's own copy)."""
    status: dict[str, Any] = {}
    env = {**os.environ, "CORRAL_BENCH_OUT": str(out_dir)}
    for name in names:
        cmd = [sys.executable, str(bl.BENCH / f"{name}.py"), "--sandbox", sandbox]
        if quick:
            cmd.append("--quick")
        if insecure:
            cmd.append("--insecure")
        bl.log(f"=== {name}: {' '.join(cmd[1:])}")
        t0 = time.monotonic()
        rc: int | str
        try:
            # generous: a benchmark may first wait for the host lock held by someone else
            rc = subprocess.run(cmd, timeout=(120 if quick else 600) + bl.LOCK_WAIT_S,
                                env=env).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        status[name] = {"rc": rc, "seconds": round(time.monotonic() - t0, 1)}
        bl.log(f"=== {name}: rc {rc} in {status[name]['seconds']} s")
    return status


def load(name: str, run_dir: Path | None = None) -> dict[str, Any] | None:
    """This run's result if it produced one, else the last one in bench/results/."""
    path = bl.RESULTS / f"{name}.json"
    if run_dir is not None and (run_dir / f"{name}.json").exists():
        path = run_dir / f"{name}.json"
    if not path.exists():
        return None
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


# ----------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------
def plots(results: dict[str, dict[str, Any]]) -> dict[str, str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        bl.log("matplotlib is not installed: no plots (pip install matplotlib)")
        return {}
    IMG.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    corral_c, peer_c = "#2b6cb0", "#dd6b20"

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = IMG / f"perf-{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made[name] = f"img/perf-{name}.png"

    def bars(ax: Any, labels: list[str], series: list[tuple[str, str, list[Any], list[Any]]],
             ylabel: str, log: bool = False) -> None:
        width = 0.8 / len(series)
        for k, (label, color, vals, errs) in enumerate(series):
            xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))]
            heights = [v or 0 for v in vals]
            kwargs: dict[str, Any] = {}
            if errs and all(e is not None for e in errs):
                kwargs["yerr"] = list(zip(*errs, strict=True))
                kwargs["capsize"] = 3
            ax.bar(xs, heights, width, label=label, color=color, **kwargs)
            tops = [v + (e[1] if e else 0) if v else 0
                    for v, e in zip(vals, errs or [None] * len(vals), strict=True)]
            for x, v, top in zip(xs, vals, tops, strict=True):
                if v:
                    label = f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
                    ax.annotate(label, (x, top), ha="center", va="bottom", fontsize=8,
                                xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)

    cs = results.get("cold_start")
    if cs:
        s = cs["summary"]
        scen = [("Python\ntrivial", "corral_py", "peer_py"),
                ("Python heavy\nfirst instance", "corral_heavy_first", "peer_heavy_first"),
                ("Python heavy\nfurther instance", "corral_heavy_further", "peer_heavy_further"),
                ("Node.js\ntrivial", "corral_node", "peer_node")]

        def se(key: str) -> tuple[float | None, tuple[float, float] | None]:
            d = s.get(key, {})
            if not d.get("n"):
                return None, None
            return d["median"], (d["median"] - d["p10"], d["p90"] - d["median"])

        fig, ax = plt.subplots(figsize=(8, 4.2))
        c = [se(k[1]) for k in scen]
        p = [se(k[2]) for k in scen]
        bars(ax, [k[0] for k in scen],
             [("Corral", corral_c, [x[0] for x in c], [x[1] for x in c]),
              ("serverless-offline", peer_c, [x[0] for x in p], [x[1] for x in p])],
             "ms, request to response (median, p10-p90)", log=True)
        for val, label, style in ((10, "target trivial Python 10 ms", "--"),
                                  (15, "target further instance 15 ms", ":")):
            ax.axhline(val, color="green", linestyle=style, linewidth=1)
            ax.annotate(label, (3.45, val), fontsize=7, color="green", ha="right",
                        va="bottom")
        for key, label in (("python_pass", "python3.11 -S -I -c pass"),
                           ("node_e0", "node -e 0")):
            v = s.get(key, {}).get("median")
            if v:
                ax.axhline(v, color="grey", linestyle="-.", linewidth=0.8)
                ax.annotate(f"{label} {v:.0f} ms", (-0.45, v), fontsize=7, color="grey",
                            va="bottom")
        ax.set_title(f"Cold start ({cs['config'].get('sandbox')})", fontsize=10)
        save(fig, "cold_start")

    wl = results.get("warm_latency")
    if wl:
        s = wl["summary"]
        fig, ax = plt.subplots(figsize=(7, 3.8))
        qs = [("p50", "median"), ("p90", "p90"), ("p99", "p99")]
        labels = [f"raw {q}" for q, _ in qs] + [f"boto3 {q}" for q, _ in qs]
        cv = [s["raw_corral"].get(k) for _, k in qs] + [s["boto3_corral"].get(k) for _, k in qs]
        pv = [s["raw_peer"].get(k) for _, k in qs] + [s["boto3_peer"].get(k) for _, k in qs]
        bars(ax, labels, [("Corral", corral_c, cv, []),
                          ("serverless-offline", peer_c, pv, [])], "ms", log=True)
        ax.set_title("Warm invoke, concurrency 1", fontsize=10)
        save(fig, "warm_latency")

    tp = results.get("throughput")
    if tp:
        s = tp["summary"]
        rts = [rt for rt in ("python", "node") if rt in s]
        fig, ax = plt.subplots(figsize=(6, 3.8))

        def rng(side: str, rt: str) -> tuple[float, float] | None:
            runs = s[rt][side]["rps_runs"]
            med = s[rt][side]["rps_median"]
            return (med - min(runs), max(runs) - med) if runs else None

        bars(ax, [f"{rt} handler" for rt in rts],
             [("Corral", corral_c, [s[rt]["corral"]["rps_median"] for rt in rts],
               [rng("corral", rt) for rt in rts]),
              ("serverless-offline", peer_c, [s[rt]["peer"]["rps_median"] for rt in rts],
               [rng("peer", rt) for rt in rts])], "req/s (median of runs, min-max)")
        ax.set_title(f"Throughput, wrk {tp['config'].get('wrk')}", fontsize=10)
        save(fig, "throughput")

    bu = results.get("burst")
    if bu:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        cw = [r["wall_s"] for r in bu["runs"]["corral"]]
        pw = [r["wall_s"] for r in bu["runs"]["peer"]]
        ax.bar(["Corral"], [bu["summary"]["corral_wall_s_median"] or 0], color=corral_c)
        ax.bar(["serverless-offline"], [bu["summary"]["peer_wall_s_median"] or 0],
               color=peer_c)
        ax.scatter(["Corral"] * len(cw), cw, color="black", s=10, zorder=3)
        ax.scatter(["serverless-offline"] * len(pw), pw, color="black", s=10, zorder=3)
        ax.axhline(1.0, color="green", linestyle="--", linewidth=1, label="target 1 s")
        ax.set_ylabel("s, first send to last response")
        ax.set_title(f"{bu['config'].get('concurrency')} concurrent first invocations",
                     fontsize=10)
        ax.legend(fontsize=8)
        save(fig, "burst")

    me = results.get("memory")
    if me:
        s = me["summary"]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.6))
        a1.bar(["Corral\n1 instance", "Corral\n(of 5 warm)", "Corral\nfrom template",
                "serverless-\noffline"],
               [s.get("instance_total_pss_mb_one") or 0,
                s.get("instance_total_pss_mb_of_five") or 0,
                s.get("forked_instance_pss_mb") or 0, s.get("peer_python_pss_mb") or 0],
               color=[corral_c, corral_c, corral_c, peer_c])
        a1.axhline(5, color="green", linestyle="--", linewidth=1, label="target 5 MB")
        a1.set_ylabel("PSS, MB")
        a1.set_title("Idle warm Python instance", fontsize=10)
        a1.legend(fontsize=8)
        a1.tick_params(axis="x", labelsize=8)
        a2.bar(["fresh", f"{s.get('functions_registered')} functions", "after restart"],
               [s.get("server_rss_mb_baseline") or 0, s.get("server_rss_mb_after_creates") or 0,
                s.get("server_rss_mb_after_restart") or 0], color=corral_c)
        a2.axhline(150, color="green", linestyle="--", linewidth=1, label="target 150 MB")
        a2.set_ylabel("server VmRSS, MB")
        a2.set_title("Server with functions registered", fontsize=10)
        a2.legend(fontsize=8)
        a2.tick_params(axis="x", labelsize=8)
        save(fig, "memory")

    aq = results.get("async_queue")
    if aq:
        s = aq["summary"]
        per = s.get("accepted_per_s_by_second") or []
        fig, ax = plt.subplots(figsize=(6, 3.4))
        ax.bar(range(len(per)), per, color=corral_c, label="202 per wall-clock second")
        ax.axhline(2000, color="green", linestyle="--", linewidth=1, label="target 2,000/s")
        ax.axhline(s.get("accepted_per_s") or 0, color=corral_c, linestyle=":", linewidth=1,
                   label=f"run average {s.get('accepted_per_s', 0):,.0f}/s")
        ax.set_xlabel("second of the run (first and last are partial)")
        ax.set_ylabel("events accepted")
        ax.set_title("Event invokes accepted and queued", fontsize=10)
        ax.legend(fontsize=8)
        save(fig, "async_queue")

    verdicts = [v for name in BENCHMARKS if results.get(name)
                for v in results[name].get("targets", []) if v.get("measured") is not None]
    verdicts = [v for v in verdicts if "first milestone" not in v["metric"]]
    if verdicts:
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(verdicts) + 1.2))
        labels, vals, colors = [], [], []
        for v in verdicts:
            m, t = v["measured"], v["target_value"]
            factor = (t / m if m else 0) if v["direction"] == "le" else m / t
            labels.append(short_metric(v["metric"]))
            vals.append(factor)
            colors.append("#38a169" if v["met"] else "#e53e3e")
        ax.barh(range(len(vals)), vals, color=colors)
        ax.set_yticks(range(len(vals)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("target / measured (lower-is-better) or measured / target; >= 1 is met")
        for i, x in enumerate(vals):
            ax.annotate(f"{x:.2f}", (x, i), fontsize=7, va="center", xytext=(3, 0),
                        textcoords="offset points")
        ax.set_title("All targets", fontsize=10)
        save(fig, "targets")
    return made


def short_metric(metric: str) -> str:
    table = [("trivial Python", "cold start, trivial Python"),
             ("further instance", "cold start, further instance (template)"),
             ("Node.js", "cold start, Node.js / node -e 0"),
             ("warm synchronous", "warm invoke p50 / serverless-offline"),
             ("warm throughput", "throughput / serverless-offline"),
             ("concurrent first", "100 concurrent first invocations"),
             ("idle warm", "idle instance PSS"),
             ("server memory", "server RSS, 1,000 functions"),
             ("asynchronous", "async events accepted/s")]
    for needle, short in table:
        if needle in metric:
            return short
    return metric[:40]


# ----------------------------------------------------------------------------------------------
# the document
# ----------------------------------------------------------------------------------------------
def md_table(columns: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return "-" if v is None else str(v).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def verdict_rows(doc: dict[str, Any], notes: bool = False) -> list[list[Any]]:
    return [[v["metric"], v["target"], bl.fmt_measured(v), f"**{v['verdict']}**"
             if not v["met"] else v["verdict"], *([v.get("note") or ""] if notes else [])]
            for v in doc.get("targets", [])]


def n(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def section(name: str, doc: dict[str, Any], img: str | None) -> list[str]:
    cfg = doc.get("config", {})
    out = [f"## {TITLES[name]}", "",
           f"`bench/{name}.py` · run {doc['timestamp']} · sandbox **{cfg.get('sandbox')}** · "
           f"{'quick pass' if cfg.get('quick') else 'full run'} · MemorySize "
           f"{cfg.get('memory_mb')} MB · raw data `bench/results/{name}.json`", ""]
    s = doc.get("summary", {})
    if name == "cold_start":
        rows = []
        for label, ck, pk, ik in (
                ("Python, trivial handler", "corral_py", "peer_py", "corral_py_init"),
                ("Python, >= 200 ms of imports, first instance", "corral_heavy_first",
                 "peer_heavy_first", "corral_heavy_first_init"),
                ("Python, >= 200 ms of imports, further instance", "corral_heavy_further",
                 "peer_heavy_further", "corral_heavy_further_init"),
                ("Node.js, trivial handler", "corral_node", "peer_node", "corral_node_init")):
            c, p = s.get(ck, {}), s.get(pk, {})
            rows.append([label, n(c.get("median")), f"{n(c.get('p10'))}-{n(c.get('p90'))}",
                         n(s.get(ik, {}).get("median")), n(p.get("median")),
                         f"{n(p.get('p10'))}-{n(p.get('p90'))}",
                         n(bl.ratio(c.get("median"), p.get("median")), 2), c.get("n")])
        out += [md_table(["cold start, request to response (ms)", "Corral p50", "p10-p90",
                          "Corral Init Duration p50", "serverless-offline p50", "p10-p90",
                          "Corral / peer", "n"], rows), ""]
        out += [md_table(["floor / import cost (ms)", "p50", "p10-p90"], [
            [label, n(s.get(k, {}).get("median")),
             f"{n(s.get(k, {}).get('p10'))}-{n(s.get(k, {}).get('p90'))}"]
            for label, k in (("`python3.11 -S -I -c pass` (exec floor)", "python_pass"),
                             ("`node -e 0` (clean environment)", "node_e0"),
                             ("heavy handler's imports, standalone on the host",
                              "heavy_import_standalone"),
                             ("heavy handler's imports, inside the first instance",
                              "heavy_import_in_instance"),
                             ("the version's template ready, after the first response",
                              "corral_template_ready_after"))]), ""]
        out.append(f"Each iteration creates a fresh function (deleted afterwards) and times its "
                   f"first Invoke over a keep-alive `http.client` connection with a request "
                   f"signed beforehand; `LogType=Tail` confirms it was cold. serverless-offline "
                   f"({cfg.get('peer')}) gets a never-invoked function per iteration. The "
                   f"further instance is timed while a `hold` request keeps the first "
                   f"instance busy. Corral and the peer alternate within each iteration.")
    elif name == "warm_latency":
        rows = []
        for label, key in (("raw keep-alive `http.client`", "raw"), ("boto3 `invoke`", "boto3")):
            c, p = s.get(f"{key}_corral", {}), s.get(f"{key}_peer", {})
            for q, k in (("p50", "median"), ("p90", "p90"), ("p99", "p99")):
                rows.append([f"{label} {q}", n(c.get(k), 3), n(p.get(k), 3),
                             n(bl.ratio(c.get(k), p.get(k)), 2)])
            rows.append([f"{label} samples", c.get("n"), p.get("n"), ""])
        out += [md_table(["ms", "Corral", "serverless-offline", "Corral / peer"], rows), ""]
        out.append(f"Same Python handler on both sides; blocks of {cfg.get('per_block')} "
                   f"requests alternate between Corral (one SigV4-signed request replayed, "
                   f"re-signed every block) and serverless-offline's Invoke API (unsigned).")
    elif name == "throughput":
        rows = []
        for rt, e in s.items():
            c, p = e["corral"], e["peer"]
            rows.append([f"{rt} handler", n(c["rps_median"], 0), n(p["rps_median"], 0),
                         n(e["ratio"], 2), ", ".join(n(x, 0) for x in c["rps_runs"]),
                         ", ".join(n(x, 0) for x in p["rps_runs"]),
                         f"{n(c['latency_p50_ms'], 2)} / {n(p['latency_p50_ms'], 2)}",
                         f"{c['errors']} / {p['errors']}"])
        out += [md_table(["wrk " + str(cfg.get("wrk")), "Corral req/s", "serverless-offline "
                          "req/s", "Corral / peer", "Corral runs", "peer runs",
                          "latency p50 ms C / P", "errors C / P"], rows), ""]
        cpu_rows = []
        for rt, e in s.items():
            for side in ("corral", "peer"):
                share = e[side].get("cpu_share") or {}
                per = e[side].get("cpu_ms_per_request") or {}
                cpu_rows.append([rt, side, n(share.get("front"), 2),
                                 n(share.get("functions"), 2), n(per.get("front"), 3),
                                 n(per.get("functions"), 3)])
        out += [md_table(["CPU during the last run", "side", "front process (cores)",
                          "function processes (cores)", "front CPU ms / request",
                          "function CPU ms / request"], cpu_rows), ""]
        out.append("wrk replays one request from a Lua script: SigV4-signed for Corral (signed "
                   "just before each run), unsigned for serverless-offline; runs alternate "
                   "after an untimed warm-up that starts the 8 instances on both sides.")
    elif name == "burst":
        rows = []
        for side in ("corral", "peer"):
            for r in doc["runs"][side]:
                inst = r["instances_after"]
                if isinstance(inst, dict):
                    inst = f"{inst.get('idle', 0) + inst.get('busy', 0)} " \
                           f"({r.get('log_streams')} log streams)"
                rows.append(["Corral" if side == "corral" else "serverless-offline",
                             r["wall_s"],
                             f"{r.get('answered_ok', r['answered_200'])}/{r['requests']}",
                             n(r["latency_ms"].get("median")), n(r["latency_ms"].get("max")),
                             r["cold"] if side == "corral" else "-", inst,
                             n(r.get("cpu_ms_per_request"))])
        out += [md_table(["side", "wall s", "answered with the handler's result",
                          "latency p50 ms", "max ms", "cold (Init Duration)",
                          "instances started", "CPU ms per request (all processes)"], rows),
                ""]
        errs = sorted({e for r in doc["runs"]["corral"] for e in r.get("errors", [])})
        if errs:
            out += ["Corral errors seen: " + "; ".join(f"`{e[:160]}`" for e in errs[:3]), ""]
        out.append(f"100 threads with pre-opened keep-alive connections and pre-signed requests "
                   f"released by a barrier against a function with no instance; MemorySize "
                   f"{cfg.get('memory_mb')} MB. Median wall time Corral "
                   f"{s.get('corral_wall_s_median')} s, serverless-offline "
                   f"{s.get('peer_wall_s_median')} s.")
    elif name == "memory":
        out += [md_table(["idle warm Python instance (MB)", "PSS", "USS (private)"], [
            ["Corral, one instance", n(s.get("instance_total_pss_mb_one"), 2),
             n(s.get("instance_total_uss_mb_one"), 2)],
            ["Corral, per instance with 5 warm", n(s.get("instance_total_pss_mb_of_five"), 2),
             n(s.get("instance_total_uss_mb_of_five"), 2)],
            [f"Corral, per instance forked from a per-version template "
             f"({s.get('forked_instances_found')} of them)",
             n(s.get("forked_instance_pss_mb"), 2), n(s.get("forked_instance_uss_mb"), 2)],
            ["Corral, that version's template (shared, not per instance)",
             n(s.get("template_pss_mb"), 2), "-"],
            ["serverless-offline Python process", n(s.get("peer_python_pss_mb"), 2),
             n(s.get("peer_python_uss_mb"), 2)],
            [f"Corral server's launcher pool ({s.get('launcher_pool_processes')} processes, "
             f"shared, not per instance)", n(s.get("launcher_pool_pss_mb"), 2), "-"]]), ""]
        out += [md_table(["Corral server VmRSS (MB)", "value"], [
            ["fresh server", n(s.get("server_rss_mb_baseline"))],
            [f"after creating {s.get('functions_registered')} functions",
             n(s.get("server_rss_mb_after_creates"))],
            ["peak (VmHWM) during the creates", n(s.get("server_hwm_mb_after_creates"))],
            ["after a restart, functions loaded from the store",
             n(s.get("server_rss_mb_after_restart"))]]), ""]
        out.append("Instance processes are found by `AWS_LAMBDA_FUNCTION_NAME` in "
                   "/proc/<pid>/environ, Pss summed from /proc/<pid>/smaps_rollup. The 1,000 "
                   "functions share one small zip.")
    elif name == "async_queue":
        out += [md_table(["Event invokes, wrk " + str(cfg.get("wrk")), "value"], [
            ["accepted (202) per second, whole run", n(s.get("accepted_per_s"), 0)],
            ["accepted per wall-clock second", " ".join(
                str(x) for x in s.get("accepted_per_s_by_second", []))],
            ["Event invoke latency p50 / p99 (ms)",
             f"{s.get('latency_p50_ms')} / {s.get('latency_p99_ms')}"],
            ["delivered to the function per second, during / after the load",
             f"{n(s.get('delivered_per_s_during_load'), 0)} / "
             f"{n(s.get('delivered_per_s_after_load'), 0)}"],
            ["accepted events unaccounted for after the durability check (must be 0)",
             s.get("unaccounted")]]), ""]
        out.append(f"Durability check: after the load a read-only snapshot of the SQLite queue "
                   f"is taken; every accepted event id must be in it or have been reported by "
                   f"the function (over UDP) by then. Store: {cfg.get('store')}.")
    out += ["", "Targets:", "", md_table(["metric", "target", "measured", "verdict", "note"],
                                         verdict_rows(doc, notes=True)), ""]
    if img:
        out += [f"![{TITLES[name]}]({img})", ""]
    return out


def render(results: dict[str, dict[str, Any]], images: dict[str, str],
           status: dict[str, Any] | None) -> str:
    old_notes = ""
    if DOC.exists():
        text = DOC.read_text()
        if NOTES_BEGIN in text and NOTES_END in text:
            old_notes = text.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0].strip("\n")
    any_doc = next(iter(results.values()), None)
    machine = any_doc["machine"] if any_doc else {}
    sandboxes = sorted({d.get("config", {}).get("sandbox", "?") for d in results.values()})
    quick = any(d.get("config", {}).get("quick") for d in results.values())
    lines = [
        "# Performance",
        "",
        "<!-- Generated by bench/run_all.py from bench/results/*.json; edit only the notes "
        "block. -->",
        "",
        f"Targets and peers come from the performance spec "
        f"([`/work/shared/spec/performance.md`]({SPEC_LINK})). Every figure below was measured "
        f"by the benchmarks in `bench/` on one machine, with serverless-offline "
        f"(the most used local emulator, no isolation) run side by side in the same run where "
        f"a ratio is given. The machine is shared and noisy: compare medians and ratios, not "
        f"single absolute times.",
        "",
        f"- Machine: {machine.get('nproc')} CPUs ({machine.get('cpu', '?')}), "
        f"{machine.get('mem_total_gb', '?')} GB, kernel {machine.get('kernel')}, "
        f"Python {machine.get('python')} (functions: {machine.get('function_python')}), "
        f"Node {machine.get('node', '?')}; commit {machine.get('git', '?')}",
        f"- Corral sandbox: {', '.join(sandboxes)}"
        + (" — **quick pass** (few samples)" if quick else ""),
        "- Reproduce: `.venv/bin/python bench/run_all.py` (add `--quick` for a fast pass, "
        "`--sandbox process --insecure` where the Linux sandbox is unavailable); one benchmark: "
        "`.venv/bin/python bench/<name>.py`. Needs `wrk` (Debian package), Node.js + npm "
        "(serverless-offline is installed into `bench/.peer/` on first use) and, for the "
        "plots, matplotlib.",
        "",
        "## Summary",
        "",
    ]
    all_rows = []
    for name in BENCHMARKS:
        if name in results:
            for row in verdict_rows(results[name]):
                all_rows.append(row)
    lines += [md_table(["metric", "target", "measured", "verdict"], all_rows), ""]
    if "targets" in images:
        lines += [f"![All targets]({images['targets']})", ""]
    if status:
        failed = {k: v for k, v in status.items() if v["rc"] != 0}
        if failed:
            lines += [f"Benchmarks that failed in the last run: {failed} (their sections show "
                      "the previous results, if any).", ""]
    lines += ["## Notes on the misses", "", NOTES_BEGIN,
              old_notes or "_Analysis of each missed target: by how much, what the profile "
                           "shows, what would close it._", NOTES_END, ""]
    for name in BENCHMARKS:
        if name in results:
            lines += section(name, results[name], images.get(name))
        else:
            lines += [f"## {TITLES[name]}", "", f"_No results yet: run `bench/{name}.py`._", ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sandbox", choices=["auto", "linux", "process"], default="auto")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--docs-only", action="store_true",
                        help="regenerate docs/performance.md from existing results")
    args = parser.parse_args()
    names = [x for x in args.only.split(",") if x] or BENCHMARKS
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks: {sorted(unknown)}")
    run_dir = Path(tempfile.mkdtemp(prefix="corral-bench-run-"))
    try:
        status = None if args.docs_only else run(names, args.quick, args.sandbox,
                                                  args.insecure, run_dir)
        results = {name: doc for name in BENCHMARKS
                   if (doc := load(name, run_dir)) is not None}
        # bench/results/ holds this run's results even if someone else ran one meanwhile
        for name in BENCHMARKS:
            if (run_dir / f"{name}.json").exists():
                shutil.copyfile(run_dir / f"{name}.json", bl.RESULTS / f"{name}.json")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    images = plots(results)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(render(results, images, status))
    bl.log(f"wrote {DOC.relative_to(bl.ROOT)} ({len(results)} benchmarks, "
           f"{len(images)} plots)")
    if status:
        bl.print_table("run_all", ["benchmark", "rc", "seconds"],
                       [[k, v["rc"], v["seconds"]] for k, v in status.items()])
    return 0 if not status or all(v["rc"] == 0 for v in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
