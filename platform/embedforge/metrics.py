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

ALL_METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {**SYNTH_METRICS, **MINE_METRICS,
                                                            **TRAIN_METRICS}


@cache
def get_metric(name: str) -> Any:
    from ray.util import metrics

    kind, description, tags = ALL_METRICS[name]
    cls = {"counter": metrics.Counter, "gauge": metrics.Gauge, "histogram": metrics.Histogram}[kind]
    return cls(name, description=description, tag_keys=tags)


def inc(name: str, value: float, tags: dict[str, str] | None = None) -> None:
    """Increment a counter; a no-op for zero (Ray rejects non-positive counter increments)."""
    if value > 0:
        get_metric(name).inc(value, tags=tags or {})


def set_gauge(name: str, value: float, tags: dict[str, str] | None = None) -> None:
    get_metric(name).set(value, tags=tags or {})
