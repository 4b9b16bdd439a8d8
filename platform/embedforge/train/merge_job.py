"""`jobs/merge.py`: average a stage's last checkpoints, or interpolate two exported models.

Two modes, both ending in a normal export folder (sentence-transformers layout +
``embedforge.json``, loadable by serve and evaluate):

* ``--method average --stage train/stage2 --checkpoints 3``: the last k DeepSpeed checkpoints
  Ray Train kept for the stage (``STAGE/ray/stageN/checkpoint_<time>/ckpt``; train's
  ``keep_checkpoints`` bounds k) are consolidated one at a time, averaged, loaded into the
  stage's model (settings and starting model from ``STAGE/config.json``) and exported with
  ``export_model``, with the stage's query prompt.
* ``--method slerp|linear --a EXPORT --b EXPORT --t 0.5``: the folder of ``b`` is copied and
  its root ``*.safetensors`` weights are replaced by the merged tensors, shard by shard with
  b's own sharding. Copying b keeps everything that is not weights (tokenizer, pooling,
  prompts, max length) byte for byte; nothing is re-derived from settings that may not be at
  hand. A LoRA export with merged adapters is a full model folder and merges the same way;
  an adapter-only export has no root weights and is refused.

Outputs follow :mod:`embedforge.safety`: the output must not overlap an input, and is
written only into a folder the merge stage created (``--force`` to take another over).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import time
from typing import Any, Literal

from pydantic import Field, model_validator

from .. import io as eio
from ..config import ConfigError, JobConfig
from ..safety import (
    FORCE_HELP,
    OWNER_FILE,
    PUBLISHED_FILE,
    STAGING_PREFIX,
    check_paths,
    claim_output,
    path_field,
    publish,
    staging,
)

STAGE = "merge"
Method = Literal["average", "linear", "slerp"]


class MergeConfig(JobConfig):
    """Merge model weights into a new export: the average of a training stage's last
    checkpoints (--method average --stage DIR --checkpoints K), or a linear / spherical
    interpolation between two exports (--method slerp --a DIR --b DIR --t 0.5)."""

    method: Method = Field(description="average (stage checkpoints) | linear | slerp (two exports)")
    stage: str | None = path_field("input", None, description="average: a train stage folder (OUTPUT/stageN)")
    checkpoints: int = Field(2, ge=1, description="average: how many of the last checkpoints")
    weights: list[float] | None = Field(
        None, description="average: one weight per checkpoint, oldest first (default equal)")
    a: str | None = path_field("input", None, description="linear/slerp: the export at t=0")
    b: str | None = path_field("input", None, description="linear/slerp: the export at t=1 (its folder is copied)")
    t: float = Field(0.5, ge=0, le=1, description="linear/slerp: 0 gives a, 1 gives b")
    output: str = path_field("output", description="output export folder (local path)")
    force: bool = Field(False, description=FORCE_HELP)

    @model_validator(mode="after")
    def _mode(self) -> MergeConfig:
        if self.method == "average":
            if not self.stage or self.a or self.b:
                raise ValueError("--method average takes --stage (and --checkpoints), not --a/--b")
            if self.weights is not None and len(self.weights) != self.checkpoints:
                raise ValueError(f"--weights needs {self.checkpoints} values (one per checkpoint), "
                                 f"got {len(self.weights)}")
        elif not (self.a and self.b) or self.stage:
            raise ValueError(f"--method {self.method} takes --a and --b (two exports), not --stage")
        return self


# --------------------------------------------------------------------------- exports

def weight_files(folder: str) -> list[str]:
    """The root ``*.safetensors`` files of an export (sorted), or a ConfigError saying why not."""
    if not os.path.isfile(os.path.join(folder, "modules.json")):
        raise ConfigError(f"{folder} is not an exported model (no modules.json)")
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        hint = (" (an adapter-only LoRA export: export with lora.merge_on_export)"
                if os.path.isdir(os.path.join(folder, "adapter")) else "")
        raise ConfigError(f"{folder} has no *.safetensors weights at its root{hint}")
    return files


def load_export_weights(folder: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    state: dict[str, Any] = {}
    for f in weight_files(folder):
        state.update(load_file(f))
    return state


def _check_same_layout(a: str, b: str) -> None:
    """Pooling and attention must agree: the merge keeps b's, which must also fit a's weights."""
    def desc(folder: str) -> dict[str, Any]:
        path = os.path.join(folder, "embedforge.json")
        doc = eio.read_json(path) if os.path.exists(path) else {}
        return {k: doc.get(k) for k in ("pooling", "bidirectional", "include_prompt", "normalize")}

    da, db = desc(a), desc(b)
    diff = [f"{k} {da[k]!r} vs {db[k]!r}" for k in da if da[k] != db[k]]
    if diff:
        raise ConfigError(f"--a {a} and --b {b} embed differently ({', '.join(diff)}): "
                          "merging their weights would not give a model of either kind")


def interpolate_exports(a: str, b: str, t: float, method: str, out_dir: str) -> str:
    """Write ``out_dir``: b's folder with weights ``method``(a, b, t) (see safety.publish)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from . import merge

    weight_files(a), weight_files(b)  # both are exports, before comparing what they hold
    _check_same_layout(a, b)
    sa = load_export_weights(a)
    sb = load_export_weights(b)
    try:
        merged = (merge.slerp if method == "slerp" else merge.lerp)(sa, sb, t)
    except ValueError as exc:
        raise ConfigError(f"--a {a} and --b {b} do not merge: {exc}") from None
    del sa, sb
    with staging(out_dir) as tmp:
        shutil.copytree(b, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            OWNER_FILE, PUBLISHED_FILE, STAGING_PREFIX + "*", "adapter", "merge.json"))
        for f in weight_files(b):
            with safe_open(f, "pt") as fh:
                keys, meta = list(fh.keys()), fh.metadata()
            save_file({k: merged[k].contiguous() for k in keys},
                      os.path.join(tmp, os.path.basename(f)), metadata=meta)
        publish(tmp, out_dir)  # only the names of b's export, never the whole folder
    return out_dir


# --------------------------------------------------------------------------- checkpoints

def stage_checkpoints(stage_dir: str) -> list[str]:
    """Ray Train checkpoint folders of a train stage, oldest first.

    Ray names them ``checkpoint_<YYYY-mm-dd_HH-MM-SS.ffffff>``, so name order is time order;
    only those holding a DeepSpeed ``ckpt`` tag count (a half-written one does not).
    """
    found = glob.glob(os.path.join(stage_dir, "ray", "*", "checkpoint_*", "ckpt"))
    return sorted((os.path.dirname(p) for p in found), key=os.path.basename)


def _stage_query_instruction(stage_dir: str) -> str | None:
    """The stage export's query instruction (its embedforge.json prompt, template removed)."""
    from ..instructions import PROMPT_TEMPLATE

    path = os.path.join(stage_dir, "model", "embedforge.json")
    if not os.path.exists(path):
        return None
    prompt = (eio.read_json(path).get("prompts") or {}).get("query") or ""
    head, _, tail = PROMPT_TEMPLATE.partition("{task}")
    if prompt.startswith(head) and prompt.endswith(tail) and len(prompt) > len(head) + len(tail):
        return prompt[len(head):len(prompt) - len(tail)]
    return None


def average_checkpoints(stage_dir: str, k: int, out_dir: str,
                        weights: list[float] | None = None, log=print) -> tuple[str, list[str]]:
    """Export the average of the stage's last ``k`` checkpoints to ``out_dir``."""
    from . import merge
    from .config import ModelSettings
    from .export import consolidated_state_dict, export_model, load_trained
    from .run import RECORD

    record_path = os.path.join(stage_dir, RECORD)
    if not os.path.exists(record_path):
        raise ConfigError(f"--stage {stage_dir} is not a train stage folder (no {RECORD})")
    record = eio.read_json(record_path)
    settings = ModelSettings.model_validate(record["config"]["model"])
    zero = int(record["config"].get("deepspeed", {}).get("zero_stage", 3))
    init = record["init"]["path"]
    ckpts = stage_checkpoints(stage_dir)
    if len(ckpts) < k:
        raise ConfigError(f"--stage {stage_dir} keeps {len(ckpts)} checkpoint(s), --checkpoints "
                          f"asks for {k} (train keeps keep_checkpoints of them)")
    chosen = ckpts[-k:]
    log(f"[merge] averaging {k} checkpoint(s) of {stage_dir}: "
        + ", ".join(os.path.basename(c) for c in chosen))
    try:
        state = merge.average((consolidated_state_dict(c, zero) for c in chosen), weights)
    except ValueError as exc:
        raise ConfigError(f"checkpoints of {stage_dir} do not average: {exc}") from None
    model, tok = load_trained(settings, init, state)
    export_model(model, tok, settings, out_dir, _stage_query_instruction(stage_dir))
    return out_dir, chosen


# --------------------------------------------------------------------------- the job

def run_merge(cfg: MergeConfig, log=print) -> dict[str, Any]:
    """Check inputs and the output folder, merge, write ``merge.json``; returns its content."""
    inputs = [("--stage", cfg.stage), ("--a", cfg.a), ("--b", cfg.b)]
    for flag, path in inputs:
        if path and not os.path.isdir(path):
            raise ConfigError(f"{flag} {path}: folder not found")
    check_paths(cfg)
    claim_output(cfg.output, STAGE, cfg.force)
    t0 = time.time()
    record: dict[str, Any] = {"method": cfg.method}
    if cfg.method == "average":
        assert cfg.stage is not None
        _, chosen = average_checkpoints(cfg.stage, cfg.checkpoints, cfg.output, cfg.weights, log)
        record.update(stage=os.path.abspath(cfg.stage), checkpoints=chosen, weights=cfg.weights)
    else:
        assert cfg.a is not None and cfg.b is not None
        log(f"[merge] {cfg.method} t={cfg.t}: {cfg.a} -> {cfg.b}")
        interpolate_exports(cfg.a, cfg.b, cfg.t, cfg.method, cfg.output)
        record.update(a=os.path.abspath(cfg.a), b=os.path.abspath(cfg.b), t=cfg.t)
    record["seconds"] = round(time.time() - t0, 2)
    with open(os.path.join(cfg.output, "merge.json"), "w") as fh:
        json.dump(record, fh, indent=2)
    return record
