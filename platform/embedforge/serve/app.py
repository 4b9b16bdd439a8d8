"""The Ray Serve application: one deployment whose replicas hold the model and batch texts
across concurrent requests.

    serve run embedforge.serve.app:build_app encoder.model=/path/to/export
    serve deploy cluster/serve/embedforge-serve.yaml
    python jobs/serve.py --encoder.model /path/to/export

Batching (``batcher.FairBatcher``): a request's tokenised texts are cut into chunks of at
most half a forward pass; each batch takes chunks of the waiting requests in turn up to
``max_batch_tokens`` (an idle replica waits at most ``wait_ms`` for company), then runs
length-sorted forward passes in a worker thread. The event loop stays free to take, parse,
tokenise and answer requests meanwhile, and a small request sent during a large one is in the
next batch instead of behind all of the large request's chunks.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from .. import metrics
from .batcher import FairBatcher
from .config import ServeConfig
from .engine import EmbeddingEngine
from .http import build_api, required_keys


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
        chunk = max(self.engine.max_length, self.cfg.batch.max_forward_tokens // 2)
        self.batcher = FairBatcher(self.engine.forward, budget, chunk,
                                   wait_s=self.cfg.batch.wait_ms / 1000, on_batch=_record_batch)

    def __serve_build_asgi_app__(self):
        return build_api(self.engine, self.batcher.embed, self.cfg, record_metrics=True,
                         keys=self.keys)


def _record_batch(texts: int, tokens: int, waits: list[float]) -> None:
    for wait in waits:
        metrics.observe("embedforge_serve_queue_wait_seconds", wait)
    metrics.observe("embedforge_serve_batch_texts", texts)
    metrics.observe("embedforge_serve_batch_tokens", tokens)


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
