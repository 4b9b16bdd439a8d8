"""Where each text and each sample goes in the mining dataflow (pure; no Ray, no faiss).

Two partitionings keep every process's share of the data bounded, with no list of the data
on the driver:

- **Texts by hash range.** A text's identity is its content hash (``embed.text_hash``), which
  also keys the embedding cache. Index shard ``j`` owns the hashes in ``ShardRanges.hex_range(j)``:
  it receives exactly those texts, reads exactly that range of the cache (which is sorted by
  hash), and a text's row id (``text_id``, the first 60 bits of its hash) is the same in every
  run, on every shard count. SHA-1 is uniform, so equal hash ranges are equal-sized shards to
  within a fraction of a percent at corpus scale.
- **Samples by query.** All samples of one ``(dataset, query)`` must meet in one place, since
  the hardest positive of a query sets the margin for each of them; ``partition_of`` sends
  them to one partition, and each partition is mined by one task.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: hex characters of the hash that make a row id: 60 bits, so ids fit faiss's int64 (ties in
#: merged results break on them, which is what makes the result independent of the split)
ID_HEX = 15
_SPACE = 1 << (4 * ID_HEX)


def text_ids(hashes: Sequence[str]) -> np.ndarray:
    """Stable int64 row ids of texts from their hashes (the same in every run)."""
    return np.fromiter((int(h[:ID_HEX], 16) for h in hashes), dtype=np.int64, count=len(hashes))


@dataclass(frozen=True)
class ShardRanges:
    """``n`` equal ranges of the id space; shard ``j`` owns ids in ``[bounds[j], bounds[j+1])``."""

    n: int

    @property
    def bounds(self) -> list[int]:
        return [j * _SPACE // self.n for j in range(self.n + 1)]

    def owners(self, ids: np.ndarray) -> np.ndarray:
        """Shard of each id."""
        inner = np.asarray(self.bounds[1:-1], dtype=np.int64)
        return np.searchsorted(inner, np.asarray(ids, dtype=np.int64), side="right")

    def owners_of_hashes(self, hashes: Sequence[str]) -> np.ndarray:
        return self.owners(text_ids(hashes))

    def hex_range(self, j: int) -> tuple[str, str]:
        """Inclusive (lo, hi) hash strings of shard ``j``, as the cache's row-group pruning
        compares them (a 20-hex hash ``h`` is in range iff ``lo <= h <= hi``)."""
        b = self.bounds
        return format(b[j], f"0{ID_HEX}x"), format(b[j + 1] - 1, f"0{ID_HEX}x") + "f" * 5


def partition_of(dataset: str, query: str, num_partitions: int) -> int:
    """Partition of a sample: every sample of one (dataset, query) lands in the same one."""
    digest = hashlib.blake2b(f"{dataset}\x1f{query}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % num_partitions


def num_partitions(rows: int, data_bytes: int, max_rows: int, max_bytes: int) -> int:
    """How many sample partitions keep each below ``max_rows`` rows and ``max_bytes`` bytes
    (uncompressed, from the Parquet footers), so one mining task holds a bounded slice."""
    return max(1, math.ceil(rows / max_rows), math.ceil(data_bytes / max_bytes))
