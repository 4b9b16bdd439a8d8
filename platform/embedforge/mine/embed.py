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
from collections.abc import Iterator
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
    bytes: int = 0  # stored (compressed) bytes of those row groups


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
        groups, rows, size = [], 0, 0
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
            size += sum(rg.column(c).total_compressed_size for c in range(rg.num_columns))
        if groups:
            out.append(PartRead(path, tuple(groups), rows, size))
    return out


def stream_parts(plan: list[PartRead], columns: tuple[str, ...] = ("hash", "vector")
                 ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(hashes, vectors in the stored dtype) of each planned file in turn, so a reader holds
    one part's rows at a time. The vector column is a fixed-size list, so its values come out
    as one flat buffer that is reshaped, never as Python lists. ``columns=("hash",)`` reads
    the hash column alone (vectors None)."""
    for part in plan:
        fs, p = eio.fs_and_path(part.path)
        with fs.open(p, "rb") as fh:
            table = pq.ParquetFile(fh).read_row_groups(list(part.row_groups), columns=list(columns))
        hashes = np.asarray(table.column("hash").to_numpy(zero_copy_only=False), dtype=str)
        if "vector" not in columns:
            yield hashes, None
            continue
        col = table.column("vector").combine_chunks()
        flat = col.flatten().to_numpy(zero_copy_only=False)
        yield hashes, flat.reshape(-1, col.type.list_size)


def read_parts(plan: list[PartRead]) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, vectors in the stored dtype) of the planned row groups, in plan order."""
    hashes: list[np.ndarray] = []
    vectors: list[np.ndarray] = []
    for h, v in stream_parts(plan):
        hashes.append(h)
        vectors.append(v)
    if not hashes:
        return np.zeros(0, dtype=str), np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(hashes), np.concatenate(vectors)


def match_sorted(ordered: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``hashes`` in the sorted array ``ordered`` and which were found there."""
    if len(ordered) == 0:
        return np.zeros(len(hashes), dtype=np.int64), np.zeros(len(hashes), dtype=bool)
    pos = np.minimum(np.searchsorted(ordered, hashes), len(ordered) - 1)
    return pos, ordered[pos] == hashes


def missing_message(missing: np.ndarray) -> str:
    return f"{len(missing)} text(s) missing from the embedding cache, e.g. hash {missing[0]}"


def load_cache(root: str, fingerprint: str, wanted: set[str] | None = None,
               dtype: str = "float32") -> dict[str, np.ndarray]:
    """float32 vectors of ``wanted`` hashes (all when None), reading only row groups of their
    buckets (for tools and small look-ups; mining's shards stream their range instead)."""
    hashes, vectors = read_parts(plan_reads(root, fingerprint, dtype, wanted=wanted))
    vectors = vectors.astype(np.float32, copy=False)
    return {h: vectors[i] for i, h in enumerate(hashes.tolist())
            if wanted is None or h in wanted}


def cached_in_range(root: str, fingerprint: str, dtype: str, lo: str, hi: str
                    ) -> tuple[np.ndarray, int]:
    """Sorted unique hashes the cache holds in ``[lo, hi]`` (the hash column of that range
    only) and how many rows were read for them."""
    plan = plan_reads(root, fingerprint, dtype, lo=lo, hi=hi)
    parts = [h for h, _ in stream_parts(plan, columns=("hash",))]
    found = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=str)
    return found, sum(p.rows for p in plan)


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
