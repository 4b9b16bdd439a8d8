"""The Ray Serve application: one deployment whose replicas hold the model and batch texts
across concurrent requests.

    serve run embedforge.serve.app:build_app encoder.model=/path/to/export
    serve deploy cluster/serve/embedforge-serve.yaml
    python jobs/serve.py --encoder.model /path/to/export

Batching: a request's tokenised texts are cut into chunks of at most half a forward pass and
handed to ``@serve.batch`` with a token-count ``batch_size_fn``: a batch gathers chunks of
many requests up to ``max_batch_tokens`` (waiting at most ``wait_ms`` for company), then runs
length-sorted forward passes. On GPU the passes run in a worker thread so the replica keeps
accepting requests meanwhile; on CPU they run on the event loop: a CPU forward holds the GIL
between kernels, and a loop thread fighting it for requests was measured to shrink batches to
1-3 texts (65 texts/s vs 99 inline, 64 clients, MiniLM, 2 cores).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from ray import serve

from .. import metrics
from .config import ServeConfig
from .engine import EmbeddingEngine, Item
from .http import build_api, required_keys


def chunk_items(items: list[Item], max_tokens: int) -> list[list[Item]]:
    """Consecutive runs of ``items`` with at most ``max_tokens`` tokens each (at least one item)."""
    chunks: list[list[Item]] = []
    size = 0
    for it in items:
        if chunks and size + it.tokens <= max_tokens:
            chunks[-1].append(it)
            size += it.tokens
        else:
            chunks.append([it])
            size = it.tokens
    return chunks


def _chunk_tokens(chunks: list[list[Item]]) -> int:
    return sum(it.tokens for chunk in chunks for it in chunk)


@serve.deployment(name="EmbeddingServer")
@serve.ingress()
class EmbeddingServer:
    """A replica: model + tokenizer, the dynamic batcher and the HTTP routes."""

    def __init__(self, config: dict[str, Any]):
        import torch

        self.cfg = ServeConfig.model_validate(config)
        # before the model loads: without keys (and not allowed to go without) the replica
        # refuses to start, and deploy() reports the reason
        self.keys = required_keys(self.cfg)
        # Ray sets OMP_NUM_THREADS=1 in workers: use the CPUs this replica reserved
        torch.set_num_threads(max(1, int(self.cfg.num_cpus)))
        self.engine = EmbeddingEngine(self.cfg.encoder, self.cfg.batch)
        budget = max(self.cfg.batch.max_batch_tokens, self.engine.max_length)
        self.chunk_tokens = max(self.engine.max_length, self.cfg.batch.max_forward_tokens // 2)
        self._batch.set_max_batch_size(budget)
        self._batch.set_batch_wait_timeout_s(self.cfg.batch.wait_ms / 1000)
        in_thread = self.cfg.batch.forward_in_thread
        self.forward_in_thread = (self.engine.encoder.device.type != "cpu") if in_thread is None \
            else in_thread

    def __serve_build_asgi_app__(self):
        return build_api(self.engine, self.embed, self.cfg, record_metrics=True, keys=self.keys)

    async def embed(self, items: list[Item]) -> np.ndarray:
        now = time.perf_counter()
        for it in items:
            it.enqueued = now
        parts = await asyncio.gather(*[self._batch(c) for c in chunk_items(items, self.chunk_tokens)])
        return np.concatenate(parts)

    @serve.batch(max_batch_size=16384, batch_wait_timeout_s=0.005, batch_size_fn=_chunk_tokens)
    async def _batch(self, chunks: list[list[Item]]) -> list[np.ndarray]:
        start = time.perf_counter()
        flat = [it for chunk in chunks for it in chunk]
        if self.forward_in_thread:
            vectors = await asyncio.to_thread(self.engine.forward, flat)
        else:
            vectors = self.engine.forward(flat)
        for it in flat[:: max(1, len(flat) // 16)]:  # a sample: observing each text costs more
            metrics.observe("embedforge_serve_queue_wait_seconds", start - it.enqueued)
        metrics.observe("embedforge_serve_batch_texts", len(flat))
        metrics.observe("embedforge_serve_batch_tokens", _chunk_tokens(chunks))
        out, pos = [], 0
        for chunk in chunks:
            out.append(vectors[pos:pos + len(chunk)])
            pos += len(chunk)
        return out


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for ``serve run module:build_app key=value`` and Serve config
    ``args``: dotted keys (``encoder.model``) or nested dicts, validated as :class:`ServeConfig`."""
    import ray

    data: dict[str, Any] = {}
    for key, value in args.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    cfg = ServeConfig.model_validate(data)
    gpus = ray.cluster_resources().get("GPU", 0.0) if ray.is_initialized() else 0.0
    return EmbeddingServer.options(**cfg.deployment_options(gpus)).bind(cfg.model_dump(mode="json"))
