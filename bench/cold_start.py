"""Cold start, request to response, Corral vs serverless-offline side by side.

Scenarios (each iteration forces a cold start by creating a fresh function; the timed section is
one Invoke over a keep-alive `http.client` connection with a request signed beforehand):

* trivial Python handler: Corral's first invoke of a fresh function vs serverless-offline's first
  invoke of a fresh function (a distinct function per iteration, declared up front);
* a handler whose imports take >= 200 ms (real stdlib imports plus generated modules that compute
  at import, shipped with precompiled bytecode like a pip-installed package): the first instance,
  then a *further* instance of the same version (the first instance is kept busy by a `hold`
  request while the timed invoke runs, forcing a second instance), started once the version's
  template is ready (it initializes in the background after the first instance; the time it
  took is reported as `corral_template_ready_after`);
* trivial Node.js handler vs `node -e 0` (the target's floor) and vs serverless-offline;
* floors measured in the same run, with a clean environment: `python3.11 -S -I -c pass`,
  `node -e 0`.

Corral and the peer alternate within each iteration (the order flips every iteration). Corral's
requests ask for `LogType=Tail` so the REPORT line's `Init Duration` confirms each timed invoke was
cold. Usage: .venv/bin/python bench/cold_start.py [--quick] [--sandbox auto|linux|process]
"""

from __future__ import annotations

import functools
import importlib.util
import io
import json
import py_compile
import shutil
import statistics
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl

NAME = "cold_start"

# Heavy handler: real stdlib imports plus a generated package computing at import time.
HEAVY_STDLIB = ("asyncio, email.mime.multipart, email.policy, http.server, urllib.request, "
                "decimal, statistics, xml.etree.ElementTree, sqlite3, json, logging.handlers, "
                "argparse, zipfile, tarfile, unittest, inspect, dataclasses, typing, "
                "concurrent.futures, csv, uuid, pathlib, tempfile, pickle")
HEAVY_MODULES = 20
HEAVY_ITERATIONS = 10000

HEAVY_APP = f"""
import time

_T0 = time.perf_counter()
import {HEAVY_STDLIB}  # noqa
import heavy  # generated: 20 modules hashing and building tables at import
IMPORT_MS = (time.perf_counter() - _T0) * 1000.0


def handler(event, context):
    hold = event.get("hold")
    if hold:
        time.sleep(float(hold))
    return {{"import_ms": round(IMPORT_MS, 1), "stream": context.log_stream_name}}
"""

PY_HOLD = """
import time


def handler(event, context):
    hold = event.get("hold")
    if hold:
        time.sleep(float(hold))
    return {"ok": True, "stream": context.log_stream_name}
"""


def wait_for_template(srv: Any, count: int, timeout: float = 30.0) -> float | None:
    """ms until the server reports `count` ready per-version templates, None on timeout."""
    begin = time.perf_counter()
    while time.perf_counter() - begin < timeout:
        if srv.health()["instances"].get("templates", 0) >= count:
            return (time.perf_counter() - begin) * 1000
        time.sleep(0.02)
    return None


def heavy_sources() -> dict[str, str]:
    files = {"app.py": HEAVY_APP,
             "heavy/__init__.py": "".join(f"from heavy import m{i:02d}  # noqa\n"
                                          for i in range(HEAVY_MODULES))}
    for i in range(HEAVY_MODULES):
        funcs = "".join(f"def f{j}(x, y={j}):\n    return [x * y + k for k in range({j % 7 + 1})]"
                        "\n\n\n" for j in range(150))
        files[f"heavy/m{i:02d}.py"] = (
            f"import hashlib\n\n\n{funcs}_h = b\"{i}\"\n"
            f"for _i in range({HEAVY_ITERATIONS}):\n"
            "    _h = hashlib.sha256(_h + _i.to_bytes(4, \"little\")).digest()\n"
            "DIGEST = _h.hex()\n"
            "TABLE = {f\"k{_i}\": _i * _i for _i in range(2000)}\n")
    return files


def heavy_tree(dest: Path) -> Path:
    """Write the heavy handler with unchecked-hash .pyc files (what pip installs ship)."""
    for rel, text in heavy_sources().items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        py_compile.compile(str(path), cfile=importlib.util.cache_from_source(str(path)),
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
                           doraise=True)
    return dest


def zip_tree(root: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                info = zipfile.ZipInfo(str(path.relative_to(root)), (2024, 1, 1, 0, 0, 0))
                info.external_attr = (0o100000 | 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, path.read_bytes())
    return buf.getvalue()


def standalone_import_ms(tree: Path, runs: int) -> list[float]:
    """Import time of the heavy handler in a plain `python3.11 -S -I -B` on the host."""
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); t = time.perf_counter(); "
            "import app; print((time.perf_counter() - t) * 1000)")
    out = []
    for _ in range(runs):
        res = subprocess.run([bl.python311(), "-S", "-I", "-B", "-c", code, str(tree)],
                             capture_output=True, text=True, check=True, timeout=60)
        out.append(float(res.stdout.strip()))
    return out


# The floors run with a clean environment, like a sandboxed runtime: inherited variables can
# change them a lot (NODE_EXTRA_CA_CERTS alone makes `node -e 0` load a CA bundle: +60 ms here).
FLOOR_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


def time_exec(argv: list[str]) -> float:
    t0 = time.perf_counter_ns()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=60, env=FLOOR_ENV)
    return (time.perf_counter_ns() - t0) / 1e6


class Holder:
    """Sends a `hold` request on its own connection in a thread (keeps an instance busy)."""

    def __init__(self, port: int, req: bl.SignedRequest) -> None:
        self.client = bl.RawClient(port)
        self.req = req
        self.result: tuple[int, bytes] | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        status, body, _ = self.client.send(self.req)
        self.result = (status, body)

    def start(self) -> None:
        self.thread.start()

    def join(self) -> tuple[int, bytes] | None:
        self.thread.join(60)
        self.client.close()
        return self.result


def main() -> int:
    parser = bl.common_args(__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=None,
                        help="trivial-handler iterations per side (default 30, quick 8)")
    args = parser.parse_args()
    n_py = args.iterations or (8 if args.quick else 30)
    n_heavy = 3 if args.quick else 10
    n_node = 5 if args.quick else 20
    hold_s = 0.8

    functions = {}
    for i in range(n_py + 1):
        functions[f"py{i}"] = bl.PeerFunction("app.handler", "python3.11")
    for i in range(n_heavy):
        functions[f"hv{i}"] = bl.PeerFunction("heavy_app.handler", "python3.11")
    for i in range(n_node + 1):
        functions[f"nd{i}"] = bl.PeerFunction("napp.handler", "nodejs20.x")

    samples: dict[str, list[float]] = {k: [] for k in (
        "corral_py", "peer_py", "corral_py_init", "corral_heavy_first", "corral_heavy_first_init",
        "corral_heavy_further", "corral_heavy_further_init", "peer_heavy_first",
        "peer_heavy_further", "corral_node", "corral_node_init", "peer_node", "node_e0",
        "corral_template_ready_after",
        "python_pass", "heavy_import_in_instance", "heavy_import_standalone")}
    errors: list[str] = []

    with bl.workdir("cold") as wd:
        tree = heavy_tree(wd / "heavy-src")
        heavy_zip = zip_tree(tree)
        py_zip = bl.make_zip({"app.py": PY_HOLD})
        node_zip = bl.make_zip({"index.js": bl.NODE_TRIVIAL})
        peer_files = {"app.py": PY_HOLD, "napp.js": bl.NODE_TRIVIAL}
        for rel, text in heavy_sources().items():
            peer_files["heavy_app.py" if rel == "app.py" else rel] = text

        srv = bl.CorralServer(wd, sandbox=args.sandbox, insecure=args.insecure)
        peer = bl.Peer(functions, peer_files)
        try:
            peer_start = bl.Background(peer.start)
            srv.start()
            sandbox = srv.sandbox_used()
            bl.log(f"corral on {srv.port}, sandbox: {sandbox}")
            lam = srv.client()
            signer = srv.signer()
            client = bl.RawClient(srv.port)
            peer_start.join()
            if peer.proc is None or not peer.lambda_port:
                raise RuntimeError("serverless-offline did not start")
            bl.log(f"serverless-offline on {peer.lambda_port} ({bl.peer_version()})")
            # The peer's heavy handler (heavy_app.py + heavy/) gets the same precompiled .pyc.
            assert peer.dir is not None
            shutil.rmtree(peer.dir / "heavy")
            shutil.copytree(tree / "heavy", peer.dir / "heavy")
            heavy_app = peer.dir / "heavy_app.py"
            py_compile.compile(str(heavy_app),
                               cfile=importlib.util.cache_from_source(str(heavy_app)),
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
            pclient = bl.RawClient(peer.lambda_port)

            import_ms = standalone_import_ms(tree, 3)  # first use; then interleaved below
            bl.log("heavy handler import, standalone: median "
                   f"{statistics.median(import_ms):.0f} ms")

            def corral_fresh(prefix: str, zip_bytes: bytes, runtime: str, handler: str) -> str:
                name = bl.unique(prefix)
                srv.create_function(lam, name, zip_bytes, runtime=runtime, handler=handler,
                                    memory=args.memory)
                return name

            def corral_cold(name: str, key: str, payload: bytes = b"{}") -> dict[str, Any]:
                req = signer.invoke(name, payload, tail=True)
                elapsed, status, body, headers = client.timed(req)
                init = bl.init_duration_ms(headers)
                if status != 200 or "x-amz-function-error" in headers:
                    errors.append(f"{key}: {status} {body[:200]!r}")
                    return {}
                samples[key].append(elapsed)
                if init is not None:
                    samples[key + "_init"].append(init)
                else:
                    errors.append(f"{key}: no Init Duration (not a cold start?)")
                return dict(json.loads(body))

            def corral_cleanup(name: str) -> None:
                lam.delete_function(FunctionName=name)
                time.sleep(0.15)  # let the retired instances go before the next timed invoke

            def floor(key: str, argv: list[str]) -> None:
                samples[key].append(time_exec(argv))

            def peer_cold(fn: str, key: str) -> None:
                elapsed, status, body, _ = pclient.timed(peer.request(fn))
                if status != 200:
                    errors.append(f"{key}: {status} {body[:200]!r}")
                    return
                samples[key].append(elapsed)

            # warm-up: one untimed cold start per runtime and side (page cache, first-use costs)
            for runtime, zip_bytes, handler in (("python3.11", py_zip, "app.handler"),
                                                ("nodejs20.x", node_zip, "index.handler")):
                name = corral_fresh("cs-warmup", zip_bytes, runtime, handler)
                client.send(signer.invoke(name))
                corral_cleanup(name)
            pclient.send(peer.request(f"py{n_py}"))
            pclient.send(peer.request(f"nd{n_node}"))
            time_exec(["node", "-e", "0"])
            time_exec([bl.python311(), "-S", "-I", "-c", "pass"])

            bl.log(f"trivial Python: {n_py} cold starts per side")
            for i in range(n_py):
                name = corral_fresh("cs-py", py_zip, "python3.11", "app.handler")
                steps: list[Callable[[], object]] = [
                    functools.partial(corral_cold, name, "corral_py"),
                    functools.partial(peer_cold, f"py{i}", "peer_py"),
                    functools.partial(floor, "python_pass",
                                      [bl.python311(), "-S", "-I", "-c", "pass"])]
                for step in (steps if i % 2 == 0 else steps[::-1]):
                    step()
                    time.sleep(0.05)
                corral_cleanup(name)

            bl.log(f"heavy-import Python: {n_heavy} x (first instance, further instance)")
            for i in range(n_heavy):
                name = corral_fresh("cs-heavy", heavy_zip, "python3.11", "app.handler")
                hold = json.dumps({"hold": hold_s}).encode()

                def corral_heavy(name: str = name, hold: bytes = hold) -> None:
                    templates = srv.health()["instances"].get("templates", 0)
                    out = corral_cold(name, "corral_heavy_first")
                    if "import_ms" in out:
                        samples["heavy_import_in_instance"].append(out["import_ms"])
                    # the version's template initializes in the background after the first
                    # instance is ready: time that, then start the further instance from it
                    ready = wait_for_template(srv, templates + 1)
                    if ready is None:
                        errors.append("corral_heavy_further: no template within 30 s")
                    else:
                        samples["corral_template_ready_after"].append(ready)
                    holder = Holder(srv.port, signer.invoke(name, hold))
                    holder.start()
                    time.sleep(0.15)  # the hold request now occupies the first instance
                    second = corral_cold(name, "corral_heavy_further")
                    first = holder.join()
                    if first and second and \
                            json.loads(first[1]).get("stream") == second.get("stream"):
                        errors.append("corral_heavy_further: same instance as the held one")

                def peer_heavy(i: int = i, hold: bytes = hold) -> None:
                    peer_cold(f"hv{i}", "peer_heavy_first")
                    holder = Holder(peer.lambda_port, peer.request(f"hv{i}", hold))
                    holder.start()
                    time.sleep(0.15)
                    peer_cold(f"hv{i}", "peer_heavy_further")
                    holder.join()

                def standalone() -> None:
                    samples["heavy_import_standalone"] += standalone_import_ms(tree, 1)

                steps = [corral_heavy, peer_heavy, standalone]
                for step in (steps if i % 2 == 0 else steps[::-1]):
                    step()
                    time.sleep(0.05)
                corral_cleanup(name)

            bl.log(f"trivial Node.js: {n_node} cold starts per side")
            for i in range(n_node):
                name = corral_fresh("cs-node", node_zip, "nodejs20.x", "index.handler")
                steps = [functools.partial(corral_cold, name, "corral_node"),
                         functools.partial(peer_cold, f"nd{i}", "peer_node"),
                         functools.partial(floor, "node_e0", ["node", "-e", "0"])]
                for step in (steps if i % 2 == 0 else steps[::-1]):
                    step()
                    time.sleep(0.05)
                corral_cleanup(name)
            client.close()
            pclient.close()
        finally:
            peer.stop()
            srv.stop()

    s = {k: bl.summary(v) for k, v in samples.items()}

    def med(key: str) -> float | None:
        return s[key].get("median")

    def paired(a: str, b: str) -> float | None:
        xs, ys = samples[a], samples[b]
        if not xs or len(xs) != len(ys):
            return None
        return round(statistics.median(x / y for x, y in zip(xs, ys, strict=True)), 3)

    ratios = {
        "py_corral_over_peer": bl.ratio(med("corral_py"), med("peer_py")),
        "heavy_first_corral_over_peer": bl.ratio(med("corral_heavy_first"),
                                                 med("peer_heavy_first")),
        "heavy_further_corral_over_peer": bl.ratio(med("corral_heavy_further"),
                                                   med("peer_heavy_further")),
        "node_corral_over_peer": bl.ratio(med("corral_node"), med("peer_node")),
        "node_corral_over_node_e0": bl.ratio(med("corral_node"), med("node_e0")),
        "py_corral_over_python_pass": bl.ratio(med("corral_py"), med("python_pass")),
        # per-iteration ratios (each pair measured back to back), robust to load phases
        "node_corral_over_node_e0_paired_median": paired("corral_node", "node_e0"),
        "py_corral_over_peer_paired_median": paired("corral_py", "peer_py"),
    }
    verdicts = [
        bl.verdict("cold start, trivial Python handler, isolated, request to response (p50)",
                   med("corral_py"), 10.0, "le", "ms", "<= 10 ms (stretch <= 5 ms)",
                   stretch=5.0),
        bl.verdict("cold start, further instance of a version with >= 200 ms of imports (p50)",
                   med("corral_heavy_further"), 15.0, "le", "ms", "<= 15 ms"),
        bl.verdict("cold start, trivial Node.js handler, isolated (p50) / `node -e 0`",
                   ratios["node_corral_over_node_e0"], 1.5, "le", "x", "<= 1.5x node -e 0",
                   note=f"Corral p50 {med('corral_node')} ms, node -e 0 p50 {med('node_e0')} ms"
                        f"; median of paired ratios "
                        f"{ratios['node_corral_over_node_e0_paired_median']}"),
    ]
    if s["heavy_import_standalone"].get("median", 0) < 200:
        errors.append("heavy handler imports took < 200 ms standalone on this machine")

    rows = []
    for label, ck, pk, ik in (
            ("Python trivial", "corral_py", "peer_py", "corral_py_init"),
            ("Python heavy imports, first instance", "corral_heavy_first", "peer_heavy_first",
             "corral_heavy_first_init"),
            ("Python heavy imports, further instance", "corral_heavy_further",
             "peer_heavy_further", "corral_heavy_further_init"),
            ("Node.js trivial", "corral_node", "peer_node", "corral_node_init")):
        c, p = s[ck], s[pk]
        rows.append([label, bl.ms(c.get("median")),
                     f"{bl.ms(c.get('p10'))}-{bl.ms(c.get('p90'))}", bl.ms(s[ik].get("median")),
                     bl.ms(p.get("median")), f"{bl.ms(p.get('p10'))}-{bl.ms(p.get('p90'))}",
                     bl.ratio(c.get("median"), p.get("median")), c.get("n")])
    bl.print_table(f"Cold start, request to response, ms (sandbox: {sandbox})",
                   ["scenario", "Corral p50", "p10-p90", "Corral Init Duration p50",
                    "serverless-offline p50", "p10-p90", "ratio", "n"], rows)
    bl.print_table("Floors and import cost, ms", ["what", "p50", "p10-p90", "n"], [
        [k, bl.ms(s[k].get("median")), f"{bl.ms(s[k].get('p10'))}-{bl.ms(s[k].get('p90'))}",
         s[k].get("n")] for k in ("python_pass", "node_e0", "heavy_import_standalone",
                                  "heavy_import_in_instance", "corral_template_ready_after")])
    bl.print_verdicts(verdicts)
    for e in errors[:20]:
        bl.log(f"error: {e}")
    bl.write_results(NAME, {
        "config": {"quick": args.quick, "sandbox_requested": args.sandbox,
                   "sandbox": sandbox, "memory_mb": args.memory, "iterations_py": n_py,
                   "iterations_heavy": n_heavy, "iterations_node": n_node,
                   "peer": bl.peer_version(), "client": "http.client keep-alive, SigV4 "
                   "signed with botocore before the timed section, LogType=Tail",
                   "cold_start_forced_by": "a new function per iteration (deleted after)",
                   "heavy_handler": f"stdlib ({HEAVY_STDLIB}) + {HEAVY_MODULES} generated "
                                    "modules hashing at import; unchecked-hash .pyc shipped",
                   "function_python": bl.python311()},
        "summary": s, "ratios": ratios, "samples_ms": {k: [round(x, 3) for x in v]
                                                       for k, v in samples.items()},
        "targets": verdicts, "errors": errors})
    return 1 if any("no Init Duration" not in e for e in errors) and not samples["corral_py"] \
        else 0


if __name__ == "__main__":
    sys.exit(main())
