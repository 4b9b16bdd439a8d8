"""The Ray edge of mining: each step of ``stage.run_mine`` reads and writes files under a work
folder, and Ray Data or Ray tasks/actors do the work, so the driver holds counts and actor
handles, never rows.

    spill samples   samples -> work/parts/P/ (by query) + their texts -> work/texts/shard-J/
    spill corpus    corpus  -> work/texts/shard-J/            (by hash range)
    survey          per shard: dedup, cache look-up -> work/shard-J.parquet + work/missing/
    embed           work/missing/ -> embedding actors -> cache
    shards          per shard: an IndexShard actor over its texts and cache range
    mine            per partition: search + selection -> samples/, audit/, partial counts
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import io as eio
from ..data.retrieval import beir_doc_text
from ..schema import ARROW_SCHEMA, rows_to_table
from . import index as findex
from .embed import EmbedActor, text_hash
from .layout import ShardRanges, num_partitions, partition_of
from .partition import add_stats, mine_rows, partition_stats, query_prompt, search_depth
from .shard import SPILL_SCHEMA, IndexShard, survey

PART = "_part"


def shard_dir(work: str, j: int) -> str:
    return eio.join(work, "texts", f"shard-{j:04d}")


def part_dir(work: str, p: int) -> str:
    return eio.join(work, "parts", f"{p:05d}")


def spill_texts(work: str, n_shards: int, texts: list[str], prompts: list[str], corpus: bool,
                lookup: bool) -> int:
    """Write ``texts`` (non-blank) to the spill folders of the shards owning their hashes."""
    keep = [i for i, t in enumerate(texts) if t and t.strip()]
    if not keep:
        return 0
    texts, prompts = [texts[i] for i in keep], [prompts[i] for i in keep]
    hashes = [text_hash(t) for t in texts]
    owners = ShardRanges(n_shards).owners_of_hashes(hashes)
    table = pa.table({"hash": hashes, "text": texts, "prompt": prompts,
                      "corpus": [corpus] * len(texts), "lookup": [lookup] * len(texts)},
                     schema=SPILL_SCHEMA)
    for j in np.unique(owners).tolist():
        part = table.filter(pa.array(owners == j))
        eio.write_parquet_atomic(part, eio.join(shard_dir(work, j), f"part-{uuid.uuid4().hex}.parquet"))
    return len(texts)


def _spill_samples(batch: pa.Table, work: str, n_shards: int, instruction: bool,
                   corpus_from_samples: bool) -> dict[str, np.ndarray]:
    """Ray Data UDF: a block of samples -> its partition files and its texts' spill files."""
    rows = batch.to_pylist()
    by_part: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_part.setdefault(int(r.pop(PART)), []).append(r)
    for p, part in by_part.items():
        eio.write_parquet_atomic(rows_to_table(part),
                                 eio.join(part_dir(work, p), f"part-{uuid.uuid4().hex}.parquet"))
    retrieval = [r for r in rows if r["kind"] == "retrieval"]
    prompts = [query_prompt(r, instruction) for r in retrieval]
    spill_texts(work, n_shards, [p + r["query"] for p, r in zip(prompts, retrieval, strict=True)],
                prompts, corpus=False, lookup=True)
    others = [t for r in retrieval for t in (r["positive"], *r["negatives"])]
    spill_texts(work, n_shards, others, [""] * len(others), corpus=corpus_from_samples, lookup=True)
    return {"rows": np.array([len(rows)]), "retrieval": np.array([len(retrieval)])}


def _add_part(batch: pa.Table, num_parts: int) -> pa.Table:
    parts = [partition_of(d, q, num_parts) for d, q in
             zip(batch.column("dataset").to_pylist(), batch.column("query").to_pylist(), strict=True)]
    return batch.append_column(PART, pa.array(parts, pa.int64()))


def count_partitions(files: list[str], max_rows: int, max_bytes: int) -> int:
    rows = size = 0
    for f in files:
        fs, p = eio.fs_and_path(f)
        with fs.open(p, "rb") as fh:
            md = pq.ParquetFile(fh).metadata
        rows += md.num_rows
        size += sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
    return num_partitions(rows, size, max_rows, max_bytes)


def spill_samples(files: list[str], work: str, n_shards: int, num_parts: int, instruction: bool,
                  corpus_from_samples: bool) -> dict[str, int]:
    """Samples -> ``work/parts/P/`` (hash-shuffled by query first, so a partition is a few
    files) and their query-side texts -> the shards' spill folders. Returns counts."""
    import ray

    ds = ray.data.read_parquet(files, schema=ARROW_SCHEMA)
    ds = ds.map_batches(_add_part, fn_kwargs={"num_parts": num_parts}, batch_format="pyarrow")
    if num_parts > 1:
        ds = ds.repartition(num_parts, keys=[PART])
    counts = ds.map_batches(_spill_samples, batch_format="pyarrow", batch_size=None, fn_kwargs={
        "work": work, "n_shards": n_shards, "instruction": instruction,
        "corpus_from_samples": corpus_from_samples})
    total = {"rows": 0, "retrieval": 0}
    for r in counts.iter_rows():
        total["rows"] += int(r["rows"])
        total["retrieval"] += int(r["retrieval"])
    return total


def title_text(title: str | None, text: str) -> str:
    """A passage of a .jsonl/.parquet corpus file: its title (if any), then its text."""
    return f"{title or ''} {text}".strip()


def _spill_corpus_lines(batch: dict[str, np.ndarray], work: str, n_shards: int,
                        beir: bool) -> dict[str, np.ndarray]:
    rows = [json.loads(line) for line in batch["text"] if str(line).strip()]
    texts = [beir_doc_text(r) if beir else title_text(r.get("title"), r["text"]) for r in rows]
    return {"n": np.array([spill_texts(work, n_shards, texts, [""] * len(texts), True, False)])}


def _spill_corpus_rows(batch: pa.Table, work: str, n_shards: int, samples: bool) -> dict[str, np.ndarray]:
    if samples:
        texts = [r["positive"] for r in batch.select(["kind", "positive"]).to_pylist()
                 if r["kind"] == "retrieval"]
    else:
        titles = (batch.column("title").to_pylist() if "title" in batch.column_names
                  else [None] * batch.num_rows)
        texts = [title_text(t, x) for t, x in zip(titles, batch.column("text").to_pylist(),
                                                  strict=True)]
    return {"n": np.array([spill_texts(work, n_shards, texts, [""] * len(texts), True, False)])}


def spill_corpus(src: str, work: str, n_shards: int) -> int:
    """A corpus (BEIR folder, .jsonl/.parquet with `text`, or a samples folder's positives)
    read by Ray Data and spilled by hash range. Returns texts spilled (before dedup)."""
    import ray

    beir = eio.exists(eio.join(src, "corpus.jsonl"))
    if beir or src.endswith(".jsonl"):
        ds = ray.data.read_text(eio.join(src, "corpus.jsonl") if beir else src).map_batches(
            _spill_corpus_lines, fn_kwargs={"work": work, "n_shards": n_shards, "beir": beir},
            batch_format="numpy")
    elif src.endswith(".parquet"):
        ds = ray.data.read_parquet(src).map_batches(
            _spill_corpus_rows, fn_kwargs={"work": work, "n_shards": n_shards, "samples": False},
            batch_format="pyarrow")
    else:
        ds = ray.data.read_parquet(eio.sample_files(src), schema=ARROW_SCHEMA).map_batches(
            _spill_corpus_rows, fn_kwargs={"work": work, "n_shards": n_shards, "samples": True},
            batch_format="pyarrow")
    return sum(int(r["n"]) for r in ds.iter_rows())


def survey_shards(work: str, n_shards: int, root: str, fp: str, dtype: str) -> list[dict[str, int]]:
    import ray

    task = ray.remote(num_cpus=1)(survey)
    ranges = ShardRanges(n_shards)
    return ray.get([task.remote(shard_dir(work, j), eio.join(work, "shards", f"shard-{j:04d}.parquet"),
                                eio.join(work, "missing", f"shard-{j:04d}.parquet"), root, fp, dtype,
                                *ranges.hex_range(j)) for j in range(n_shards)])


def _read_missing(batch: pa.Table) -> Iterator[pa.Table]:
    """A missing-texts file, a bounded batch at a time (in the file's shortest-first order)."""
    for path in batch.column("file").to_pylist():
        fs, p = eio.fs_and_path(path)
        with fs.open(p, "rb") as fh:
            for rb in pq.ParquetFile(fh).iter_batches(batch_size=4096):
                yield pa.Table.from_batches([rb])


def embed_missing(work: str, settings: Any, root: str, fp: str, num_actors: int, batch_size: int,
                  use_gpu: bool, dtype: str, expected: int) -> int:
    """Embed what the surveys found missing (shortest first), writing cache parts as it goes."""
    import ray

    files = eio.list_files(eio.join(work, "missing"), ".parquet")
    if not files or not expected:
        return 0
    # reading the missing texts is I/O: it reserves no CPU (nor does listing them: the driver
    # names the files), so the embedding actors can take every CPU; a reader holding one
    # would leave them half the threads, or wait forever for it
    ds = ray.data.from_items([{"file": f} for f in files]).map_batches(
        _read_missing, batch_size=1, batch_format="pyarrow", num_cpus=0)
    cpus = ray.cluster_resources().get("CPU", 1.0)
    # an actor must fit on one node: never ask for more CPUs than the largest node has
    node_max = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)
    per_actor = 1 if use_gpu else max(1, int(min(cpus // num_actors, node_max)))
    res = ds.map_batches(
        EmbedActor, fn_constructor_kwargs={"settings_json": settings.model_dump_json(), "root": root,
                                           "fingerprint": fp, "threads": per_actor, "dtype": dtype},
        compute=ray.data.ActorPoolStrategy(size=num_actors), batch_size=batch_size,
        num_gpus=1 if use_gpu else 0, num_cpus=per_actor if not use_gpu else 1)
    done = sum(int(r["n"]) for r in res.iter_rows())
    if done != expected:
        raise RuntimeError(f"embedded {done} texts, expected {expected}")
    return done


def start_shards(work: str, n_shards: int, root: str, fp: str, dtype: str, factory: str,
                 use_gpu: bool, nprobe: int) -> list[Any]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ranges = ShardRanges(n_shards)
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU"))

    def placement(j: int) -> Any:
        if use_gpu or not nodes:  # a GPU each: the GPUs place them
            return "SPREAD"
        # no CPU reserved (a shard works only inside calls from mining tasks, which hold the
        # CPUs), so neither SPREAD nor a soft affinity spreads them (seen on Ray 2.60): pin
        # them round-robin over the live nodes
        return NodeAffinitySchedulingStrategy(nodes[j % len(nodes)], soft=False)

    return [ray.remote(IndexShard).options(num_cpus=0, num_gpus=1 if use_gpu else 0,
                                           scheduling_strategy=placement(j))
            .remote(eio.join(work, "shards", f"shard-{j:04d}.parquet"), root, fp, dtype,
                    *ranges.hex_range(j), factory, use_gpu, nprobe) for j in range(n_shards)]


class ShardClient:
    """The ``partition.Store`` of a job: look-ups and searches routed to the owning shards."""

    def __init__(self, shards: list[Any], sizes: list[int]):
        self.shards, self.sizes = shards, sizes
        self.ranges = ShardRanges(len(shards))

    def _by_owner(self, owners: np.ndarray, keys: list[Any], method: str) -> list[Any]:
        import ray

        groups = {int(j): np.flatnonzero(owners == j) for j in np.unique(owners)}
        results = ray.get([getattr(self.shards[j], method).remote([keys[i] for i in idx])
                           for j, idx in groups.items()])
        out: list[Any] = [None] * len(keys)
        for idx, res in zip(groups.values(), results, strict=True):
            for i, value in zip(idx.tolist(), res, strict=True):
                out[i] = value
        return out

    def vectors(self, hashes: list[str]) -> np.ndarray:
        return np.stack(self._by_owner(self.ranges.owners_of_hashes(hashes), hashes, "vectors_of"))

    def texts(self, ids: list[int]) -> list[str]:
        return self._by_owner(self.ranges.owners(np.asarray(ids, dtype=np.int64)), ids, "texts_of")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import ray

        ref = ray.put(np.ascontiguousarray(queries, dtype=np.float32))
        return findex.merge_topk(ray.get([s.search.remote(ref, k) for s in self.shards]), k)

    def random_texts(self, n: int, rng: Any) -> list[str]:
        import ray

        picks = rng.choices(range(len(self.shards)), weights=self.sizes, k=n)
        counts = np.bincount(picks, minlength=len(self.shards))
        got = ray.get([self.shards[j].random_texts.remote(int(c), rng.getrandbits(63))
                       for j, c in enumerate(counts) if c])
        out = [t for texts in got for t in texts]
        rng.shuffle(out)
        return out


class MinePartitions:
    """Ray Data actor: mines whole partitions and writes their samples and audit files."""

    def __init__(self, shards: list[Any], sizes: list[int], cfg_json: str, work: str):
        from .config import MineConfig

        self.cfg = MineConfig.model_validate_json(cfg_json)
        self.work = work
        self.store = ShardClient(shards, sizes)
        self.corpus = sum(sizes)
        self.rescorer = None
        if self.cfg.rescore is not None:
            from ..model.encoder import Encoder

            encoder = Encoder(self.cfg.rescore)
            self.rescorer = lambda texts, prompts: encoder.encode(
                [t[len(p):] for t, p in zip(texts, prompts, strict=True)], prompts)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        stats = []
        for p in batch["part"].tolist():
            stats.append(json.dumps(self.mine_part(int(p))))
        return {"part": batch["part"], "stats": np.array(stats, dtype=object)}

    def mine_part(self, p: int) -> dict[str, Any]:
        files = eio.list_files(part_dir(self.work, p), ".parquet")
        if not files:
            return partition_stats([], 0)
        table = eio.read_samples(part_dir(self.work, p))
        # sorted by id: the same output whatever order the shuffle delivered the files in
        rows = table.sort_by("id").to_pylist()
        cfg = self.cfg
        out, audit = mine_rows(rows, cfg.selection, self.store, search_depth(self.corpus, cfg.selection),
                               instruction=cfg.instruction, query_batch=cfg.query_batch,
                               pool_size=self.corpus, rescorer=self.rescorer)
        eio.write_parquet_atomic(rows_to_table([{k: r[k] for k in ARROW_SCHEMA.names} for r in out]),
                                 eio.join(cfg.output, "samples", f"part-{p:05d}.parquet"))
        if audit:
            eio.write_jsonl_atomic(audit, eio.join(cfg.output, "audit", f"part-{p:05d}.jsonl"))
        return partition_stats(audit, len(rows))


def mine_partitions(num_parts: int, shards: list[Any], sizes: list[int], cfg: Any, work: str,
                    use_gpu: bool) -> dict[str, Any] | None:
    """Every partition through ``MinePartitions`` actors; their partial counts summed."""
    import ray

    gpu = 1 if use_gpu and cfg.rescore is not None else 0
    ds = ray.data.range(num_parts).map_batches(lambda b: {"part": b["id"]}, batch_format="numpy")
    res = ds.map_batches(MinePartitions, batch_size=1, batch_format="numpy",
                         fn_constructor_kwargs={"shards": shards, "sizes": sizes,
                                                "cfg_json": cfg.model_dump_json(), "work": work},
                         compute=ray.data.ActorPoolStrategy(size=cfg.mine_actors),
                         num_cpus=0.5, num_gpus=gpu)
    total = None
    for r in res.iter_rows():
        total = add_stats(total, json.loads(r["stats"]))
    return total
