"""Config of the embedding endpoint (`jobs/serve.py`, `serve run`, `serve deploy`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ..config import ConfigSection, JobConfig
from ..model.encoder import EncoderSettings
from ..safety import path_field


class BatchSettings(ConfigSection):
    """Dynamic batching across requests (``serve.batcher.FairBatcher``): a batch takes the
    waiting requests' chunks in turn up to ``max_batch_tokens``, which also bounds how long a
    request waits behind others (one batch)."""

    max_batch_tokens: int = Field(
        8192, ge=16, description="tokens (unpadded) gathered into one batch across requests; "
                                  "a request waits behind at most one such batch")
    max_forward_tokens: int = Field(
        8192, ge=16, description="padded tokens per forward pass (batch split by length)")
    wait_ms: float = Field(10.0, ge=0, description="how long the first text waits for company")


class RateLimitSettings(ConfigSection):
    """Requests per API key (token bucket), counted in each replica: with N replicas a key
    may get up to N times this. Unauthenticated servers count per client address."""

    requests_per_minute: float | None = Field(
        1200, gt=0, description="sustained requests per minute per key and replica (none: no limit)")
    burst: int = Field(120, ge=1, description="requests a key may send at once before the rate applies")


class AutoscalingSettings(ConfigSection):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(64, gt=0, description="per replica, before scaling out")

    @model_validator(mode="after")
    def _order(self) -> AutoscalingSettings:
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be >= min_replicas")
        return self


class ServeConfig(JobConfig):
    """Serve a trained encoder (an export of jobs/train.py or any HF / sentence-transformers
    folder) as an OpenAI- and TEI-compatible embedding API on Ray Serve."""

    encoder: EncoderSettings = Field(description="the model to serve")
    model_name: str | None = path_field(
        "none", None, description="name in /v1/models and responses (default: the folder's name)")
    name: str = Field("embedforge", description="Serve application name")
    route_prefix: str = Field("/", description="HTTP route prefix of the application")
    host: str = Field("127.0.0.1", description="HTTP host of the Serve proxy (0.0.0.0 on clusters)")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port of the Serve proxy")
    replicas: int | Literal["auto"] = Field(
        1, description="fixed replica count, or auto (uses autoscaling)")
    autoscaling: AutoscalingSettings = Field(default_factory=AutoscalingSettings)
    num_cpus: float = Field(1.0, gt=0, description="CPUs per replica (torch threads)")
    num_gpus: float | Literal["auto"] = Field(
        "auto", description="GPUs per replica (auto: 1 when the cluster has GPUs)")
    max_ongoing_requests: int = Field(256, ge=1, description="per replica, before Serve queues")
    batch: BatchSettings = Field(default_factory=BatchSettings)
    max_inputs: int = Field(2048, ge=1, description="texts per request (OpenAI: 2048)")
    max_request_tokens: int = Field(
        131072, ge=1, description="tokens per request after truncation, all inputs together "
                                  "(413 above it): what one request may cost the model")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="request body limit")
    request_timeout_s: float = Field(
        60.0, gt=0, description="a request still unanswered after this gets 504")
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    api_key_env: str = Field(
        "EMBEDFORGE_API_KEYS", description="env var with comma-separated API keys")
    api_key_file: str | None = path_field(
        "input", None,
        description="file with one API key per line (a mounted secret); adds to the env keys")
    allow_unauthenticated: bool = Field(
        False, description="serve without API keys: anyone who reaches the port may use the "
                           "model (without keys and without this flag the endpoint refuses to start)")
    detach: bool = Field(
        False, description="jobs/serve.py: return once deployed (needs a running cluster to join)")
    ray_address: str | None = Field(None, description="Ray cluster (default: RAY_ADDRESS, else local)")
    num_cpus_cluster: int | None = Field(
        None, description="CPUs of the local cluster when jobs/serve.py starts one")

    def deployment_options(self, cluster_gpus: float = 0.0) -> dict[str, Any]:
        """``Deployment.options(...)`` for this config on a cluster with ``cluster_gpus``."""
        gpus = (1.0 if cluster_gpus > 0 else 0.0) if self.num_gpus == "auto" else float(self.num_gpus)
        opts: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": gpus},
            "max_ongoing_requests": self.max_ongoing_requests,
        }
        if self.replicas == "auto":
            a = self.autoscaling
            opts["autoscaling_config"] = {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
                                          "target_ongoing_requests": a.target_ongoing_requests}
        else:
            opts["num_replicas"] = int(self.replicas)
        return opts
