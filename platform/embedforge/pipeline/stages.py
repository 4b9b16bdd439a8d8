"""Each pipeline stage: its folder, how its config is composed from the pipeline's section and
the folders of the stages before it, what marks it complete, and how it runs.

Stage functions call the same library entry points as the single-stage jobs
(``run_prepare``, ``run_synthesize``, ``run_mine``, ``run_train``, ``run_merge``,
``evaluate_and_gate``, ``serve.run.deploy``), inside the one Ray connection the pipeline holds.
"""

from __future__ import annotations

import copy
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError

from .. import io as eio
from ..config import ConfigError, format_validation_error, load_yaml
from .config import PipelineConfig
from .state import is_complete, mark_complete, stage_key

Log = Callable[[str], None]


class GateFailed(RuntimeError):
    """The trained model regressed against the base model: nothing is served."""


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def compose(cls: type[BaseModel], section: dict[str, Any], wired: dict[str, Any], name: str) -> Any:
    """``section['config']`` YAML <- the section's own keys <- what the pipeline wires in."""
    section = dict(section)
    base = load_yaml(section.pop("config")) if section.get("config") else {}
    data = deep_merge(deep_merge(base, section), wired)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"pipeline section {name!r}")) from None


@dataclass(frozen=True)
class Folders:
    """Where every stage writes, under the run folder."""

    root: str

    @property
    def prepared(self) -> str:
        return eio.join(self.root, "prepared")

    @property
    def synth(self) -> str:
        return eio.join(self.root, "synth")

    @property
    def mined(self) -> str:
        return eio.join(self.root, "mined")

    @property
    def train(self) -> str:
        return eio.join(self.root, "train")

    @property
    def merge(self) -> str:
        return eio.join(self.root, "merge")

    @property
    def eval(self) -> str:
        return eio.join(self.root, "eval")

    @property
    def eval_base(self) -> str:
        return eio.join(self.root, "eval-base")

    @property
    def cache(self) -> str:
        return eio.join(self.root, "cache")

    @property
    def api_key(self) -> str:
        """The run's own endpoint key (absolute: replicas do not share the driver's cwd)."""
        return os.path.abspath(eio.join(self.root, "serve-api-key"))


def data_folder(cfg: PipelineConfig, f: Folders) -> str:
    """What mining and stage 2 read: the synthesized folder (originals + generated rows) when
    synthesis is part of this run or has run before, else the prepared one."""
    if "synthesize" in cfg.stages or eio.exists(eio.join(f.synth, "summary.json")):
        return f.synth
    return f.prepared


def base_model(cfg: PipelineConfig) -> str:
    model = (cfg.train.get("model") or {}).get("model")
    if not model and cfg.train.get("config"):
        model = (load_yaml(cfg.train["config"]).get("model") or {}).get("model")
    if not model:
        raise ConfigError("pipeline section 'train' needs model.model (the backbone)")
    return model


def final_model(f: Folders) -> str:
    for n in (2, 1):
        path = eio.join(f.train, f"stage{n}", "model")
        if eio.exists(eio.join(path, "modules.json")):
            return path
    raise ConfigError(f"no trained model under {f.train} (run train1/train2 first)")


def ray_fields(cfg: PipelineConfig) -> dict[str, Any]:
    return {"ray_address": cfg.ray_address, "num_cpus": cfg.num_cpus}


def tracking_fields(cfg: PipelineConfig, enabled: bool = True) -> dict[str, Any]:
    """The pipeline's tracking for a stage that tracks (train, evaluate): it logs into the
    stage's nested run, or nowhere when the pipeline does not track."""
    return {"tracking": {**cfg.tracking.model_dump(), "enabled": cfg.tracking.enabled and enabled}}


# ---------------------------------------------------------------- prepare

def build_prepare(cfg: PipelineConfig, f: Folders) -> Any:
    from ..prepare import PrepareConfig

    return compose(PrepareConfig, cfg.prepare, {"output": f.prepared, **ray_fields(cfg)}, "prepare")


def run_prepare_stage(scfg: Any, f: Folders, log: Log) -> dict[str, Any]:
    from ..prepare import run_prepare
    from ..prepare.stage import format_report

    stats = run_prepare(scfg, log=log)
    log(format_report(stats))
    if stats["unusable_sources"]:
        raise ConfigError(f"unusable sources: {stats['unusable_sources']}")
    by_kind: dict[str, int] = {}
    for d in stats["datasets"].values():
        for k, n in d["by_kind"].items():
            by_kind[k] = by_kind.get(k, 0) + n
    return {"samples": stats["total_samples"], "by_kind": by_kind,
            "datasets": len(stats["datasets"])}


# ---------------------------------------------------------------- synthesize

def build_synthesize(cfg: PipelineConfig, f: Folders) -> Any:
    from ..synth.config import SynthConfig

    section = dict(cfg.synthesize)
    # paid LLM responses live outside synth/, which a config change clears (as mining's
    # embeddings do): a re-run pays only for prompts never sent
    section.setdefault("cache", eio.join(f.cache, "llm"))
    return compose(SynthConfig, section,
                   {"input": f.prepared, "output": f.synth, **ray_fields(cfg)}, "synthesize")


def run_synthesize_stage(scfg: Any, f: Folders, log: Log) -> dict[str, Any]:
    from ..synth.stage import format_report, run_synthesize

    summary = run_synthesize(scfg, log=log)
    log(format_report(summary))
    return {"generated_rows": summary["generated_rows"], "rows_by_source": summary["rows_by_source"],
            "llm_calls": summary["llm"]["calls"],
            "rejected": sum(summary["rejections_by_reason"].values())}


# ---------------------------------------------------------------- mine

def build_mine(cfg: PipelineConfig, f: Folders) -> Any:
    from ..mine.config import MineConfig

    wired = {"input": data_folder(cfg, f), "output": f.mined, **ray_fields(cfg)}
    section = dict(cfg.mine)
    section.setdefault("cache", eio.join(f.cache, "embeddings"))  # survives a re-mine
    if "model" not in (section.get("encoder") or {}) and not section.get("config"):
        section["encoder"] = {**(section.get("encoder") or {}), "model": base_model(cfg)}
    return compose(MineConfig, section, wired, "mine")


def run_mine_stage(scfg: Any, f: Folders, log: Log) -> dict[str, Any]:
    from ..mine.stage import format_report, run_mine

    summary = run_mine(scfg, log=log)
    log(format_report(summary))
    return {"retrieval_samples": summary["retrieval_samples"], "corpus": summary["corpus"],
            "negatives_kept": sum(summary["negatives_kept_by_source"].values()),
            "dropped": sum(summary["dropped_by_reason"].values()),
            "plot": eio.join(f.mined, "audit.png")}


# ---------------------------------------------------------------- train

def build_train(cfg: PipelineConfig, f: Folders, stage: int) -> Any:
    from ..train.config import TrainConfig

    data = data_folder(cfg, f)
    section = deep_merge(cfg.train, {"stage1": {"inputs": [f.mined]},
                                     "stage2": {"inputs": [f.mined, data]}})
    return compose(TrainConfig, section, {"output": f.train, "run": str(stage), **ray_fields(cfg),
                                          **tracking_fields(cfg)}, "train")


def run_train_stage(scfg: Any, f: Folders, log: Log) -> dict[str, Any]:
    from ..train.run import run_train

    (s,) = run_train(scfg, log=log)["stages"]
    final = s.get("final") or {}
    return {"steps": s["steps"], "final_loss": final.get("loss"),
            "examples_per_s": final.get("examples_per_s"), "model": s["model"],
            "datasets": [{"name": d["name"], "kind": d["kind"], "size": d["size"]}
                         for d in s["datasets"]],
            # datasets that train with a smaller batch or were left out, and why
            "batch_changes": [b for b in s.get("batches", []) if b["action"] != "ok"],
            "plot": eio.join(f.train, f"stage{s['stage']}", "loss.png")}


# ---------------------------------------------------------------- merge

class MergePlan(BaseModel):
    """The merge stage's resolved config: what to interpolate, where, and how to score it.

    ``dev`` is the evaluation of stage 2 on the dev tasks; each merge is scored with a copy
    pointing at its own export and folder. None when the grid is empty (nothing to score).
    """

    model_config = ConfigDict(extra="forbid")

    method: str
    grid: list[float]
    a: str
    b: str
    output: str
    dev: Any = None


def _task_dicts(task_args: list[str], options: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    from ..eval.spec import parse_task_arg

    tasks = []
    for arg in task_args:
        spec = parse_task_arg(arg)
        tasks.append({**spec.model_dump(exclude_none=True), **options.get(spec.name, {})})
    return tasks


def build_merge(cfg: PipelineConfig, f: Folders) -> MergePlan:
    from ..eval.config import EvalConfig

    m, ev = cfg.merge, cfg.evaluate
    plan = MergePlan(method=m.method, grid=m.grid, a=eio.join(f.train, "stage1", "model"),
                     b=eio.join(f.train, "stage2", "model"), output=f.merge)
    if not m.grid:
        return plan
    task_args = m.tasks or ev.tasks
    if not task_args:
        raise ConfigError("pipeline section 'merge' needs dev tasks (merge.tasks or "
                          "evaluate.tasks) to choose between stage 2 and the merges")
    # the choice uses full-size scores only: Matryoshka sizes would cost time and change nothing
    extra = {**{k: v for k, v in ev.extra.items() if k != "dims"}, **m.extra}
    dev = compose(EvalConfig, {}, {**extra, "tasks": _task_dicts(task_args, {**ev.options,
                                                                             **m.options}),
                                   "encoder": {"model": plan.b}, "model_name": "stage2",
                                   "output": eio.join(f.merge, "eval", "stage2"),
                                   **ray_fields(cfg), **tracking_fields(cfg, enabled=False)},
                  "merge")
    return plan.model_copy(update={"dev": dev})


def _t_name(t: float) -> str:
    return f"t{t:g}"


def run_merge_stage(plan: MergePlan, f: Folders, log: Log) -> dict[str, Any]:
    """Merge stage 1 into stage 2 at each t, score stage 2 and every merge on the dev tasks
    (Mean(TaskType), as the report), keep the best and write ``merge/choice.json``.

    Merged exports that lose are deleted (each is a full copy of the model); their dev
    scores stay under ``merge/eval/``. With an empty grid the stage only records that stage 2
    is the model, so evaluate and serve read one file either way.
    """
    import shutil

    from ..eval.job import evaluate_and_gate
    from ..eval.report import mean_task_type
    from ..safety import claim_output
    from ..train.merge_job import MergeConfig, run_merge
    from .selection import choose_t

    claim_output(plan.output, "merge")
    choice_path = eio.join(plan.output, "choice.json")
    if not plan.grid:
        summary = {"skipped": "no grid", "model": plan.b, "t": None}
        eio.write_json(summary, choice_path)
        return summary

    def dev_score(model: str, name: str) -> float:
        dev = plan.dev
        ecfg = dev.model_copy(update={
            "encoder": dev.encoder.model_copy(update={"model": model}), "model_name": name,
            "output": eio.join(plan.output, "eval", name)})
        out = evaluate_and_gate(ecfg, log)
        log(f"[merge] {out.headline()}")
        rs = out.run.run_scores()
        return float("nan") if out.failed else mean_task_type(rs.scores, rs.types)

    stage2 = dev_score(plan.b, "stage2")
    if stage2 != stage2:
        raise GateFailed(f"dev evaluation of stage 2 ({plan.b}) failed: see "
                         f"{eio.join(plan.output, 'eval', 'stage2')}")
    scores: dict[float, float] = {}
    for t in plan.grid:
        folder = eio.join(plan.output, _t_name(t))
        run_merge(MergeConfig(method=plan.method, a=plan.a, b=plan.b, t=t, output=folder), log)
        scores[t] = dev_score(folder, _t_name(t))
        log(f"[merge] t={t:g}: dev Mean(TaskType) {scores[t]:.4f} (stage 2: {stage2:.4f})")
    best = choose_t(stage2, scores)
    model = plan.b if best is None else eio.join(plan.output, _t_name(best))
    for t in plan.grid:
        if t != best:
            shutil.rmtree(eio.join(plan.output, _t_name(t)), ignore_errors=True)
    summary = {"method": plan.method, "tasks": [t.name for t in plan.dev.tasks],
               "stage2": stage2,
               "grid": {f"{t:g}": (None if s != s else s) for t, s in scores.items()},
               "t": best, "chosen": "stage2" if best is None else _t_name(best), "model": model}
    eio.write_json(summary, choice_path)
    return summary


# ---------------------------------------------------------------- evaluate

def build_evaluate(cfg: PipelineConfig, f: Folders) -> tuple[Any, Any | None]:
    """(trained-model config, base-model config or None)."""
    from ..eval.config import EvalConfig

    ev = cfg.evaluate
    if not ev.tasks:
        raise ConfigError("pipeline section 'evaluate' needs tasks (NAME=KIND:PATH[:SPLIT])")
    tasks = _task_dicts(ev.tasks, ev.options)
    common = {**ev.extra, "tasks": tasks, "tolerance": ev.tolerance, **ray_fields(cfg),
              **tracking_fields(cfg)}
    base = None
    if ev.baseline:
        # the base model's scores reach the tracker as the stage's before/* metrics
        base = compose(EvalConfig, {}, {**common, "encoder": {"model": base_model(cfg)},
                                        "output": f.eval_base,
                                        "instructions": ev.baseline_instructions,
                                        **tracking_fields(cfg, enabled=False)}, "evaluate")
    trained_model = _planned_model(cfg, f)
    after = compose(EvalConfig, {}, {**common, "encoder": {"model": trained_model}, "output": f.eval,
                                     "baseline": f.eval_base if base else None}, "evaluate")
    return after, base


def _planned_model(cfg: PipelineConfig, f: Folders) -> str:
    """The model evaluate/serve will use: the merge stage's choice when a grid is configured,
    else stage 2's when this run trains it, else the newest."""
    if cfg.merge.grid and "merge" not in cfg.stages and {"train1", "train2"} & set(cfg.stages):
        # an earlier choice was made between the models this run replaces: stale
        raise ConfigError("merge.grid is set and this run trains: add merge to --stages (or "
                          "empty merge.grid) so the model evaluated and served is chosen anew")
    if cfg.merge.grid and ("merge" in cfg.stages or eio.exists(f.merge)):
        choice = eio.join(f.merge, "choice.json")
        if not eio.exists(choice):
            raise ConfigError(f"merge.grid is set but {choice} does not exist (run merge first)")
        return eio.read_json(choice)["model"]
    if "train2" in cfg.stages:
        return eio.join(f.train, "stage2", "model")
    if "train1" in cfg.stages:
        return eio.join(f.train, "stage1", "model")
    return final_model(f)


def run_evaluate_stage(configs: tuple[Any, Any | None], f: Folders, log: Log,
                       on_regression: str) -> dict[str, Any]:
    from ..eval.job import evaluate_and_gate
    from ..eval.output import load_scores

    after, base = configs
    before: dict[str, float] = {}
    if base is not None:
        # the base model's scores depend on its config only: kept across re-trainings with the
        # same completion marker the stages use
        key = stage_key(base.model_dump(mode="json"), [])
        if is_complete(f.root, "evaluate-base", key, eio.join(f.eval_base, "scores.json")):
            log(f"[evaluate] base model scores from {f.eval_base}")
        else:
            out = evaluate_and_gate(base, log)
            log(f"[evaluate] before: {out.headline()}")
            mark_complete(f.root, "evaluate-base", key, {})
        before = load_scores(f.eval_base).scores
    out = evaluate_and_gate(after, log)
    log(f"[evaluate] after: {out.headline()}")
    scores = out.run.scores
    log(format_scores(before, scores))
    result = {"before": before, "after": scores, "passed": out.passed,
              "regressions": [r.line() for r in out.regressions],
              "failed_tasks": out.failed, "report": eio.join(f.eval, "report.md"),
              "plot": eio.join(f.eval, "chart.png")}
    if out.failed:
        raise GateFailed(f"evaluation tasks failed: {out.failed}")
    if out.regressions:
        msg = "; ".join(r.line() for r in out.regressions)
        if on_regression == "fail":
            raise GateFailed(f"the trained model regressed against the base model: {msg}")
        log(f"[gate] WARNING (on_regression: warn): {msg}")
    return result


def format_scores(before: dict[str, float], after: dict[str, float]) -> str:
    lines = [f"{'task':<16} {'before':>8} {'after':>8} {'change':>8}"]
    for task in sorted(after):
        a = after[task]
        b = before.get(task)
        change = f"{(a - b) * 100:+.2f}" if b is not None else "-"
        lines.append(f"{task:<16} {b if b is not None else float('nan'):>8.4f} {a:>8.4f} "
                     f"{change:>8}")
    return "\n".join(lines)


# ---------------------------------------------------------------- serve

def build_serve(cfg: PipelineConfig, f: Folders) -> Any:
    from ..cluster import free_port
    from ..serve.config import ServeConfig

    model = _planned_model(cfg, f)
    wired: dict[str, Any] = {"encoder": {"model": model}, "port": cfg.serve.port or free_port(),
                             "model_name": cfg.serve.extra.get("model_name") or "embedforge-demo"}
    scfg = compose(ServeConfig, cfg.serve.extra, wired, "serve")
    if not (scfg.api_key_file or scfg.allow_unauthenticated or os.environ.get(scfg.api_key_env)):
        # the endpoint refuses to run without keys: the run gets its own (run_serve_stage)
        scfg = scfg.model_copy(update={"api_key_file": f.api_key})
    return scfg


def ensure_api_key(path: str) -> None:
    """A random API key in ``path`` (owner read/write only), unless the file exists."""
    if os.path.exists(path):
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"sk-ef-{secrets.token_urlsafe(24)}\n")


def first_documents(batches: Iterable[pa.RecordBatch], limit: int) -> list[str]:
    """The first ``limit`` distinct non-empty retrieval positives of ``batches`` (columns
    ``kind`` and ``positive``), in order. Stops pulling batches once it has them, so a lazy
    reader reads only the first row groups of a corpus-scale folder."""
    docs: dict[str, None] = {}
    if limit <= 0:
        return []
    for b in batches:
        for k, p in zip(b.column("kind").to_pylist(), b.column("positive").to_pylist(), strict=True):
            if k == "retrieval" and p:
                docs[p] = None
                if len(docs) >= limit:
                    return list(docs)
    return list(docs)


def demo_documents(cfg: PipelineConfig, f: Folders, limit: int = 500) -> list[str]:
    """Documents to search in the showcase: the first retrieval positives of the run's data,
    read batch by batch (only ``kind`` and ``positive``) until there are enough."""
    return first_documents(eio.sample_batches(data_folder(cfg, f), ["kind", "positive"]), limit)


def run_serve_stage(scfg: Any, cfg: PipelineConfig, f: Folders, log: Log) -> dict[str, Any]:
    """Deploy the model, then search the run's documents for the configured queries through
    the endpoint with the openai SDK, as a user would."""
    import numpy as np
    from openai import OpenAI

    from ..serve.http import required_keys
    from ..serve.run import deploy

    if scfg.api_key_file == f.api_key:
        ensure_api_key(f.api_key)
        log(f"[serve] API key (Authorization: Bearer <key>) in {f.api_key}")
    keys = required_keys(scfg)
    url = deploy(scfg)
    log(f"[serve] {scfg.encoder.model} at {url}/v1/embeddings (OpenAI) and {url}/embed (TEI)")
    client = OpenAI(base_url=url + "/v1", api_key=keys[0] if keys else "unused")
    docs = demo_documents(cfg, f)
    queries = cfg.serve.queries
    shown: dict[str, list[dict[str, Any]]] = {}
    if docs and queries:
        step = scfg.max_inputs
        doc_vecs = np.array([d.embedding for i in range(0, len(docs), step)
                             for d in client.embeddings.create(
                                 model=scfg.model_name, input=docs[i:i + step],
                                 extra_body={"truncate": True}).data])
        resp = client.embeddings.create(model=scfg.model_name, input=queries,
                                        extra_body={"prompt_name": "query", "truncate": True})
        q_vecs = np.array([d.embedding for d in resp.data])
        scores = q_vecs @ doc_vecs.T
        for qi, q in enumerate(queries):
            top = np.argsort(-scores[qi])[:cfg.serve.top_k]
            shown[q] = [{"score": round(float(scores[qi, j]), 4), "document": docs[j]} for j in top]
            log(f"\nquery: {q}")
            for hit in shown[q]:
                log(f"  {hit['score']:.3f}  {hit['document'][:110]}")
    return {"url": url, "model": scfg.encoder.model, "documents": len(docs), "results": shown}
