"""Embeddings with a content-addressed cache: (encoder fingerprint, text hash) -> vector.

Re-mining with new queries or a grown corpus embeds only texts never seen by that encoder;
a killed job keeps every finished part. The Ray edge is a Data actor pool (one actor per GPU
when there are GPUs), batches sorted by length so padding stays small.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import io as eio


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


def cache_dir(root: str, fingerprint: str) -> str:
    return eio.join(root, fingerprint)


def load_cache(root: str, fingerprint: str, wanted: set[str] | None = None) -> dict[str, np.ndarray]:
    """Vectors of ``wanted`` hashes (all when None), streaming part by part."""
    out: dict[str, np.ndarray] = {}
    for path in eio.list_files(cache_dir(root, fingerprint), ".parquet"):
        fs, p = eio.fs_and_path(path)
        table = pq.read_table(p, filesystem=fs)
        hashes = table.column("hash").to_pylist()
        vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
        for h, v in zip(hashes, vectors, strict=True):
            if wanted is None or h in wanted:
                out[h] = v
    return out


def write_part(root: str, fingerprint: str, hashes: list[str], vectors: np.ndarray) -> None:
    table = pa.table({"hash": hashes, "vector": [v.tolist() for v in vectors]})
    eio.write_parquet_atomic(table, eio.join(cache_dir(root, fingerprint),
                                             f"part-{uuid.uuid4().hex}.parquet"))


class EmbedActor:
    """Ray Data actor: texts -> vectors, written to the cache as it goes."""

    def __init__(self, settings_json: str, root: str, fingerprint: str, threads: int = 1):
        import torch

        from ..model.encoder import Encoder, EncoderSettings

        # Ray sets OMP_NUM_THREADS=1 in workers: use the CPUs this actor reserved
        torch.set_num_threads(max(1, threads))
        self.encoder = Encoder(EncoderSettings.model_validate_json(settings_json))
        self.root, self.fingerprint = root, fingerprint

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        texts = [str(t) for t in batch["text"]]
        hashes = [str(h) for h in batch["hash"]]
        prompts = [str(p) for p in batch["prompt"]]
        # the cache key is the full text; the encoder gets prompt and text apart (prompt pooling)
        vectors = self.encoder.encode([t[len(p):] for t, p in zip(texts, prompts, strict=True)],
                                      prompts)
        write_part(self.root, self.fingerprint, hashes, vectors)
        return {"n": np.array([len(texts)])}


def embed_all(texts: list[str], settings: Any, root: str, fingerprint: str, num_actors: int,
              batch_size: int, use_gpu: bool, log=print, prompts: Mapping[str, str] | None = None,
              ) -> int:
    """Make sure every text has a cached vector, embedding only what the cache lacks.

    ``prompts``: the instruction prefix of those texts that start with one (queries), so the
    encoder can leave it out of pooling. Returns how many were embedded now. Vectors stay in
    the cache: the driver never holds the corpus matrix (index shards load their own part).
    """
    import ray

    prompts = prompts or {}

    by_hash = {text_hash(t): t for t in texts}
    have = cached_hashes(root, fingerprint) & set(by_hash)
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
                                               "threads": per_actor},
            compute=ray.data.ActorPoolStrategy(size=num_actors), batch_size=batch_size,
            num_gpus=1 if use_gpu else 0, num_cpus=per_actor if not use_gpu else 1,
        )
        done = sum(int(r["n"]) for r in res.iter_rows())
        assert done == len(missing), (done, len(missing))
    return len(missing)


def cached_hashes(root: str, fingerprint: str) -> set[str]:
    out: set[str] = set()
    for path in eio.list_files(cache_dir(root, fingerprint), ".parquet"):
        fs, p = eio.fs_and_path(path)
        out.update(pq.read_table(p, columns=["hash"], filesystem=fs).column("hash").to_pylist())
    return out
