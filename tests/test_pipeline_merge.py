"""The pipeline's merge stage on two tiny real exports: real interpolation (train/merge_job),
real dev scoring (mteb on the sample STS task), the choice written for evaluate and serve.

Grid [1.0, 0.0]: t=1 is stage 2's weights exactly, so it ties with stage 2 and must not be
chosen although it comes first; t=0 is stage 1's weights, and stage 1 is the backbone seeded
1, which scores higher on the sample STS task than seed 0 (0.143 vs 0.013 Spearman), so t=0
must win.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from embedforge.pipeline.config import PipelineConfig
from embedforge.pipeline.stages import Folders, build_merge, run_merge_stage

STS = "sts=sts:platform/embedforge/sample_data/eval/sts-test.tsv"


def _settings(path: str):
    from embedforge.train.config import ModelSettings

    return ModelSettings(model=path, pooling="last_token", bidirectional=True,
                         query_max_length=32, passage_max_length=32)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> str:
    """A run folder whose train/stage1/model and train/stage2/model are tiny exports of two
    differently seeded Qwen2 backbones (as the train stage leaves them)."""
    from embedforge.testing.models import build_tiny_qwen2
    from embedforge.train.export import export_model
    from embedforge.train.model import build_model

    root = tmp_path_factory.mktemp("pipe-merge")
    for stage, seed in ((1, 1), (2, 0)):
        tiny = build_tiny_qwen2(str(root / f"tiny{seed}"), seed=seed)
        model, tok = build_model(_settings(tiny))
        export_model(model, tok, _settings(tiny), str(root / "run" / "train" / f"stage{stage}" /
                                                       "model"), "Find the answer")
    return str(root / "run")


def test_merge_stage_scores_the_grid_rejects_a_tie_and_keeps_the_better_merge(run_folder):
    from embedforge.eval.output import load_scores
    from embedforge.eval.report import mean_task_type
    from embedforge.pipeline.stages import build_evaluate, build_serve

    cfg = PipelineConfig.model_validate({
        "output": run_folder, "train": {"model": {"model": "unused-base"}},
        "merge": {"method": "slerp", "grid": [1.0, 0.0]},
        "evaluate": {"tasks": [STS], "baseline": False}})
    f = Folders(run_folder)
    plan = build_merge(cfg, f)
    logs: list[str] = []
    s = run_merge_stage(plan, f, logs.append)
    merge = Path(run_folder, "merge")
    # every score is the report's Mean(TaskType) of that model's own scores.json
    for name, got in (("stage2", s["stage2"]), ("t0", s["grid"]["0"]), ("t1", s["grid"]["1"])):
        rs = load_scores(str(merge / "eval" / name))
        assert got == pytest.approx(mean_task_type(rs.scores, rs.types))
        assert not math.isnan(got)
    assert s["grid"]["1"] == s["stage2"]  # identical weights, identical score: a tie
    assert s["grid"]["0"] > s["stage2"], s  # the seeds' order (module docstring)
    assert (s["t"], s["chosen"]) == (0.0, "t0")
    want = str(merge / "t0")
    assert s["model"] == want
    assert json.loads((merge / "choice.json").read_text())["model"] == want
    assert json.loads((merge / "t0" / "merge.json").read_text())["t"] == 0.0
    assert not (merge / "t1").exists()  # a losing merge's export is deleted, its scores kept
    assert (merge / "eval" / "t1" / "scores.json").exists()
    # evaluate gates and serve deploys the chosen model
    assert build_evaluate(cfg, f)[0].encoder.model == want
    assert build_serve(cfg, f).encoder.model == want
    assert any("t=1: dev Mean(TaskType)" in line for line in logs)


@pytest.mark.integration
def test_pipeline_runs_merge_then_gates_the_choice_and_reruns_on_a_merge_change(
        run_folder, tmp_path, monkeypatch):
    """run_pipeline(stages=[merge, evaluate]) in a private Ray cluster: the merge choice is
    what evaluate scores, a re-run skips both, a changed grid re-runs both, an empty grid
    is a no-op recorded as skipped and hands stage 2 to evaluate."""
    import shutil

    import ray

    from embedforge.pipeline.run import run_pipeline

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "run"
    shutil.copytree(Path(run_folder, "train"), out / "train")

    def go(grid: list[float]) -> dict:
        logs: list[str] = []
        data = run_pipeline(PipelineConfig.model_validate({
            "output": str(out), "num_cpus": 1, "stages": ["merge", "evaluate"],
            # the train folder was copied in by hand: no pipeline made this run folder
            "take_over": True,
            "train": {"model": {"model": "unused-base"}},
            "merge": {"grid": grid},
            "evaluate": {"tasks": [STS], "baseline": False, "on_regression": "warn"}}),
            log=logs.append)
        data["logs"] = logs
        return data

    def status(data: dict) -> dict[str, str]:
        return {k: v["status"] for k, v in data["stages"].items()}

    first = go([1.0, 0.0])
    assert status(first) == {"merge": "ran", "evaluate": "ran"}
    assert first["stages"]["evaluate"]["config"][0]["encoder"]["model"] == str(out / "merge" / "t0")
    assert any("t=0 chosen: " in line for line in first["logs"])  # the stage table
    ev = first["stages"]["evaluate"]["summary"]["after"]["sts"]
    assert ev == pytest.approx(first["stages"]["merge"]["summary"]["grid"]["0"])
    assert status(go([1.0, 0.0])) == {"merge": "skipped", "evaluate": "skipped"}
    kept = go([1.0])
    assert status(kept) == {"merge": "ran", "evaluate": "ran"}
    assert not (out / "merge" / "t0").exists()  # the re-run started from a clean merge folder
    assert kept["stages"]["evaluate"]["config"][0]["encoder"]["model"] == \
        str(out / "train" / "stage2" / "model")
    off = go([])
    assert status(off) == {"merge": "skipped", "evaluate": "ran"}
    assert off["stages"]["merge"]["summary"]["skipped"] == "no grid"
    assert any("skipped (no grid)" in line for line in off["logs"])
