"""LLM fan-out throughput: embedforge's synthesis client vs ray.data.llm vs asyncio + openai.

Every contender talks to the same fake OpenAI-compatible server (its own process, fixed
latency) on the same CPUs. Printed per run: requests/s, the ratio to the latency-bound
ideal (concurrency / latency), and client CPU-ms per request (CPU time of the processes that
make the requests: the Ray actors + coordinator for embedforge, the process for asyncio; the
server's CPU is excluded).

    .venv/bin/python benchmarks/bench_synth_fanout.py [--latency 0.2] [--requests 3000]

Targets (issue #8): >= 0.8 of ideal at concurrency 64; >= 5x ray.data.llm with equal actors;
<= 1.5 client CPU-ms per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import psutil

from common import fmt, rotated, spread, write_results

PROMPT = "Paraphrase: the quick brown fox jumps over the lazy dog near the river bank."


def start_server(latency: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "embedforge.testing.fake_llm", "--port", "0",
                             "--latency", str(latency)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line.startswith("READY "), line
    return proc, line.split()[1]


def cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


# ---------------------------------------------------------------- (b) asyncio + openai SDK
def bench_asyncio_openai(url: str, n: int, concurrency: int) -> dict[str, Any]:
    import openai

    async def main() -> None:
        client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=60)
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                await client.chat.completions.create(
                    model="fake-llm", messages=[{"role": "user", "content": f"{PROMPT} {i}"}])

        await asyncio.gather(*(one(i) for i in range(n)))
        await client.close()

    c0, t0 = time.process_time(), time.perf_counter()
    asyncio.run(main())
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}


# ------------------------------------------------ embedforge gateway in one process (no Ray)
def bench_gateway_inproc(url: str, n: int, concurrency: int) -> dict[str, Any]:
    from embedforge.llm.cache import ResponseCache
    from embedforge.llm.config import LLMSettings
    from embedforge.llm.gateway import Gateway
    from embedforge.llm.ratelimit import AsyncLimiter

    s = LLMSettings(model="fake-llm", max_concurrency=concurrency, json_mode="off")

    async def main() -> None:
        gw = Gateway(s, AsyncLimiter(concurrency), ResponseCache(None), url)
        await asyncio.gather(*(gw.complete([{"role": "user", "content": f"{PROMPT} {i}"}],
                                           template_version="bench", sample_index=i)
                               for i in range(n)))
        await gw.close()

    c0, t0 = time.process_time(), time.perf_counter()
    asyncio.run(main())
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}


# ------------------------------------- embedforge on Ray: the synthesize job's fan-out path
class FanoutWorker:
    """What SynthWorker does per request (Gateway + global Coordinator), minus the rules."""

    def __init__(self, cfg_json: str, coordinator: Any, url: str):
        from embedforge.llm.cache import ResponseCache
        from embedforge.llm.gateway import Gateway
        from embedforge.synth.config import SynthConfig
        from embedforge.synth.stage import make_limiter

        cfg = SynthConfig.model_validate_json(cfg_json)
        self.gw = Gateway(cfg.llm, make_limiter(cfg, coordinator), ResponseCache(None), url)
        self.cpu0 = time.process_time()

    async def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        res = await asyncio.gather(*(
            self.gw.complete([{"role": "user", "content": f"{PROMPT} {i}"}],
                             template_version="bench", sample_index=int(i))
            for i in batch["i"]))
        n = len(res)
        return {"n": [n], "pid": [os.getpid()], "cpu": [time.process_time() - self.cpu0]}


def bench_embedforge_ray(url: str, n: int, concurrency: int, actors: int,
                         limiter: str = "partitioned") -> dict[str, Any]:
    import ray

    from embedforge.llm.config import LLMSettings
    from embedforge.llm.coordinator import Coordinator
    from embedforge.synth.config import SynthConfig

    s = LLMSettings(model="fake-llm", max_concurrency=concurrency, json_mode="off", limiter=limiter)
    cfg = SynthConfig(input="-", output="-", llm=s, num_actors=actors)
    coord = Coordinator.remote(concurrency, None, None)
    coord_pid = ray.get(coord.__ray_call__.remote(lambda self: os.getpid()))
    ds = ray.data.range(n, override_num_blocks=actors * 8).rename_columns({"id": "i"})
    out = ds.map_batches(FanoutWorker, fn_constructor_kwargs={
        "cfg_json": cfg.model_dump_json(), "coordinator": coord, "url": url},
        compute=ray.data.ActorPoolStrategy(size=actors), batch_size=max(concurrency // actors, 8),
        num_cpus=0.25)
    c_coord = cpu_s(coord_pid)
    c_drv, t0 = time.process_time(), time.perf_counter()
    rows = out.take_all()
    wall = time.perf_counter() - t0
    per_pid: dict[int, float] = {}
    for r in rows:
        per_pid[r["pid"]] = max(per_pid.get(r["pid"], 0.0), r["cpu"])
    done = sum(r["n"] for r in rows)
    assert done == n, (done, n)
    return {"wall": wall, "cpu": sum(per_pid.values()) + cpu_s(coord_pid) - c_coord,
            "driver_cpu": time.process_time() - c_drv}


# --------------------------------------------------------- (a) ray.data.llm HTTP processor
def bench_ray_data_llm(url: str, n: int, actors: int) -> dict[str, Any]:
    import ray
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    cfg = HttpRequestProcessorConfig(url=f"{url}/chat/completions", concurrency=actors,
                                     batch_size=64, headers={"Authorization": "Bearer x"})
    proc = build_processor(
        cfg,
        preprocess=lambda row: {"payload": {"model": "fake-llm", "messages": [
            {"role": "user", "content": f"{PROMPT} {row['id']}"}]}},
        postprocess=lambda row: {"ok": "choices" in row["http_response"]},
    )
    ds = ray.data.range(n, override_num_blocks=actors * 4)
    t0 = time.perf_counter()
    rows = proc(ds).take_all()
    wall = time.perf_counter() - t0
    assert len(rows) == n and all(r["ok"] for r in rows)
    return {"wall": wall, "cpu": float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--baseline-requests", type=int, default=600,
                    help="for ray.data.llm (slow: one request in flight per actor)")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    import ray

    from embedforge.cluster import short_temp_dir

    a, n = args.actors, args.requests
    # name -> (requests, concurrency, run(n)); every contender gets the same warm-up: one
    # untimed run of 200 requests (imports, connections, Ray worker processes), then the
    # timed repeats in rotated order
    contenders: dict[str, tuple[int, int, Any]] = {
        "asyncio+openai SDK (1 process)": (n, 64, lambda k: bench_asyncio_openai(url, k, 64)),
        "embedforge gateway, aiohttp (1 process, no Ray)": (n, 64, lambda k: bench_gateway_inproc(url, k, 64)),
        f"embedforge synth fan-out (Ray, {a} actors)": (n, 64, lambda k: bench_embedforge_ray(url, k, 64, a)),
        f"embedforge synth fan-out (Ray, {a} actors, coordinator limiter)":
            (n, 64, lambda k: bench_embedforge_ray(url, k, 64, a, "coordinator")),
        f"embedforge synth fan-out (Ray, {a} actors, concurrency 256)":
            (2 * n, 256, lambda k: bench_embedforge_ray(url, k, 256, a)),
        # its HTTP stage awaits one request at a time per actor (qps only paces): in flight = actors
        f"ray.data.llm HttpRequestProcessor ({a} actors)":
            (args.baseline_requests, a, lambda k: bench_ray_data_llm(url, k, a)),
    }
    server, url = start_server(args.latency)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    try:
        srv0 = cpu_s(server.pid)
        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 _temp_dir=short_temp_dir(), log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        for _, _, fn in contenders.values():
            fn(200)
        for rep in range(args.repeats):
            for name in rotated(list(contenders), rep):
                k, conc, fn = contenders[name]
                r = fn(k)
                row = {"req_per_s": k / r["wall"], "cpu_ms_per_req": 1000 * r["cpu"] / k}
                runs[name].append(row)
                print(f"run {rep + 1}/{args.repeats} {name}: {row['req_per_s']:.1f} req/s", flush=True)
        print(f"server CPU over the whole run: {cpu_s(server.pid) - srv0:.1f}s")
    finally:
        server.terminate()
        server.wait(timeout=10)
        if ray.is_initialized():
            ray.shutdown()

    results = []
    for name, (k, conc, _) in contenders.items():
        rps = spread(r["req_per_s"] for r in runs[name])
        cpu = [r["cpu_ms_per_req"] for r in runs[name] if r["cpu_ms_per_req"] == r["cpu_ms_per_req"]]
        ideal = conc / args.latency
        results.append({"name": name, "requests": k, "concurrency": conc, "req_per_s": rps,
                        "ideal_req_per_s": round(ideal, 1),
                        "ratio_to_ideal": round(rps["median"] / ideal, 3),
                        "client_cpu_ms_per_req": spread(cpu, 3) if cpu else None})
        print(f"  {name}: {fmt(rps)} req/s, {rps['median'] / ideal:.2f} of ideal"
              + (f", client CPU {fmt(spread(cpu, 3), ' ms')}/request" if cpu else ""))
    by = {r["name"]: r for r in results}
    ours = by[f"embedforge synth fan-out (Ray, {a} actors)"]
    theirs = by[f"ray.data.llm HttpRequestProcessor ({a} actors)"]
    sdk = by["asyncio+openai SDK (1 process)"]
    summary = {
        "ratio_to_ideal_at_64": ours["ratio_to_ideal"],
        "speedup_vs_ray_data_llm_equal_actors":
            round(ours["req_per_s"]["median"] / theirs["req_per_s"]["median"], 1),
        "speedup_vs_asyncio_openai": round(ours["req_per_s"]["median"] / sdk["req_per_s"]["median"], 2),
        "client_cpu_ms_per_req": ours["client_cpu_ms_per_req"],
        "targets": {"ratio_to_ideal_at_64": ">= 0.8", "speedup_vs_ray_data_llm": ">= 5",
                    "client_cpu_ms_per_req": "<= 1.5"},
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        write_results(args.out, {"runs": results, "summary": summary, "latency_s": args.latency,
                                 "repeats": args.repeats, "raw": runs})


if __name__ == "__main__":
    main()
