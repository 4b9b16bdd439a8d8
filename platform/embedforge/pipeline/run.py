"""Run the pipeline: each stage in order inside one Ray connection, skipping complete ones,
recording everything in OUTPUT/manifest.json and ending with a summary table."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import io as eio
from .. import tracking
from ..cluster import connect
from ..config import ConfigError
from ..safety import claim_output, overlap, path_flags, remove_owned
from . import stages as st
from .config import STAGES, PipelineConfig
from .selection import describe_choice
from .state import Manifest, is_complete, mark_complete, marker_path, read_marker, stage_key

Log = Callable[[str], None]


Build = Callable[[PipelineConfig, st.Folders], Any]
Run = Callable[[Any, PipelineConfig, st.Folders, Log], dict[str, Any]]


@dataclass(frozen=True)
class StageDef:
    upstream: tuple[str, ...]
    outputs: Callable[[st.Folders], list[str]]       # cleared when the stage must re-run
    done_file: Callable[[st.Folders], str | None]    # exists once the stage's output is whole
    build: Build                                     # the stage's resolved config
    run: Run                                         # runs it; returns the manifest summary
    # (folder, stage) whose ownership marker allows clearing ``outputs``
    owner: Callable[[st.Folders], tuple[str, str]] | None = None


DEFS: dict[str, StageDef] = {
    "prepare": StageDef(
        (), lambda f: [f.prepared], lambda f: eio.join(f.prepared, "summary.json"),
        st.build_prepare, lambda b, c, f, log: st.run_prepare_stage(b, f, log),
        lambda f: (f.prepared, "prepare")),
    "synthesize": StageDef(
        ("prepare",), lambda f: [f.synth], lambda f: eio.join(f.synth, "summary.json"),
        st.build_synthesize, lambda b, c, f, log: st.run_synthesize_stage(b, f, log),
        lambda f: (f.synth, "synthesize")),
    "mine": StageDef(
        ("prepare", "synthesize"), lambda f: [f.mined], lambda f: eio.join(f.mined, "summary.json"),
        st.build_mine, lambda b, c, f, log: st.run_mine_stage(b, f, log),
        lambda f: (f.mined, "mine")),
    "train1": StageDef(
        ("mine",), lambda f: [eio.join(f.train, "stage1")],
        lambda f: eio.join(f.train, "stage1", "model", "modules.json"),
        lambda c, f: st.build_train(c, f, 1), lambda b, c, f, log: st.run_train_stage(b, f, log),
        lambda f: (f.train, "train")),
    "train2": StageDef(
        ("train1", "mine", "synthesize", "prepare"), lambda f: [eio.join(f.train, "stage2")],
        lambda f: eio.join(f.train, "stage2", "model", "modules.json"),
        lambda c, f: st.build_train(c, f, 2), lambda b, c, f, log: st.run_train_stage(b, f, log),
        lambda f: (f.train, "train")),
    "merge": StageDef(
        ("train1", "train2"), lambda f: [f.merge], lambda f: eio.join(f.merge, "choice.json"),
        st.build_merge, lambda b, c, f, log: st.run_merge_stage(b, f, log),
        lambda f: (f.merge, "merge")),
    "evaluate": StageDef(
        ("train1", "train2", "merge"), lambda f: [f.eval], lambda f: eio.join(f.eval, "scores.json"),
        st.build_evaluate,
        lambda b, c, f, log: st.run_evaluate_stage(b, f, log, c.evaluate.on_regression),
        lambda f: (f.eval, "evaluate")),
    "serve": StageDef(("train1", "train2", "merge"), lambda f: [], lambda f: None, st.build_serve,
                      st.run_serve_stage),
}


def _dump(built: Any) -> Any:
    if isinstance(built, tuple):
        return [b.model_dump(mode="json") if b is not None else None for b in built]
    return built.model_dump(mode="json")


def run_pipeline(cfg: PipelineConfig, log: Log = print,
                 after_stage: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run ``cfg.stages``; returns the manifest data. ``after_stage`` is a test hook."""
    f = st.Folders(cfg.output)
    claim_output(cfg.output, "pipeline", cfg.take_over)  # before manifest.json is written
    manifest = Manifest(cfg.output, cfg.model_dump(mode="json"))
    prun = tracking.new_run(cfg.tracking, cfg.output, "pipeline", {"embedforge.job": "pipeline"})
    prun.log_params(manifest.data["pipeline"])
    keys: dict[str, str] = {}
    status = "failed"
    try:
        with connect(cfg.ray_address, cfg.num_cpus):
            for i, name in enumerate(STAGES):
                d = DEFS[name]
                if name not in cfg.stages:  # a stage run earlier still feeds its key downstream
                    if eio.exists(marker_path(cfg.output, name)):
                        keys[name] = read_marker(cfg.output, name)["key"]
                    continue
                try:
                    built = d.build(cfg, f)
                    check_inputs_outside_root(built, f)
                except Exception as exc:  # a wiring/config mistake: recorded, then raised
                    manifest.record(name, {"status": "failed",
                                           "error": f"{type(exc).__name__}: {exc}"})
                    raise
                config = _dump(built)
                key = stage_key({"stage": config}, [keys.get(u, "-") for u in d.upstream])
                keys[name] = key
                done = d.done_file(f)
                entry: dict[str, Any] = {"key": key, "config": config, "outputs": d.outputs(f)}
                log(f"\n== {name} ({i + 1}/{len(STAGES)})")
                if name != "serve" and name not in cfg.force \
                        and is_complete(cfg.output, name, key, done):
                    previous = read_marker(cfg.output, name)
                    log(f"[pipeline] {name}: complete for this config and inputs, skipped")
                    manifest.record(name, {**entry, "status": "skipped",
                                           "seconds": previous.get("seconds"),
                                           "summary": previous.get("summary", {})})
                    tracking.end_stage(_stage_run(prun, name, config), "skipped",
                                       previous.get("seconds"), previous.get("summary"))
                    continue
                if eio.exists(marker_path(cfg.output, name)) or name in cfg.force:
                    # changed config/inputs or forced: start clean (an interrupted run without
                    # a marker keeps its folder, so training resumes from its checkpoint).
                    # Only what the stage itself wrote: its folder's ownership marker says so.
                    if d.owner is not None:
                        root, owner = d.owner(f)
                        for out in d.outputs(f):
                            remove_owned(out, root, owner)
                    eio.remove(marker_path(cfg.output, name))
                t0 = time.time()
                manifest.record(name, {**entry, "status": "running"})
                srun = _stage_run(prun, name, config)
                try:
                    with tracking.activate(srun):  # train/evaluate log into the stage's run
                        summary = d.run(built, cfg, f, log)
                except BaseException as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    manifest.record(name, {**entry, "status": "failed",
                                           "seconds": round(time.time() - t0, 1), "error": error})
                    tracking.end_stage(srun, "interrupted" if isinstance(exc, KeyboardInterrupt)
                                       else "failed", round(time.time() - t0, 1), error=error)
                    raise
                seconds = round(time.time() - t0, 1)
                # a stage with nothing to do (merge without a grid) says so in its status
                status_now = "skipped" if summary.get("skipped") else "ran"
                record = {**entry, "status": status_now, "seconds": seconds, "summary": summary}
                manifest.record(name, record)
                if name == _final_train_stage(cfg) and cfg.tracking.log_model:
                    srun.log_files([summary["model"]])  # the exported model, as folder "model"
                tracking.end_stage(srun, status_now, seconds, summary)
                if name != "serve":
                    mark_complete(cfg.output, name, key, {"seconds": seconds, "summary": summary})
                if after_stage:
                    after_stage(name, record)
            if "serve" in cfg.stages and cfg.serve.keep_running:
                log("[serve] serving until Ctrl-C")
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
        status = "finished"
    finally:
        manifest.finish(status)
        prun.log_files([manifest.path])
        prun.finish("FINISHED" if status == "finished" else "FAILED")
        log("\n" + summary_table(manifest.data))
    return manifest.data


def own_paths(f: st.Folders) -> list[str]:
    """The folders (and the key file) the pipeline writes under the run folder: the base
    model's evaluation is evaluate's --baseline, the run's key file serve's --api-key-file."""
    return [f.prepared, f.synth, f.mined, f.train, f.merge, f.eval, f.eval_base, f.api_key]


def check_inputs_outside_root(built: Any, f: st.Folders) -> None:
    """The pipeline's own data-safety rule over a stage's resolved config(s): every input
    lies outside the run folder, or inside one of :func:`own_paths` (the pipeline's wiring).
    A user's input at the run folder, above it, or beside those paths in it (where a stage, a
    re-run or --force could clear it) is refused naming the stage flag."""
    folders = own_paths(f)
    for part in built if isinstance(built, tuple) else (built,):
        if part is None:
            continue
        for flag in path_flags(part):
            if flag.role != "input":
                continue
            how = overlap(f.root, flag.value)
            if how in ("is", "is inside") or (how == "contains" and not any(
                    overlap(flag.value, s) in ("is", "is inside") for s in folders)):
                raise ConfigError(
                    f"--output {f.root} {how} the input {flag.flag} {flag.value}: the pipeline "
                    "writes and clears folders under its output; keep inputs outside it")


def _stage_run(prun: tracking.AnyRun, name: str, config: Any) -> tracking.AnyRun:
    """The nested MLflow run of a stage, holding its resolved config (params + config.json)."""
    srun = prun.child(name, {"embedforge.stage": name})
    if isinstance(config, dict):
        srun.log_params(config)
    srun.log_text(json.dumps(config, indent=2, default=str), "config.json")
    return srun


def _final_train_stage(cfg: PipelineConfig) -> str | None:
    """The training stage whose export this run ends with (its model is logged as an artifact)."""
    return next((s for s in ("train2", "train1") if s in cfg.stages), None)


def summary_table(data: dict[str, Any]) -> str:
    """One line per stage: what ran, how long, and its headline numbers."""
    lines = [f"{'stage':<11} {'status':<8} {'seconds':>8}  highlights"]
    for name in STAGES:
        e = data["stages"].get(name)
        if e is None:
            continue
        s = e.get("summary") or {}
        lines.append(f"{name:<11} {e['status']:<8} {e.get('seconds') or 0:>8.1f}  "
                     f"{_highlights(name, s) if s else e.get('error', '')}"[:220])
    lines.append(f"manifest: {data.get('status', 'running')}")
    return "\n".join(lines)


def _highlights(name: str, s: dict[str, Any]) -> str:
    if name == "prepare":
        return f"{s['samples']} samples {s['by_kind']}"
    if name == "synthesize":
        by = ", ".join(f"{k} {v}" for k, v in sorted(s["rows_by_source"].items()) if k != "original")
        return (f"{s['generated_rows']} generated rows ({by or 'none'}) from {s['llm_calls']} LLM "
                f"calls, {s['rejected']} answers rejected")
    if name == "mine":
        return (f"{s['retrieval_samples']} queries, corpus {s['corpus']}, {s['negatives_kept']} "
                f"negatives kept, {s['dropped']} dropped")
    if name in ("train1", "train2"):
        changed = "".join(f"; {b['name']}: " + (f"batch {b['batch']}" if b["batch"] else "left out")
                          for b in s.get("batch_changes", []))
        return f"{s['steps']} steps, final loss {s['final_loss']}, {s['examples_per_s']} ex/s{changed}"
    if name == "merge":
        return describe_choice(s)
    if name == "evaluate":
        parts = [f"{t} {s['before'].get(t, float('nan')):.4f} -> {v:.4f}" for t, v in sorted(s["after"].items())]
        return ", ".join(parts) + ("" if s["passed"] else " (GATE FAILED)")
    if name == "serve":
        return f"{s['url']} ({s['documents']} documents searched)"
    return ""
