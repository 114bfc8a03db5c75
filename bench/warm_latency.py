"""Warm synchronous invoke at concurrency 1: Corral vs serverless-offline, same Python handler.

Raw client: one keep-alive `http.client` connection per side; Corral's request is SigV4-signed
with botocore outside the timed section and replayed (re-signed every block), serverless-offline's
Invoke API (its lambda port) is unsigned. Blocks of requests alternate between the two sides (the
order flips every block) so both see the same machine noise. A smaller boto3 series (what a user's
SDK call costs, signing and parsing included) runs the same way.
Usage: .venv/bin/python bench/warm_latency.py [--quick] [--sandbox auto|linux|process]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl

NAME = "warm_latency"


def main() -> int:
    parser = bl.common_args(__doc__.split("\n")[0])
    args = parser.parse_args()
    blocks, per_block = (6, 100) if args.quick else (20, 250)
    boto_blocks, boto_per_block = (2, 50) if args.quick else (10, 50)
    warmup = 100 if args.quick else 300
    raw: dict[str, list[float]] = {"corral": [], "peer": []}
    boto: dict[str, list[float]] = {"corral": [], "peer": []}
    errors: list[str] = []

    with bl.workdir("warm") as wd:
        srv = bl.CorralServer(wd, sandbox=args.sandbox, insecure=args.insecure)
        peer = bl.Peer({"py": bl.PeerFunction("app.handler", "python3.11")},
                       {"app.py": bl.PY_TRIVIAL})
        try:
            peer_start = bl.Background(peer.start)
            srv.start()
            sandbox = srv.sandbox_used()
            lam = srv.client()
            name = bl.unique("warm")
            srv.create_function(lam, name, bl.make_zip({"app.py": bl.PY_TRIVIAL}),
                                memory=args.memory)
            signer = srv.signer()
            peer_start.join()
            bl.log(f"corral {srv.port} ({sandbox}), serverless-offline {peer.lambda_port}")
            cc = bl.RawClient(srv.port)
            pc = bl.RawClient(peer.lambda_port)
            preq = peer.request("py")

            def run_raw(side: str, n: int, record: bool) -> None:
                client = cc if side == "corral" else pc
                req = signer.invoke(name) if side == "corral" else preq
                out = raw[side]
                for _ in range(n):
                    elapsed, status, body, _ = client.timed(req)
                    if status != 200:
                        errors.append(f"{side}: {status} {body[:200]!r}")
                        continue
                    if record:
                        out.append(elapsed)

            for side in ("corral", "peer"):
                run_raw(side, warmup, record=False)
            bl.log(f"raw keep-alive: {blocks} blocks x {per_block} requests per side")
            for b in range(blocks):
                for side in (("corral", "peer") if b % 2 == 0 else ("peer", "corral")):
                    run_raw(side, per_block, record=True)

            # boto3: the SDK path (signing, serialization, parsing), same alternation
            import boto3
            from botocore.config import Config

            cfg = Config(retries={"max_attempts": 1}, read_timeout=60)
            clients: dict[str, Any] = {
                "corral": lam,
                "peer": boto3.client("lambda", endpoint_url=f"http://127.0.0.1:{peer.lambda_port}",
                                     region_name=bl.REGION, aws_access_key_id="x",
                                     aws_secret_access_key="x", config=cfg)}
            fn = {"corral": name, "peer": peer.name("py")}

            def run_boto(side: str, n: int, record: bool) -> None:
                for _ in range(n):
                    t0 = time.perf_counter_ns()
                    resp = clients[side].invoke(FunctionName=fn[side], Payload=b"{}")
                    resp["Payload"].read()
                    elapsed = (time.perf_counter_ns() - t0) / 1e6
                    if resp["StatusCode"] != 200 or "FunctionError" in resp:
                        errors.append(f"boto3 {side}: {resp['StatusCode']}")
                    elif record:
                        boto[side].append(elapsed)

            for side in ("corral", "peer"):
                run_boto(side, 20, record=False)
            bl.log(f"boto3: {boto_blocks} blocks x {boto_per_block} requests per side")
            for b in range(boto_blocks):
                for side in (("corral", "peer") if b % 2 == 0 else ("peer", "corral")):
                    run_boto(side, boto_per_block, record=True)
            instances = srv.health().get("instances")
            cc.close()
            pc.close()
        finally:
            peer.stop()
            srv.stop()

    s = {f"raw_{k}": bl.summary(v, 4) for k, v in raw.items()}
    s.update({f"boto3_{k}": bl.summary(v, 4) for k, v in boto.items()})
    ratios = {q: bl.ratio(s["raw_corral"].get(q), s["raw_peer"].get(q))
              for q in ("median", "p90", "p99")}
    ratios["boto3_median"] = bl.ratio(s["boto3_corral"].get("median"),
                                      s["boto3_peer"].get("median"))
    verdicts = [bl.verdict(
        "warm synchronous invoke, concurrency 1, raw keep-alive HTTP (p50) / serverless-offline",
        ratios["median"], 0.7, "le", "x", "<= 0.7x serverless-offline",
        note=f"Corral p50 {s['raw_corral'].get('median')} ms, serverless-offline p50 "
             f"{s['raw_peer'].get('median')} ms")]
    rows = []
    for label, key in (("raw keep-alive http.client", "raw"), ("boto3 invoke", "boto3")):
        c, p = s[f"{key}_corral"], s[f"{key}_peer"]
        for q in ("median", "p90", "p99"):
            rows.append([f"{label} {q if q != 'median' else 'p50'}", bl.ms(c.get(q)),
                         bl.ms(p.get(q)), bl.ratio(c.get(q), p.get(q))])
        rows.append([f"{label} n", c.get("n"), p.get("n"), ""])
    bl.print_table(f"Warm invoke latency at concurrency 1, ms (sandbox: {sandbox})",
                   ["measure", "Corral", "serverless-offline", "ratio"], rows)
    bl.print_verdicts(verdicts)
    for e in errors[:20]:
        bl.log(f"error: {e}")
    bl.write_results(NAME, {
        "config": {"quick": args.quick, "sandbox_requested": args.sandbox, "sandbox": sandbox,
                   "memory_mb": args.memory, "blocks": blocks, "per_block": per_block,
                   "warmup": warmup, "peer": bl.peer_version(),
                   "client": "http.client keep-alive, one signed request replayed per block",
                   "instances_after": instances},
        "summary": s, "ratios": ratios, "targets": verdicts, "errors": errors[:50]})
    return 0 if raw["corral"] else 1


if __name__ == "__main__":
    sys.exit(main())
