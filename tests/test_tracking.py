"""Experiment tracking against a real MLflow file store, read back through MlflowClient.

Skipped when MLflow is not installed (the library itself must import without it: checked
here in a fresh interpreter).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from embedforge import tracking
from embedforge.tracking import TrackingSettings

ROOT = Path(__file__).resolve().parents[1]


def client(uri: str):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def runs(uri: str, experiment: str = "embedforge") -> dict[str, object]:
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {uri}"
    return {r.info.run_name: r for r in c.search_runs([exp.experiment_id])}


# ----------------------------------------------------------------------------- pure parts

def test_flatten_numbers_and_keys():
    flat = tracking.flatten({"model": {"model": "m", "lora": {"r": 16}}, "tags": ["a", "b"],
                             "empty": {}, "none": None, "instruction_map": {"MTEB(eng, v2)": "x"},
                             "long": "y" * 7000})
    assert flat["model.model"] == "m" and flat["model.lora.r"] == "16"
    assert flat["tags"] == '["a", "b"]' and flat["empty"] == "{}" and flat["none"] == ""
    assert flat["instruction_map.MTEB_eng_ v2_"] == "x"  # MLflow refuses '(' and ','
    assert len(flat["long"]) == tracking.MAX_PARAM_VALUE
    nums = tracking.numbers({"samples": 3, "by_kind": {"pair": 2}, "ok": True, "url": "http://x",
                             "score": float("nan"), "after": {"sts": 0.5}})
    assert nums == {"samples": 3.0, "by_kind/pair": 2.0, "after/sts": 0.5}


def test_train_metrics_of_a_progress_row():
    row = {"stage": 1, "step": 10, "loss": 0.7, "task": "retrieval", "dataset": "sci fact:v1",
           "lr": 2e-5, "examples_per_s": 9.5, "tokens_per_s": 900.0,
           "epochs": {"sci fact:v1": 0.25, "stsb": 0.1}}
    m = tracking.train_metrics(row)
    assert m == {"loss": 0.7, "loss_by_task/retrieval": 0.7,
                 "loss_by_dataset/retrieval/sci fact_v1": 0.7,
                 "lr": 2e-5, "examples_per_s": 9.5, "tokens_per_s": 900.0,
                 "epochs/sci fact_v1": 0.25, "epochs/stsb": 0.1}


def test_default_store_is_under_a_local_output_only(tmp_path):
    assert tracking.default_uri(str(tmp_path / "run")) == f"file://{tmp_path}/run/mlruns"
    assert tracking.default_uri("s3://bucket/run") is None
    off = tracking.new_run(TrackingSettings(), "s3://bucket/run", "x")
    assert not off and off.ref is None


def test_library_imports_without_mlflow():
    code = ("import sys; import embedforge.tracking, embedforge.train.config, "
            "embedforge.eval.config, embedforge.pipeline.config; "
            "assert 'mlflow' not in sys.modules, 'mlflow imported eagerly'")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr


# ------------------------------------------------------------------------ against a store

needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                                  reason="MLflow (mlflow-skinny) is not installed")


@needs_mlflow
def test_job_run_logs_params_metrics_and_files(tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "report.md").write_text("# report\n")
    with tracking.job_run(TrackingSettings(), str(out), "evaluate",
                          {"embedforge.job": "evaluate"}) as run:
        run.log_params({"encoder": {"model": "m"}, "tolerance": 0.01})
        run.log_params({"encoder": {"model": "m"}})  # the same again is fine
        run.log_metrics({"score/stsb": 0.82})
        for step, task in ((1, "retrieval"), (2, "pair")):  # training's metric names
            run.log_metrics(tracking.train_metrics(
                {"loss": 1.0 / step, "task": task, "dataset": "d", "lr": 1e-5,
                 "examples_per_s": 9.0, "tokens_per_s": 90.0, "epochs": {"d": 0.5}}), step=step)
        run.log_files([str(out / "report.md"), str(out / "missing.png")])
    uri = f"file://{out}/mlruns"
    r = runs(uri)["evaluate"]
    assert r.info.status == "FINISHED"
    assert r.data.params == {"encoder.model": "m", "tolerance": "0.01"}
    assert r.data.metrics["score/stsb"] == 0.82 and r.data.tags["embedforge.job"] == "evaluate"
    # every name logged, none shadowing another in the file store's folders
    assert set(r.data.metrics) == {"score/stsb", "loss", "loss_by_task/retrieval",
                                   "loss_by_task/pair", "loss_by_dataset/retrieval/d",
                                   "loss_by_dataset/pair/d", "lr", "examples_per_s",
                                   "tokens_per_s", "epochs/d"}
    assert r.data.tags["embedforge.output"] == str(out)
    history = client(uri).get_metric_history(r.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5)]
    assert [a.path for a in client(uri).list_artifacts(r.info.run_id)] == ["report.md"]


@needs_mlflow
def test_failed_job_and_idle_job(tmp_path):
    with pytest.raises(RuntimeError), tracking.job_run(TrackingSettings(), str(tmp_path),
                                                       "train-stage1") as run:
        run.log_metrics({"loss": 1.0}, step=1)
        raise RuntimeError("worker died")
    with tracking.job_run(TrackingSettings(), str(tmp_path), "train-stage2"):
        pass  # a finished stage that was skipped: no empty run left behind
    found = runs(f"file://{tmp_path}/mlruns")
    assert set(found) == {"train-stage1"} and found["train-stage1"].info.status == "FAILED"


def test_disabled_tracking_writes_nothing(tmp_path):
    with tracking.job_run(TrackingSettings(enabled=False), str(tmp_path), "x") as run:
        assert not run
        run.log_metrics({"loss": 1.0})
        run.log_files([__file__])
    assert not (tmp_path / "mlruns").exists()


@needs_mlflow
def test_pipeline_parent_with_nested_stage_runs_and_a_worker_logging_by_id(tmp_path):
    """The pipeline shape: a parent run, a nested run per stage made active so that the job
    code inside logs into it (not a run of its own), and a second process (a Ray worker)
    logging to that run by id."""
    settings = TrackingSettings()
    parent = tracking.new_run(settings, str(tmp_path), "pipeline", {"embedforge.job": "pipeline"})
    parent.log_params({"stages": ["train1"]})
    stage = parent.child("train1", {"embedforge.stage": "train1"})
    with tracking.activate(stage), tracking.job_run(settings, str(tmp_path / "train"),
                                                    "train-stage1") as run:
        assert run is stage
        ref = run.ref
        worker = ("import json, sys; from embedforge import tracking; "
                  "run = tracking.attach(json.loads(sys.argv[1])); "
                  "run.log_metrics({'loss': 0.25, 'lr': 1e-5}, step=7)")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        res = subprocess.run([sys.executable, "-c", worker, json.dumps(ref)],
                             capture_output=True, text=True, env=env)
        assert res.returncode == 0, res.stderr
    with tracking.job_run(TrackingSettings(enabled=False), str(tmp_path), "evaluate") as off:
        assert not off  # a stage config that turns tracking off wins over the active run
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    stage.log_files([str(model)])
    tracking.end_stage(stage, "ran", 12.5, {"steps": 2, "model": str(model)})
    skipped = parent.child("evaluate")
    tracking.end_stage(skipped, "skipped", 3.0, {"after": {"sts": 0.8}})
    parent.finish()

    uri = f"file://{tmp_path}/mlruns"
    found = runs(uri)
    assert set(found) == {"pipeline", "train1", "evaluate"}  # no separate train-stage1 run
    pid = found["pipeline"].info.run_id
    for name in ("train1", "evaluate"):
        assert found[name].data.tags["mlflow.parentRunId"] == pid
    t1 = found["train1"]
    assert t1.data.metrics == {"loss": 0.25, "lr": 1e-5, "summary/steps": 2.0, "seconds": 12.5}
    assert client(uri).get_metric_history(t1.info.run_id, "loss")[0].step == 7
    assert t1.data.tags["embedforge.status"] == "ran" and t1.info.status == "FINISHED"
    assert [a.path for a in client(uri).list_artifacts(t1.info.run_id, "model")] == \
        ["model/config.json"]
    assert found["evaluate"].data.tags["embedforge.status"] == "skipped"
    assert found["evaluate"].data.metrics["summary/after/sts"] == 0.8
    assert found["pipeline"].data.params == {"stages": '["train1"]'}
