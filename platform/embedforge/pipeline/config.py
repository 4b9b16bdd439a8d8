"""Config of `jobs/pipeline.py`: one section per stage, wired together by the pipeline.

Each stage section holds fields of that stage's own config (``PrepareConfig``, ``SynthConfig``,
``MineConfig``, ``TrainConfig``, ``EvalConfig``, ``ServeConfig``), optionally on top of a YAML
named by its ``config`` key. The pipeline fills in what connects the stages (input and output
folders, the model to evaluate and serve, the Ray cluster), so a section never repeats a path.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from ..config import ConfigSection, JobConfig
from ..safety import OWNER_FILE, path_field
from ..tracking import TrackingSettings

StageName = Literal["prepare", "synthesize", "mine", "train1", "train2", "merge", "evaluate",
                    "serve"]
STAGES: tuple[str, ...] = ("prepare", "synthesize", "mine", "train1", "train2", "merge", "evaluate",
                           "serve")


class EvaluateSection(ConfigSection):
    """Evaluation of the trained model against the base model, and the gate."""

    # NAME=KIND:PATH specs: their paths are checked as the evaluate stage's TaskSpecs
    tasks: list[str] = path_field(
        "none", default_factory=list, description="local tasks NAME=KIND:PATH[:SPLIT] (as jobs/evaluate.py)")
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-task options, e.g. {articles: {max_corpus: 1000}}")
    baseline: bool = Field(True, description="score the base model too and gate against it")
    baseline_instructions: bool = Field(
        False, description="format the base model's inputs with instructions (off: most base "
                           "models were trained without them)")
    tolerance: float = Field(0.01, ge=0, description="allowed drop per task (0.01 = 1 point)")
    on_regression: Literal["fail", "warn"] = Field(
        "fail", description="fail: stop before serving a model that regressed; warn: go on")
    extra: dict[str, Any] = Field(default_factory=dict, description="more EvalConfig fields")


class MergeSection(ConfigSection):
    """A grid of interpolations between the stage-1 and stage-2 models, scored on dev tasks.

    Off (empty ``grid``) by default: each point costs a merge and an evaluation. When on, the
    best of stage 2 and the merges on the dev tasks (Mean(TaskType)) is what evaluate gates
    and serve deploys; stage 2 wins ties, so a merge is only chosen when it is strictly better.
    """

    method: Literal["slerp", "linear"] = Field("slerp", description="interpolation (docs/merge.md)")
    grid: list[float] = Field(
        default_factory=list, description="values of t to try (0: stage 1, 1: stage 2); empty: "
                                          "no merging, stage 2 is evaluated and served")
    tasks: list[str] = path_field(  # checked as the dev scoring's TaskSpecs
        "none", default_factory=list, description="dev tasks NAME=KIND:PATH[:SPLIT] that choose the model "
                                          "(default: the evaluate section's tasks)")
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-task options (default: the evaluate section's)")
    extra: dict[str, Any] = Field(
        default_factory=dict, description="more EvalConfig fields for the dev scoring, over the "
                                          "evaluate section's extra (its dims are dropped)")

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: list[float]) -> list[float]:
        bad = [t for t in v if not 0 <= t <= 1]
        if bad:
            raise ValueError(f"every t must be in [0, 1], got {bad}")
        return list(dict.fromkeys(v))  # grid order kept: it breaks ties between merges


class ServeSection(ConfigSection):
    """The endpoint the pipeline ends with, and the query it shows."""

    port: int = Field(0, ge=0, le=65535, description="HTTP port (0: a free one)")
    queries: list[str] = Field(default_factory=list, description="queries to show results for")
    top_k: int = Field(3, ge=1, description="documents shown per query")
    keep_running: bool = Field(False, description="keep serving until Ctrl-C")
    extra: dict[str, Any] = Field(default_factory=dict, description="more ServeConfig fields")


class PipelineConfig(JobConfig):
    """Run the stages in order, skipping those whose output is complete for the same inputs
    and config, and write OUTPUT/manifest.json (inputs, configs, versions, outputs, metrics)."""

    cli_exclude: ClassVar[frozenset[str]] = frozenset(
        {"prepare", "synthesize", "mine", "train"})

    output: str = path_field("output", description="run folder: one sub-folder per stage + manifest.json")
    stages: list[StageName] = Field(default_factory=lambda: list(STAGES),
                                    description="stages to run, in pipeline order")
    force: list[StageName] = Field(default_factory=list,
                                   description="stages to re-run even when complete")
    take_over: bool = Field(
        False, description=f"take over an --output folder the pipeline did not create (no "
                           f"{OWNER_FILE}): manifest.json, .pipeline/ and the stage folders "
                           "in it may then be overwritten; other files stay")
    prepare: dict[str, Any] = Field(default_factory=dict, description="PrepareConfig fields")
    synthesize: dict[str, Any] = Field(default_factory=dict, description="SynthConfig fields")
    mine: dict[str, Any] = Field(default_factory=dict, description="MineConfig fields")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields")
    merge: MergeSection = Field(default_factory=MergeSection)
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    serve: ServeSection = Field(default_factory=ServeSection)
    ray_address: str | None = Field(None, description="Ray cluster (default: RAY_ADDRESS, else local)")
    num_cpus: int | None = Field(None, description="CPUs of the local cluster when one is started")
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)

    @field_validator("stages", "force")
    @classmethod
    def _in_order(cls, v: list[str]) -> list[str]:
        return sorted(set(v), key=STAGES.index)
