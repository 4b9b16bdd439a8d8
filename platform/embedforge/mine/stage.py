"""The mining stage as a recipe of named dataflow steps (see ``dataflow`` for each).

The driver coordinates: it reads Parquet footers, starts tasks and actors, and sums partial
counts. Samples, corpus texts and vectors only ever live in the Ray workers that own a
partition or a hash range, so the driver stays the same size from a thousand passages to
ten million.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import io as eio
from .. import metrics
from ..cluster import connect
from ..config import ConfigError
from ..model.encoder import fingerprint as encoder_fingerprint
from ..safety import check_paths, claim_output, remove_owned
from . import dataflow as flow
from . import index as findex
from .config import MineConfig
from .partition import PLOT_BINS

#: what a mining run writes inside its output (cleared at the start of a run that owns it)
OUTPUTS = ("samples", "audit", "audit.jsonl", "_work")


class StepClock:
    """Wall seconds of each named step (``with clock("embed"): ...``), for the summary."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - t, 2)


def read_audit(output: str) -> list[dict[str, Any]]:
    """Every audit row of a mining output (for tools and tests on small runs)."""
    return [row for f in eio.list_files(eio.join(output, "audit"), ".jsonl") for row in eio.read_jsonl(f)]


def run_mine(cfg: MineConfig, log=print) -> dict[str, Any]:
    import ray

    t0 = time.time()
    files = eio.sample_files(cfg.input)
    if not files:
        raise ConfigError(f"no unified samples (samples/*.parquet) under --input {cfg.input}")
    check_paths(cfg)
    claim_output(cfg.output, "mine", cfg.force)
    for name in OUTPUTS:  # ours (claimed above): a shorter run must not leave stale parts
        remove_owned(eio.join(cfg.output, name), cfg.output, "mine")
    work = eio.join(cfg.output, "_work")
    root = cfg.cache or eio.join(cfg.output, "_embeddings")
    fp = encoder_fingerprint(cfg.encoder)
    n = cfg.num_shards
    parts = flow.count_partitions(files, cfg.partition_rows, cfg.partition_mb << 20)
    steps = StepClock()
    with connect(cfg.ray_address, cfg.num_cpus):
        gpus = ray.cluster_resources().get("GPU", 0)
        use_gpu = cfg.use_gpu == "yes" or (cfg.use_gpu == "auto" and gpus > 0)
        with steps("spill_samples"):
            counts = flow.spill_samples(files, work, n, parts, cfg.instruction, cfg.corpus is None)
        if cfg.corpus is not None:
            with steps("spill_corpus"):
                flow.spill_corpus(cfg.corpus, work, n)
        with steps("survey"):
            surveys = flow.survey_shards(work, n, root, fp, cfg.cache_dtype)
        corpus = sum(s["corpus"] for s in surveys)
        if not corpus:
            raise ConfigError("empty corpus: pass --corpus or give --input retrieval samples")
        missing = sum(s["missing"] for s in surveys)
        log(f"[mine] {counts['retrieval']} retrieval samples in {parts} partition(s), corpus of "
            f"{corpus} texts, {n} shard(s); embeddings: {sum(s['texts'] for s in surveys)} "
            f"unique texts, {missing} to embed")
        with steps("embed"):
            embedded = flow.embed_missing(work, cfg.encoder, root, fp, cfg.embed_actors,
                                          cfg.encoder.batch_size, use_gpu, cfg.cache_dtype, missing)
        metrics.inc("embedforge_mine_embeddings_total", embedded, {"model": cfg.encoder.model[-60:]})
        factory = findex.choose_factory(max(s["corpus"] for s in surveys), 0, cfg.index,
                                        cfg.ivf_threshold, cfg.pq_m)
        with steps("build_shards"):
            shards = flow.start_shards(work, n, root, fp, cfg.cache_dtype, factory, use_gpu,
                                       cfg.nprobe)
            shard_info = ray.get([s.info.remote() for s in shards])
        log(f"[mine] index {factory}: shards on {len({i['node'] for i in shard_info})} node(s), "
            f"{[i['size'] for i in shard_info]} vectors")
        with steps("mine"):
            stats = flow.mine_partitions(parts, shards, [i["size"] for i in shard_info], cfg,
                                         work, use_gpu) or {}
        metrics.inc("embedforge_mine_queries_total", counts["retrieval"])
        for s in shards:
            ray.kill(s)
    remove_owned(work, cfg.output, "mine")
    for src, k in stats.get("kept", {}).items():
        metrics.inc("embedforge_mine_negatives_total", k, {"source": src})
    for reason, k in stats.get("dropped", {}).items():
        metrics.inc("embedforge_mine_dropped_total", k, {"reason": reason})
    summary = {
        "stage": "mine", "input": cfg.input, "output": cfg.output, "model": cfg.encoder.model,
        "samples": counts["rows"], "retrieval_samples": counts["retrieval"], "corpus": corpus,
        "partitions": parts, "index": factory, "shards": shard_info, "embedded_now": embedded,
        "negatives_kept_by_source": stats.get("kept", {}), "dropped_by_reason": stats.get("dropped", {}),
        "samples_short": stats.get("short", 0), "histogram": {
            "edges": np.linspace(-1, 1, 21).round(3).tolist(), **stats.get("histogram", {})},
        "steps_s": steps.seconds, "seconds": round(time.time() - t0, 2),
        "config": cfg.model_dump(mode="json"),
    }
    eio.write_json(summary, eio.join(cfg.output, "summary.json"))
    _plot(stats.get("plot", {}), cfg.output)
    return summary


def _plot(hists: dict[str, list[int]], out: str) -> None:
    """Score distributions (from the summed per-partition histograms): a glance shows whether
    the margin was sane."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "://" in out:
        return
    edges = np.linspace(-1, 1, PLOT_BINS + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("positive", "positive"), ("kept_negative", "kept negatives"),
                       ("dropped_above_margin", "dropped (above margin)")):
        counts = hists.get(key) or []
        if sum(counts):
            ax.stairs(counts, edges, fill=True, alpha=0.5, label=f"{label} (n={sum(counts)})")
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
