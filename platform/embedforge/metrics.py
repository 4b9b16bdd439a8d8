"""Every metric the platform exports, in one place (the Grafana dashboards read these names).

Created lazily inside the process that records them (Ray worker or driver), because
``ray.util.metrics`` objects need a connected Ray runtime. Stages record per batch, never per
request, to keep the hot path cheap.
"""

from __future__ import annotations

from functools import cache
from typing import Any

SYNTH_METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # name: (type, description, tag keys)
    "embedforge_synth_llm_requests_total": ("counter", "HTTP requests sent to the LLM API", ("model",)),
    "embedforge_synth_llm_ok_total": ("counter", "LLM requests that succeeded", ("model",)),
    "embedforge_synth_llm_failed_total": ("counter", "LLM requests that finally failed", ("model",)),
    "embedforge_synth_llm_retries_total": ("counter", "LLM request retries", ("model",)),
    "embedforge_synth_llm_errors_total": ("counter", "LLM request errors by kind", ("model", "kind")),
    "embedforge_synth_cache_hits_total": ("counter", "LLM responses served from the cache", ("model",)),
    "embedforge_synth_tokens_total": ("counter", "LLM tokens by type", ("model", "type")),
    "embedforge_synth_cost_usd_total": ("counter", "estimated LLM cost in USD", ("model",)),
    "embedforge_synth_rejections_total": ("counter", "generated outputs rejected by rule", ("technique", "reason")),
    "embedforge_synth_rows_total": ("counter", "rows written by source", ("source",)),
}

MINE_METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "embedforge_mine_embeddings_total": ("counter", "texts embedded for mining", ("model",)),
    "embedforge_mine_queries_total": ("counter", "queries searched", ()),
    "embedforge_mine_negatives_total": ("counter", "negatives kept by source", ("source",)),
    "embedforge_mine_dropped_total": ("counter", "candidates dropped by reason", ("reason",)),
}

TRAIN_METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "embedforge_train_loss": ("gauge", "training loss of the last logged step", ("stage", "task", "dataset")),
    "embedforge_train_lr": ("gauge", "learning rate", ("stage",)),
    "embedforge_train_step": ("gauge", "optimizer steps done", ("stage",)),
    "embedforge_train_examples_total": ("counter", "training examples consumed", ("stage",)),
    "embedforge_train_tokens_total": ("counter", "non-padding tokens embedded", ("stage",)),
    "embedforge_train_examples_per_second": ("gauge", "examples per second (all ranks)", ("stage",)),
    "embedforge_train_tokens_per_second": ("gauge", "tokens per second (all ranks)", ("stage",)),
}

SERVE_METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "embedforge_serve_requests_total": ("counter", "HTTP requests by route and status code", ("route", "code")),
    "embedforge_serve_errors_total": ("counter", "HTTP requests answered with an error", ("route", "code")),
    "embedforge_serve_texts_total": ("counter", "texts embedded", ("route",)),
    "embedforge_serve_tokens_total": ("counter", "tokens embedded (usage.prompt_tokens)", ("route",)),
    "embedforge_serve_latency_seconds": ("histogram", "request latency in the replica", ("route",)),
    "embedforge_serve_queue_wait_seconds": ("histogram", "time a text waits for its batch", ()),
    "embedforge_serve_batch_texts": ("histogram", "texts per model batch", ()),
    "embedforge_serve_batch_tokens": ("histogram", "tokens per model batch", ()),
    # per API key: "key" is a sha256 prefix of the key (serve.http.key_id), never the key
    "embedforge_serve_key_requests_total": (
        "counter", "HTTP requests by API key id and status code (429: rate limited)", ("key", "code")),
    "embedforge_serve_key_tokens_total": ("counter", "tokens embedded by API key id", ("key",)),
}

HISTOGRAM_BOUNDARIES: dict[str, list[float]] = {
    "embedforge_serve_latency_seconds": [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    "embedforge_serve_queue_wait_seconds": [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    "embedforge_serve_batch_texts": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
    "embedforge_serve_batch_tokens": [16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536],
}

ALL_METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {**SYNTH_METRICS, **MINE_METRICS,
                                                            **TRAIN_METRICS, **SERVE_METRICS}


@cache
def get_metric(name: str) -> Any:
    from ray.util import metrics

    kind, description, tags = ALL_METRICS[name]
    if kind == "histogram":
        return metrics.Histogram(name, description=description, tag_keys=tags,
                                 boundaries=HISTOGRAM_BOUNDARIES[name])
    cls = {"counter": metrics.Counter, "gauge": metrics.Gauge}[kind]
    return cls(name, description=description, tag_keys=tags)


def inc(name: str, value: float, tags: dict[str, str] | None = None) -> None:
    """Increment a counter; a no-op for zero (Ray rejects non-positive counter increments)."""
    if value > 0:
        get_metric(name).inc(value, tags=tags or {})


def set_gauge(name: str, value: float, tags: dict[str, str] | None = None) -> None:
    get_metric(name).set(value, tags=tags or {})


def observe(name: str, value: float, tags: dict[str, str] | None = None) -> None:
    get_metric(name).observe(value, tags=tags or {})
