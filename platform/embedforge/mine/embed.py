"""Embeddings with a content-addressed cache: (encoder fingerprint, dtype, text hash) -> vector.

Re-mining with new queries or a grown corpus embeds only texts never seen by that encoder;
a killed job keeps every finished part. The Ray edge is a Data actor pool (one actor per GPU
when there are GPUs), batches sorted by length so padding stays small.

At corpus scale (~10M passages × 3,584 dims) no process may read the whole cache: vectors are
fixed-size float32/float16 lists (one flat buffer, not Python floats), each part file is
sorted by hash with one row group per hash bucket, and index shards own hash ranges, so a
shard picks its row groups from the footers and reads about 1/N of the cache.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import io as eio


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


#: stored vector dtypes (``--cache-dtype``); float16 halves the cache and every shard's read
CACHE_DTYPES: dict[str, pa.DataType] = {"float32": pa.float32(), "float16": pa.float16()}
#: a row group never spans two hash prefixes of this many hex characters (4,096 buckets), so a
#: reader that wants a hash range or a few hashes skips the other row groups from the footer alone
BUCKET_CHARS = 3


def cache_dir(root: str, fingerprint: str, dtype: str = "float32") -> str:
    """One folder per (encoder fingerprint, stored dtype).

    The dtype is part of the key so float16 and float32 vectors never mix, and the older
    float64-list layout (``ROOT/FINGERPRINT``) is never read as this one.
    """
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"cache dtype {dtype!r} is not one of {sorted(CACHE_DTYPES)}")
    return eio.join(root, f"{fingerprint}-{dtype}")


def write_part(root: str, fingerprint: str, hashes: list[str], vectors: np.ndarray,
               dtype: str = "float32") -> str:
    """One part file: rows sorted by hash, a fixed-size ``dtype`` list per vector, one row
    group per hash bucket (its min/max statistics are what readers prune on)."""
    h = np.asarray(hashes, dtype=str)
    order = np.argsort(h, kind="stable")
    h = h[order]
    v = np.ascontiguousarray(np.asarray(vectors)[order], dtype=np.dtype(dtype))
    if v.ndim != 2 or len(v) != len(h):
        raise ValueError(f"vectors of shape {v.shape} do not match {len(h)} hashes")
    table = pa.table({"hash": pa.array(h.tolist(), pa.string()),
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)),
                                                                  v.shape[1])})
    prefix = np.array([x[:BUCKET_CHARS] for x in h.tolist()], dtype=str)
    cuts = [0, *(np.flatnonzero(prefix[1:] != prefix[:-1]) + 1).tolist(), len(h)]
    path = eio.join(cache_dir(root, fingerprint, dtype), f"part-{uuid.uuid4().hex}.parquet")
    eio.write_parquet_groups_atomic([table.slice(a, b - a) for a, b in itertools.pairwise(cuts)],
                                    path, write_statistics=["hash"], compression={"hash": "zstd",
                                                                            "vector": "none"})
    return path


@dataclass(frozen=True)
class PartRead:
    """Row groups of one cache file that a reader needs (``rows`` of them in all)."""

    path: str
    row_groups: tuple[int, ...]
    rows: int


def plan_reads(root: str, fingerprint: str, dtype: str = "float32", lo: str | None = None,
               hi: str | None = None, wanted: set[str] | None = None) -> list[PartRead]:
    """Row groups that may hold hashes in ``[lo, hi]`` (inclusive, None = open) and, when
    ``wanted`` is given, one of those hashes' buckets; decided from the footers alone.

    This is how an index shard reads only its share of a cache that holds the whole corpus
    (and other runs' texts): nothing outside the plan is read.
    """
    buckets = sorted({h[:BUCKET_CHARS] for h in wanted}) if wanted is not None else None
    out: list[PartRead] = []
    for path in eio.list_files(cache_dir(root, fingerprint, dtype), ".parquet"):
        fs, p = eio.fs_and_path(path)
        with fs.open(p, "rb") as fh:
            md = pq.ParquetFile(fh).metadata
        col = md.schema.names.index("hash")
        groups, rows = [], 0
        for i in range(md.num_row_groups):
            rg = md.row_group(i)
            st = rg.column(col).statistics
            if st is not None and st.has_min_max:
                mn, mx = str(st.min), str(st.max)
                if (lo is not None and mx < lo) or (hi is not None and mn > hi):
                    continue
                if buckets is not None:
                    j = bisect.bisect_left(buckets, mn[:BUCKET_CHARS])
                    if j == len(buckets) or buckets[j] > mx[:BUCKET_CHARS]:
                        continue
            groups.append(i)
            rows += rg.num_rows
        if groups:
            out.append(PartRead(path, tuple(groups), rows))
    return out


def read_parts(plan: list[PartRead]) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, vectors in the stored dtype) of the planned row groups, in plan order.

    The vector column is a fixed-size list, so its values come out as one flat buffer that is
    reshaped, never as Python lists.
    """
    hashes: list[np.ndarray] = []
    vectors: list[np.ndarray] = []
    for part in plan:
        fs, p = eio.fs_and_path(part.path)
        with fs.open(p, "rb") as fh:
            table = pq.ParquetFile(fh).read_row_groups(list(part.row_groups),
                                                       columns=["hash", "vector"])
        col = table.column("vector").combine_chunks()
        dim = col.type.list_size
        flat = col.flatten().to_numpy(zero_copy_only=False)
        vectors.append(flat.reshape(-1, dim))
        hashes.append(np.asarray(table.column("hash").to_numpy(zero_copy_only=False), dtype=str))
    if not hashes:
        return np.zeros(0, dtype=str), np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(hashes), np.concatenate(vectors)


def lookup(hashes: np.ndarray, vectors: np.ndarray, wanted: list[str]) -> np.ndarray:
    """Rows of ``vectors`` for ``wanted`` hashes, in that order (vectorised: no per-row dict)."""
    want = np.asarray(wanted, dtype=str)
    if len(want) == 0:
        return np.zeros((0, vectors.shape[1] if vectors.ndim == 2 else 0), dtype=vectors.dtype)
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    pos = np.minimum(np.searchsorted(ordered, want), max(0, len(ordered) - 1))
    found = ordered[pos] == want if len(ordered) else np.zeros(len(want), dtype=bool)
    if not found.all():
        missing = want[~found]
        raise KeyError(f"{len(missing)} text(s) missing from the embedding cache, "
                       f"e.g. hash {missing[0]}")
    return vectors[order[pos]]


def load_share(root: str, fingerprint: str, wanted: list[str],
               dtype: str = "float32") -> tuple[np.ndarray, list[PartRead]]:
    """float32 ``[len(wanted), D]`` for one index shard, reading only the hash range its
    texts span (with ``split_by_hash`` that is its share of the cache). Returns the plan too."""
    if not wanted:
        return np.zeros((0, 0), dtype=np.float32), []
    plan = plan_reads(root, fingerprint, dtype, lo=min(wanted), hi=max(wanted))
    hashes, vectors = read_parts(plan)
    return lookup(hashes, vectors, wanted).astype(np.float32, copy=False), plan


def load_cache(root: str, fingerprint: str, wanted: set[str] | None = None,
               dtype: str = "float32") -> dict[str, np.ndarray]:
    """float32 vectors of ``wanted`` hashes (all when None), reading only row groups of their
    buckets."""
    hashes, vectors = read_parts(plan_reads(root, fingerprint, dtype, wanted=wanted))
    vectors = vectors.astype(np.float32, copy=False)
    return {h: vectors[i] for i, h in enumerate(hashes.tolist())
            if wanted is None or h in wanted}


def split_by_hash(hashes: list[str], num_shards: int) -> list[np.ndarray]:
    """Global ids (positions in ``hashes``) of each index shard, ascending.

    Shards are equal-count ranges of the *sorted hashes*, not of corpus order: the cache is
    laid out by hash, so a shard's vectors sit in its own hash range and it reads only that
    (``load_share``). Sizes are those of equal corpus ranges; ids stay corpus positions, so
    merged results (ties broken by id) do not depend on the split.
    """
    h = np.asarray(hashes, dtype=str)
    order = np.argsort(h, kind="stable")
    bounds = np.linspace(0, len(h), num_shards + 1).astype(int)
    return [np.sort(order[a:b]) for a, b in itertools.pairwise(bounds)]


class EmbedActor:
    """Ray Data actor: texts -> vectors, written to the cache as it goes."""

    def __init__(self, settings_json: str, root: str, fingerprint: str, threads: int = 1,
                 dtype: str = "float32"):
        import torch

        from ..model.encoder import Encoder, EncoderSettings

        # Ray sets OMP_NUM_THREADS=1 in workers: use the CPUs this actor reserved
        torch.set_num_threads(max(1, threads))
        self.encoder = Encoder(EncoderSettings.model_validate_json(settings_json))
        self.root, self.fingerprint, self.dtype = root, fingerprint, dtype

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        texts = [str(t) for t in batch["text"]]
        hashes = [str(h) for h in batch["hash"]]
        prompts = [str(p) for p in batch["prompt"]]
        # the cache key is the full text; the encoder gets prompt and text apart (prompt pooling)
        vectors = self.encoder.encode([t[len(p):] for t, p in zip(texts, prompts, strict=True)],
                                      prompts)
        write_part(self.root, self.fingerprint, hashes, vectors, self.dtype)
        return {"n": np.array([len(texts)])}


def embed_all(texts: list[str], settings: Any, root: str, fingerprint: str, num_actors: int,
              batch_size: int, use_gpu: bool, log=print, prompts: Mapping[str, str] | None = None,
              dtype: str = "float32") -> int:
    """Make sure every text has a cached vector, embedding only what the cache lacks.

    ``prompts``: the instruction prefix of those texts that start with one (queries), so the
    encoder can leave it out of pooling. Returns how many were embedded now. Vectors stay in
    the cache: the driver never holds the corpus matrix (index shards load their own part).
    """
    import ray

    prompts = prompts or {}

    by_hash = {text_hash(t): t for t in texts}
    have = cached_hashes(root, fingerprint, dtype) & set(by_hash)
    missing = [(h, t) for h, t in by_hash.items() if h not in have]
    log(f"[mine] embeddings: {len(by_hash)} unique texts, {len(have)} cached, {len(missing)} to embed")
    if missing:
        missing.sort(key=lambda ht: len(ht[1]))
        ds = ray.data.from_items([{"hash": h, "text": t, "prompt": prompts.get(t, "")}
                                  for h, t in missing],
                                 override_num_blocks=max(1, min(len(missing) // batch_size, num_actors * 8)))
        cpus = ray.available_resources().get("CPU", 1.0)
        # an actor must fit on one node: never ask for more CPUs than the largest node has
        node_max = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")),
                       default=1)
        per_actor = 1 if use_gpu else max(1, int(min(cpus // num_actors, node_max)))
        res = ds.map_batches(
            EmbedActor, fn_constructor_kwargs={"settings_json": settings.model_dump_json(),
                                               "root": root, "fingerprint": fingerprint,
                                               "threads": per_actor, "dtype": dtype},
            compute=ray.data.ActorPoolStrategy(size=num_actors), batch_size=batch_size,
            num_gpus=1 if use_gpu else 0, num_cpus=per_actor if not use_gpu else 1,
        )
        done = sum(int(r["n"]) for r in res.iter_rows())
        assert done == len(missing), (done, len(missing))
    return len(missing)


def cached_hashes(root: str, fingerprint: str, dtype: str = "float32") -> set[str]:
    out: set[str] = set()
    for path in eio.list_files(cache_dir(root, fingerprint, dtype), ".parquet"):
        fs, p = eio.fs_and_path(path)
        out.update(pq.read_table(p, columns=["hash"], filesystem=fs).column("hash").to_pylist())
    return out
