"""Config of `jobs/evaluate.py`."""

from __future__ import annotations

import argparse
from typing import Any, ClassVar

from pydantic import Field, field_validator

from ..config import ConfigError, JobConfig, named_option
from ..model.encoder import EncoderSettings
from ..safety import FORCE_HELP, path_field
from ..tracking import TrackingSettings
from .spec import TaskSpec, parse_option_value, parse_task_arg


class EvalConfig(JobConfig):
    """Score a model with mteb on hub benchmarks or local tasks; gate against a baseline.

    Local tasks: --task NAME=KIND:PATH[:SPLIT] (repeatable), KIND one of beir, sts,
    classification, pair, clustering, reranking; per-task options (limit, max_corpus, seed,
    language, instruction, columns, map, header, delimiter, score_range, test_file,
    test_fraction, samples_per_label, n_experiments, cluster_size, depth):
    --option NAME.KEY=VALUE. Hub (needs network): --benchmark "MTEB(eng, v2)",
    --mteb-task STSBenchmark. Writes results/ (mteb JSON), scores.json, report.md, chart.png;
    exits 1 when a task fails or drops below --baseline by more than --tolerance.
    """

    cli_exclude: ClassVar[frozenset[str]] = frozenset({"tasks", "benchmarks", "mteb_tasks"})

    encoder: EncoderSettings = Field(description="the model to evaluate")
    model_name: str | None = path_field(
        "none", None, description="name in results and reports (default embedforge/<folder>)")
    tasks: list[TaskSpec] = Field(default_factory=list, description="local tasks")
    benchmarks: list[str] = Field(default_factory=list, description="mteb benchmarks (hub)")
    mteb_tasks: list[str] = Field(default_factory=list, description="mteb tasks by name (hub)")
    output: str = path_field("output", description="output folder (local path or fsspec URI)")
    force: bool = Field(False, description=FORCE_HELP)
    instructions: bool = Field(
        True, description="format inputs with task instructions (--no-instructions for models "
                          "trained without them)")
    instruction_map: dict[str, str] = Field(
        default_factory=dict, description="task name or task type -> task description")
    instruction_file: str | None = path_field(
        "input", None, description="YAML with `tasks:` / `types:` maps, extending the shipped one")
    baseline: str | None = path_field(
        "input", None, description="earlier run (folder, scores.json or mteb results folder) to gate on")
    tolerance: float = Field(
        0.01, ge=0, description="allowed drop per task in main-score units (0.01 = 1 point)")
    task_tolerance: dict[str, float] = Field(
        default_factory=dict, description="per-task tolerance overrides")
    allow_missing: bool = Field(
        False, description="baseline tasks absent from this run do not fail the gate")
    compare: list[str] = path_field(
        "input", default_factory=list, description="other runs to put in report.md and chart.png")
    devices: list[str] = Field(
        default_factory=list, description="one encoder replica per device in a process, e.g. "
                                          "cuda:0,cuda:1 (default: every visible GPU)")
    dims: list[int] | None = Field(
        None, description="Matryoshka: also score every task with embeddings truncated to these "
                          "sizes and renormalised, e.g. 64,128,256 (the full size is always "
                          "scored; the gate uses it); writes dims.png and a table in report.md")
    ray: bool = Field(
        False, description="fan tasks out over Ray actors (one task per actor call) when "
                           "there is more than one")
    workers: int | None = Field(
        None, ge=1, description="Ray actors (default: one per GPU of the cluster, else 1)")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per Ray actor")
    gpus_per_worker: float | None = Field(
        None, ge=0, description="GPUs per Ray actor (default: 1 when the cluster has GPUs)")
    ray_address: str | None = Field(None, description="Ray cluster (default: RAY_ADDRESS, else local)")
    num_cpus: int | None = Field(None, description="CPUs of the local cluster when one is started")
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)

    @field_validator("tasks")
    @classmethod
    def _unique(cls, v: list[TaskSpec]) -> list[TaskSpec]:
        names = [t.name for t in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"task names must be unique, repeated: {', '.join(dup)}")
        return v

    @field_validator("dims")
    @classmethod
    def _dims(cls, v: list[int] | None) -> list[int] | None:
        if not v:
            return None
        if any(d <= 0 for d in v):
            raise ValueError(f"every dim must be positive, got {v}")
        return sorted(set(v))

    @classmethod
    def add_cli_extras(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("tasks")
        g.add_argument("--task", action="append", default=[], metavar="NAME=KIND:PATH[:SPLIT]",
                       help="add a local task (repeatable), e.g. "
                            "scifact=beir:../shared/data/scifact:dev")
        g.add_argument("--option", action="append", default=[], metavar="NAME.KEY=VALUE",
                       help="per-task option, e.g. scifact.max_corpus=1000")
        g.add_argument("--benchmark", action="append", default=[], metavar="NAME",
                       help='mteb benchmark by name (hub), e.g. "MTEB(eng, v2)" (repeatable)')
        g.add_argument("--mteb-task", action="append", default=[], metavar="NAME",
                       help="mteb task by name (hub), e.g. STSBenchmark (repeatable)")

    @classmethod
    def apply_cli_extras(cls, ns: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
        tasks: list[dict[str, Any]] = [
            t if isinstance(t, dict) else t.model_dump() for t in data.get("tasks", [])]
        for text in ns.task:
            try:
                tasks.append(parse_task_arg(text).model_dump(exclude_none=True))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        by_name = {t.get("name"): t for t in tasks}
        for item in ns.option:
            task, key, value = named_option(item, "--option", by_name, "task")
            task[key] = parse_option_value(key, value)
        data["tasks"] = tasks
        data["benchmarks"] = list(data.get("benchmarks", [])) + list(ns.benchmark)
        data["mteb_tasks"] = list(data.get("mteb_tasks", [])) + list(ns.mteb_task)
        return data
