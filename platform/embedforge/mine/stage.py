"""The mining stage: embed (Ray Data actors) -> sharded faiss search (Ray actors) -> select."""

from __future__ import annotations

import json
import random
import time
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from .. import io as eio
from .. import metrics
from ..cluster import connect
from ..config import ConfigError
from ..data.retrieval import beir_doc_text
from ..instructions import format_instruction
from ..model.encoder import fingerprint as encoder_fingerprint
from ..safety import check_no_overlap, claim_output
from ..schema import ARROW_SCHEMA, rows_to_table
from . import index as findex
from .config import MineConfig
from .embed import embed_all, load_cache, load_share, split_by_hash, text_hash
from .select import Candidate, RandomPool, select


class IndexShard:
    """One corpus shard: loads its own vectors from the cache, builds and searches its index.

    ``ids`` are the corpus positions of its texts (ascending, from ``split_by_hash``); it reads
    only the cache row groups of their hash range, so N shards read the cache about once.
    """

    def __init__(self, hashes: list[str], ids: np.ndarray, root: str, fp: str, dtype: str,
                 factory: str, use_gpu: bool, nprobe: int):
        import ray

        matrix, plan = load_share(root, fp, hashes, dtype)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.index = findex.build(matrix, factory, use_gpu=use_gpu, nprobe=nprobe)
        self.node = ray.get_runtime_context().get_node_id()
        self.size = len(hashes)
        self.rows_read = sum(p.rows for p in plan)

    def info(self) -> dict[str, Any]:
        return {"node": self.node, "size": self.size, "cache_rows_read": self.rows_read,
                "bytes": int(self.size * self.index.d * 4)}

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = findex.search(self.index, queries, k)
        return scores, np.where(ids >= 0, self.ids[np.maximum(ids, 0)], -1)


def load_corpus(cfg: MineConfig, samples: list[dict[str, Any]]) -> list[str]:
    """Corpus texts, deduplicated, in a stable order."""
    texts: list[str] = []
    src = cfg.corpus
    if src is None:
        for s in samples:
            if s["kind"] == "retrieval":
                texts.append(s["positive"])
                texts.extend(s["negatives"])
    elif eio.exists(eio.join(src, "corpus.jsonl")):
        texts = [beir_doc_text(r) for r in eio.read_jsonl(eio.join(src, "corpus.jsonl"))]
    elif src.endswith((".jsonl", ".parquet")):
        rows = eio.read_jsonl(src) if src.endswith(".jsonl") else pq.read_table(src).to_pylist()
        texts = [f"{r.get('title') or ''} {r['text']}".strip() for r in rows]
    else:
        for s in eio.read_samples(src).to_pylist():
            if s["kind"] == "retrieval":
                texts.append(s["positive"])
    return list(dict.fromkeys(t for t in texts if t and t.strip()))


def query_prompt(sample: dict[str, Any], use_instruction: bool) -> str:
    return format_instruction(sample["instruction"]) if use_instruction else ""


def run_mine(cfg: MineConfig, log=print) -> dict[str, Any]:
    import ray

    t0 = time.time()
    if not eio.sample_files(cfg.input):
        raise ConfigError(f"no unified samples (samples/*.parquet) under --input {cfg.input}")
    check_no_overlap(cfg.output, [("--input", cfg.input), ("--corpus", cfg.corpus)])
    claim_output(cfg.output, "mine", cfg.force)
    samples = eio.read_samples(cfg.input).to_pylist()
    retrieval = [s for s in samples if s["kind"] == "retrieval"]
    corpus = load_corpus(cfg, samples)
    if not corpus:
        raise ConfigError("empty corpus: pass --corpus or give --input retrieval samples")
    root = cfg.cache or eio.join(cfg.output, "_embeddings")
    fp = encoder_fingerprint(cfg.encoder)
    query_prompts = [query_prompt(s, cfg.instruction) for s in retrieval]
    queries = [p + s["query"] for p, s in zip(query_prompts, retrieval, strict=True)]
    others = [t for s in retrieval for t in (s["positive"], *s["negatives"])]
    log(f"[mine] {len(retrieval)} retrieval samples, corpus of {len(corpus)} texts, "
        f"{cfg.num_shards} shard(s)")
    lo, hi = cfg.selection.rank_range
    # filtered windows count only valid candidates: retrieve extra to make up for the dropped
    k = min(len(corpus), hi + 10 if cfg.selection.window == "raw" else 2 * hi + 10)
    with connect(cfg.ray_address, cfg.num_cpus):
        gpus = ray.cluster_resources().get("GPU", 0)
        use_gpu = cfg.use_gpu == "yes" or (cfg.use_gpu == "auto" and gpus > 0)
        prompt_of = dict(zip(queries, query_prompts, strict=True))
        embedded = embed_all(corpus + queries + others, cfg.encoder, root, fp, cfg.embed_actors,
                             cfg.encoder.batch_size, use_gpu, log, prompts=prompt_of,
                             dtype=cfg.cache_dtype)
        metrics.inc("embedforge_mine_embeddings_total", embedded, {"model": cfg.encoder.model[-60:]})
        hashes = [text_hash(t) for t in corpus]
        split = [ids for ids in split_by_hash(hashes, cfg.num_shards) if len(ids)]
        per_shard = len(split[0])
        factory = findex.choose_factory(per_shard, 0, cfg.index, cfg.ivf_threshold, cfg.pq_m)
        Shard = ray.remote(num_cpus=0.5, num_gpus=1 if use_gpu else 0,
                           scheduling_strategy="SPREAD")(IndexShard)
        shards = [Shard.remote([hashes[i] for i in ids], ids, root, fp, cfg.cache_dtype, factory,
                               use_gpu, cfg.nprobe) for ids in split]
        shard_info = ray.get([s.info.remote() for s in shards])
        log(f"[mine] index {factory}: shards on {len({i['node'] for i in shard_info})} node(s), "
            f"{[i['size'] for i in shard_info]} vectors")
        vec = load_cache(root, fp, {text_hash(t) for t in queries + others}, cfg.cache_dtype)
        qmat = np.stack([vec[text_hash(q)] for q in queries]) if queries else np.zeros((0, 1))
        all_scores, all_ids = [], []
        for start in range(0, len(queries), cfg.query_batch):
            qb = ray.put(qmat[start:start + cfg.query_batch])
            parts = ray.get([s.search.remote(qb, k) for s in shards])
            sc, ids = findex.merge_topk(parts, k)
            all_scores.append(sc)
            all_ids.append(ids)
        metrics.inc("embedforge_mine_queries_total", len(queries))
        for s in shards:
            ray.kill(s)
        scores = np.concatenate(all_scores) if all_scores else np.zeros((0, k))
        ids = np.concatenate(all_ids) if all_ids else np.zeros((0, k), dtype=int)

        rescore_vec: dict[str, np.ndarray] | None = None
        if cfg.rescore is not None:
            # the teacher scores what the selection looks at: queries, positives, existing
            # negatives and the window's candidates (same Ray connection, same cache)
            window = {int(d) for row in ids for d in row[max(0, lo - 1):hi] if d >= 0}
            texts = queries + others + [corpus[d] for d in sorted(window)]
            rfp = encoder_fingerprint(cfg.rescore)
            embed_all(texts, cfg.rescore, root, rfp, cfg.embed_actors, cfg.rescore.batch_size,
                      use_gpu, log, prompts=prompt_of, dtype=cfg.cache_dtype)
            rescore_vec = load_cache(root, rfp, {text_hash(t) for t in texts}, cfg.cache_dtype)
            log(f"[mine] rescored {len(window)} window candidates with {cfg.rescore.model}")

    positives_of: dict[tuple[str, str], list[str]] = defaultdict(list)
    for s in retrieval:
        positives_of[(s["dataset"], s["query"])].append(s["positive"])
    out_rows, audit = [], []
    totals: Counter[str] = Counter()
    kept_sources: Counter[str] = Counter()
    short_samples = 0
    by_id = {s["id"]: i for i, s in enumerate(retrieval)}
    random_pool = RandomPool(corpus) if cfg.selection.top_up_random else None
    for s in samples:
        if s["kind"] != "retrieval":
            out_rows.append(s)
            continue
        i = by_id[s["id"]]
        table = rescore_vec if rescore_vec is not None else vec
        q = table[text_hash(queries[i])]

        def score(text: str, q: np.ndarray = q, table: dict[str, np.ndarray] = table) -> float:
            return float(q @ table[text_hash(text)])

        # with several positives the hardest (lowest-scoring) one sets the margin
        pos_score = min(score(p) for p in positives_of[(s["dataset"], s["query"])])
        meta = json.loads(s["meta"] or "{}")
        sources = meta.get("negative_sources") or ["original"] * len(s["negatives"])
        existing = [(t, src, score(t)) for t, src in zip(s["negatives"], sources, strict=False)]
        cands = []
        for r, (sc, d) in enumerate(zip(scores[i], ids[i], strict=True)):
            if d < 0:
                continue
            text = corpus[int(d)]
            in_window = lo <= r + 1 <= hi
            cands.append(Candidate(str(int(d)), text,
                                   score(text) if rescore_vec is not None and in_window else float(sc),
                                   r + 1))
        rng = random.Random(f"{cfg.selection.seed}:{s['id']}")
        sel = select(positives_of[(s["dataset"], s["query"])], pos_score, cands, existing,
                     cfg.selection, rng, random_pool)
        totals.update(sel.dropped)
        kept_sources.update(sel.sources)
        short_samples += sel.short > 0
        meta["negative_sources"] = sel.sources
        meta["mining"] = {"positive_score": round(pos_score, 5), "threshold": round(sel.threshold, 5),
                          "dropped": dict(sel.dropped), "short": sel.short}
        row = dict(s, negatives=sel.negatives, meta=json.dumps(meta, ensure_ascii=False, sort_keys=True))
        out_rows.append(row)
        known = {c.text: c.score for c in cands}
        known.update({t: sc for t, _, sc in existing})
        neg_scores = [round(known[t], 5) if t in known else None for t in sel.negatives]
        audit.append({"id": s["id"], "dataset": s["dataset"], **sel.audit(),
                      "kept": dict(Counter(sel.sources)), "negative_scores": neg_scores,
                      "dropped_scores": [round(c.score, 5) for c in cands
                                         if lo <= c.rank <= hi and c.score > sel.threshold][:20]})
    for src, n in kept_sources.items():
        metrics.inc("embedforge_mine_negatives_total", n, {"source": src})
    for reason, n in totals.items():
        metrics.inc("embedforge_mine_dropped_total", n, {"reason": reason})
    eio.write_parquet_atomic(rows_to_table([{k2: r[k2] for k2 in ARROW_SCHEMA.names} for r in out_rows]),
                             eio.join(cfg.output, "samples", "part-00000.parquet"))
    eio.write_jsonl_atomic(audit, eio.join(cfg.output, "audit.jsonl"))
    summary = {
        "stage": "mine", "input": cfg.input, "output": cfg.output, "model": cfg.encoder.model,
        "samples": len(samples), "retrieval_samples": len(retrieval), "corpus": len(corpus),
        "index": factory, "shards": shard_info, "embedded_now": embedded,
        "negatives_kept_by_source": dict(kept_sources), "dropped_by_reason": dict(totals),
        "samples_short": short_samples, "histogram": _histograms(audit),
        "seconds": round(time.time() - t0, 2), "config": cfg.model_dump(mode="json"),
    }
    eio.write_json(summary, eio.join(cfg.output, "summary.json"))
    _plot(audit, cfg.output)
    return summary


def _histograms(audit: list[dict[str, Any]], bins: int = 20) -> dict[str, Any]:
    edges = np.linspace(-1, 1, bins + 1)
    pos = [a["positive_score"] for a in audit]
    neg = [s for a in audit for s in a["negative_scores"] if s is not None]
    dropped = [s for a in audit for s in a["dropped_scores"]]
    return {"edges": edges.round(3).tolist(),
            "positive": np.histogram(pos, edges)[0].tolist(),
            "kept_negative": np.histogram(neg, edges)[0].tolist(),
            "dropped_above_margin": np.histogram(dropped, edges)[0].tolist()}


def _plot(audit: list[dict[str, Any]], out: str) -> None:
    """Score distributions: a glance shows whether the margin was sane."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "://" in out:
        return
    pos = [a["positive_score"] for a in audit]
    neg = [s for a in audit for s in a["negative_scores"] if s is not None]
    dropped = [s for a in audit for s in a["dropped_scores"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    for data, label in ((pos, "positive"), (neg, "kept negatives"), (dropped, "dropped (above margin)")):
        if data:
            ax.hist(data, bins=40, alpha=0.5, label=f"{label} (n={len(data)})")
    ax.set_xlabel("cosine to query")
    ax.set_ylabel("count")
    ax.set_title("hard-negative mining: score distributions")
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"{out}/audit.png", dpi=100)
    plt.close(fig)


def format_report(summary: dict[str, Any]) -> str:
    return (f"{summary['retrieval_samples']} retrieval samples, corpus {summary['corpus']}, index "
            f"{summary['index']} on {len(summary['shards'])} shard(s); negatives kept by source "
            f"{summary['negatives_kept_by_source']}; dropped {summary['dropped_by_reason']}; "
            f"{summary['samples_short']} samples short of K")
