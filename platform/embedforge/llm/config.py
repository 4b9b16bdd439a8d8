"""Settings of the LLM gateway (a nested ``llm:`` section of a job config)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ..config import ConfigSection
from ..safety import path_field


class LLMSettings(ConfigSection):
    """Where and how to call an OpenAI-compatible chat API."""

    base_url: str | None = path_field(
        "none", None, description="OpenAI-compatible base URL (…/v1); unset = start the embedded local LLM"
    )
    model: str = path_field("none", "smollm2-135m-instruct", description="model name sent to the API")
    api_key_env: str = path_field(
        "none", "OPENAI_API_KEY", description="environment variable holding the API key (never logged)"
    )
    client: Literal["aiohttp", "openai"] = Field(
        "aiohttp", description="HTTP client: aiohttp (~0.5 CPU-ms/request) or the openai SDK (~5)"
    )
    max_concurrency: int = Field(64, ge=1, description="requests in flight across the whole job")
    limiter: Literal["partitioned", "coordinator"] = Field(
        "partitioned",
        description="partitioned: each actor enforces its share locally (no per-request actor "
                    "call); coordinator: one actor grants every request (exact, dynamic, slower)",
    )
    rpm: int | None = Field(None, ge=1, description="requests per minute across the whole job")
    tpm: int | None = Field(None, ge=1, description="tokens per minute across the whole job")
    rate_window_s: float = Field(
        60.0, gt=0, description="length of the rpm/tpm window (providers with per-second limits: 1)"
    )
    timeout_s: float = Field(60.0, gt=0, description="per-request timeout")
    max_retries: int = Field(8, ge=0, description="retries per request (429/5xx/timeouts/errors)")
    backoff_base_s: float = Field(0.5, gt=0, description="exponential backoff base (with jitter)")
    backoff_max_s: float = Field(30.0, gt=0, description="backoff ceiling")
    temperature: float = Field(0.9, ge=0, description="sampling temperature")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling")
    max_tokens: int = Field(512, ge=1, description="completion token limit")
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="provider-specific request fields sent with every call and part of the cache "
                    "key, e.g. {repetition_penalty: 1.15} (vLLM, the embedded engine)")
    json_mode: Literal["schema", "object_schema", "object", "off"] = Field(
        "schema",
        description="response_format: OpenAI json_schema | json_object with a schema "
                    "(llama-cpp-python) | json_object | none",
    )
    prices: dict[str, list[float]] = Field(
        default_factory=lambda: {
            "gpt-4o-mini": [0.15, 0.60],
            "gpt-4o": [2.50, 10.00],
            "gpt-4.1-mini": [0.40, 1.60],
        },
        description="model -> [USD per 1M prompt tokens, USD per 1M completion tokens]",
    )
