"""The mining embedding cache: fixed-size float32/float16 vectors, laid out by hash so an
index shard reads only its share (observed through the read plan it executes)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedforge import io as eio
from embedforge.mine.embed import (
    cache_dir,
    cached_in_range,
    load_cache,
    plan_reads,
    text_hash,
    write_part,
)
from embedforge.mine.layout import ShardRanges
from embedforge.mine.shard import _build

ALL = ("0" * 15, "f" * 20)

FP = "enc-test"


def _fill(root: str, n: int = 3000, dim: int = 24, part: int = 64, dtype: str = "float32",
          seed: int = 0) -> tuple[list[str], np.ndarray]:
    """``n`` texts written as the embedding actors do: batches in arbitrary (length) order."""
    rng = np.random.default_rng(seed)
    texts = [f"passage {i} " + "x" * int(rng.integers(0, 40)) for i in range(n)]
    hashes = [text_hash(t) for t in texts]
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    order = rng.permutation(n)
    for a in range(0, n, part):
        idx = order[a:a + part]
        write_part(root, FP, [hashes[i] for i in idx], vectors[idx], dtype)
    return hashes, vectors


def test_two_shards_each_read_about_their_share_and_get_exact_vectors(tmp_path):
    root = str(tmp_path / "emb")
    hashes, vectors = _fill(root)
    row_of = {h: i for i, h in enumerate(hashes)}
    corpus = hashes[:2400]  # the rest are other texts in the cache (queries, older runs)
    ranges = ShardRanges(2)
    owners = ranges.owners_of_hashes(corpus)
    assert 1000 < (owners == 0).sum() < 1400  # equal hash ranges: equal shards to noise
    total = sum(f.rows for f in plan_reads(root, FP))
    assert total == len(hashes)
    read = []
    for j in range(2):
        lo, hi = ranges.hex_range(j)
        mine = np.array(sorted(h for h, o in zip(corpus, owners, strict=True) if o == j))
        assert all(lo <= h <= hi for h in mine)
        lookups = np.array(sorted(h for h in hashes[2400:] if lo <= h <= hi))
        plan = plan_reads(root, FP, lo=lo, hi=hi)
        read.append(sum(p.rows for p in plan))
        index, local, lookup_vectors = _build(plan, mine, lookups, "Flat", False, 1)
        # float32 round-trips bit for bit; the index holds each corpus vector once
        stored = index.reconstruct_n(0, index.ntotal)
        assert index.ntotal == len(mine) and sorted(local.tolist()) == list(range(len(mine)))
        np.testing.assert_array_equal(stored, vectors[[row_of[h] for h in mine[local]]])
        np.testing.assert_array_equal(lookup_vectors, vectors[[row_of[h] for h in lookups]])
    for rows in read:
        assert rows <= 1.1 * total / 2, (read, total)
    # the two reads overlap in at most the bucket that holds the split point
    assert sum(read) <= 1.02 * total


def test_ivf_shards_gather_train_and_hold_every_vector(tmp_path):
    root = str(tmp_path / "emb")
    hashes, vectors = _fill(root, n=1200)
    mine = np.array(sorted(hashes))
    index, local, _ = _build(plan_reads(root, FP), mine, np.array([], dtype=str), "IVF16,Flat",
                             False, 16)
    assert index.ntotal == len(mine)
    q = vectors[:5] / np.linalg.norm(vectors[:5], axis=1, keepdims=True)
    _, top = index.search(q.astype(np.float32), 1)
    row_of = {h: i for i, h in enumerate(hashes)}
    # nprobe = nlist: exact, so each vector finds itself
    assert [row_of[h] for h in mine[local[top[:, 0]]]] == [0, 1, 2, 3, 4]


def test_float16_cache_is_separate_and_within_fp16_tolerance(tmp_path):
    root = str(tmp_path / "emb")
    hashes, vectors = _fill(root, n=500, dtype="float16")
    assert set(cached_in_range(root, FP, "float16", *ALL)[0].tolist()) == set(hashes)
    assert len(cached_in_range(root, FP, "float32", *ALL)[0]) == 0  # dtypes never mix
    first = pq.read_table(eio.list_files(cache_dir(root, FP, "float16"), ".parquet")[0])
    vtype = first.schema.field("vector").type
    assert pa.types.is_fixed_size_list(vtype) and vtype.list_size == 24
    assert vtype.value_type == pa.float16()
    got = load_cache(root, FP, set(hashes[:50]), "float16")
    assert set(got) == set(hashes[:50])
    for i in range(50):
        assert got[hashes[i]].dtype == np.float32
        np.testing.assert_allclose(got[hashes[i]], vectors[i], rtol=1e-3, atol=1e-3)


def test_a_few_wanted_hashes_read_only_their_buckets(tmp_path):
    root = str(tmp_path / "emb")
    hashes, vectors = _fill(root)
    plan = plan_reads(root, FP, wanted=set(hashes[:3]))
    assert sum(p.rows for p in plan) <= 12  # 3 of 4,096 buckets, not the 3,000 rows
    got = load_cache(root, FP, set(hashes[:3]))
    for i in range(3):
        np.testing.assert_array_equal(got[hashes[i]], vectors[i])


def test_missing_vector_and_unknown_dtype_are_clear_errors(tmp_path):
    root = str(tmp_path / "emb")
    hashes, _ = _fill(root, n=100)
    with pytest.raises(KeyError, match="missing from the embedding cache"):
        _build(plan_reads(root, FP), np.array(sorted([hashes[0], text_hash("never embedded")])),
               np.array([], dtype=str), "Flat", False, 1)
    with pytest.raises(ValueError, match="cache dtype 'float64'"):
        cache_dir(root, FP, "float64")
