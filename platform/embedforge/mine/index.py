"""faiss indexes for one corpus shard, and merging shard results (numpy, no Ray).

Exact ``IndexFlatIP`` below ``ivf_threshold`` vectors (mining quality matters more than speed
there), IVF (optionally PQ-compressed) above it; on GPU when faiss-gpu sees one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def choose_factory(n: int, dim: int, kind: str = "auto", ivf_threshold: int = 200_000,
                   pq_m: int | None = None) -> str:
    """faiss index_factory string for ``n`` vectors."""
    if kind == "flat" or (kind == "auto" and n < ivf_threshold):
        return "Flat"
    nlist = max(16, int(4 * math.sqrt(n)))
    if pq_m:
        return f"IVF{nlist},PQ{pq_m}"
    return f"IVF{nlist},Flat"


def gpu_available() -> bool:
    try:
        import faiss

        return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    except ImportError:  # pragma: no cover - faiss is a dependency
        return False


def build(vectors: np.ndarray, factory: str = "Flat", use_gpu: bool | None = None,
          nprobe: int = 32) -> Any:
    """Inner-product index over float32 (normalised) vectors."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = new_index(vectors.shape[1], factory, use_gpu)
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    if "IVF" in factory:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
    return index


def new_index(dim: int, factory: str = "Flat", use_gpu: bool | None = None) -> Any:
    """An empty inner-product index (on the GPUs when asked, or when None and faiss sees one)."""
    import faiss

    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if use_gpu is None:
        use_gpu = gpu_available()
    return faiss.index_cpu_to_all_gpus(index) if use_gpu else index


def search(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, index.ntotal)
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return scores, ids


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard (scores [Q, k_i], global ids [Q, k_i]) into the global top ``k``.

    Ties are broken by id so the result does not depend on the number of shards.
    """
    scores = np.concatenate([p[0] for p in parts], axis=1)
    ids = np.concatenate([p[1] for p in parts], axis=1)
    valid = ids >= 0
    scores = np.where(valid, scores, -np.inf)
    order = np.lexsort((ids, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
