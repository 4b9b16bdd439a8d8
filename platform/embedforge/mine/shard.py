"""One hash range of the mining texts: survey it, then hold its texts, vectors and faiss index.

Each shard's texts arrive as spill files (``texts/shard-J/*.parquet``: hash, text, prompt and
whether the text is a corpus passage and/or a look-up text: a query, positive or existing
negative). ``survey`` deduplicates them and finds which the cache lacks, so only those are
embedded; ``IndexShard`` then reads its range of the cache one part file at a time, adding
corpus vectors to its index as they come and keeping look-up vectors for the mining tasks.
No process holds more than its own range.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import io as eio
from . import index as findex
from .embed import cached_in_range, match_sorted, missing_message, plan_reads, stream_parts
from .layout import text_ids

SPILL_SCHEMA = pa.schema([("hash", pa.string()), ("text", pa.string()), ("prompt", pa.string()),
                          ("corpus", pa.bool_()), ("lookup", pa.bool_())])


def dedup_texts(table: pa.Table) -> pa.Table:
    """One row per hash, sorted by hash: the roles of all copies OR-ed, the longest prompt kept
    (a text that is also a query keeps its instruction prefix for prompt pooling)."""
    if table.num_rows == 0:
        return SPILL_SCHEMA.empty_table()
    g = table.group_by("hash").aggregate([("text", "min"), ("prompt", "max"),
                                         ("corpus", "any"), ("lookup", "any")])
    names = {"text_min": "text", "prompt_max": "prompt", "corpus_any": "corpus",
             "lookup_any": "lookup"}
    g = g.rename_columns([names.get(c, c) for c in g.column_names])
    g = g.select(SPILL_SCHEMA.names).cast(SPILL_SCHEMA)
    return g.sort_by("hash")


def read_spill(folder: str) -> pa.Table:
    files = eio.list_files(folder, ".parquet")
    if not files:
        return SPILL_SCHEMA.empty_table()
    fs, _ = eio.fs_and_path(files[0])
    return pa.concat_tables([pq.read_table(eio.fs_and_path(f)[1], filesystem=fs).cast(SPILL_SCHEMA)
                             for f in files])


def survey(spill_dir: str, out_texts: str, out_missing: str, root: str, fingerprint: str,
           dtype: str, lo: str, hi: str) -> dict[str, int]:
    """Deduplicate one shard's texts (written to ``out_texts``) and write the ones the cache
    lacks, shortest first (little padding), to ``out_missing``. Reads only the hash column of
    the shard's cache range."""
    texts = dedup_texts(read_spill(spill_dir))
    eio.write_parquet_atomic(texts, out_texts)
    cached, rows_read = cached_in_range(root, fingerprint, dtype, lo, hi)
    hashes = np.asarray(texts.column("hash").to_numpy(zero_copy_only=False), dtype=str)
    _, found = match_sorted(cached, hashes)
    missing = texts.filter(pa.array(~found)).select(["hash", "text", "prompt"])
    if missing.num_rows:
        order = pc.sort_indices(pc.utf8_length(missing.column("text")))
        eio.write_parquet_atomic(missing.take(order), out_missing)
    corpus = texts.column("corpus").to_numpy(zero_copy_only=False)
    return {"texts": texts.num_rows, "corpus": int(corpus.sum()), "missing": missing.num_rows,
            "cache_hash_rows_read": rows_read}


class IndexShard:
    """Ray actor: the corpus texts of one hash range, their faiss index, and the vectors of the
    range's look-up texts (queries, positives, existing negatives) for the mining tasks."""

    def __init__(self, texts_file: str, root: str, fingerprint: str, dtype: str, lo: str, hi: str,
                 factory: str, use_gpu: bool, nprobe: int):
        import ray

        fs, p = eio.fs_and_path(texts_file)
        t = pq.read_table(p, filesystem=fs)
        hashes = np.asarray(t.column("hash").to_numpy(zero_copy_only=False), dtype=str)
        corpus = t.column("corpus").to_numpy(zero_copy_only=False).astype(bool)
        lookup = t.column("lookup").to_numpy(zero_copy_only=False).astype(bool)
        self.corpus_hashes, self.lookup_hashes = hashes[corpus], hashes[lookup]
        self.ids = text_ids(self.corpus_hashes)  # ascending: hashes are sorted
        # Arrow strings, not Python objects: the shard's texts in one buffer
        self.texts = t.column("text").filter(pa.array(corpus)).combine_chunks()
        del t, hashes
        plan = plan_reads(root, fingerprint, dtype, lo=lo, hi=hi)
        self.rows_read = sum(part.rows for part in plan)
        self.bytes_read = sum(part.bytes for part in plan)
        self.index, self.local, self.lookup_vectors = _build(
            plan, self.corpus_hashes, self.lookup_hashes, factory, use_gpu, nprobe)
        self.node = ray.get_runtime_context().get_node_id()

    def info(self) -> dict[str, Any]:
        d = self.index.d if self.index is not None else 0
        return {"node": self.node, "size": len(self.ids), "lookup_texts": len(self.lookup_hashes),
                "cache_rows_read": self.rows_read, "cache_bytes_read": self.bytes_read,
                "bytes": int(len(self.ids) * d * 4),
                "lookup_bytes": int(self.lookup_vectors.nbytes),
                "text_bytes": int(self.texts.nbytes)}

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` of this shard as (scores, global row ids), -1 where fewer."""
        if self.index is None or self.index.ntotal == 0:
            return (np.full((len(queries), 0), -np.inf, dtype=np.float32),
                    np.zeros((len(queries), 0), dtype=np.int64))
        scores, local = findex.search(self.index, queries, k)
        ids = np.where(local >= 0, self.ids[self.local[np.maximum(local, 0)]], -1)
        return scores, ids

    def texts_of(self, ids: np.ndarray) -> list[str]:
        pos = np.searchsorted(self.ids, np.asarray(ids, dtype=np.int64))
        return self.texts.take(pa.array(pos)).to_pylist()

    def vectors_of(self, hashes: list[str]) -> np.ndarray:
        want = np.asarray(hashes, dtype=str)
        pos, found = match_sorted(self.lookup_hashes, want)
        if not found.all():
            raise KeyError(missing_message(want[~found]))
        return self.lookup_vectors[pos]

    def random_texts(self, n: int, seed: int) -> list[str]:
        """``n`` uniformly drawn corpus texts of this shard (with replacement)."""
        if not len(self.ids):
            return []
        pos = np.random.default_rng(seed).integers(0, len(self.ids), size=n)
        return self.texts.take(pa.array(pos)).to_pylist()


def _build(plan: list[Any], corpus_hashes: np.ndarray, lookup_hashes: np.ndarray, factory: str,
           use_gpu: bool, nprobe: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """Stream the shard's cache range once: corpus vectors into the index (Flat: as they come;
    IVF: gathered, trained on, added, freed), look-up vectors into their own matrix.

    Returns (index, local -> corpus position, look-up vectors). A cache part may repeat a
    vector another part holds (two runs embedding the same text); the first one counts.
    """
    index = None
    gathered: np.ndarray | None = None  # IVF only: training needs the vectors first
    lookup_vectors: np.ndarray | None = None
    have_c = np.zeros(len(corpus_hashes), dtype=bool)
    have_l = np.zeros(len(lookup_hashes), dtype=bool)
    local: list[np.ndarray] = []
    for hashes, vectors in stream_parts(plan):
        assert vectors is not None
        if lookup_vectors is None:
            lookup_vectors = np.zeros((len(lookup_hashes), vectors.shape[1]), dtype=np.float32)
        pos, found = match_sorted(lookup_hashes, hashes)
        lookup_vectors[pos[found]] = vectors[found]
        have_l[pos[found]] = True
        pos, found = match_sorted(corpus_hashes, hashes)
        rows = np.flatnonzero(found)
        pos, first = np.unique(pos[rows], return_index=True)
        keep = ~have_c[pos]
        pos, rows = pos[keep], rows[first[keep]]
        if not len(pos):
            continue
        have_c[pos] = True
        if "IVF" in factory:
            if gathered is None:
                gathered = np.zeros((len(corpus_hashes), vectors.shape[1]), dtype=np.float32)
            gathered[pos] = vectors[rows]
        else:
            if index is None:
                index = findex.new_index(vectors.shape[1], factory, use_gpu)
            index.add(np.ascontiguousarray(vectors[rows], dtype=np.float32))
            local.append(pos)
    if not have_c.all():
        raise KeyError(missing_message(corpus_hashes[~have_c]))
    if not have_l.all():
        raise KeyError(missing_message(lookup_hashes[~have_l]))
    if gathered is not None:
        index = findex.build(gathered, factory, use_gpu=use_gpu, nprobe=nprobe)
        local = [np.arange(len(corpus_hashes))]
        del gathered
    if lookup_vectors is None:
        lookup_vectors = np.zeros((0, 0), dtype=np.float32)
    order = np.concatenate(local) if local else np.zeros(0, dtype=np.int64)
    return index, order, lookup_vectors
