"""Driver side of `jobs/train.py`: materialise data, run each stage on Ray Train, export.

Stage folders are the unit of resumption: ``stageN/model/`` (an export) marks a finished
stage and is skipped; an unfinished stage re-run with the same command resumes from its last
checkpoint (Ray Train's run ``name`` + ``storage_path``), and worker failures inside a run are
retried from the last checkpoint by ``FailureConfig``.

Both only hold while the stage would produce the same model: ``stageN/config.json`` records
what the stage depends on (its resolved config, the model it starts from, its input files'
sizes and mtimes) when it starts. When that differs from what the command resolves to now,
the stage folder is cleared and the stage runs again, instead of skipping to an old model or
resuming old-config checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import asdict
from typing import Any

from .. import io as eio
from .. import tracking
from ..cluster import connect
from ..config import ConfigError
from ..safety import check_paths, claim_output
from ..schema import KINDS
from .config import TrainConfig
from .data import TrainData, materialize, sample_files
from .sampler import BatchDecision, plan_batch_sizes

# Fields that decide where and how a stage runs, not which model it produces.
RUNTIME_FIELDS = frozenset({"output", "run", "force", "ray_address", "num_cpus", "log_every",
                            "max_failures", "keep_checkpoints", "checkpoint_every",
                            "cpus_per_worker", "threads_per_worker"})
RECORD = "config.json"
#: everything a stage writes in OUTPUT/stageN: all that a re-run for another config clears
#: (a folder taken over with --force keeps whatever else is there)
STAGE_FILES = (RECORD, "data", "ray", "model", "metrics.jsonl", "loss.png", "summary.json")


def _abs(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def _query_instruction(manifest: list[dict[str, Any]], data_dir: str) -> str | None:
    """The most common retrieval instruction of the stage's data (the export's default query prompt)."""
    import pyarrow as pa

    counts: Counter[str] = Counter()
    for d in manifest:
        if d["kind"] == "retrieval":
            with pa.memory_map(os.path.join(data_dir, d["file"]), "r") as src:
                col = pa.ipc.open_file(src).read_all().column("instruction").to_pylist()
            counts.update(x for x in col if x)
    return counts.most_common(1)[0][0] if counts else None


def decide_batches(cfg: TrainConfig, data_dir: str, manifest: list[dict[str, Any]]) -> list[BatchDecision]:
    """Each dataset's batch size, decided here on the driver before any worker starts: a
    dataset whose texts clash too much trains with a smaller batch or is left out, reported,
    instead of failing every rank mid-run."""
    data = TrainData(data_dir, manifest, cfg.loss.num_negatives, cfg.seed)
    return plan_batch_sizes(data.infos, cfg.batch_size.as_dict(), data.keys,
                            world=cfg.num_workers, min_fraction=cfg.min_batch_fraction)


def final_model_dir(cfg: TrainConfig) -> str:
    """Where ``jobs/train.py`` with ``cfg`` leaves its final model (the export serving and
    evaluation read): the last stage it runs, ``OUTPUT/stageN/model``."""
    last = 1 if cfg.run == "1" else 2
    return eio.join(cfg.output, f"stage{last}", "model")


def _folder_version(path: str) -> Any:
    """(name, size, mtime) of a model folder's files, or None for a hub id: a re-exported
    init model is a different starting point."""
    if not os.path.isdir(path):
        return None
    out = []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full):
            st = os.stat(full)
            out.append([name, st.st_size, st.st_mtime_ns])
    return out


def stage_record(cfg: TrainConfig, n: int, init_path: str) -> dict[str, Any]:
    """What stage ``n``'s model depends on, and its key: the resolved config without the
    fields of the other stage and those that only say where/how it runs, plus the model it
    starts from and the version (size, mtime) of every input file."""
    config = cfg.model_dump(mode="json")
    for key in (*RUNTIME_FIELDS, f"stage{3 - n}"):
        config.pop(key, None)
    st = cfg.stage1 if n == 1 else cfg.stage2
    inputs = {inp: [[f, eio.file_version(f)] for f in sample_files(_abs(inp))] for inp in st.inputs}
    record = {"config": config, "init": {"path": init_path, "files": _folder_version(init_path)},
              "inputs": inputs}
    blob = json.dumps(record, sort_keys=True, default=str)
    return {"key": hashlib.sha256(blob.encode()).hexdigest()[:16], **record}


def changed_parts(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Top-level names (config fields, ``init``, ``inputs``) that differ between two records."""
    if old is None:
        return ["(no config recorded)"]
    out = [k for k in ("init", "inputs") if old.get(k) != new.get(k)]
    a, b = old.get("config") or {}, new["config"]
    out += sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return out


def _stage_is_current(stage_dir: str, record: dict[str, Any], n: int, log) -> None:
    """Clear what the stage wrote in ``stage_dir`` (:data:`STAGE_FILES`) when it was written
    for another config, model or inputs."""
    path = os.path.join(stage_dir, RECORD)
    if not os.path.isdir(stage_dir) or not os.listdir(stage_dir):
        return
    old = eio.read_json(path) if os.path.exists(path) else None
    if old is not None and old.get("key") == record["key"]:
        return
    log(f"[train] stage {n}: {stage_dir} was written for something else (changed: "
        f"{', '.join(changed_parts(old, record))}); starting the stage again")
    for name in STAGE_FILES:
        eio.remove(os.path.join(stage_dir, name))
    with contextlib.suppress(OSError):  # the folder too, only when nothing else is left in it
        os.rmdir(stage_dir)


def run_stage(cfg: TrainConfig, n: int, init_path: str, log=print,
              fault: dict[str, Any] | None = None,
              run: tracking.AnyRun = tracking.NULL) -> dict[str, Any]:
    """Train stage ``n`` from ``init_path`` (must run inside a Ray connection); returns its
    summary. ``run``: the MLflow run of the stage (rank 0 logs its progress to it)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from .loop import train_worker

    st = cfg.stage1 if n == 1 else cfg.stage2
    stage_dir = _abs(eio.join(cfg.output, f"stage{n}"))
    model_dir = os.path.join(stage_dir, "model")
    summary_path = os.path.join(stage_dir, "summary.json")
    record = stage_record(cfg, n, init_path)
    _stage_is_current(stage_dir, record, n, log)
    if os.path.exists(os.path.join(model_dir, "modules.json")) and os.path.exists(summary_path):
        log(f"[train] stage {n}: finished earlier for this config ({model_dir}), skipped")
        return eio.read_json(summary_path)
    eio.write_json(record, os.path.join(stage_dir, RECORD))
    t0 = time.time()
    run.log_params(cfg.model_dump(mode="json"))
    run.log_text(json.dumps(cfg.model_dump(mode="json"), indent=2), "config.json")
    kinds = ("retrieval",) if n == 1 else KINDS
    data_dir = os.path.join(stage_dir, "data")
    manifest = materialize([_abs(x) for x in st.inputs], data_dir, kinds)
    log(f"[train] stage {n}: " + ", ".join(f"{d['name']} ({d['kind']}, {d['size']})" for d in manifest))
    decisions = decide_batches(cfg, data_dir, manifest)
    for x in decisions:
        if x.action != "ok":
            log(f"[train] stage {n}: dataset {x.describe()}")
    if not any(x.batch for x in decisions):
        raise ConfigError(f"stage {n}: no dataset can fill one batch of its kind: "
                          + "; ".join(x.describe() for x in decisions) + "; lower --batch-size")
    gpus = ray.cluster_resources().get("GPU", 0)
    use_gpu = cfg.use_gpu == "yes" or (cfg.use_gpu == "auto" and gpus > 0)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "stage": n, "init": init_path,
                           "data_dir": data_dir, "manifest": manifest, "use_gpu": use_gpu,
                           "decisions": [asdict(x) for x in decisions],
                           "metrics_log": os.path.join(stage_dir, "metrics.jsonl"),
                           "tracking": run.ref, **(fault or {})},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=f"stage{n}", storage_path=os.path.join(stage_dir, "ray"),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints)),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    ckpt = result.checkpoint
    if ckpt is None:
        raise RuntimeError(f"stage {n} ended without a checkpoint")
    instruction = _query_instruction(manifest, data_dir)

    @ray.remote(num_cpus=1)
    def export(checkpoint: Any) -> str:  # on a worker node: the driver may lack the memory
        from .export import export_checkpoint

        with checkpoint.as_directory() as d:
            return export_checkpoint(d, cfg.model, init_path, cfg.deepspeed.zero_stage, model_dir,
                                     instruction, cfg.loss.matryoshka_dims)

    ray.get(export.remote(ckpt))
    history = eio.read_jsonl(os.path.join(stage_dir, "metrics.jsonl"))
    summary = {"stage": n, "init": init_path, "model": model_dir, "datasets": manifest,
               "batches": [asdict(x) for x in decisions],
               "steps": st.steps, "final": result.metrics, "history_rows": len(history),
               "seconds": round(time.time() - t0, 1), "checkpoint": ckpt.path}
    _plot(history, os.path.join(stage_dir, "loss.png"), n)
    eio.write_json(summary, summary_path)
    run.log_files([os.path.join(stage_dir, f) for f in ("metrics.jsonl", "loss.png", "summary.json")])
    log(f"[train] stage {n}: exported {model_dir} (final loss {result.metrics.get('loss')})")
    return summary


def check_matryoshka_fits(cfg: TrainConfig) -> None:
    """A Matryoshka dim above the backbone's hidden size fails here, before any cluster starts,
    not at the first batch on a worker (where :func:`losses.matryoshka_plan` would also stop it)."""
    if not cfg.loss.matryoshka_dims:
        return
    from transformers import AutoConfig

    from .losses import matryoshka_plan

    full = getattr(AutoConfig.from_pretrained(cfg.model.model), "hidden_size", None)
    if full is None:  # an unusual config: the first batch checks against the real embedding size
        return
    try:
        matryoshka_plan(cfg.loss.matryoshka_dims, cfg.loss.matryoshka_weights, int(full))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def run_train(cfg: TrainConfig, log=print, fault: dict[str, Any] | None = None) -> dict[str, Any]:
    stages = {"1": [1], "2": [2], "both": [1, 2]}[cfg.run]
    out: dict[str, Any] = {"stages": []}
    for n in stages:  # fail on missing inputs before starting anything
        for inp in (cfg.stage1 if n == 1 else cfg.stage2).inputs:
            sample_files(_abs(inp))
    check_matryoshka_fits(cfg)
    check_paths(cfg)
    claim_output(cfg.output, "train", cfg.force)
    with connect(cfg.ray_address, cfg.num_cpus):
        init = cfg.model.model
        for n in stages:
            if n == 2 and 1 in stages:
                init = out["stages"][-1]["model"]  # stage 2 starts from stage 1's weights
            elif n == 2:
                s1 = os.path.join(_abs(eio.join(cfg.output, "stage1")), "model")
                init = s1 if os.path.exists(os.path.join(s1, "modules.json")) else init
            with tracking.job_run(cfg.tracking, cfg.output, f"train-stage{n}",
                                  {"embedforge.job": "train"}) as run:
                out["stages"].append(run_stage(cfg, n, init, log, fault, run))
    final = out["stages"][-1]["model"]
    out["model"] = final
    eio.write_json(out, eio.join(cfg.output, "summary.json"))
    return out


def _plot(history: list[dict[str, Any]], path: str, n: int) -> None:
    """Loss per task over steps: the curve a person checks first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    tasks = sorted({r["task"] for r in history})
    for t in tasks:
        rows = [r for r in history if r["task"] == t]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker=".", label=t)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"stage {n} training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
