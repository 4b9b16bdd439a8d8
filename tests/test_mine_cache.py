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
    cached_hashes,
    load_cache,
    load_share,
    plan_reads,
    split_by_hash,
    text_hash,
    write_part,
)

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
    corpus = hashes[:2400]  # the rest are other texts in the cache (queries, older runs)
    split = split_by_hash(corpus, 2)
    assert sorted(np.concatenate(split).tolist()) == list(range(len(corpus)))
    assert [len(s) for s in split] == [1200, 1200]
    total = sum(f.rows for f in plan_reads(root, FP))
    assert total == len(hashes)
    read = []
    for ids in split:
        matrix, plan = load_share(root, FP, [corpus[i] for i in ids])
        read.append(sum(p.rows for p in plan))
        # float32 round-trips bit for bit, in the shard's (ascending corpus id) order
        assert matrix.dtype == np.float32
        np.testing.assert_array_equal(matrix, vectors[ids])
    for rows in read:
        assert rows <= 1.1 * total / 2, (read, total)
    # the two reads overlap in at most the bucket that holds the split point
    assert sum(read) <= 1.02 * total


def test_float16_cache_is_separate_and_within_fp16_tolerance(tmp_path):
    root = str(tmp_path / "emb")
    hashes, vectors = _fill(root, n=500, dtype="float16")
    assert cached_hashes(root, FP, "float16") == set(hashes)
    assert cached_hashes(root, FP, "float32") == set()  # dtypes never mix
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
        load_share(root, FP, [hashes[0], text_hash("never embedded")])
    with pytest.raises(ValueError, match="cache dtype 'float64'"):
        cache_dir(root, FP, "float64")
