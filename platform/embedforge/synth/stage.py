"""The synthesize stage on Ray: async LLM actors (Ray Data), global limits, dedup, filters.

Flow: read samples -> actors (each with many requests in flight, limits held by one
coordinator actor) write raw rows + errors, a part file per finished block -> dedup on hash
partitions (by id, then by normalised-text digest; :mod:`.dedup`) -> optional embedding
filter -> ``samples/`` written block by block (:class:`.sink.FinalSink`) -> ``summary.json``
from the coordinator's totals and the writer's per-block counts. The driver holds counts,
never rows.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import Counter
from typing import Any

import pyarrow as pa

from .. import io as eio
from .. import metrics
from ..cluster import connect
from ..config import JobFailed
from ..llm.cache import ResponseCache
from ..llm.coordinator import Coordinator, PartitionedLimiter, RemoteLimiter, can_partition
from ..llm.gateway import Gateway, estimate_cost
from ..safety import check_paths, claim_output
from ..schema import ARROW_SCHEMA, rows_to_table
from .config import SynthConfig
from .dedup import (
    KEEP,
    KEY,
    merge_stats,
    resolve_ids,
    resolve_texts,
)
from .techniques import merge_negatives, synthesize_sample

RAW_DIR, ERRORS_DIR, SAMPLES_DIR = "_raw", "errors", "samples"


def cache_root(cfg: SynthConfig) -> str:
    return cfg.cache or eio.join(cfg.output, "_cache")


def make_limiter(cfg: SynthConfig, coordinator: Any) -> Any:
    """Per-actor shares of the job-wide budgets when they divide, else the coordinator."""
    llm = cfg.llm
    if llm.limiter == "partitioned" and can_partition(llm.max_concurrency, llm.rpm, llm.tpm,
                                                      cfg.num_actors):
        return PartitionedLimiter(coordinator, llm.max_concurrency, llm.rpm, llm.tpm,
                                  llm.rate_window_s, cfg.num_actors)
    return RemoteLimiter(coordinator)


class SynthWorker:
    """A Ray Data actor: one event loop, one HTTP session, many requests in flight."""

    def __init__(self, cfg_json: str, coordinator: Any, base_url: str, api_key: str | None = None,
                 only_ids: list[str] | None = None):
        self.cfg = SynthConfig.model_validate_json(cfg_json)
        self.coordinator = coordinator
        self.gw = Gateway(self.cfg.llm, make_limiter(self.cfg, coordinator),
                          ResponseCache(cache_root(self.cfg)), base_url, api_key=api_key)
        self.sent: Counter[str] = Counter()
        self.kinds = set(self.cfg.kinds)
        self.datasets = set(self.cfg.datasets)
        self.only_ids = set(only_ids) if only_ids is not None else None

    def _selected(self, row: dict[str, Any]) -> bool:
        if self.only_ids is not None:
            return row["id"] in self.only_ids
        return row["kind"] in self.kinds and (not self.datasets or row["dataset"] in self.datasets)

    async def _one(self, row: dict[str, Any]):
        if not self._selected(row):
            return None
        return await synthesize_sample(self.gw, row, list(self.cfg.techniques), self.cfg.rules,
                                       self.cfg.llm.model)

    async def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        results = await asyncio.gather(*(self._one(r) for r in rows))
        out: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        rejections: Counter[str] = Counter()
        for row, res in zip(rows, results, strict=True):
            if res is None:
                if self.cfg.keep_originals:
                    out.append(row)
                continue
            merged = merge_negatives(row, res)
            if self.cfg.keep_originals or merged is not None:
                out.append(merged or row)
            out.extend(res.rows)
            errors.extend(res.errors)
            rejections.update(res.rejections)
        if errors:
            await asyncio.to_thread(
                eio.write_jsonl_atomic, errors,
                eio.join(self.cfg.output, ERRORS_DIR, f"part-{uuid.uuid4().hex}.jsonl"))
        await self._report(rejections, out, errors)
        return rows_to_table([{k: r[k] for k in ARROW_SCHEMA.names} for r in out])

    async def _report(self, rejections: Counter[str], out: list[dict[str, Any]],
                      errors: list[dict[str, Any]]) -> None:
        """Send this batch's accounting to the coordinator and to Ray metrics."""
        delta = Counter(self.gw.stats)
        delta.subtract(self.sent)
        self.sent = Counter(self.gw.stats)
        delta = Counter({k: v for k, v in delta.items() if v})
        for key, n in rejections.items():
            delta[f"rejected:{key}"] += n
        delta["error_rows"] += len(errors)
        for e in errors:  # the summary's errors_by_reason, without reading errors/ back
            delta[f"errors_by_reason:{e['reason']}"] += 1
        for r in out:
            delta[f"rows:{r['source']}"] += 1
        # awaited: the driver reads the totals right after the last batch returns
        await self.coordinator.add_stats.remote(dict(delta))
        model = {"model": self.cfg.llm.model}
        metrics.inc("embedforge_synth_llm_requests_total", delta["calls"], model)
        metrics.inc("embedforge_synth_llm_ok_total", delta["ok"], model)
        metrics.inc("embedforge_synth_llm_failed_total", delta["failed"], model)
        metrics.inc("embedforge_synth_llm_retries_total", delta["retries"], model)
        metrics.inc("embedforge_synth_cache_hits_total", delta["cache_hits"], model)
        metrics.inc("embedforge_synth_tokens_total", delta["prompt_tokens"], {**model, "type": "prompt"})
        metrics.inc("embedforge_synth_tokens_total", delta["completion_tokens"],
                    {**model, "type": "completion"})
        cost = estimate_cost(self.cfg.llm.prices, self.cfg.llm.model, delta["prompt_tokens"],
                             delta["completion_tokens"])
        metrics.inc("embedforge_synth_cost_usd_total", cost or 0.0, model)
        for key, n in delta.items():
            if key.startswith("error_"):
                metrics.inc("embedforge_synth_llm_errors_total", n, {**model, "kind": key[6:]})
            elif key.startswith("rejected:"):
                technique, reason = key[len("rejected:"):].split(":", 1)
                metrics.inc("embedforge_synth_rejections_total", n,
                            {"technique": technique, "reason": reason})
            elif key.startswith("rows:"):
                metrics.inc("embedforge_synth_rows_total", n, {"source": key[5:]})


def _first_selected_ids(files: list[str], cfg: SynthConfig) -> list[str]:
    """Ids of the first ``cfg.limit`` samples matching kinds/datasets, at most
    ``cfg.limit_per_dataset`` of each dataset (the others pass through unchanged)."""
    import pyarrow.parquet as pq

    ids: list[str] = []
    per: Counter[str] = Counter()
    for f in files:
        fs, p = eio.fs_and_path(f)
        for r in pq.read_table(p, columns=["id", "kind", "dataset"], filesystem=fs).to_pylist():
            if r["kind"] not in cfg.kinds or (cfg.datasets and r["dataset"] not in cfg.datasets):
                continue
            if cfg.limit_per_dataset is not None and per[r["dataset"]] >= cfg.limit_per_dataset:
                continue
            per[r["dataset"]] += 1
            ids.append(r["id"])
            if cfg.limit is not None and len(ids) >= cfg.limit:
                return ids
    return ids


def load_filter_model(cfg: SynthConfig) -> Any:
    """The embedding filter's model, or None when the filter is off."""
    if not cfg.embed_filter.model:
        return None
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(cfg.embed_filter.model, device="cpu")


class EmbedFilter:
    """Ray Data actor: the embedding filter over deduplicated rows (model loaded once).

    It clears ``_keep`` rather than dropping a row: the dedup counts a row carries must
    still reach the writer, which drops the row (see :class:`FinalSink`).
    """

    def __init__(self, cfg_json: str):
        self.cfg = SynthConfig.model_validate_json(cfg_json)
        self.model = load_filter_model(self.cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        live = [r for r in rows if r[KEEP]]
        passed = {id(r) for r in embed_filter(self.model, self.cfg, live)}
        for r in rows:
            r[KEEP] = id(r) in passed
        return pa.Table.from_pylist(rows, schema=batch.schema)


def embed_filter(model: Any, cfg: SynthConfig, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cosine(query, positive) floor for generated pairs; generated negatives must score
    below their positive (else they are likely false negatives). Updates kept rows' negatives
    and meta in place and returns the kept ones."""
    ef = cfg.embed_filter
    todo = [r for r in rows if r["source"] != "original" and r["kind"] != "classification"]
    if not todo:
        return rows
    texts: list[str] = []
    for r in todo:
        texts += [r["query"], r["positive"], *r["negatives"]]
    emb = model.encode(texts, batch_size=ef.batch_size, normalize_embeddings=True,
                       convert_to_numpy=True)
    keep_ids: set[str] = set()
    i = 0
    for r in todo:
        q, p = emb[i], emb[i + 1]
        negs = emb[i + 2: i + 2 + len(r["negatives"])]
        i += 2 + len(r["negatives"])
        pos_score = float(q @ p)
        meta = json.loads(r["meta"] or "{}")
        meta["embed_filter"] = {"pos_score": round(pos_score, 4)}
        if r["kind"] == "retrieval" and r["source"] in ("paraphrase", "augment") and pos_score < ef.min_pair_cosine:
            continue
        if ef.drop_negatives_above_positive and r["negatives"]:
            sources = meta.get("negative_sources") or ["llm"] * len(r["negatives"])
            kept, kept_src, dropped = [], [], 0
            for text, vec, src in zip(r["negatives"], negs, sources, strict=False):
                if src == "llm" and float(q @ vec) >= pos_score:
                    dropped += 1
                    continue
                kept.append(text)
                kept_src.append(src)
            r["negatives"], meta["negative_sources"] = kept, kept_src
            meta["embed_filter"]["negatives_dropped"] = dropped
        r["meta"] = json.dumps(meta, ensure_ascii=False, sort_keys=True)
        keep_ids.add(r["id"])
    todo_ids = {r["id"] for r in todo}
    return [r for r in rows if r["id"] in keep_ids or r["id"] not in todo_ids]


def run_synthesize(cfg: SynthConfig, log=print) -> dict[str, Any]:
    """Run the stage end to end; returns the summary also written to OUTPUT/summary.json."""
    from ..llm.local_server import local_llm

    t0 = time.time()
    files = eio.sample_files(cfg.input)
    if not files:
        from ..config import ConfigError

        raise ConfigError(f"no unified samples (samples/*.parquet) under --input {cfg.input}")
    # the folders cleared below must be this stage's own, and never the input's
    check_paths(cfg)
    claim_output(cfg.output, "synthesize", cfg.force)
    for sub in (RAW_DIR, ERRORS_DIR, SAMPLES_DIR):
        eio.remove(eio.join(cfg.output, sub))
    if not cfg.llm.base_url:
        local: dict[str, Any] = {"timeout_s": max(cfg.llm.timeout_s, cfg.local_llm.request_timeout_s)}
        if not cfg.local_llm.command and cfg.llm.json_mode == "schema":
            # both built-in engines take the schema as {"type": "json_object", "schema": ...}
            local["json_mode"] = "object_schema"
        cfg = cfg.model_copy(update={"llm": cfg.llm.model_copy(update=local)})
    cfg_json = cfg.model_dump_json()
    with connect(cfg.ray_address, cfg.num_cpus), local_llm(cfg, log) as llm:
        try:
            stats, totals = _generate(cfg, cfg_json, files, llm.base_url, log)
        except KeyboardInterrupt:
            if llm.watch is not None and llm.watch.died is not None:
                raise llm.watch.error() from None
            raise
    check_not_an_outage(stats, cache_root(cfg), eio.join(cfg.output, ERRORS_DIR))
    eio.remove(eio.join(cfg.output, RAW_DIR))
    summary = _summary(cfg, stats, totals, time.time() - t0)
    eio.write_json(summary, eio.join(cfg.output, "summary.json"))
    return summary


def _generate(cfg: SynthConfig, cfg_json: str, files: list[str], base_url: str,
              log) -> tuple[dict[str, Any], dict[str, Any]]:
    """Named steps: LLM actors write raw rows -> dedup + filter + write samples/; returns
    the LLM/coordinator stats and the written output's counts."""
    import ray

    coordinator = Coordinator.remote(cfg.llm.max_concurrency, cfg.llm.rpm, cfg.llm.tpm,
                                     cfg.llm.rate_window_s)
    ds = ray.data.read_parquet(files)
    limited = cfg.limit is not None or cfg.limit_per_dataset is not None
    only_ids = _first_selected_ids(files, cfg) if limited else None
    # enough blocks for every actor to have work (a small file is one block otherwise), and
    # small enough that a killed job has written most of what it was sent (one part per block)
    ds = ds.repartition(input_blocks(cfg, ds.count()))
    log(f"[synthesize] {cfg.techniques} via {base_url} (model {cfg.llm.model}, "
        f"{cfg.num_actors} actors, max {cfg.llm.max_concurrency} in flight)")
    out = ds.map_batches(
        SynthWorker, fn_constructor_kwargs={
            "cfg_json": cfg_json, "coordinator": coordinator, "base_url": base_url,
            # the key travels as an argument, never in configs, logs, caches or outputs
            "api_key": os.environ.get(cfg.llm.api_key_env), "only_ids": only_ids},
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors), batch_size=cfg.batch_size,
        batch_format="pyarrow", num_cpus=cfg.cpus_per_actor,
    )
    with _Progress(coordinator, log):
        # Ray Data writes a part file per block as it finishes: a killed job keeps them
        out.write_parquet(eio.join(cfg.output, RAW_DIR))
    stats = ray.get(coordinator.stats.remote())
    totals = _finalise(cfg, cfg_json, eio.join(cfg.output, RAW_DIR),
                       eio.join(cfg.output, SAMPLES_DIR))
    log(f"[synthesize] dedup: {totals['text_repeats']} generated rows repeat earlier ones")
    for example in totals["repeated_examples"]:
        dup, copies = example.rsplit(" ", 1)
        log(f"[synthesize] dedup: duplicate id {dup}: {copies} rows share it; kept the first, "
            f"dropped {int(copies) - 1}")
    if totals["repeated_ids"] > len(totals["repeated_examples"]):
        log(f"[synthesize] dedup: {totals['repeated_ids']} ids had several rows in all")
    return stats, totals


def input_blocks(cfg: SynthConfig, rows: int) -> int:
    """Blocks the LLM step splits its input into: 4 per actor, and at most
    ``cfg.rows_per_block`` rows each, since each finished block is written as one raw part."""
    return max(cfg.num_actors * 4, -(-rows // cfg.rows_per_block), 1)


def dedup_partitions(cfg: SynthConfig, raw_rows: int) -> int:
    """Hash partitions for the dedup shuffles: enough for every actor's CPU to take part,
    and one per ~100k rows so one partition's rows fit a worker at any output size."""
    return max(cfg.num_actors, -(-raw_rows // 100_000), 1)


def _finalise(cfg: SynthConfig, cfg_json: str, raw_dir: str, samples_dir: str) -> dict[str, Any]:
    """raw rows -> dedup by id, then by text, on hash partitions -> optional embedding filter
    -> ``samples/`` written block by block; returns the summed counts of the written blocks.

    Nothing of the data's size comes to the driver: the shuffles partition by ``id`` and by a
    digest of the normalised text, and the writer returns counts per write task.
    """
    import ray

    from .sink import FinalSink

    if not eio.list_files(raw_dir, ".parquet"):  # Ray Data writes no file for zero rows
        return merge_stats([])
    raw = ray.data.read_parquet(raw_dir)
    parts = dedup_partitions(cfg, raw.count())  # from the Parquet footers
    cpus = cfg.cpus_per_actor
    # A keyed repartition puts every row of a key in one block and never splits a partition's
    # block (the guarantee Ray's own map_groups rests on), so each step runs once per
    # partition over all its groups. map_groups would call it once per group: at 300k samples
    # that pickled ~600k one-row tables and held 4.7 GiB per worker.
    ds = (raw.repartition(parts, keys=["id"])
          .map_batches(resolve_ids, batch_size=None, batch_format="pyarrow", num_cpus=cpus)
          .repartition(parts, keys=[KEY])
          .map_batches(resolve_texts, batch_size=None, batch_format="pyarrow", num_cpus=cpus))
    if cfg.embed_filter.model:
        ds = ds.map_batches(EmbedFilter, fn_constructor_kwargs={"cfg_json": cfg_json},
                            compute=ray.data.ActorPoolStrategy(size=1), batch_format="pyarrow",
                            batch_size=256, num_cpus=cpus)
    sink = FinalSink(samples_dir)
    ds.write_datasink(sink)
    return sink.totals or merge_stats([])


def check_not_an_outage(stats: dict[str, Any], cache: str, errors: str) -> None:
    """A run in which every LLM call failed (none answered, none came from the cache) is a
    provider outage or a wrong endpoint/key, not a success with zero generated rows."""
    calls, failed = int(stats.get("calls", 0)), int(stats.get("failed", 0))
    if failed and not stats.get("ok") and not stats.get("cache_hits"):
        kinds = {k[len("error_"):]: v for k, v in stats.items() if k.startswith("error_") and v}
        raise JobFailed(
            f"every LLM request failed ({failed} requests, {calls} attempts; errors by kind: "
            f"{kinds or 'none'}): is the API at --llm.base-url reachable and the key valid? "
            f"Failed rows are in {errors}; the response cache ({cache}) is kept for a re-run")


class _Progress:
    """A progress line every ``every_s`` seconds from the coordinator's running totals."""

    def __init__(self, coordinator: Any, log, every_s: float = 10.0):
        import threading

        self.coordinator, self.log, self.every_s = coordinator, log, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.time()

    def _run(self) -> None:
        import ray

        while not self._stop.wait(self.every_s):
            try:
                st = ray.get(self.coordinator.stats.remote(), timeout=5)
            except Exception:  # progress is best effort
                continue
            rows = sum(v for k, v in st.items() if k.startswith("rows:"))
            dt = time.time() - self._t0
            sent = st.get("requests_started", 0)
            self.log(f"[synthesize] {dt:.0f}s: {sent} requests sent ({sent / max(dt, 1e-9):.1f}/s, "
                     f"{st.get('in_flight', 0)} in flight); finished batches: {st.get('ok', 0)} ok, "
                     f"{st.get('cache_hits', 0)} cached, {st.get('retries', 0)} retries, "
                     f"{rows} rows out")

    def __enter__(self) -> _Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=6)


def _summary(cfg: SynthConfig, stats: dict[str, Any], totals: dict[str, Any],
             seconds: float) -> dict[str, Any]:
    """From streamed counts only: the coordinator's running totals (LLM, errors) and the
    writer's per-block counts (rows by source, duplicates); the output is not read back."""
    by_source = totals["rows_by_source"]
    errors_by_reason = {k[len("errors_by_reason:"):]: v for k, v in stats.items()
                        if k.startswith("errors_by_reason:") and v}
    p_tok, c_tok = int(stats.get("prompt_tokens", 0)), int(stats.get("completion_tokens", 0))
    rejected = {k[len("rejected:"):]: v for k, v in stats.items() if k.startswith("rejected:")}
    config = cfg.model_dump(mode="json")
    return {
        "stage": "synthesize",
        "input": cfg.input,
        "output": cfg.output,
        "model": cfg.llm.model,
        "rows_by_source": dict(by_source),
        "generated_rows": sum(v for k, v in by_source.items() if k != "original"),
        "llm": {
            "calls": int(stats.get("calls", 0)),
            "ok": int(stats.get("ok", 0)),
            "failed": int(stats.get("failed", 0)),
            "retries": int(stats.get("retries", 0)),
            "cache_hits": int(stats.get("cache_hits", 0)),
            "errors_by_kind": {k[6:]: v for k, v in stats.items() if k.startswith("error_")},
            "prompt_tokens": p_tok,
            "completion_tokens": c_tok,
            "estimated_cost_usd": estimate_cost(cfg.llm.prices, cfg.llm.model, p_tok, c_tok),
            "max_in_flight_granted": stats.get("max_in_flight_granted", 0),
        },
        "rejections_by_reason": rejected,
        "duplicates_dropped": totals["rows_dropped"],
        "error_rows": int(stats.get("error_rows", 0)),
        "errors_by_reason": errors_by_reason,
        "seconds": round(seconds, 2),
        "config": config,
    }


def format_report(summary: dict[str, Any]) -> str:
    llm = summary["llm"]
    cost = llm["estimated_cost_usd"]
    lines = [
        f"rows by source: {summary['rows_by_source']}",
        f"LLM calls {llm['calls']} (ok {llm['ok']}, failed {llm['failed']}, retries "
        f"{llm['retries']}, cache hits {llm['cache_hits']}); tokens {llm['prompt_tokens']} prompt"
        f" + {llm['completion_tokens']} completion; cost "
        f"{'n/a (no price for ' + summary['model'] + ')' if cost is None else f'${cost:.4f}'}",
        f"rejected outputs: {summary['rejections_by_reason'] or 'none'}; duplicates dropped: "
        f"{summary['duplicates_dropped']}; error rows: {summary['error_rows']} "
        f"{summary['errors_by_reason'] or ''}",
    ]
    return "\n".join(lines)
