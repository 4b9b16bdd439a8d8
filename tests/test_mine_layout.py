"""Where texts and samples go in the mining dataflow: hash ranges and query partitions."""

from __future__ import annotations

import numpy as np

from embedforge.mine.embed import text_hash
from embedforge.mine.layout import ShardRanges, num_partitions, partition_of, text_ids


def test_owners_agree_with_the_hash_ranges_the_cache_is_read_by():
    hashes = [text_hash(f"text {i}") for i in range(5000)]
    for n in (1, 2, 3, 7):
        ranges = ShardRanges(n)
        owners = ranges.owners_of_hashes(hashes)
        assert set(owners.tolist()) == set(range(n))
        for h, j in zip(hashes, owners.tolist(), strict=True):
            lo, hi = ranges.hex_range(j)
            assert lo <= h <= hi
        # equal ranges of a uniform hash: shards within a few percent of each other
        sizes = np.bincount(owners, minlength=n)
        assert sizes.max() <= 1.15 * len(hashes) / n
    # ranges tile the hash space without gaps
    r = ShardRanges(3)
    assert r.hex_range(0)[0] == "0" * 15 and r.hex_range(2)[1] == "f" * 20
    for j in range(2):
        assert int(r.hex_range(j)[1][:15], 16) + 1 == int(r.hex_range(j + 1)[0], 16)


def test_row_ids_are_stable_and_ordered_like_the_hashes():
    hashes = sorted(text_hash(f"doc {i}") for i in range(1000))
    ids = text_ids(hashes)
    assert ids.dtype == np.int64 and (ids >= 0).all()
    assert (np.diff(ids) > 0).all()  # sorted hashes -> ascending ids (searchsorted look-ups)
    assert text_ids([text_hash("doc 3")])[0] == int(text_hash("doc 3")[:15], 16)


def test_every_sample_of_a_query_lands_in_one_partition():
    parts = {partition_of("scifact", f"q{i % 50}", 8) for i in range(400) if i % 50 == 7}
    assert len(parts) == 1
    spread = np.bincount([partition_of("scifact", f"q{i}", 8) for i in range(4000)], minlength=8)
    assert spread.min() > 400  # and queries spread evenly


def test_partition_count_bounds_rows_and_bytes():
    assert num_partitions(0, 0, 8192, 64 << 20) == 1
    assert num_partitions(20_000, 1 << 20, 8192, 64 << 20) == 3
    assert num_partitions(1000, 200 << 20, 8192, 64 << 20) == 4
