"""Config of `jobs/train.py`: the QZhou-Embedding two-stage recipe, laptop or cluster."""

from __future__ import annotations

import itertools
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..config import ConfigSection, JobConfig
from ..model.encoder import Pooling, resolve_model_ref
from ..safety import FORCE_HELP, path_field
from ..tracking import TrackingSettings


class LoraSettings(ConfigSection):
    enabled: bool = Field(False, description="train PEFT LoRA adapters instead of all weights")
    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA alpha")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                 "down_proj"],
        description="module names to adapt (BERT: query,key,value,dense)")
    merge_on_export: bool = Field(True, description="merge adapters into the exported weights")


class ModelSettings(ConfigSection):
    model: str = path_field("input", description="HF / sentence-transformers folder, hub id or package:NAME "
                                   "of the backbone")
    pooling: Pooling = Field("mean", description="mean (report) | last_token | cls | auto")
    bidirectional: bool = Field(False, description="decoders: full attention (report: true)")
    normalize: bool = Field(True, description="L2-normalise embeddings")
    include_prompt: bool = Field(
        False, description="mean pooling over instruction tokens too (false: the instruction "
                           "conditions the text through attention but is left out of the average)")
    query_max_length: int = Field(256, ge=8, description="tokens per query / pair / class text")
    passage_max_length: int = Field(1536, ge=8, description="tokens per retrieval document")
    gradient_checkpointing: bool = Field(False, description="recompute activations (large models)")
    lora: LoraSettings = Field(default_factory=LoraSettings)

    @field_validator("model")
    @classmethod
    def _model_ref(cls, v: str) -> str:
        return resolve_model_ref(v)


class StageSettings(ConfigSection):
    inputs: list[str] = path_field(
        "input", default_factory=list, description="sample folders (mine/synthesize output); a sample id "
                                          "is taken from the first folder that has it")
    steps: int = Field(100, ge=1, description="optimizer steps")
    lr: float = Field(3e-5, gt=0, description="peak learning rate")
    warmup_steps: int = Field(300, ge=0, description="linear warm-up steps")
    retrieval_share: float | None = Field(
        None, ge=0, le=1, description="share of retrieval batches when other kinds are present "
                                      "(report stage 2: 0.72); none = by dataset size only")


class BatchSizes(ConfigSection):
    retrieval: int = Field(256, ge=1, description="global InfoNCE batch (report: 256)")
    pair: int = Field(768, ge=2, description="global CoSENT batch (report: 768)")
    classification: int = Field(256, ge=1, description="global classification batch")

    def as_dict(self) -> dict[str, int]:
        return self.model_dump()


def check_matryoshka(dims: list[int], weights: list[float] | None) -> None:
    """Checks that need no model: positive, strictly increasing dims; weights of a fitting length
    (len(dims) when the last dim is the full size, len(dims)+1 when the full size is implicit)."""
    if any(d <= 0 for d in dims):
        raise ValueError(f"loss.matryoshka_dims: every dim must be positive, got {dims}")
    if any(b <= a for a, b in itertools.pairwise(dims)):
        raise ValueError(f"loss.matryoshka_dims: dims must be strictly increasing, got {dims}")
    if weights is not None:
        if len(weights) not in (len(dims), len(dims) + 1):
            raise ValueError(f"loss.matryoshka_weights: {len(weights)} weights for dims {dims}: "
                             f"give {len(dims)} (last dim is the full size) or {len(dims) + 1} "
                             "(the last weight is the implicit full size's)")
        if any(x < 0 for x in weights) or not any(x > 0 for x in weights):
            raise ValueError(f"loss.matryoshka_weights: weights must be >= 0, one > 0, got {weights}")


class LossSettings(ConfigSection):
    temperature: float = Field(0.02, gt=0, description="InfoNCE τ (report: 0.02)")
    query_query: bool = Field(True, description="other queries of the batch as negatives")
    cosent_scale: float = Field(20.0, gt=0, description="CoSENT λ")
    num_negatives: int = Field(7, ge=0, description="hard negatives per retrieval/class sample")
    matryoshka_dims: list[int] | None = Field(
        None, description="Matryoshka (MRL): also train embeddings truncated to these sizes, "
                          "strictly increasing, e.g. 64,128,256; the full size is always trained "
                          "too (added when not listed); none: full size only")
    matryoshka_weights: list[float] | None = Field(
        None, description="loss weight per Matryoshka dim, the full size's last (one more than "
                          "matryoshka_dims when the full size is not listed); default 1 each")

    @model_validator(mode="after")
    def _matryoshka(self) -> LossSettings:
        if self.matryoshka_weights is not None and not self.matryoshka_dims:
            raise ValueError("loss.matryoshka_weights needs loss.matryoshka_dims")
        if self.matryoshka_dims:
            check_matryoshka(self.matryoshka_dims, self.matryoshka_weights)
        return self


class DeepSpeedSettings(ConfigSection):
    zero_stage: int = Field(3, ge=0, le=3, description="ZeRO stage (0: data parallel, 2, 3: partitioned)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 on GPU")
    gradient_clipping: float = Field(1.0, ge=0)
    offload_optimizer: bool = Field(False, description="ZeRO-Offload optimizer state to CPU")
    overrides: dict[str, Any] = Field(default_factory=dict, description="merged into the DeepSpeed config")


class TrainConfig(JobConfig):
    """Two-stage contrastive training on Ray Train + DeepSpeed; exports a sentence-transformers folder.

    Stage 1: retrieval only (InfoNCE with in-batch, hard and query-query negatives). Stage 2
    starts from stage 1's weights and adds CoSENT pairs and classification (same-label masked
    InfoNCE), one dataset per batch. Each stage checkpoints, resumes by re-running the same
    command and retries failed workers from the last checkpoint.
    """

    output: str = path_field("output", description="run folder: stage1/ and stage2/, each with model/ (its "
                                    "export); the last stage's model/ is the final model")
    run: Literal["1", "2", "both"] = Field("both", description="which stage(s) to run")
    force: bool = Field(False, description=FORCE_HELP)
    model: ModelSettings
    stage1: StageSettings = Field(default_factory=lambda: StageSettings(steps=32_000, lr=3e-5))
    stage2: StageSettings = Field(default_factory=lambda: StageSettings(steps=8_000, lr=2e-5,
                                                                        retrieval_share=0.72))
    batch_size: BatchSizes = Field(default_factory=BatchSizes)
    loss: LossSettings = Field(default_factory=LossSettings)
    alpha: float = Field(0.5, ge=0, le=1, description="dataset sampling p ∝ n^α")
    min_batch_fraction: float = Field(
        0.5, gt=0, le=1,
        description="a dataset whose rows cannot fill its kind's batch with distinct texts trains "
                    "with a smaller batch down to this fraction of it, else it is left out")
    grad_cache_chunk: int | None = Field(
        None, ge=1, description="GradCache: texts per forward (effective batch independent of memory)")
    weight_decay: float = Field(0.01, ge=0)
    scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="after warm-up")
    deepspeed: DeepSpeedSettings = Field(default_factory=DeepSpeedSettings)
    num_workers: int = Field(2, ge=1, description="Ray Train workers (one per GPU on GPU nodes)")
    use_gpu: Literal["auto", "yes", "no"] = Field("auto", description="auto: when the cluster has GPUs")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved per worker")
    threads_per_worker: int | None = Field(None, ge=1, description="torch threads (default: CPUs reserved)")
    checkpoint_every: int = Field(100, ge=1, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept per stage")
    max_failures: int = Field(2, ge=0, description="worker-failure retries (resume from checkpoint)")
    log_every: int = Field(10, ge=1, description="steps between progress lines")
    seed: int = Field(0)
    export_prompts: bool = Field(True, description="write query/document prompts into the export")
    ray_address: str | None = Field(None, description="Ray cluster (default: RAY_ADDRESS, else local)")
    num_cpus: int | None = Field(None, description="CPUs of the local cluster when one is started")
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)

    @model_validator(mode="after")
    def _batches_split(self) -> TrainConfig:
        for kind, size in self.batch_size.as_dict().items():
            if size % self.num_workers:
                raise ValueError(f"batch_size.{kind}={size} must be a multiple of num_workers="
                                 f"{self.num_workers} (every rank takes an equal share)")
        if self.run in ("1", "both") and not self.stage1.inputs:
            raise ValueError("stage1.inputs is empty: give the mined retrieval samples folder")
        if self.run in ("2", "both") and not self.stage2.inputs:
            raise ValueError("stage2.inputs is empty: give retrieval + pair + classification folders")
        return self
