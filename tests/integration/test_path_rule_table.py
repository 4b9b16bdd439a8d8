"""Every job x every path flag x {equal, inside, containing, user folder, user X.tmp sibling,
--force on a user folder}: the user's files hash the same after as before.

The path flags come from each job's own config (``safety.path_flags`` of a base config that
sets every path flag), so a flag added later is a new row here without editing this file. The
overlap and user-folder rows call the job's entry point in-process and end at its refusal
(before any Ray or model work); the X.tmp and --force rows run the job for real (merge on two
tiny exports, an export into a user folder, prepare and the pipeline on a private Ray
cluster). ``EMBEDFORGE_SAFETY_TABLE=FILE`` writes the table as markdown.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from embedforge import io as eio
from embedforge.config import ConfigError
from embedforge.safety import path_flags
from embedforge.schema import rows_to_table

pytestmark = pytest.mark.integration
STS = "platform/embedforge/sample_data/eval/sts-test.tsv"
ROWS: list[dict[str, str]] = []


# ------------------------------------------------------------------ user data and checksums
def user_tree(root: Path) -> Path:
    """A user's folder: samples (so a stage would read it), notes, a dotfile, a sub-folder."""
    for sub in (root, root / "data"):
        rows = [{"id": f"s{i}", "dataset": "d", "kind": "retrieval", "instruction": "find",
                 "query": f"q {i}", "positive": f"p {i}", "negatives": [], "score": None,
                 "label": None, "source": "original", "meta": "{}"} for i in range(2)]
        eio.write_parquet_atomic(rows_to_table(rows), str(sub / "samples" / "part-0.parquet"))
    (root / "notes.txt").write_text("my notes")
    (root / ".hidden").write_text("dot")
    (root / "docs").mkdir()
    (root / "docs" / "README.md").write_text("# mine")
    (root / "manifest.json").write_text('{"mine": true}')
    return root


def files_of(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def digest(root: Path, files: list[Path]) -> str:
    """One hash over the user's files (path + content; a missing file hashes as MISSING)."""
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(root)).encode())
        h.update(hashlib.sha256(p.read_bytes()).digest() if p.is_file() else b"MISSING")
    return h.hexdigest()[:12]


def record(job: str, flag: str, case: str, root: Path, files: list[Path], before: str,
           outcome: str) -> None:
    after = digest(root, files)
    ROWS.append({"job": job, "flag": flag, "case": case, "files": str(len(files)),
                 "before": before, "after": after, "outcome": outcome})
    assert after == before, f"{job} {flag} {case}: the user's files changed ({outcome})"


# ------------------------------------------------------------------ the jobs
def set_at(data: Any, loc: tuple, value: str) -> None:
    for key in loc[:-1]:
        data = data[key]
    data[loc[-1]] = value


def jobs(tmp: Path, models: dict[str, str]) -> dict[str, tuple[type, dict[str, Any], Callable]]:
    """{job: (config class, base config with every path flag set, entry point)}."""
    from embedforge.eval.config import EvalConfig
    from embedforge.eval.job import evaluate_and_gate
    from embedforge.mine.config import MineConfig
    from embedforge.mine.stage import run_mine
    from embedforge.pipeline.config import PipelineConfig
    from embedforge.pipeline.run import run_pipeline
    from embedforge.prepare import PrepareConfig, run_prepare
    from embedforge.synth.config import SynthConfig
    from embedforge.synth.stage import run_synthesize
    from embedforge.train.config import TrainConfig
    from embedforge.train.merge_job import MergeConfig, run_merge
    from embedforge.train.run import run_train

    good = user_tree(tmp / "good")
    (good / "arts.jsonl").write_text('{"title": "A title", "body": "a body text here"}\n')
    (good / "scores.json").write_text('{"tasks": {"sts": {"main_score": 0.5, "type": "STS"}}}')
    quiet = {"log": lambda *_a, **_k: None}
    track = {"uri": f"file://{tmp}/mlruns"}
    return {
        "prepare": (PrepareConfig, {"sources": [{"name": "arts", "format": "title_body",
                                                 "path": str(good / "arts.jsonl")}]},
                    lambda c: run_prepare(c, **quiet)),
        "synthesize": (SynthConfig, {"input": str(good), "cache": str(tmp / "synth-cache"),
                                     "embed_filter": {"model": models["a"]},
                                     "local_llm": {"model_path": str(good / "m.gguf")}},
                       lambda c: run_synthesize(c, **quiet)),
        "mine": (MineConfig, {"input": str(good), "corpus": str(good),
                              "encoder": {"model": models["a"]},
                              "rescore": {"model": models["b"]},
                              "cache": str(tmp / "mine-cache")}, lambda c: run_mine(c, **quiet)),
        "train": (TrainConfig, {"model": {"model": models["a"]}, "stage1": {"inputs": [str(good)]},
                                "stage2": {"inputs": [str(good)]}, "tracking": track},
                  lambda c: run_train(c, **quiet)),
        "evaluate": (EvalConfig, {"encoder": {"model": models["a"]},
                                  "tasks": [{"name": "sts", "kind": "sts", "path": STS,
                                             "test_file": STS}],
                                  "instruction_file": str(good / "notes.txt"),
                                  "baseline": str(good), "compare": [str(good)],
                                  "tracking": track}, lambda c: evaluate_and_gate(c, **quiet)),
        "merge (linear)": (MergeConfig, {"method": "linear", "a": models["a"], "b": models["b"]},
                           lambda c: run_merge(c, **quiet)),
        "merge (average)": (MergeConfig, {"method": "average", "stage": str(good)},
                            lambda c: run_merge(c, **quiet)),
        "pipeline": (PipelineConfig, {"stages": ["prepare"], "tracking": track,
                                      "prepare": {"sources": [
                                          {"name": "arts", "format": "title_body",
                                           "path": str(good / "arts.jsonl")}]}},
                     lambda c: run_pipeline(c, **quiet)),
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """Two tiny real exports (as train leaves them), for the model flags and real merges."""
    from embedforge.testing.models import build_tiny_qwen2
    from embedforge.train.config import ModelSettings
    from embedforge.train.export import export_model
    from embedforge.train.model import build_model

    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, seed in (("a", 1), ("b", 0)):
        settings = ModelSettings(model=build_tiny_qwen2(str(root / f"tiny{seed}"), seed=seed),
                                 pooling="last_token", query_max_length=16, passage_max_length=16)
        model, tok = build_model(settings)
        export_model(model, tok, settings, str(root / name))
        out[name] = str(root / name)
    return out


CASES = {  # case -> (flag value, output) relative to the user's folder X
    "equal": (".", "."),
    "inside": (".", "out"),          # the output inside the flag's folder
    "containing": ("data", "."),     # the output holding the flag's folder
}


def _refused(run: Callable, cls: type, data: dict[str, Any]) -> str:
    try:
        run(cls.model_validate(data))
    except ConfigError as exc:
        msg = str(exc)
        if "is not empty" in msg:
            return "refused: not empty, no marker"
        head = msg.split(": ")[0].split()  # FLAG PATH HOW... FLAG PATH
        how = " ".join(w for w in head if w in ("is", "inside", "contains"))
        return f"refused: {head[0]} {how} {' '.join(head[len(how.split()) + 2:-1])}"
    return "RAN"


@pytest.mark.slow
def test_every_path_flag_of_every_job_overlapping_a_user_folder_is_refused(tmp_path, models):
    for job, (cls, base, run) in jobs(tmp_path, models).items():
        out0 = str(tmp_path / f"{job.split()[0]}-out")
        flags = path_flags(cls.model_validate({**base, "output": out0}))
        inputs = [f for f in flags if f.role == "input"]
        stores = [f for f in flags if f.role == "store"]
        for f in [*inputs, *(stores if inputs else []), *(x for x in flags if x.role == "output")]:
            for case, (value, output) in CASES.items():
                root = user_tree(tmp_path / "x" / f"{job}-{f.flag}-{case}".replace(" ", "_"))
                files = files_of(root)
                before = digest(root, files)
                data = copy.deepcopy({**base, "output": out0})
                if f.role == "output":
                    if case != "equal":
                        continue
                    data["output"] = str(root)  # a user folder, no ownership marker
                    how = _refused(run, cls, data)
                    record(job, f.flag, "user folder", root, files, before, how)
                    assert how.startswith("refused"), (job, how)
                    continue
                set_at(data, f.loc, str(root / value) if value != "." else str(root))
                if f.role == "store":  # a store against the job's first input
                    set_at(data, inputs[0].loc, str(root / value) if value != "." else str(root))
                    set_at(data, f.loc, str(root / output) if output != "." else str(root))
                else:
                    data["output"] = str(root / output) if output != "." else str(root)
                how = _refused(run, cls, data)
                record(job, f.flag, case, root, files, before, how)
                assert how.startswith("refused") and "is not empty" not in how, (job, f, how)
    assert {r["job"] for r in ROWS} >= {"prepare", "synthesize", "mine", "train", "evaluate",
                                        "merge (linear)", "merge (average)", "pipeline"}


@pytest.mark.slow
def test_real_runs_keep_the_users_files(tmp_path, models, ray_local):
    from embedforge.pipeline.config import PipelineConfig
    from embedforge.pipeline.run import run_pipeline
    from embedforge.prepare import PrepareConfig, run_prepare
    from embedforge.train.config import ModelSettings
    from embedforge.train.export import export_model
    from embedforge.train.merge_job import MergeConfig, run_merge
    from embedforge.train.model import build_model

    quiet = {"log": lambda *_a, **_k: None}
    # merge --output X with a user's X.tmp beside it (and X itself new)
    root = user_tree(tmp_path / "sib")
    os.rename(root / "docs", root / "X.tmp")
    files = files_of(root)
    before = digest(root, files)
    run_merge(MergeConfig(method="linear", a=models["a"], b=models["b"], output=str(root / "X")),
              **quiet)
    assert (root / "X" / "model.safetensors").exists()
    record("merge (linear)", "--output", "user X.tmp sibling", root, files, before, "ran")
    # merge --force on a user folder: the export's names written, the user's kept
    root = user_tree(tmp_path / "force-merge")
    files = files_of(root)
    before = digest(root, files)
    with pytest.raises(ConfigError, match="not empty"):
        run_merge(MergeConfig(method="linear", a=models["a"], b=models["b"], output=str(root)))
    run_merge(MergeConfig(method="slerp", a=models["a"], b=models["b"], output=str(root),
                          force=True), **quiet)
    again = json.loads((root / "merge.json").read_text())
    assert again["method"] == "slerp" and (root / "modules.json").exists()
    record("merge (linear)", "--output", "--force on a user folder", root, files, before, "ran")
    # merge --method average exports through export_model: into a user folder taken over
    root = user_tree(tmp_path / "force-export")
    files = files_of(root)
    before = digest(root, files)
    settings = ModelSettings(model=models["a"], pooling="last_token", query_max_length=16,
                             passage_max_length=16)
    model, tok = build_model(settings)
    export_model(model, tok, settings, str(root))
    export_model(model, tok, settings, str(root))  # a re-export replaces its own names only
    assert (root / "modules.json").exists()
    assert not [p for p in root.iterdir() if p.name.startswith((".staging-", "X.tmp"))]
    record("merge (average)", "--output", "--force on a user folder (export)", root, files, before,
           "ran")
    # prepare --force on a user folder, and prepare --output local:///SRC
    root = user_tree(tmp_path / "force-prepare")
    (root / "src.jsonl").write_text('{"title": "T", "body": "some body text"}\n')
    files = files_of(root)
    before = digest(root, files)
    src = {"name": "arts", "format": "title_body", "path": str(root / "src.jsonl")}
    with pytest.raises(ConfigError, match="contains --source arts"):
        run_prepare(PrepareConfig(sources=[src], output=f"local://{root}/", force=True), **quiet)
    record("prepare", "--output", "local:///SRC (containing)", root, files, before, "refused")
    out = root / "shared"
    out.mkdir()
    (out / "keep.txt").write_text("theirs")
    files = files_of(root)
    before = digest(root, files)
    stats = run_prepare(PrepareConfig(sources=[src], output=str(out), force=True), **quiet)
    assert stats["total_samples"] == 1
    record("prepare", "--output", "--force on a user folder", root, files, before, "ran")
    # the pipeline on a user folder: refused, then taken over, the user's manifest.json kept
    root = user_tree(tmp_path / "force-pipeline")
    (root / "src.jsonl").write_text('{"title": "T", "body": "some body text"}\n')
    run_root = root / "run"
    run_root.mkdir()
    (run_root / "manifest.json").write_text('{"mine": true}')
    files = files_of(root)
    before = digest(root, files)
    pcfg = {"output": str(run_root), "stages": ["prepare"], "tracking": {"enabled": False},
            "prepare": {"sources": [{**src, "path": str(root / "src.jsonl")}]}}
    with pytest.raises(ConfigError, match="not empty"):
        run_pipeline(PipelineConfig.model_validate(pcfg), **quiet)
    record("pipeline", "--output", "user folder (manifest.json)", root, files, before, "refused")
    (run_root / "manifest.json").unlink()  # the user moved it away; other files stay
    files = files_of(root)
    before = digest(root, files)
    run_pipeline(PipelineConfig.model_validate({**pcfg, "take_over": True}), **quiet)
    assert (run_root / "prepared" / "summary.json").exists()
    record("pipeline", "--output", "--take-over on a user folder", root, files, before, "ran")


def test_zz_write_table():
    """Writes the rows the tests above recorded (EMBEDFORGE_SAFETY_TABLE=FILE)."""
    target = os.environ.get("EMBEDFORGE_SAFETY_TABLE")
    if not target or not ROWS:
        pytest.skip("EMBEDFORGE_SAFETY_TABLE not set")
    lines = ["| job | path flag | case | user files | sha before | sha after | outcome |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['job']} | `{r['flag']}` | {r['case']} | {r['files']} | {r['before']} | "
              f"{r['after']} | {r['outcome']} |" for r in ROWS]
    Path(target).write_text("\n".join(lines) + "\n")
